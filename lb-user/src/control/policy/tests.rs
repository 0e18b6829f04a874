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

/// Equal priorities are broken by name, never by id: ids differ between edges that lived
/// different lives, and every edge must make the same choice.
#[test]
fn failover_ties_go_to_the_first_name_not_the_lowest_id() {
    let paths = [path(5, "c", 1, 1, UP), path(3, "e", 1, 1, UP)];
    assert_eq!(
        failover(true, AllDown::Drop, &paths, &Decision::None),
        Decision::Single(5)
    );
    let swapped = [path(3, "c", 1, 1, UP), path(5, "e", 1, 1, UP)];
    assert_eq!(
        failover(true, AllDown::Drop, &swapped, &Decision::None),
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
