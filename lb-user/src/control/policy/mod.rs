//! Which path(s) of a target carry new flows: failover choice, active/active Maglev table, and
//! what to do when every path is down. Pure functions of the paths' state; no I/O.

use std::sync::Arc;

use crate::{
    config::{AllDown, Mode},
    control::health::Health,
};

/// What [`decide`] needs to know about one path of a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathView {
    pub id: u32,
    /// The configured name: hashed for the path's Maglev preferences (see [`maglev`]).
    pub name: String,
    /// Failover preference: lower is preferred.
    pub priority: u32,
    /// Active/active share (relative); 0 takes no share.
    pub weight: u32,
    /// `None`: no probe result yet.
    pub health: Option<Health>,
    /// Disabled (drained) by an operator.
    pub disabled: bool,
}

impl PathView {
    /// Known up and not disabled.
    pub fn usable(&self) -> bool {
        self.health == Some(Health::Up) && !self.disabled
    }
}

/// Where a target's new flows go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nowhere: dropped (counted by the datapath).
    None,
    /// All to this path id.
    Single(u32),
    /// By flow hash into this table of path ids (`lb_common::maps::RING_SIZE` slots). Shared, so
    /// keeping a previous decision is cheap; equality compares the contents.
    Ring(Arc<[u32]>),
}

/// The decision for one target, given its paths and the decision in force (`previous`, which
/// [`Mode::Failover`] without `preempt` and [`AllDown::LastKnown`] keep when they may).
///
/// - Failover: the usable path with the lowest priority (ties: the first name; never the id,
///   which differs between edges). Without `preempt`, a
///   previous `Single` path that is still usable keeps the traffic even when a preferred path
///   has come back.
/// - Active/active: a [`maglev`] table over the usable paths with a positive weight, by weight
///   (`preempt` does not apply). Always a `Ring`, even of one path, so the target's datapath mode
///   does not flip as paths come and go.
/// - No usable path: `Drop` gives `None`; `LastKnown` keeps the previous decision (failover: only
///   a `Single`), although its paths are down.
///
/// A disabled path is never chosen, not even by `LastKnown`: an operator's drain wins over
/// keeping traffic somewhere. `LastKnown` keeps only the previous paths that are still configured
/// and not disabled; a ring that loses some is rebuilt over the rest, and when none is left the
/// decision is `None`.
pub fn decide(
    mode: Mode,
    preempt: bool,
    all_down: AllDown,
    paths: &[PathView],
    previous: &Decision,
) -> Decision {
    let find = |id: u32| paths.iter().find(|p| p.id == id);
    match mode {
        Mode::Failover => {
            if !preempt
                && let Decision::Single(id) = previous
                && find(*id).is_some_and(PathView::usable)
            {
                return Decision::Single(*id);
            }
            let best = paths
                .iter()
                .filter(|p| p.usable())
                .min_by_key(|p| (p.priority, p.name.as_str()));
            match (best, all_down) {
                (Some(p), _) => Decision::Single(p.id),
                (None, AllDown::Drop) => Decision::None,
                (None, AllDown::LastKnown) => match previous {
                    Decision::Single(id) if find(*id).is_some_and(|p| !p.disabled) => {
                        Decision::Single(*id)
                    }
                    _ => Decision::None,
                },
            }
        }
        Mode::ActiveActive => {
            let up: Vec<&PathView> = paths.iter().filter(|p| p.usable()).collect();
            if let Some(ring) = ring(&up) {
                return ring;
            }
            match (all_down, previous) {
                (AllDown::Drop, _) | (AllDown::LastKnown, Decision::None) => Decision::None,
                (AllDown::LastKnown, Decision::Single(id)) => match find(*id) {
                    Some(p) if !p.disabled => Decision::Single(*id),
                    _ => Decision::None,
                },
                (AllDown::LastKnown, Decision::Ring(table)) => {
                    let kept: Vec<&PathView> = paths
                        .iter()
                        .filter(|p| !p.disabled && table.contains(&p.id))
                        .collect();
                    // `table` holds only ids it was built from: unchanged when all are kept.
                    let holds_only_kept = table.iter().all(|id| kept.iter().any(|p| p.id == *id));
                    if holds_only_kept {
                        previous.clone()
                    } else {
                        ring(&kept).unwrap_or(Decision::None)
                    }
                }
            }
        }
    }
}

