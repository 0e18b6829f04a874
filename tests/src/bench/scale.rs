//! The control plane at scale: how long a decision takes to reach the maps with 1,000 paths in
//! 256 targets, and whether a path with 5 % loss flaps.
//!
//! **Decision → map write** (in-process, real maps: `Dataplane::load`, unpinned). 256 targets,
//! half failover and half active/active, with 3 or 4 paths each (1,000 in all) and one service
//! VIP each. From all paths up, a path picked at random changes state (up → down, or back) 1,000
//! times (quick: 200); each time the daemon's own steps are timed: the target's decision
//! (`Model::decide`), the tables (`Model::tables`), and the planned, committed writes
//! (`tables::apply`). No packet is sent: the path addresses are configuration values only, from
//! 198.18.0.0/15 (RFC 2544's benchmarking range; the documentation ranges hold 768 addresses,
//! fewer than 1,000).
//!
//! **Probe lag at 1,000 paths** (in-process, the daemon's own pieces: [`ProbeThread`],
//! [`Prober`], [`PathProbe`], [`monitor`] with [`Schedule::for_probe`]): 1,000 paths probed by
//! ICMP every 10 ms (fall 3, adaptive timeout), that is over 100,000 probes a second on the
//! probe thread, for 10 s (quick: 3 s) after a second of warm-up; then the same every 20 ms. The addresses are 640 of the
//! documentation ranges (198.51.100.0/24, 203.0.113.0/24, 192.0.2.128/25, so some are probed by
//! two paths), answered by a second namespace through a veth, where they are local routes
//! (`ip route add local … dev lo`). The figure is how late each probe left after its place on
//! the grid (`lb_probe_lag_seconds`), p50, p99 and the worst, with the probes that failed and
//! the transitions (both should be 0).
//!
//! **No flap**: the lab with the default probes (tcp, 100 ms × 3, rise 2), 5 % of the packets
//! through nn1's router dropped both ways ([`Failure::Loss`]) for 60 s (quick: 10 s); the
//! number of transitions of nn1 is the figure (aim 0).

use std::{
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, ensure};
use lb_user::{
    config::{Config, ProbeKind},
    control::{
        health::{Event, Health, HealthTracker},
        model::Model,
        monitor::{Schedule, monitor},
    },
    datapath::{
        Dataplane, LoadOptions,
        tables::{Tables, apply},
    },
    probe::{PathProbe, ProbeSpec, Prober, thread::ProbeThread},
};
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use crate::{
    lab::{self, Failure, Lab},
    lb::{Daemon, active},
    netns::{self, Netns},
    servers,
};

#[derive(Clone, Debug, Serialize)]
pub struct Scale {
    pub targets: usize,
    pub paths: usize,
    pub changes: usize,
    /// Decision → map write, microseconds.
    pub decision_to_write_p50_us: f64,
    pub decision_to_write_p99_us: f64,
    pub decision_to_write_max_us: f64,
    /// Map entries written per change, median.
    pub writes_p50: usize,
    /// The probe lag at 1,000 paths, every 10 ms (the issue's figure) and every 20 ms.
    pub lag: Vec<ProbeLag>,
    /// The no-flap run: its length and the transitions of the lossy path.
    pub no_flap_s: u64,
    pub no_flap_loss_percent: u8,
    pub no_flap_transitions: u64,
    /// The log lines of the first few, for the reasons.
    pub no_flap_lines: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeLag {
    pub paths: usize,
    pub interval_ms: u64,
    pub seconds: u64,
    /// Probe results seen after the warm-up.
    pub probes: u64,
    pub failed: u64,
    pub transitions: u64,
    pub lag_p50_us: f64,
    pub lag_p99_us: f64,
    pub lag_max_us: f64,
}

const TARGETS: usize = 256;
const PATHS: usize = 1000;

/// 256 targets (even: failover, odd: active/active), 1,000 paths, a service VIP each.
fn config() -> String {
    let mut targets = Vec::new();
    let mut vips = Vec::new();
    let mut next = 0usize;
    for t in 0..TARGETS {
        // 1,000 = 256 × 3 + 232: the first 232 targets get a fourth path.
        let n = if t < PATHS - 3 * TARGETS { 4 } else { 3 };
        let paths: Vec<String> = (0..n)
            .map(|p| {
                let a = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + next as u32);
                next += 1;
                format!(
                    r#"{{ "name": "p{p}", "address": "{a}", "priority": {}, "weight": {} }}"#,
                    10 * (p + 1),
                    p + 1
                )
            })
            .collect();
        let mode = if t % 2 == 0 {
            "failover"
        } else {
            "active-active"
        };
        targets.push(format!(
            r#"{{ "name": "t{t}", "mode": "{mode}", "paths": [ {} ], "probe": {{ "type": "icmp", "interval_ms": 1000 }} }}"#,
            paths.join(", ")
        ));
        vips.push(format!(
            r#"{{ "address": "203.0.113.10", "protocol": "tcp", "port": {}, "target": "t{t}" }}"#,
            10_000 + t
        ));
    }
    format!(
        r#"{{ "interfaces": {{ "clients": ["eth0"], "paths": ["eth1"] }}, "targets": [ {} ], "vips": [ {} ] }}"#,
        targets.join(",\n"),
        vips.join(",\n")
    )
}

