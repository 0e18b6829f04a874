//! `lb stats`: counters per verdict and reason, per VIP and per path.

use std::time::{Duration, Instant};

use lb_user::view::{self, Stats};

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
    let rate = |now: u64, f: &dyn Fn(&Stats) -> u64| match prev {
        Some((p, dt)) => format!(" ({:.0}/s)", view::rate(now, f(p), dt)),
        None => String::new(),
    };
    println!("counters:");
    for (name, v) in s.counters.iter().filter(|(_, v)| **v != 0) {
        let name = *name;
        println!(
            "  {name:<24} {v}{}",
            rate(*v, &|p: &Stats| p.counters.get(name).copied().unwrap_or(0))
        );
    }
    println!("vips:");
    for (i, v) in s.vips.iter().enumerate() {
        let service = match (v.protocol, v.port) {
            (Some(proto), Some(port)) => format!("{proto}/{port}"),
            _ => "all".into(),
        };
        let t = &v.traffic;
        println!(
            "  {} {service:<8} in {} pkts{} {} B, out {} pkts{} {} B",
            v.address,
            t.in_packets,
            rate(t.in_packets, &|p: &Stats| p
                .vips
                .get(i)
                .map_or(0, |x| x.traffic.in_packets)),
            t.in_bytes,
            t.out_packets,
            rate(t.out_packets, &|p: &Stats| p
                .vips
                .get(i)
                .map_or(0, |x| x.traffic.out_packets)),
            t.out_bytes
        );
    }
    println!("paths:");
    for (i, p) in s.paths.iter().enumerate() {
        let t = &p.traffic;
        println!(
            "  {}/{:<10} in {} pkts{} {} B, out {} pkts{} {} B",
            p.target,
            p.path,
            t.in_packets,
            rate(t.in_packets, &|s: &Stats| s
                .paths
                .get(i)
                .map_or(0, |x| x.traffic.in_packets)),
            t.in_bytes,
            t.out_packets,
            rate(t.out_packets, &|s: &Stats| s
                .paths
                .get(i)
                .map_or(0, |x| x.traffic.out_packets)),
            t.out_bytes
        );
    }
    Ok(())
}
