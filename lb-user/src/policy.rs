//! Which path(s) of a target carry new flows: failover choice, active/active Maglev table, and
//! what to do when every path is down. Pure functions of the paths' state; no I/O.

use std::sync::Arc;

use crate::{
    config::{AllDown, Mode},
    health::Health,
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
/// - Failover: the usable path with the lowest priority (ties: lowest id). Without `preempt`, a
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
                .min_by_key(|p| (p.priority, p.id));
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
mod tests {
    use lb_common::maps::RING_SIZE;

    use super::*;

    const SIZE: usize = RING_SIZE as usize;
    const UP: Option<Health> = Some(Health::Up);
    const DOWN: Option<Health> = Some(Health::Down);

    fn path(id: u32, name: &str, priority: u32, weight: u32, health: Option<Health>) -> PathView {
        PathView {
            id,
            name: name.into(),
            priority,
            weight,
            health,
            disabled: false,
        }
    }

    fn disabled(mut p: PathView) -> PathView {
        p.disabled = true;
        p
    }

    fn failover(preempt: bool, all_down: AllDown, paths: &[PathView], prev: &Decision) -> Decision {
        decide(Mode::Failover, preempt, all_down, paths, prev)
    }

    fn active(all_down: AllDown, paths: &[PathView], prev: &Decision) -> Decision {
        decide(Mode::ActiveActive, false, all_down, paths, prev)
    }

    fn count(table: &[u32], id: u32) -> usize {
        table.iter().filter(|&&t| t == id).count()
    }

    // ---- Failover. ----

    #[test]
    fn failover_picks_the_usable_path_with_the_lowest_priority() {
        let paths = [
            path(1, "a", 10, 1, UP),
            path(2, "b", 5, 1, UP),
            path(3, "c", 1, 1, DOWN),
            path(4, "d", 0, 1, None), // unknown is not usable
        ];
        for preempt in [true, false] {
            for all_down in [AllDown::Drop, AllDown::LastKnown] {
                let d = failover(preempt, all_down, &paths, &Decision::None);
                assert_eq!(d, Decision::Single(2));
            }
        }
    }

    #[test]
    fn failover_ties_go_to_the_lowest_id() {
        let paths = [path(5, "e", 1, 1, UP), path(3, "c", 1, 1, UP)];
        assert_eq!(
            failover(true, AllDown::Drop, &paths, &Decision::None),
            Decision::Single(3)
        );
    }

    #[test]
    fn failover_with_preempt_a_recovered_preferred_path_takes_over() {
        // `a` was down, so `b` carried the traffic; `a` is back.
        let paths = [path(1, "a", 1, 1, UP), path(2, "b", 2, 1, UP)];
        let d = failover(true, AllDown::Drop, &paths, &Decision::Single(2));
        assert_eq!(d, Decision::Single(1));
    }

    #[test]
    fn failover_without_preempt_stays_until_the_current_path_fails() {
        let mut paths = [path(1, "a", 1, 1, UP), path(2, "b", 2, 1, UP)];
        let d = failover(false, AllDown::Drop, &paths, &Decision::Single(2));
        assert_eq!(d, Decision::Single(2));
        paths[1].health = DOWN;
        let d = failover(false, AllDown::Drop, &paths, &d);
        assert_eq!(d, Decision::Single(1));
        // A previous decision on a path no longer configured is not kept either.
        let d = failover(false, AllDown::Drop, &paths, &Decision::Single(9));
        assert_eq!(d, Decision::Single(1));
    }

    #[test]
    fn failover_all_down_drop_gives_none() {
        let paths = [path(1, "a", 1, 1, DOWN), path(2, "b", 2, 1, None)];
        for prev in [Decision::None, Decision::Single(1)] {
            assert_eq!(
                failover(false, AllDown::Drop, &paths, &prev),
                Decision::None
            );
        }
    }

    #[test]
    fn failover_all_down_last_known_keeps_the_previous_single() {
        let paths = [path(1, "a", 1, 1, DOWN), path(2, "b", 2, 1, DOWN)];
        let last = AllDown::LastKnown;
        assert_eq!(
            failover(true, last, &paths, &Decision::Single(2)),
            Decision::Single(2)
        );
        assert_eq!(
            failover(true, last, &paths, &Decision::None),
            Decision::None
        );
        let ring = Decision::Ring(vec![1; SIZE].into());
        assert_eq!(failover(true, last, &paths, &ring), Decision::None);
        // A path removed from the configuration is not kept.
        assert_eq!(
            failover(true, last, &paths, &Decision::Single(9)),
            Decision::None
        );
    }

    #[test]
    fn failover_never_chooses_a_disabled_path() {
        // The preferred, current path is drained: traffic moves even without preempt.
        let paths = [disabled(path(1, "a", 1, 1, UP)), path(2, "b", 2, 1, UP)];
        for preempt in [true, false] {
            let d = failover(preempt, AllDown::Drop, &paths, &Decision::Single(1));
            assert_eq!(d, Decision::Single(2));
        }
        // All down: last-known does not keep a drained path.
        let paths = [disabled(path(1, "a", 1, 1, DOWN)), path(2, "b", 2, 1, DOWN)];
        let d = failover(false, AllDown::LastKnown, &paths, &Decision::Single(1));
        assert_eq!(d, Decision::None);
        // Only disabled paths, all up: nothing.
        let paths = [disabled(path(1, "a", 1, 1, UP))];
        let d = failover(false, AllDown::LastKnown, &paths, &Decision::Single(1));
        assert_eq!(d, Decision::None);
    }

    // ---- Active/active. ----

    fn ids(d: &Decision) -> Vec<u32> {
        let Decision::Ring(table) = d else {
            panic!("not a ring: {d:?}");
        };
        assert_eq!(table.len(), SIZE);
        let mut ids = table.to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    #[test]
    fn active_active_rings_the_usable_paths_only() {
        let paths = [
            path(1, "a", 0, 1, UP),
            path(2, "b", 0, 1, DOWN),
            path(3, "c", 0, 1, None),
            disabled(path(4, "d", 0, 1, UP)),
            path(5, "e", 0, 0, UP), // weight 0: no share
            path(6, "f", 0, 2, UP),
        ];
        let d = active(AllDown::Drop, &paths, &Decision::None);
        assert_eq!(ids(&d), [1, 6]);
        // One usable path is still a ring, so the datapath mode does not flip.
        let d = active(AllDown::Drop, &paths[..2], &Decision::None);
        assert_eq!(ids(&d), [1]);
    }

    #[test]
    fn active_active_all_down() {
        let mut paths = vec![
            path(1, "a", 0, 1, UP),
            path(2, "b", 0, 1, UP),
            path(3, "c", 0, 1, UP),
        ];
        let before = active(AllDown::Drop, &paths, &Decision::None);
        for p in &mut paths {
            p.health = DOWN;
        }
        assert_eq!(active(AllDown::Drop, &paths, &before), Decision::None);

        // Last-known keeps the very table (no copy)...
        let kept = active(AllDown::LastKnown, &paths, &before);
        let (Decision::Ring(a), Decision::Ring(b)) = (&before, &kept) else {
            panic!("rings expected");
        };
        assert!(Arc::ptr_eq(a, b));
        // ... or a single path, or nothing.
        let single = active(AllDown::LastKnown, &paths, &Decision::Single(2));
        assert_eq!(single, Decision::Single(2));
        assert_eq!(
            active(AllDown::LastKnown, &paths, &Decision::None),
            Decision::None
        );

        // A drained path leaves the kept ring, which is rebuilt over the others.
        paths[1].disabled = true;
        let kept = active(AllDown::LastKnown, &paths, &before);
        let expected = maglev(&[(1, "a", 1), (3, "c", 1)], SIZE);
        assert_eq!(kept, Decision::Ring(expected.into()));
        let single = active(AllDown::LastKnown, &paths, &Decision::Single(2));
        assert_eq!(single, Decision::None);
        // Every previous path drained: nothing.
        paths[0].disabled = true;
        paths[2].disabled = true;
        assert_eq!(active(AllDown::LastKnown, &paths, &before), Decision::None);
    }

    #[test]
    fn decisions_do_not_depend_on_the_order_of_the_paths() {
        let paths = vec![
            path(1, "a", 3, 1, UP),
            path(2, "b", 1, 2, UP),
            path(3, "c", 1, 3, UP),
            path(4, "d", 0, 4, DOWN),
        ];
        let mut reversed = paths.clone();
        reversed.reverse();
        for mode in [Mode::Failover, Mode::ActiveActive] {
            let a = decide(mode, true, AllDown::Drop, &paths, &Decision::None);
            let b = decide(mode, true, AllDown::Drop, &reversed, &Decision::None);
            assert_eq!(a, b, "{mode:?}");
        }
    }

    // ---- Maglev. ----

    /// Paths `p0`, `p1`, ... with ids 100, 101, ... and the given weights.
    fn backends(weights: &[u32]) -> Vec<(u32, String, u32)> {
        (0u32..)
            .zip(weights)
            .map(|(i, &w)| (100 + i, format!("p{i}"), w))
            .collect()
    }

    fn table(backends: &[(u32, String, u32)]) -> Vec<u32> {
        let refs: Vec<(u32, &str, u32)> = backends
            .iter()
            .map(|(id, name, w)| (*id, name.as_str(), *w))
            .collect();
        maglev(&refs, SIZE)
    }

    #[test]
    fn maglev_fills_every_slot_with_a_given_id() {
        let b = backends(&[1, 1, 1, 1, 1]);
        let t = table(&b);
        assert_eq!(t.len(), SIZE);
        assert!(t.iter().all(|id| (100..105).contains(id)));
        assert!(maglev(&[], SIZE).is_empty());
        assert!(maglev(&[(1, "a", 0)], SIZE).is_empty());
        assert_eq!(maglev(&[(1, "a", 1)], SIZE), vec![1; SIZE]);
    }

    #[test]
    fn maglev_respects_weights_within_one_percent() {
        for weights in [
            &[1, 2, 3][..],
            &[1, 1, 1, 1, 1],
            &[10, 1],
            &[5, 3, 2, 7, 1, 1],
        ] {
            let b = backends(weights);
            let t = table(&b);
            let total: u32 = weights.iter().sum();
            for (id, _, w) in &b {
                let ideal = SIZE as f64 * f64::from(*w) / f64::from(total);
                let got = count(&t, *id) as f64;
                let error = (got - ideal).abs() / ideal;
                println!(
                    "weights {weights:?}: p{} {got} slots, ideal {ideal:.1}, error {:.3}%",
                    id - 100,
                    error * 100.0
                );
                assert!(error <= 0.01, "weight {w}: {got} slots, ideal {ideal:.1}");
            }
        }
    }

    /// Slots that changed path, and how many of them did not belong to `gone` (when given).
    fn moved(before: &[u32], after: &[u32], gone: Option<u32>) -> (usize, usize) {
        let changed = before.iter().zip(after).filter(|(b, a)| b != a);
        let all = changed.clone().count();
        let others = changed.filter(|(b, _)| Some(**b) != gone).count();
        (all, others)
    }

    #[test]
    fn maglev_removing_a_path_moves_little_more_than_its_slots() {
        let mut worst_extra: f64 = 0.0;
        for weights in [
            &[1, 1, 1][..],
            &[1; 5],
            &[1; 10],
            &[1, 2, 3],
            &[4, 1, 1, 2, 8],
        ] {
            let all = backends(weights);
            let before = table(&all);
            for removed in 0..all.len() {
                let mut rest = all.clone();
                let (gone, _, _) = rest.remove(removed);
                let after = table(&rest);
                assert!(!after.contains(&gone));
                let share = count(&before, gone) as f64 / SIZE as f64;
                let (total, others) = moved(&before, &after, Some(gone));
                let fraction = total as f64 / SIZE as f64;
                let extra = others as f64 / SIZE as f64;
                worst_extra = worst_extra.max(extra);
                println!(
                    "weights {weights:?} without p{removed}: share {:.2}%, moved {:.2}% \
                     ({others} other slots, {:.2}%)",
                    share * 100.0,
                    fraction * 100.0,
                    extra * 100.0
                );
                assert!(fraction <= share + 0.02, "moved {fraction}, share {share}");
            }
        }
        println!("worst extra disruption: {:.2}%", worst_extra * 100.0);
    }

    #[test]
    fn maglev_adding_a_path_takes_about_its_share() {
        for n in [2, 4, 9] {
            let all = backends(&vec![1; n + 1]);
            let before = table(&all[..n]);
            let after = table(&all);
            let (new, _, _) = all[n];
            let share = count(&after, new) as f64 / SIZE as f64;
            let ideal = 1.0 / (n + 1) as f64;
            let (total, _) = moved(&before, &after, None);
            let fraction = total as f64 / SIZE as f64;
            println!(
                "{n} + 1 paths: the new one takes {:.2}% (ideal {:.2}%), {:.2}% of slots moved",
                share * 100.0,
                ideal * 100.0,
                fraction * 100.0
            );
            assert!((share - ideal).abs() <= 0.01 * ideal);
            assert!(fraction <= share + 0.02);
            // Back to where it was: the same table as before it left.
            assert_eq!(table(&all), after);
        }
    }

    #[test]
    fn maglev_does_not_depend_on_input_order() {
        let b = backends(&[3, 1, 4, 1, 5, 9, 2, 6]);
        let t = table(&b);
        let mut reversed = b.clone();
        reversed.reverse();
        assert_eq!(table(&reversed), t);
        let mut rotated = b.clone();
        rotated.rotate_left(3);
        assert_eq!(table(&rotated), t);
    }

    #[test]
    fn maglev_hashes_names_not_ids() {
        // Same names under other ids (ids reallocated after a restart): the same slots per name.
        let b = backends(&[1, 2, 3]);
        let renumbered: Vec<_> = b
            .iter()
            .map(|(id, n, w)| (id + 50, n.clone(), *w))
            .collect();
        let shifted: Vec<u32> = table(&b).iter().map(|id| id + 50).collect();
        assert_eq!(table(&renumbered), shifted);
    }

    #[test]
    fn maglev_table_is_pinned() {
        // The table must not change between builds (a restart would move flows): this pins
        // the hash and the fill order. Update only on purpose.
        let t = table(&backends(&[1, 2, 3]));
        assert_eq!(
            t[..16],
            [
                102, 101, 102, 100, 102, 102, 101, 102, 100, 101, 102, 102, 102, 100, 102, 102
            ]
        );
    }
}
