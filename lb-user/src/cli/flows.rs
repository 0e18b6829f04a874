//! `lb flows`: the exceptions, and where the stateless rest goes.

use lb_user::view;

use super::{PinArgs, print_json};

/// List the exceptions: flows pinned to a path other than the one their target's decision
/// gives them (an established connection kept across a decision change, a connection the VM
/// opened over a standby path). Every other flow follows its target's decision and is stored
/// nowhere; the per-path packet counters (also in `lb stats`) show where that traffic goes.
#[derive(clap::Args)]
pub struct Options {
    /// Print JSON (the exceptions).
    #[arg(long)]
    json: bool,
    /// Show at most this many exceptions.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options { json, limit } = opts;
    let maps = pin.open()?;
    let flows = view::flows(&maps, limit)?;
    if json {
        return print_json(&flows);
    }
    for f in &flows {
        let path = match (&f.target, &f.path) {
            (Some(t), Some(p)) => format!("{t}/{p}"),
            _ => "(path gone)".into(),
        };
        let origin = match (f.from_vm, f.from_syn) {
            (true, _) => "pinned by the VM",
            (false, true) => "pinned by the client's SYN",
            (false, false) => "pinned by the client",
        };
        let state = match (f.closing, f.replied) {
            (true, _) => ", closing",
            (false, false) => ", unanswered",
            (false, true) => "",
        };
        println!(
            "{:<4} {} → {} via {path} ({origin}{state})",
            f.protocol,
            view::endpoint(f.client, f.client_port),
            view::endpoint(f.vip, f.vip_port)
        );
    }
    println!(
        "{} exceptions shown (limit {limit}); every other flow follows its target's decision",
        flows.len()
    );
    for p in view::stats(&maps)?.paths {
        println!(
            "  {}/{}: {} packets in, {} out",
            p.target, p.path, p.traffic.in_packets, p.traffic.out_packets
        );
    }
    Ok(())
}
