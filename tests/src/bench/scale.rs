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
//! **No flap**: the lab with the default probes (tcp, 100 ms × 3, rise 2), 5 % of the packets
//! through nn1's router dropped both ways ([`Failure::Loss`]) for 60 s (quick: 10 s); the
//! number of transitions of nn1 is the figure (aim 0).

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, ensure};
use lb_user::{
    config::Config,
    control::health::Health,
    control::model::Model,
    datapath::tables::{Tables, apply},
    datapath::{Dataplane, LoadOptions},
};
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use crate::{
    lab::{self, Failure, Lab},
    lb::{Daemon, active},
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
    /// The no-flap run: its length and the transitions of the lossy path.
    pub no_flap_s: u64,
    pub no_flap_loss_percent: u8,
    pub no_flap_transitions: u64,
    /// The log lines of the first few, for the reasons.
    pub no_flap_lines: Vec<String>,
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
    let (no_flap_s, loss, transitions, lines) = no_flap(quick).context("the no-flap run")?;
    Ok(Scale {
        targets: TARGETS,
        paths: PATHS,
        changes,
        decision_to_write_p50_us: us(at(0.5)),
        decision_to_write_p99_us: us(at(0.99)),
        decision_to_write_max_us: us(at(1.0)),
        writes_p50: writes[writes.len() / 2],
        no_flap_s,
        no_flap_loss_percent: loss,
        no_flap_transitions: transitions,
        no_flap_lines: lines,
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