pub fn run(quick: bool) -> anyhow::Result<Scale> {
    let config = Config::from_json(&config()).context("the scale configuration")?;
    ensure!(
        config.targets.iter().map(|t| t.paths.len()).sum::<usize>() == PATHS,
        "{PATHS} paths"
    );
    let mut model = Model::new(config, &Model::empty()).context("fits the maps")?;
    for s in model.paths.values_mut() {
        s.health = Some(Health::Up);
    }
    model.decide_all();
    let mut dp = Dataplane::load(&LoadOptions {
        flow_table_size: None,
    })?;
    let mut current = Tables::default();
    let desired = model.tables();
    apply(&mut dp.maps, &current, &desired).context("the first write")?;
    current = desired;

    let paths: Vec<((String, String), u32)> = model
        .ids
        .paths
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let changes = if quick { 200 } else { 1000 };
    let mut took = Vec::with_capacity(changes);
    let mut writes = Vec::with_capacity(changes);
    for _ in 0..changes {
        let ((target, _), id) = &paths[rng.random_range(0..paths.len())];
        let s = model.paths.get_mut(id).context("a path's state")?;
        s.health = Some(match s.health {
            Some(Health::Up) => Health::Down,
            _ => Health::Up,
        });
        // What the daemon does for a transition (`Daemon::on_event`).
        let start = Instant::now();
        model.decide(target);
        let desired = model.tables();
        let n = apply(&mut dp.maps, &current, &desired).context("a change")?;
        took.push(start.elapsed());
        writes.push(n);
        current = desired;
    }
    took.sort();
    writes.sort();
    let at = |q: f64| took[((q * took.len() as f64).ceil() as usize).clamp(1, took.len()) - 1];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let lag = [10, 20]
        .into_iter()
        .map(|ms| {
            probe_lag(quick, Duration::from_millis(ms))
                .with_context(|| format!("the probe lag at 1,000 paths every {ms} ms"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (no_flap_s, loss, transitions, lines) = no_flap(quick).context("the no-flap run")?;
    Ok(Scale {
        targets: TARGETS,
        paths: PATHS,
        changes,
        decision_to_write_p50_us: us(at(0.5)),
        decision_to_write_p99_us: us(at(0.99)),
        decision_to_write_max_us: us(at(1.0)),
        writes_p50: writes[writes.len() / 2],
        lag,
        no_flap_s,
        no_flap_loss_percent: loss,
        no_flap_transitions: transitions,
        no_flap_lines: lines,
    })
}

/// 1,000 paths probed every `interval`: how late the probes leave (see the module notes).
fn probe_lag(quick: bool, interval: Duration) -> anyhow::Result<ProbeLag> {
    const FALL: u32 = 3;
    let warm_up = Duration::from_secs(1);
    let length = Duration::from_secs(if quick { 3 } else { 10 });
    let prober_ns = Netns::new(&netns::unique("lag-probe"))?;
    let far = Netns::new(&netns::unique("lag-far"))?;
    netns::veth(&prober_ns, "p0", &far, "p1")?;
    prober_ns.ip("addr add 192.0.2.1/32 dev p0")?;
    prober_ns.ip("route add 192.0.2.2/32 dev p0")?;
    far.ip("addr add 192.0.2.2/32 dev p1")?;
    far.ip("route add 192.0.2.1/32 dev p1")?;
    let ranges = [
        (Ipv4Addr::new(198, 51, 100, 0), 24, 256u32),
        (Ipv4Addr::new(203, 0, 113, 0), 24, 256),
        (Ipv4Addr::new(192, 0, 2, 128), 25, 128),
    ];
    let mut addresses = Vec::new();
    for (net, len, n) in ranges {
        far.ip(&format!("route add local {net}/{len} dev lo"))?;
        prober_ns.ip(&format!("route add {net}/{len} via 192.0.2.2 dev p0"))?;
        // Not the network and broadcast addresses of the /24s.
        addresses.extend(
            (0..n)
                .map(|i| Ipv4Addr::from(u32::from(net) + i))
                .filter(|a| {
                    let last = a.octets()[3];
                    !(len == 24 && (last == 0 || last == 255))
                }),
        );
    }
    let run = prober_ns.spawn(move || {
        let thread = ProbeThread::start()?;
        let prober = {
            let _on = thread.handle().enter();
            Arc::new(Prober::new()?)
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for id in 0..PATHS {
            let spec = ProbeSpec {
                kind: ProbeKind::Icmp,
                address: std::net::IpAddr::V4(addresses[id % addresses.len()]),
                source: None,
                interface: None,
                timeout: interval,
            };
            let path_probe = PathProbe::new(Arc::clone(&prober), spec, interval, None);
            let (_trigger_tx, trigger_rx) = tokio::sync::mpsc::channel(1);
            tasks.push(thread.handle().spawn(monitor(
                Schedule::for_probe(id as u32, 0, interval, None, FALL),
                move |cause| path_probe.probe(cause),
                HealthTracker::new(2, FALL, Some(Health::Up)),
                trigger_rx,
                tx.clone(),
            )));
        }
        let start = Instant::now();
        let (mut lags, mut probes, mut failed, mut transitions) = (Vec::new(), 0u64, 0u64, 0u64);
        // Bounded by the clock: the receiver is polled until the run's end.
        while start.elapsed() < warm_up + length {
            let Ok(Event::Probe {
                result,
                transition,
                lag,
                ..
            }) = rx.try_recv()
            else {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            };
            if start.elapsed() < warm_up {
                continue;
            }
            probes += 1;
            failed += u64::from(result.is_some_and(|r| !r.ok));
            transitions += u64::from(transition.is_some());
            lags.extend(lag);
        }
        for t in tasks {
            t.abort();
        }
        drop(thread);
        Ok((lags, probes, failed, transitions))
    });
    let (mut lags, probes, failed, transitions) = run
        .join()
        .map_err(|_| anyhow::anyhow!("the probe-lag run panicked"))??;
    ensure!(!lags.is_empty(), "no probe left on its grid");
    lags.sort();
    let at = |q: f64| lags[((q * lags.len() as f64).ceil() as usize).clamp(1, lags.len()) - 1];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    Ok(ProbeLag {
        paths: PATHS,
        interval_ms: interval.as_millis() as u64,
        seconds: length.as_secs(),
        probes,
        failed,
        transitions,
        lag_p50_us: us(at(0.5)),
        lag_p99_us: us(at(0.99)),
        lag_max_us: us(at(1.0)),
    })
}

/// The lab with 5 % loss on nn1 for a while: nn1's transitions.
fn no_flap(quick: bool) -> anyhow::Result<(u64, u8, u64, Vec<String>)> {
    const LOSS: u8 = 5;
    let length = Duration::from_secs(if quick { 10 } else { 60 });
    let lab = Lab::new()?;
    let _servers = servers::start(&lab.vm, lab::PORTS, [lab::NN1, lab::NN2])?;
    let daemon = Daemon::start(&lab.edge, &lab::config(100, 80, 2, 3, true), lab::XDP_HOOK)?;
    daemon.wait_status(Duration::from_secs(10), |s| {
        active(s, "web-vm").as_deref() == Some("nn1")
    })?;
    let before = transitions(&daemon)?;
    lab.fail(1, Failure::Loss(LOSS))?;
    std::thread::sleep(length);
    lab.heal(1, Failure::Loss(LOSS))?;
    let after = transitions(&daemon)?;
    let lines = daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("web-vm/nn1: up → down"))
        .take(5)
        .map(str::to_owned)
        .collect();
    Ok((length.as_secs(), LOSS, after.saturating_sub(before), lines))
}

/// The daemon's log lines of nn1 changing state.
fn transitions(daemon: &Daemon) -> anyhow::Result<u64> {
    Ok(daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("web-vm/nn1: up → down") || l.contains("web-vm/nn1: down → up"))
        .count() as u64)
}
