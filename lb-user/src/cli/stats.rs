//! `lb stats`: counters per verdict and reason, per VIP and per path.

use std::time::{Duration, Instant};

use lb_user::view::{self, Stats, Traffic};

use super::{PinArgs, print_json};

/// Show the datapath's counters: verdicts and reasons, per VIP and per path traffic.
#[derive(clap::Args)]
pub struct Options {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Refresh every interval and show rates (per second).
    #[arg(long)]
    watch: bool,
    /// Refresh interval of --watch, in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..))]
    interval_ms: u64,
    /// With --watch: stop after this many refreshes.
    #[arg(long)]
    count: Option<u64>,
}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options {
        json,
        watch,
        interval_ms,
        count,
    } = opts;
    let maps = pin.open()?;
    let mut last = view::stats(&maps)?;
    if !watch {
        return if json {
            print_json(&last)
        } else {
            print(&last, None)
        };
    }
    let mut at = Instant::now();
    let mut n = 0;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(Duration::from_millis(interval_ms));
        let now = view::stats(&maps)?;
        let dt = at.elapsed();
        at = Instant::now();
        if json {
            print_json(&now)?;
        } else {
            print(&now, Some((&last, dt)))?;
        }
        last = now;
        n += 1;
    }
    Ok(())
}

fn print(s: &Stats, prev: Option<(&Stats, Duration)>) -> anyhow::Result<()> {
    let rate = |now: u64, before: u64| match prev {
        Some((_, dt)) => format!(" ({:.0}/s)", view::rate(now, before, dt)),
        None => String::new(),
    };
    // One line of traffic, with rates against the same entry of the previous refresh.
    let line = |t: &Traffic, before: Option<&Traffic>| {
        let before = before.cloned().unwrap_or_default();
        format!(
            "in {} pkts{} {} B, out {} pkts{} {} B",
            t.in_packets,
            rate(t.in_packets, before.in_packets),
            t.in_bytes,
            t.out_packets,
            rate(t.out_packets, before.out_packets),
            t.out_bytes
        )
    };
    println!("counters:");
    for (name, v) in s.counters.iter().filter(|(_, v)| **v != 0) {
        let before = prev
            .and_then(|(p, _)| p.counters.get(name).copied())
            .unwrap_or(0);
        println!("  {name:<24} {v}{}", rate(*v, before));
    }
    println!("vips:");
    for (i, v) in s.vips.iter().enumerate() {
        let before = prev.and_then(|(p, _)| p.vips.get(i)).map(|x| &x.traffic);
        let service = view::service_label(v.protocol, v.port);
        println!("  {} {service:<8} {}", v.address, line(&v.traffic, before));
    }
    println!("paths:");
    for (i, p) in s.paths.iter().enumerate() {
        let before = prev.and_then(|(x, _)| x.paths.get(i)).map(|x| &x.traffic);
        println!("  {}/{:<10} {}", p.target, p.path, line(&p.traffic, before));
    }
    Ok(())
}
