//! `lb status`: targets, paths and VIPs, from the pinned maps.

use lb_user::{
    config::Family,
    rpc::{Client, ProbeState, Reply, Request},
    view,
};

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
    // The probes' own state is the daemon's alone: asked over its socket.
    let unanswered = match s.daemon.running {
        true => live_health(&mut s, &pin).err(),
        false => None,
    };
    if json {
        return print_json(&s);
    }
    match (s.daemon.pid, s.daemon.running, &unanswered) {
        (Some(pid), true, None) => println!("daemon: running (pid {pid})"),
        (pid, true, Some(e)) => println!(
            "daemon: running (pid {}), but did not answer ({e:#}): path health below is as \
             last written to the maps, and may be stale",
            pid.map_or("?".into(), |p| p.to_string())
        ),
        _ => println!(
            "daemon: not running (the datapath forwards with the last decisions); no probe \
             runs: path health below is what the last daemon decided, not current"
        ),
    }
    for t in &s.targets {
        print!("{}", target_text(t));
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
            if let Some(until) = &p.draining_until {
                println!(
                    "  {:<12} DRAINING until {until}: no new flows; established TCP connections \
                     stay until they end or then (then disabled)",
                    ""
                );
            }
            if let Some(probe) = &p.probe {
                println!("  {:<12} {}", "", probe_text(probe));
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

/// Fills each path's `probe` from the running daemon, and marks the health live.
fn live_health(s: &mut view::Status, pin: &PinArgs) -> anyhow::Result<()> {
    let reply = Client::ask(
        &pin.pin_dir,
        &Request::Health {},
        std::time::Duration::from_secs(5),
    )?;
    let Reply::Health(h) = reply else {
        anyhow::bail!("the daemon answered something else: {reply:?}");
    };
    for t in &mut s.targets {
        for p in &mut t.paths {
            p.probe = h
                .paths
                .iter()
                .find(|x| x.target == t.name && x.path == p.name)
                .map(|x| x.state.clone());
        }
    }
    s.health_is = "live";
    Ok(())
}

/// A path's probe line: the last result and how long ago, the streak, and the settings.
fn probe_text(p: &ProbeState) -> String {
    let last = match &p.last {
        None => "no probe has ended yet".to_string(),
        Some(l) => {
            let outcome = if l.ok { "ok" } else { "failed" };
            let rtt = l
                .rtt_ms
                .map_or(String::new(), |r| format!(", rtt {r:.2} ms"));
            format!(
                "last probe {outcome} {:.1} s ago ({}{rtt})",
                l.age_ms as f64 / 1000.0,
                l.detail
            )
        }
    };
    let streak = p.streak.as_ref().map_or(String::new(), |s| {
        format!("; {} of {} {}", s.count, s.needed, s.of)
    });
    format!("{last}{streak}; probe {}", p.probe)
}

/// A target's heading and transition lines, each ending in a newline: where its new flows go
/// and which connections stay on a previous decision. A target with paths of both families
/// shows each family's decision, IPv4 first.
fn target_text(t: &view::TargetStatus) -> String {
    let choice = |active: &Option<String>, shares: &std::collections::BTreeMap<String, f64>| match (
        active,
        shares.is_empty(),
    ) {
        (Some(a), _) => format!("new flows → {a}"),
        (None, false) => {
            let shares: Vec<String> = shares.iter().map(|(p, s)| format!("{p} {s}%")).collect();
            format!("new flows → {}", shares.join(", "))
        }
        (None, true) => "no usable path: new flows dropped".into(),
    };
    let kept = |prefix: &str, tr: &view::TransitionStatus| {
        format!(
            "  {prefix}connections older than {} stay on the previous decision ({}) while it is up\n",
            tr.since.as_deref().unwrap_or("the last change"),
            tr.previous
        )
    };
    let heading = format!("\ntarget {} ({}, all_down {})", t.name, t.mode, t.all_down);
    if t.families.is_empty() {
        let mut out = format!("{heading}: {}\n", choice(&t.active, &t.shares));
        if let Some(tr) = &t.transition {
            out.push_str(&kept("", tr));
        }
        return out;
    }
    // `families` is keyed by `Family::key`.
    let families: Vec<(Family, &view::DecisionStatus)> = [Family::V4, Family::V6]
        .into_iter()
        .filter_map(|f| Some((f, t.families.get(f.key())?)))
        .collect();
    let choices: Vec<String> = families
        .iter()
        .map(|(f, d)| format!("{f} {}", choice(&d.active, &d.shares)))
        .collect();
    let mut out = format!("{heading}: {}\n", choices.join("; "));
    for (f, d) in &families {
        if let Some(tr) = &d.transition {
            out.push_str(&kept(&format!("{f} "), tr));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lb_user::{
        config::Config,
        control::{health::Health, model::Model},
        view,
    };

    use super::target_text;

    /// `web`: nn1 and nn2 (IPv4), v1 and v2 (IPv6), failover; `solo`: one IPv4 path.
    fn model() -> Model {
        let config = Config::from_json(
            r#"{
              "interfaces": { "clients": ["c0"], "paths": ["p0"] },
              "targets": [
                { "name": "web", "paths": [
                    { "name": "nn1", "address": "192.0.2.1" },
                    { "name": "nn2", "address": "192.0.2.2" },
                    { "name": "v1", "address": "2001:db8:1::1" },
                    { "name": "v2", "address": "2001:db8:2::1" } ] },
                { "name": "solo", "paths": [ { "name": "n1", "address": "192.0.2.11" } ] }
              ],
              "vips": [
                { "address": "203.0.113.10", "target": "web" },
                { "address": "2001:db8:ff::10", "target": "web" },
                { "address": "203.0.113.11", "target": "solo" }
              ]
            }"#,
        )
        .expect("valid");
        Model::new(config, &Model::empty()).expect("fits")
    }

    fn set(m: &mut Model, target: &str, path: &str, health: Health) {
        let id = m.ids.paths[&(target.to_string(), path.to_string())];
        m.paths.get_mut(&id).expect("a path").health = Some(health);
        m.decide(target);
    }

    fn texts(m: &Model) -> Vec<String> {
        view::targets(m, &m.tables(), |_| None)
            .iter()
            .map(target_text)
            .collect()
    }

    /// A target with paths of both families shows each family's decision on its heading line,
    /// and each family's transition on a line of its own; one of one family reads as before.
    #[test]
    fn a_dual_stack_target_shows_each_familys_decision() {
        let mut m = model();
        assert_eq!(
            texts(&m),
            [
                "\ntarget web (failover, all_down drop): IPv4 no usable path: new flows dropped; \
                 IPv6 no usable path: new flows dropped\n",
                "\ntarget solo (failover, all_down drop): no usable path: new flows dropped\n",
            ]
        );
        set(&mut m, "web", "nn2", Health::Up);
        set(&mut m, "web", "nn1", Health::Up);
        set(&mut m, "web", "v2", Health::Up);
        set(&mut m, "solo", "n1", Health::Up);
        let text = texts(&m);
        let (web, solo) = (&text[0], &text[1]);
        assert!(
            web.starts_with(
                "\ntarget web (failover, all_down drop): IPv4 new flows → nn1; IPv6 new flows → v2\n"
            ),
            "{web}"
        );
        assert!(
            web.contains("\n  IPv4 connections older than ")
                && web.ends_with(" stay on the previous decision (nn2) while it is up\n"),
            "{web}"
        );
        assert!(!web.contains("IPv6 connections"), "{web}");
        assert_eq!(
            solo,
            "\ntarget solo (failover, all_down drop): new flows → n1\n"
        );
    }
}
