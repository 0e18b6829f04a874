//! A path failure under established TCP connections, with and without the guest agent (`lb
//! guest run`) in the VM: the scenario of `crate::seamless` (52 connections: 40 chatty, 10
//! idle, a paced transfer, iperf3; nn1 blackholed, then healed) on plain veths as a user builds
//! them and the default hook. Per round: the connections reset, and the paced transfer's
//! longest stall across the failover (only meaningful with the agent: without it, the transfer
//! is reset).

use std::time::Duration;

use crate::{
    lab::Veths,
    seamless::{self, Options},
};

/// One round.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Round {
    pub agent: bool,
    pub preempt: bool,
    pub connections: usize,
    pub reset: usize,
    /// How the reset ones failed (the first few).
    pub how: Vec<String>,
    pub transfer_intact: bool,
    pub longest_stall_ms: f64,
    pub agent_counters: Option<serde_json::Value>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Seamless {
    pub rounds: Vec<Round>,
}

impl Seamless {
    /// Connections reset over the rounds with (`true`) or without the agent, of how many.
    pub fn reset(&self, agent: bool) -> (usize, usize) {
        self.rounds
            .iter()
            .filter(|r| r.agent == agent)
            .fold((0, 0), |(r, n), x| (r + x.reset, n + x.connections))
    }

    /// The longest stalls of the rounds with the agent, in ms.
    pub fn stalls_ms(&self) -> Vec<f64> {
        self.rounds
            .iter()
            .filter(|r| r.agent)
            .map(|r| r.longest_stall_ms)
            .collect()
    }
}

/// `quick`: one round with the agent (preempt) and one without; else with the agent three
/// rounds each with and without preempt, and two without it.
pub fn run(quick: bool) -> anyhow::Result<Seamless> {
    let plan: Vec<(bool, bool)> = if quick {
        vec![(true, true), (false, true)]
    } else {
        let mut p = vec![(true, true); 3];
        p.extend([(true, false); 3]);
        p.extend([(false, true); 2]);
        p
    };
    let mut rounds = Vec::with_capacity(plan.len());
    for (agent, preempt) in plan {
        let r = seamless::run(Options::new(Veths::Plain, preempt, agent))?;
        eprintln!("{}", seamless::describe(&r));
        rounds.push(Round {
            agent,
            preempt,
            connections: r.connections,
            reset: r.reset.len(),
            how: r.reset.iter().take(5).cloned().collect(),
            transfer_intact: r.transfer.error.is_none()
                && r.transfer.echoed == r.options.transfer_bytes,
            longest_stall_ms: as_ms(r.transfer.longest_stall),
            agent_counters: r.agent_counters,
        });
    }
    Ok(Seamless { rounds })
}

fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