/// A ring over `paths` by weight; `None` when none has a positive weight.
fn ring(paths: &[&PathView]) -> Option<Decision> {
    let backends: Vec<(u32, &str, u32)> = paths
        .iter()
        .map(|p| (p.id, p.name.as_str(), p.weight))
        .collect();
    let table = maglev(&backends, lb_common::maps::RING_SIZE as usize);
    (!table.is_empty()).then(|| Decision::Ring(table.into()))
}

/// A Maglev lookup table (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
/// Balancer", NSDI 2016, §3.4) of `size` slots holding the ids of `backends`, given as
/// `(path id, name, weight)`. Empty when no backend has a positive weight.
///
/// Each backend walks its own permutation of the slots (`offset + j × skip mod size`) and the
/// backends take turns claiming their next free slot until the table is full. Removing a backend
/// hands its slots to the others, whose own slots mostly stay put: a few move too (the paper's
/// "minimal disruption" is near-minimal, not minimal; the tests measure it).
///
/// - `offset` and `skip` come from a hash of the backend's *name*, not its id: names are stable
///   across restarts and configuration reloads, while ids are allocated and may be reused by
///   another path. The hash is FNV-1a with a fixed finaliser, written here so that the table
///   never changes with a library or compiler version (std's hasher promises neither).
/// - Weights follow Katran's weighted Maglev (`MaglevHashV2`): every round, each backend earns
///   its weight in credit and takes a turn when its credit reaches the largest weight (paying
///   that much), so the heaviest backend takes a turn every round and the others in proportion;
///   the shares come out within a slot or two of `size × weight / total`.
/// - Backends are sorted by name (then id, weight) first, so the table does not depend on the
///   input order.
/// - `size` must be prime (every `skip` is then coprime with it, so each permutation visits every
///   slot), and should be much larger than the number of backends.
pub fn maglev(backends: &[(u32, &str, u32)], size: usize) -> Vec<u32> {
    debug_assert!(is_prime(size), "maglev table size {size} is not prime");
    // (Also keeps `size - 1` below from being 0.)
    if size < 2 {
        return Vec::new();
    }
    let mut sorted: Vec<(u32, &str, u32)> = backends.iter().copied().filter(|b| b.2 > 0).collect();
    sorted.sort_by(|a, b| (a.1, a.0, a.2).cmp(&(b.1, b.0, b.2)));
    let Some(max_weight) = sorted.iter().map(|b| u64::from(b.2)).max() else {
        return Vec::new();
    };

    struct Walk {
        id: u32,
        weight: u64,
        offset: usize,
        skip: usize,
        /// How far along its permutation this backend is.
        next: usize,
        credit: u64,
    }
    let mut walks: Vec<Walk> = sorted
        .iter()
        .map(|&(id, name, weight)| {
            let h = fnv1a64(name.as_bytes());
            Walk {
                id,
                weight: u64::from(weight),
                // Both fit in usize: they are reduced modulo `size`, itself a usize.
                offset: (fmix64(h ^ OFFSET_SEED) % size as u64) as usize,
                skip: (fmix64(h ^ SKIP_SEED) % (size as u64 - 1)) as usize + 1,
                next: 0,
                credit: 0,
            }
        })
        .collect();

    let mut table: Vec<Option<u32>> = vec![None; size];
    let mut filled = 0;
    // Every round the heaviest backend takes a turn, and a turn fills a slot: this ends.
    while filled < size {
        for w in &mut walks {
            w.credit += w.weight;
            if w.credit < max_weight || filled == size {
                continue;
            }
            w.credit -= max_weight;
            // The next free slot along this backend's permutation. One is free (filled < size),
            // and with a prime size the permutation reaches it within `size` steps; the
            // fallback only keeps a non-prime size (a bug caught by the debug assertion) from
            // looping forever in a release build.
            let free = (0..size)
                .map(|_| {
                    let slot = (w.offset + (w.next % size) * w.skip) % size;
                    w.next += 1;
                    slot
                })
                .find(|&slot| table.get(slot).is_some_and(Option::is_none))
                .or_else(|| table.iter().position(Option::is_none));
            if let Some(entry) = free.and_then(|slot| table.get_mut(slot)) {
                *entry = Some(w.id);
                filled += 1;
            }
        }
    }
    table.into_iter().flatten().collect()
}

const OFFSET_SEED: u64 = 0x6f66_6673_6574_0001; // "offset"
const SKIP_SEED: u64 = 0x736b_6970_0000_0002; // "skip"

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The murmur3 64-bit finaliser: turns one FNV hash into two well-mixed, independent-looking
/// values (with different seeds) for `offset` and `skip`.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests;
