//! `lb flows`: the flow table.

use lb_user::view;

use super::{PinArgs, print_json};

/// List the flow table: each flow and the path it is pinned to.
#[derive(clap::Args)]
pub struct Options {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Show at most this many flows.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options { json, limit } = opts;
    let flows = view::flows(&pin.open()?, limit)?;
    if json {
        return print_json(&flows);
    }
    for f in &flows {
        let path = match (&f.target, &f.path) {
            (Some(t), Some(p)) => format!("{t}/{p}"),
            _ => "(path gone)".into(),
        };
        let origin = if f.from_vm { " (opened by the VM)" } else { "" };
        println!(
            "{:<4} {}:{} → {}:{} via {path}{origin}",
            f.protocol, f.client, f.client_port, f.vip, f.vip_port
        );
    }
    println!("{} flows shown (limit {limit})", flows.len());
    Ok(())
}
