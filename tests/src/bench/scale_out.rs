//! Several edges: what an edge failure costs the flows that crossed it. On the scale-out
//! topology (`crate::edges`: two edges with BIRD, BGP and BFD, ECMP upstream), edge 1 fails
//! each way ([`EdgeFailure::ALL`]) while TCP connections are busy and UDP flows stream, then
//! comes back: the worst UDP outage, the connections reset, the time the edge takes to leave
//! and to rejoin the ECMP group.

use crate::edges::{EdgeFailure, Edges, Round, ScaleOut};

/// Every round of every failure kind.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Figures {
    pub rounds: Vec<Round>,
}

impl Figures {
    /// The rounds of `kind`.
    pub fn of(&self, kind: EdgeFailure) -> impl Iterator<Item = &Round> {
        self.rounds.iter().filter(move |r| r.failure == kind.name())
    }
}

/// `quick`: one round per kind; else three.
pub fn run(quick: bool) -> anyhow::Result<Figures> {
    let rig = ScaleOut::start(Edges::new()?)?;
    let per_kind = if quick { 1 } else { 3 };
    let mut rounds = Vec::new();
    for kind in EdgeFailure::ALL {
        for _ in 0..per_kind {
            rounds.push(rig.failure_round(kind, 64, 16)?);
        }
    }
    Ok(Figures { rounds })
}
