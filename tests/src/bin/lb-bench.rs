//! `lb-bench`: the measurements behind `cargo xtask bench` (which builds and runs it as root).
//!
//! `lb-bench [--quick] [--json FILE] [--svg FILE] [--only cost|throughput|bulk|outage|scale|scale-out|seamless]`
//!
//! Prints a table per part and the headline ratios; `--json` writes every figure, with the
//! keys under `ratios`, `failover`, `loss`, `scale_out` and `seamless` that runs are compared on. Targets (not
//! assertions): see docs/BENCHMARKS.md.

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use lb_tests::bench::{Spread, bulk, cost, outage, scale, scale_out, seamless, throughput};
use serde_json::json;

struct Args {
    quick: bool,
    json: Option<PathBuf>,
    svg: PathBuf,
    only: Option<String>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        quick: false,
        json: None,
        svg: PathBuf::from("docs/failover.svg"),
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--json" => a.json = Some(it.next().context("--json FILE")?.into()),
            "--svg" => a.svg = it.next().context("--svg FILE")?.into(),
            "--only" => {
                a.only = Some(
                    it.next()
                        .context("--only cost|throughput|bulk|outage|scale|scale-out|seamless")?,
                )
            }
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(a)
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let a = args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF, network namespaces); run it through `cargo xtask bench`");
    }
    let wants = |part: &str| a.only.as_deref().is_none_or(|o| o == part);
    let mut out = json!({
        "quick": a.quick, "ratios": {}, "failover": {}, "loss": {}, "scale_out": {}, "seamless": {}
    });

    if wants("cost") {
        println!("== per-packet cost (BPF_PROG_TEST_RUN) ==");
        let c = cost::run(a.quick).context("per-packet cost")?;
        println!(
            "repeat {} × {} rounds, best round; floor (empty program) {:.1} ns (median {:.1}, max {:.1}); restore overhead {:.1} ns subtracted",
            c.repeat,
            c.rounds,
            c.floor_ns.min,
            c.floor_ns.median,
            c.floor_ns.max,
            c.restore_ns.min - c.floor_ns.min
        );
        println!(
            "{:<34} {:>9} {:>9} {:>9} {:>17}",
            "case", "ns/pkt", "× floor", "× NAT ref", "raw best [median–max]"
        );
        for case in [
            &c.nat_ref,
            &c.ingress_hit,
            &c.ingress_new,
            &c.non_vip,
            &c.return_hit,
            &c.ingress_hit6,
            &c.return_hit6,
        ]
        .into_iter()
        .chain(c.flow_scale.iter().map(|(_, c)| c))
        .chain(c.after_change.iter().map(|(_, c)| c))
        {
            let vs_ref = case
                .vs_nat_ref
                .map_or("-".to_owned(), |r| format!("{r:.2}"));
            println!(
                "{:<34} {:>9.1} {:>9.2} {:>9} {:>8.1} [{:.1}–{:.1}]",
                case.name,
                case.ns,
                case.vs_floor,
                vs_ref,
                case.raw_ns.min,
                case.raw_ns.median,
                case.raw_ns.max
            );
        }
        let first = c.flow_scale.first().map(|(_, x)| x.ns);
        let last = c.flow_scale.last().map(|(n, x)| (*n, x.ns));
        out["ratios"]["ingress_hit_vs_floor"] = json!(c.ingress_hit.vs_floor);
        out["ratios"]["ingress_new_vs_floor"] = json!(c.ingress_new.vs_floor);
        out["ratios"]["non_vip_vs_floor"] = json!(c.non_vip.vs_floor);
        out["ratios"]["return_vs_floor"] = json!(c.return_hit.vs_floor);
        out["ratios"]["nat_ref_vs_floor"] = json!(c.nat_ref.vs_floor);
        out["ratios"]["ingress_hit_vs_nat_ref"] = json!(c.ingress_hit.vs_nat_ref);
        out["ratios"]["ingress_new_vs_nat_ref"] = json!(c.ingress_new.vs_nat_ref);
        out["ratios"]["return_vs_nat_ref"] = json!(c.return_hit.vs_nat_ref);
        out["ratios"]["ipv6_ingress_hit_vs_ipv4"] = json!(c.ingress_hit6.ns / c.ingress_hit.ns);
        out["ratios"]["ipv6_return_vs_ipv4"] = json!(c.return_hit6.ns / c.return_hit.ns);
        if let (Some(first), Some((n, last))) = (first, last) {
            let key = if n >= 1_000_000 {
                "flows_1m_vs_1k"
            } else {
                "flows_100k_vs_1k"
            };
            out["ratios"][key] = json!(last / first);
        }
        if let (Some((_, first)), Some((n, last))) = (c.after_change.first(), c.after_change.last())
        {
            let key = if *n >= 1_000_000 {
                "flows_1m_after_change_vs_1k"
            } else {
                "flows_100k_after_change_vs_1k"
            };
            out["ratios"][key] = json!(last.ns / first.ns);
            out["ratios"]["flows_1k_after_change_vs_steady"] =
                json!(first.ns / c.flow_scale.first().map_or(f64::NAN, |(_, x)| x.ns));
        }
        out["cost"] = serde_json::to_value(&c)?;
    }
    if wants("throughput") {
        println!("\n== forwarding throughput on the veth lab (64-byte UDP, live frames) ==");
        let t = throughput::run(a.quick).context("throughput")?;
        println!("{:<40} {:>12}", "edge does", "Mpps");
        println!(
            "{:<40} {:>12.3}",
            "bare XDP_REDIRECT (the rig's ceiling)",
            t.redirect_pps / 1e6
        );
        println!(
            "{:<40} {:>12.3}",
            "lb (XDP DNAT, flows, FIB, redirect)",
            t.xdp_pps / 1e6
        );
        println!(
            "{:<40} {:>12.3}",
            "lb at the TC hook (--hook tc)",
            t.tc_pps / 1e6
        );
        println!(
            "{:<40} {:>12.3}",
            "lb, IPv6 (XDP, 72-byte frames)",
            t.xdp6_pps / 1e6
        );
        println!(
            "{:<40} {:>12.3}",
            "kernel forwarding + nftables DNAT",
            t.nft_pps / 1e6
        );
        out["ratios"]["xdp_vs_nft_throughput"] = json!(t.xdp_pps / t.nft_pps);
        out["ratios"]["xdp_vs_redirect_ceiling"] = json!(t.xdp_pps / t.redirect_pps);
        out["ratios"]["tc_vs_nft_throughput"] = json!(t.tc_pps / t.nft_pps);
        out["ratios"]["ipv6_vs_ipv4_throughput"] = json!(t.xdp6_pps / t.xdp_pps);
        out["throughput"] = serde_json::to_value(&t)?;
    }
    if wants("bulk") {
        println!("\n== bulk TCP through the VIP (iperf3, plain veths) ==");
        let b = bulk::run(a.quick).context("bulk TCP")?;
        println!(
            "{:<40} {:>14} {:>14}   ({} s each way)",
            "edge", "client→VM Gb/s", "VM→client Gb/s", b.seconds
        );
        for r in &b.rows {
            println!(
                "{:<40} {:>14.2} {:>14.2}",
                r.edge, r.forward_gbps, r.reverse_gbps
            );
        }
        let mean = |r: &bulk::Row| (r.forward_gbps + r.reverse_gbps) / 2.0;
        if let (Some(auto), Some(xdp), Some(nft)) = (
            b.row("lb --hook auto (tc on veths)"),
            b.row("lb --hook xdp"),
            b.row("kernel forwarding + nftables DNAT"),
        ) {
            out["ratios"]["tcp_bulk_vs_nft"] = json!(mean(auto) / mean(nft));
            out["ratios"]["tcp_bulk_xdp_vs_nft"] = json!(mean(xdp) / mean(nft));
        }
        out["bulk"] = serde_json::to_value(&b)?;
    }
    if wants("outage") {
        println!("\n== failover outage, restart and reload (UDP stream through the lab) ==");
        let o = outage::run(a.quick, &a.svg).context("outage")?;
        println!(
            "{:<12} {:>4} {:>10} {:>11} {:>11} {:>6} {:>22}",
            "profile",
            "runs",
            "budget ms",
            "worst ms",
            "median ms",
            "lost",
            "decision→map write µs"
        );
        for p in &o.profiles {
            println!(
                "{:<12} {:>4} {:>10.1} {:>11.1} {:>11.1} {:>6} {:>22.1}",
                p.name,
                p.runs.len(),
                p.budget_ms,
                p.worst_outage_ms,
                p.median_outage_ms,
                p.lost,
                p.decision_to_write_us
            );
            out["failover"][p.name.as_str()] = json!({
                "worst_outage_ms": p.worst_outage_ms,
                "median_outage_ms": p.median_outage_ms,
                "budget_ms": p.budget_ms,
                "runs": p.runs.len(),
            });
        }
        if let Some(p) = o
            .profiles
            .iter()
            .find(|p| p.passive && p.traffic == outage::Traffic::Udp)
        {
            out["failover"]["passive_outage_ms"] = json!(p.median_outage_ms);
            out["failover"]["passive_worst_outage_ms"] = json!(p.worst_outage_ms);
        }
        if let Some(p) = o
            .profiles
            .iter()
            .find(|p| p.passive && p.traffic == outage::Traffic::Tcp)
        {
            out["failover"]["passive_tcp_outage_ms"] = json!(p.median_outage_ms);
            out["failover"]["passive_tcp_worst_outage_ms"] = json!(p.worst_outage_ms);
        }
        println!(
            "packets lost across a daemon restart: {}; across a reload: {}",
            o.restart_lost, o.reload_lost
        );
        println!("timeline: {}", a.svg.display());
        // The headline profile: the aggressive one.
        if let Some(p) = o.profiles.iter().find(|p| p.name == "aggressive") {
            out["failover"]["outage_ms"] = json!(p.outage_ms);
            out["failover"]["worst_outage_ms"] = json!(p.worst_outage_ms);
            out["failover"]["median_outage_ms"] = json!(p.median_outage_ms);
            out["failover"]["budget_ms"] = json!(p.budget_ms);
            out["failover"]["lost_packets"] = json!(p.lost);
            out["failover"]["decision_to_write_us"] = json!(p.decision_to_write_us);
            out["failover"]["profile"] = json!(p.name);
        }
        out["loss"]["restart_packets"] = json!(o.restart_lost);
        out["loss"]["reload_packets"] = json!(o.reload_lost);
        out["outage"] = serde_json::to_value(&o)?;
    }
    if wants("scale") {
        println!("\n== the control plane at scale ==");
        let sc = scale::run(a.quick).context("scale")?;
        println!(
            "decision → map write, {} paths in {} targets, {} changes: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs ({} entries written, median)",
            sc.paths,
            sc.targets,
            sc.changes,
            sc.decision_to_write_p50_us,
            sc.decision_to_write_p99_us,
            sc.decision_to_write_max_us,
            sc.writes_p50
        );
        for l in &sc.lag {
            println!(
                "probe lag, {} paths every {} ms for {} s ({} probes, {} failed, {} transitions): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
                l.paths,
                l.interval_ms,
                l.seconds,
                l.probes,
                l.failed,
                l.transitions,
                l.lag_p50_us,
                l.lag_p99_us,
                l.lag_max_us
            );
        }
        println!(
            "transitions of a path with {} % loss over {} s (probes 100 ms × 3): {}",
            sc.no_flap_loss_percent, sc.no_flap_s, sc.no_flap_transitions
        );
        for line in &sc.no_flap_lines {
            println!("  {line}");
        }
        out["failover"]["decision_to_write_1000_paths_p50_us"] = json!(sc.decision_to_write_p50_us);
        out["failover"]["decision_to_write_1000_paths_p99_us"] = json!(sc.decision_to_write_p99_us);
        out["failover"]["lossy_path_transitions"] = json!(sc.no_flap_transitions);
        for l in &sc.lag {
            out["failover"][format!("probe_lag_1000_paths_{}ms_p99_us", l.interval_ms)] =
                json!(l.lag_p99_us);
        }
        out["scale"] = serde_json::to_value(&sc)?;
    }
    if wants("scale-out") {
        println!(
            "\n== several edges: an edge failing under traffic (BGP, BFD 100 ms × 3, ECMP) =="
        );
        let so = scale_out::run(a.quick).context("scale-out")?;
        for r in &so.rounds {
            println!(
                "edge 1 {:<6} left the ECMP group in {:>6.1} ms; UDP worst outage {:>5.1} ms ({} of {} flows went through edge 1, {} lost anything); TCP: {} of {} connections reset; back {:>6.0} ms after the heal",
                r.failure,
                r.left_ms,
                r.udp_worst_outage_ms,
                r.udp_flows_via_edge1,
                r.udp_flows,
                r.udp_flows_lossy,
                r.tcp_failed.len(),
                r.tcp_connections,
                r.back_ms
            );
        }
        for kind in lb_tests::edges::EdgeFailure::ALL {
            let worst = so
                .of(kind)
                .map(|r| r.udp_worst_outage_ms)
                .fold(0.0, f64::max);
            let reset: usize = so.of(kind).map(|r| r.tcp_failed.len()).sum();
            out["scale_out"]["edge_outage_ms"][kind.name()] = json!(worst);
            out["scale_out"]["tcp_reset"][kind.name()] = json!(reset);
        }
        out["scale_out"]["rounds"] = serde_json::to_value(&so.rounds)?;
    }
    if wants("seamless") {
        println!(
            "\n== a path failing under established TCP connections, with and without the guest agent (plain veths) =="
        );
        let sm = seamless::run(a.quick).context("seamless")?;
        for r in &sm.rounds {
            println!(
                "agent {:<5} preempt {:<5}: {:>2} of {} connections reset; paced transfer {}, longest stall {:>6.1} ms",
                r.agent,
                r.preempt,
                r.reset,
                r.connections,
                if r.transfer_intact {
                    "intact"
                } else {
                    "failed"
                },
                r.longest_stall_ms
            );
        }
        let (with, of_with) = sm.reset(true);
        let (without, of_without) = sm.reset(false);
        let stall = Spread::of(&sm.stalls_ms());
        println!(
            "reset with the agent {with} of {of_with}, without {without} of {of_without}; stall with the agent median {:.1} ms (min {:.1}, max {:.1})",
            stall.median, stall.min, stall.max
        );
        out["seamless"]["tcp_reset_with_agent"] = json!(with);
        out["seamless"]["tcp_reset_without_agent"] = json!(without);
        out["seamless"]["connections_with_agent"] = json!(of_with);
        out["seamless"]["connections_without_agent"] = json!(of_without);
        out["seamless"]["stall_ms"] = serde_json::to_value(stall)?;
        out["seamless"]["rounds"] = serde_json::to_value(&sm.rounds)?;
    }
    println!("\nratios: {}", serde_json::to_string(&out["ratios"])?);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("written: {}", path.display());
    }
    Ok(())
}
