//! `lb status`: targets, paths and VIPs, from the pinned maps.

use lb_user::view;

use super::{PinArgs, print_json};

/// Show every target (mode, active path, path states) and every VIP.
#[derive(clap::Args)]
pub struct Options {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options { json } = opts;
    let maps = pin.open()?;
    let mut s = view::status(&pin.pin_dir, &maps)?;
    s.interfaces = view::interfaces(&pin.dir(), &maps)?;
    if json {
        return print_json(&s);
    }
    match (s.daemon.pid, s.daemon.running) {
        (Some(pid), true) => println!("daemon: running (pid {pid})"),
        _ => println!("daemon: not running (the datapath forwards with the last decisions)"),
    }
    for t in &s.targets {
        let choice = match (&t.active, t.shares.is_empty()) {
            (Some(a), _) => format!("new flows → {a}"),
            (None, false) => {
                let shares: Vec<String> =
                    t.shares.iter().map(|(p, s)| format!("{p} {s}%")).collect();
                format!("new flows → {}", shares.join(", "))
            }
            (None, true) => "no usable path: new flows dropped".into(),
        };
        println!(
            "\ntarget {} ({}, all_down {}): {choice}",
            t.name, t.mode, t.all_down
        );
        if let Some(tr) = &t.transition {
            println!(
                "  connections older than {} stay on the previous decision ({}) while it is up",
                tr.since.as_deref().unwrap_or("the last change"),
                tr.previous
            );
        }
        for p in &t.paths {
            let rtt = p.rtt_ms.map_or("-".into(), |r| format!("{r:.2} ms"));
            let pending = match (p.drain_requested, p.state == "disabled") {
                (true, false) => " (disable recorded, not applied yet)",
                (false, true) => " (enable recorded, not applied yet)",
                _ => "",
            };
            println!(
                "  {:<12} {:<15} {:<9} prio {:<4} weight {:<4} rtt {:<10} replies on {:<8} since {}",
                p.name,
                p.address,
                p.state,
                p.priority,
                p.weight,
                rtt,
                p.replies_on.as_deref().unwrap_or("any"),
                p.changed.as_deref().unwrap_or("-")
            );
            if !pending.is_empty() {
                println!("  {:<12}{pending}", "");
            }
            if p.datapath_suspect {
                println!(
                    "  {:<12} DATAPATH SUSPECT: probes succeed, clients' TCP handshakes go \
                     unanswered",
                    ""
                );
            }
        }
    }
    println!();
    for i in &s.interfaces {
        let redirects = if i.takes_redirects {
            "takes XDP redirects"
        } else {
            "no XDP redirects into it"
        };
        let hook = match &i.mode {
            Some(mode) => format!("{} ({mode})", i.hook),
            None => i.hook.to_owned(),
        };
        println!(
            "interface {:<15} {:<7} {hook:<13} {}",
            i.name,
            i.role,
            i.why.as_deref().unwrap_or("(no reason recorded)")
        );
        println!("  {:<15} {redirects}; auto would take {}", "", i.auto);
    }
    println!();
    for v in &s.vips {
        let service = view::service_label(v.protocol, v.port);
        let to = v
            .target_port
            .map_or(String::new(), |p| format!(" port {p}"));
        let counts = match (v.announce, v.announced) {
            (false, _) => " (announce: false)",
            (true, Some(true)) => " [announced]",
            (true, Some(false)) => " [withdrawn]",
            (true, None) => "",
        };
        println!("vip {} {service} → {}{to}{counts}", v.address, v.target);
    }
    match &s.announce {
        None => println!("\nannouncements: off (no `announce` section)"),
        Some(a) => {
            println!(
                "\nannouncements: host routes in table {} (protocol {})",
                a.table, a.protocol
            );
            for addr in &a.addresses {
                let state = if addr.announced {
                    "announced"
                } else {
                    "withdrawn"
                };
                match &addr.why {
                    Some(why) => println!("  {:<15} {state:<9} {why}", addr.address),
                    None => println!("  {:<15} {state}", addr.address),
                }
            }
        }
    }
    Ok(())
}
