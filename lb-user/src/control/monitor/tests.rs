use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::time::Instant;

use super::*;
use crate::control::health::{Event, Health, HealthTracker, ProbeResult, Transition, Trigger};

const SECOND: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

/// A trigger channel that never carries one (its sender is gone).
fn no_triggers() -> mpsc::Receiver<Trigger> {
    mpsc::channel(1).1
}

/// Runs [`monitor`] with a fake instantaneous probe that fails for virtual times in
/// `failing` (from the start of the test), until `events` results have been seen; returns
/// each event with the virtual time it arrived at.
async fn run(
    tracker: HealthTracker,
    failing: impl Fn(Duration) -> bool + Send + 'static,
    events: usize,
) -> Vec<(Duration, Event)> {
    run_probing(tracker, failing, Duration::ZERO, events).await
}

/// Runs [`monitor`] (path 7, every second) with a fake probe that fails while `failing`
/// says so of the time it is sent, `fail_after` after it was sent (a timeout), and
/// succeeds at once otherwise: the first `events` events, and when each came.
async fn run_probing(
    tracker: HealthTracker,
    failing: impl Fn(Duration) -> bool + Send + 'static,
    fail_after: Duration,
    events: usize,
) -> Vec<(Duration, Event)> {
    let start = Instant::now();
    let probe = move |_: Cause| {
        let ok = !failing(start.elapsed());
        async move {
            if !ok {
                time::sleep(fail_after).await;
            }
            ProbeResult {
                ok,
                rtt: ok.then_some(Duration::from_millis(1)),
                detail: if ok { "connected" } else { "timed out" }.into(),
                timed_out: !ok && fail_after > Duration::ZERO,
            }
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(monitor(
        Schedule::new(7, 0, SECOND, Duration::ZERO),
        probe,
        tracker,
        no_triggers(),
        tx,
    ));
    let mut seen = Vec::new();
    while seen.len() < events {
        let event = rx.recv().await.expect("monitor runs until rx is dropped");
        seen.push((start.elapsed(), event));
    }
    drop(rx);
    task.await.expect("monitor ends once rx is dropped");
    seen
}

/// The events of a running monitor until `until` after `start`, each with when it came; then
/// stops the monitor (drops the receiver) and waits for it to end.
async fn events_until(
    mut rx: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
    start: Instant,
    until: Duration,
) -> Vec<(Duration, Event)> {
    let mut seen = Vec::new();
    while start.elapsed() < until {
        let event = rx.recv().await.expect("running");
        seen.push((start.elapsed(), event));
    }
    drop(rx);
    task.await.expect("monitor ends");
    seen
}

fn transitions(events: &[(Duration, Event)]) -> Vec<(Duration, Transition)> {
    events
        .iter()
        .filter_map(|(at, Event::Probe { transition, .. })| transition.clone().map(|t| (*at, t)))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn monitor_probes_at_once_then_every_interval() {
    let events = run(HealthTracker::new(2, 3, None), |_| true, 4).await;
    let times: Vec<_> = events.iter().map(|(at, _)| at.as_secs_f64()).collect();
    assert_eq!(times, [0.0, 1.0, 2.0, 3.0]);
    let (_, first) = &events[0];
    let Event::Probe {
        path_id,
        epoch,
        result,
        state,
        transition,
        history,
        streak,
        lag,
    } = first;
    assert_eq!((*path_id, *epoch), (7, 0));
    assert_eq!(*streak, 0, "the first result decides: nothing against it");
    let result = result.as_ref().expect("a probe's result");
    assert!(!result.ok);
    assert_eq!(result.detail, "timed out");
    assert_eq!(*state, Health::Down);
    assert_eq!(history, "-");
    assert_eq!(*lag, Some(Duration::ZERO), "on the grid");
    let first = transition
        .as_ref()
        .expect("unknown: the first result decides");
    assert_eq!((first.from, first.to), (None, Health::Down));
    assert_eq!(transitions(&events).len(), 1);
    let Event::Probe { history, .. } = &events[3].1;
    assert_eq!(history, "----");
}

#[tokio::test(start_paused = true)]
async fn monitor_goes_down_after_fall_and_up_after_rise_intervals() {
    // Fails from T = 5 s (a tick) to 12 s: with probes at 0, 1, 2, ... the failures are seen at
    // 5, 6, 7 (down at T + (fall - 1) × interval = 7 s) and the successes at 12, 13 (up at
    // 12 + (rise - 1) × interval = 13 s).
    let failing = |t: Duration| (5 * SECOND..12 * SECOND).contains(&t);
    let events = run(HealthTracker::new(2, 3, Some(Health::Up)), failing, 16).await;
    let got: Vec<_> = transitions(&events)
        .into_iter()
        .map(|(at, t)| (at.as_secs(), t.from, t.to, t.reason))
        .collect();
    assert_eq!(
        got,
        [
            (
                7,
                Some(Health::Up),
                Health::Down,
                "3 consecutive failures (fall 3)".into()
            ),
            (
                13,
                Some(Health::Down),
                Health::Up,
                "2 consecutive successes (rise 2)".into()
            ),
        ]
    );
    // Every result is reported, with its RTT when there is one.
    assert_eq!(events.len(), 16);
    for (at, Event::Probe { result, .. }) in &events {
        let result = result.as_ref().expect("every event a probe's result");
        assert_eq!(result.ok, !failing(*at));
        assert_eq!(result.rtt.is_some(), result.ok);
    }
    let Event::Probe { history, .. } = &events[15].1;
    assert_eq!(history, "+++++-------++++");
}

#[tokio::test(start_paused = true)]
async fn monitor_between_ticks_the_failure_is_seen_at_the_next_tick() {
    // Failing from 4.5 s: first failed probe at 5 s, down at 7 s, within
    // [T + (fall - 1) × interval, T + fall × interval) = [6.5 s, 7.5 s).
    let failing = |t: Duration| t >= Duration::from_millis(4500);
    let events = run(HealthTracker::new(2, 3, Some(Health::Up)), failing, 10).await;
    let down = transitions(&events);
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].0, 7 * SECOND);
    assert_eq!(down[0].1.to, Health::Down);
}

#[tokio::test(start_paused = true)]
async fn monitor_a_flapping_probe_never_transitions_once_known() {
    let flapping = |t: Duration| t.as_secs() % 2 == 1;
    for initial in [Some(Health::Up), Some(Health::Down)] {
        let events = run(HealthTracker::new(2, 2, initial), flapping, 30).await;
        assert!(transitions(&events).is_empty(), "{initial:?}");
        let Event::Probe { history, state, .. } = &events[29].1;
        assert_eq!(history, &"+-".repeat(8));
        assert_eq!(Some(*state), initial);
    }
    // Unknown: the first result (a success at 0 s) decides, then nothing moves.
    let events = run(HealthTracker::new(2, 2, None), flapping, 30).await;
    let got = transitions(&events);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].0, got[0].1.to), (Duration::ZERO, Health::Up));
}

/// Guards the grid against a lost probe: a probe that takes long (here 3.5 s, as a timeout
/// would) does not delay the next one; only `fall + 1` slow ones at once do.
#[tokio::test(start_paused = true)]
async fn monitor_a_slow_probe_does_not_delay_the_grid_two_do() {
    for slow_ones in [vec![2], vec![2, 3, 4]] {
        // The second probe (at 1 s) takes 3.5 s, and with it (second case) the next two.
        let starts = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let probe = {
            let starts = Arc::clone(&starts);
            let slow_ones = slow_ones.clone();
            move |_: Cause| {
                let mut starts = starts.lock().expect("not poisoned");
                starts.push(start.elapsed());
                let slow = slow_ones.contains(&starts.len());
                async move {
                    if slow {
                        time::sleep(Duration::from_millis(3500)).await;
                    }
                    ProbeResult {
                        ok: true,
                        rtt: None,
                        detail: String::new(),
                        timed_out: false,
                    }
                }
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(monitor(
            Schedule::new(1, 0, SECOND, Duration::ZERO),
            probe,
            // Fall 2: three probes out at once. No failure, so no hold timer: grid timing alone.
            HealthTracker::new(1, 2, None),
            no_triggers(),
            tx,
        ));
        let mut lags = Vec::new();
        for _ in 0..5 {
            let Event::Probe { lag, .. } = rx.recv().await.expect("monitor running");
            lags.push(lag.expect("a probe's result").as_millis());
        }
        drop(rx);
        task.await.expect("monitor ends");
        let starts: Vec<_> = starts.lock().expect("not poisoned").clone();
        let ms: Vec<_> = starts.iter().map(Duration::as_millis).collect();
        if slow_ones.len() == 1 {
            assert_eq!(ms[..5], [0, 1000, 2000, 3000, 4000]);
            lags.sort_unstable();
            assert_eq!(lags, [0, 0, 0, 0, 0]);
        } else {
            // The fifth was due at 4 s and left when the second ended (4.5 s): the grid goes
            // on from there.
            assert_eq!(ms[..5], [0, 1000, 2000, 3000, 4500]);
            assert!(lags.contains(&500), "{lags:?}");
        }
    }
}

/// Guards the hold timer against a late grid: the probes sent at 1, 2, 3 and 4 s take 4.5 s
/// to succeed (as if the thread had stalled), so no success comes from 0 s to 5.5 s and the
/// probe due at 5 s leaves at 5.5 s. The hold time (3 s from the success sent at 0 s) passes
/// with no probe failed: the path stays up.
#[tokio::test(start_paused = true)]
async fn monitor_the_hold_timer_waits_for_the_probes_it_counts_on() {
    let calls = Arc::new(Mutex::new(0u32));
    let probe = {
        let calls = Arc::clone(&calls);
        move |_: Cause| {
            let mut calls = calls.lock().expect("not poisoned");
            *calls += 1;
            let slow = (2..=5).contains(&*calls);
            async move {
                if slow {
                    time::sleep(Duration::from_millis(4500)).await;
                }
                ProbeResult {
                    ok: true,
                    rtt: Some(MS),
                    detail: "connected".into(),
                    timed_out: false,
                }
            }
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let start = Instant::now();
    let task = tokio::spawn(monitor(
        Schedule::new(1, 0, SECOND, Duration::ZERO),
        probe,
        HealthTracker::new(2, 3, Some(Health::Up)),
        no_triggers(),
        tx,
    ));
    let mut seen = Vec::new();
    for _ in 0..6 {
        let event = rx.recv().await.expect("monitor running");
        seen.push((start.elapsed(), event));
    }
    drop(rx);
    task.await.expect("monitor ends");
    assert!(transitions(&seen).is_empty(), "{seen:?}");
    let late = seen
        .iter()
        .any(|(_, Event::Probe { lag, .. })| *lag == Some(Duration::from_millis(500)));
    assert!(late, "one probe was due at 5 s and sent at 5.5 s: {seen:?}");
}

/// Probes that fail by timing out (`timeout` after they were sent), from `fails_at` on, of
/// a path that starts up (rise 2).
async fn run_timing_out(
    fall: u32,
    timeout: Duration,
    fails_at: Duration,
    events: usize,
) -> Vec<(Duration, Event)> {
    let tracker = HealthTracker::new(2, fall, Some(Health::Up));
    run_probing(tracker, move |t| t >= fails_at, timeout, events).await
}

/// Guards the hold timer: a path whose probes time out is down `fall × interval` after the
/// last successful probe was sent, wherever the failure falls between two probes, never
/// later: the budget is the worst case (counting three timed-out results would have taken
/// it down at 7.8 s, 3.8 s after the last success). The hold expiry carries no result.
#[tokio::test(start_paused = true)]
async fn monitor_hold_timer_takes_a_path_down_within_fall_intervals() {
    let timeout = Duration::from_millis(800);
    for fails_at_ms in [4001, 4500, 4999] {
        let fails_at = Duration::from_millis(fails_at_ms);
        // Successes at 0..=4 s, failures reported at 5.8 and 6.8 s, the hold expiry at 7 s.
        let events = run_timing_out(3, timeout, fails_at, 8).await;
        let down = transitions(&events);
        assert_eq!(down.len(), 1, "{fails_at_ms}: {down:?}");
        let (at, t) = &down[0];
        assert_eq!(*at, 7 * SECOND, "{fails_at_ms}");
        assert!(
            *at - fails_at <= 3 * SECOND,
            "{fails_at_ms}: past the budget"
        );
        assert_eq!((t.from, t.to), (Some(Health::Up), Health::Down));
        assert_eq!(
            t.reason,
            "no successful probe for 3s (fall 3 × interval 1s)"
        );
        let hold_event = events
            .iter()
            .find(|(_, e)| {
                matches!(
                    e,
                    Event::Probe {
                        transition: Some(_),
                        ..
                    }
                )
            })
            .map(|(_, e)| e.clone());
        let Some(Event::Probe { result, state, .. }) = hold_event else {
            unreachable!("a transition was found above")
        };
        assert_eq!((result, state), (None, Health::Down));
    }
}

/// The failures go on being reported once the path is down, and a path that recovers comes
/// back with `rise` successes; the timer is not armed while the path is down.
#[tokio::test(start_paused = true)]
async fn monitor_after_the_hold_timer_results_go_on() {
    let events = run_timing_out(2, Duration::from_millis(300), 2500 * MS, 8).await;
    // Successes at 0, 1, 2 s; down at 2 + 2 = 4 s. Failures reported at 3.3 s, then (probes
    // every 0.5 s after a timeout while up) 4.1 s, then (down: every second again) 4.6, 5.6 s.
    let down = transitions(&events);
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].0, 4 * SECOND);
    let after: Vec<_> = events
        .iter()
        .filter(|(at, _)| *at > 4 * SECOND)
        .map(|(at, e)| {
            let Event::Probe { result, state, .. } = e;
            (at.as_millis(), result.as_ref().map(|r| r.ok), *state)
        })
        .collect();
    assert_eq!(
        after[..2],
        [
            (4100, Some(false), Health::Down),
            (4600, Some(false), Health::Down)
        ]
    );
}

/// Guards the lead and the faster probes after a timeout: with probes every second less 100 ms
/// (a 300 ms timeout over fall 3), or every second, probes timing out after a success are not
/// enough to take the path down while a probe answers before the hold time (3 s) runs out:
/// after the first timeout, probes go out three times as often, and the first one sent after
/// 2.5 s answers in time. (Counting three timeouts in a row, or waiting a whole interval, the
/// path would have gone down on the losses of 0.9, 1.8 and 2.7 s, or 1, 2 and 3 s.)
#[tokio::test(start_paused = true)]
async fn monitor_fall_minus_one_losses_never_take_a_path_down() {
    for (lead, downs) in [(100 * MS, 0), (Duration::ZERO, 0)] {
        let start = Instant::now();
        let probe = move |_: Cause| {
            // Sent at 0.9 s and 1.8 s (with the lead) or 1 s and 2 s: lost.
            let t = start.elapsed();
            let lost = (800 * MS..2500 * MS).contains(&t);
            async move {
                // An answer takes a round trip; a loss, the timeout.
                time::sleep(if lost { 300 * MS } else { MS }).await;
                ProbeResult {
                    ok: !lost,
                    rtt: (!lost).then_some(MS),
                    detail: String::new(),
                    timed_out: lost,
                }
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let tracker = HealthTracker::new(2, 3, Some(Health::Up));
        let task = tokio::spawn(monitor(
            Schedule::new(1, 0, SECOND, lead),
            probe,
            tracker,
            no_triggers(),
            tx,
        ));
        let seen = events_until(rx, task, start, 3500 * MS).await;
        let got: Vec<_> = transitions(&seen)
            .into_iter()
            .filter(|(_, t)| t.to == Health::Down)
            .collect();
        assert_eq!(got.len(), downs, "lead {lead:?}: {got:?}");
    }
}

/// Guards against flaps under random loss: every probe sent from 0.5 s to 2.5 s is lost
/// (it times out after 800 ms), four or more in a row; the first probe sent after 2.5 s
/// answers before the hold time (3 s from the success sent at 0) runs out, so the path stays
/// up. Timeouts on the grid are the hold timer's to judge, not `fall`'s: counting them, the
/// path would have gone down on the third.
#[tokio::test(start_paused = true)]
async fn monitor_a_timed_out_probe_does_not_hold_back_the_next() {
    let timeout = 800 * MS;
    let start = Instant::now();
    let probe = move |_: Cause| {
        let t = start.elapsed();
        let lost = (500 * MS..2500 * MS).contains(&t);
        async move {
            time::sleep(if lost { timeout } else { MS }).await;
            ProbeResult {
                ok: !lost,
                rtt: (!lost).then_some(MS),
                detail: String::new(),
                timed_out: lost,
            }
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(monitor(
        Schedule::for_probe(1, 0, SECOND, Some(timeout), 3),
        probe,
        HealthTracker::new(2, 3, Some(Health::Up)),
        no_triggers(),
        tx,
    ));
    let seen = events_until(rx, task, start, 3500 * MS).await;
    assert!(transitions(&seen).is_empty(), "{seen:?}");
    // The losses were all reported (as they ended: the last two after the answer that came
    // in time), and so were the answers after them.
    let results: String = seen
        .iter()
        .filter_map(|(_, Event::Probe { result, .. })| result.as_ref())
        .map(|r| if r.ok { '+' } else { '-' })
        .collect();
    assert_eq!(results.matches('-').count(), 4, "{results}");
    assert!(results.ends_with('+'), "{results}");
}

/// Runs [`monitor`] (every second, fall 3, starting up) with a probe that fails, 10 ms after
/// it is sent, from `fails_at` on, sending a trigger at each of `triggers` (virtual times);
/// returns the events until `until`, and the times the probes were sent.
async fn run_triggered(
    fails_at: Duration,
    triggers: &[Duration],
    until: Duration,
) -> (Vec<(Duration, Event)>, Vec<Duration>) {
    let start = Instant::now();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let probe = {
        let sent = Arc::clone(&sent);
        move |_: Cause| {
            let at = start.elapsed();
            sent.lock().expect("not poisoned").push(at);
            let ok = at < fails_at;
            async move {
                if !ok {
                    time::sleep(10 * MS).await;
                }
                ProbeResult {
                    ok,
                    rtt: ok.then_some(MS),
                    detail: if ok { "connected" } else { "timed out" }.into(),
                    timed_out: !ok,
                }
            }
        }
    };
    let (trigger_tx, trigger_rx) = mpsc::channel(1);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let tracker = HealthTracker::new(2, 3, Some(Health::Up));
    let task = tokio::spawn(monitor(
        Schedule::new(7, 0, SECOND, Duration::ZERO),
        probe,
        tracker,
        trigger_rx,
        tx,
    ));
    let mut pending: VecDeque<Duration> = triggers.iter().copied().collect();
    let mut seen = Vec::new();
    loop {
        let next = pending.front().copied().unwrap_or(until).min(until);
        tokio::select! {
            event = rx.recv() => seen.push((start.elapsed(), event.expect("running"))),
            () = time::sleep_until(start + next) => {
                if start.elapsed() >= until {
                    break;
                }
                pending.pop_front();
                let _ = trigger_tx.try_send(Trigger { what: "a SYN", waited: 8 * MS });
            }
        }
    }
    drop(rx);
    task.await.expect("monitor ends");
    let sent = sent.lock().expect("not poisoned").clone();
    (seen, sent)
}

/// Guards the passive trigger: a path failing at 0.5 s is probed at once on the trigger,
/// three times 1 ms apart (each without waiting for the one before to time out), and is down
/// one timeout (10 ms) and 2 ms later (the hold timer alone would take it down at 3 s), saying
/// why.
#[tokio::test(start_paused = true)]
async fn monitor_a_trigger_probes_at_once_fall_times() {
    let (events, sent) = run_triggered(500 * MS, &[500 * MS], 2 * SECOND).await;
    let down = transitions(&events);
    assert_eq!(down.len(), 1, "{down:?}");
    assert_eq!(down[0].0, 512 * MS);
    assert_eq!(
        down[0].1.reason,
        "3 consecutive failures (fall 3), probed at once: a SYN unanswered for 8ms"
    );
    assert_eq!(sent[..4], [Duration::ZERO, 500 * MS, 501 * MS, 502 * MS]);
    // The burst's results carry no lag (off the grid); the grid's do.
    let lags: Vec<_> = events
        .iter()
        .map(|(_, Event::Probe { lag, .. })| lag.is_some())
        .collect();
    assert_eq!(lags[..4], [true, false, false, false]);
}

/// A trigger about a live path costs one probe and changes nothing; one that comes within an
/// interval of the last burst is dropped, and so is one about a path that is down.
#[tokio::test(start_paused = true)]
async fn monitor_a_trigger_decides_nothing_by_itself() {
    let (events, sent) = run_triggered(10 * SECOND, &[300 * MS, 600 * MS], SECOND + 500 * MS).await;
    assert!(transitions(&events).is_empty());
    assert_eq!(sent, [Duration::ZERO, 300 * MS, SECOND]);

    // Down by the hold timer at 3 s (failing from 0.5 s, timing out from the probe at 1 s on,
    // then probed every third of a second): a trigger after that (3.5 s) is dropped, and the
    // grid is back to every second.
    let (events, sent) = run_triggered(500 * MS, &[3500 * MS], 3800 * MS).await;
    let down = transitions(&events);
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].0, 3 * SECOND);
    assert!(
        sent.iter()
            .filter(|t| (SECOND..3 * SECOND).contains(*t))
            .count()
            >= 5,
        "{sent:?}"
    );
    let after: Vec<_> = sent.iter().filter(|t| **t > 3 * SECOND).collect();
    assert!(after.len() <= 1, "{sent:?}");
}

#[tokio::test(start_paused = true)]
async fn monitor_a_zero_interval_is_one_millisecond() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let probe = |_: Cause| async {
        ProbeResult {
            ok: true,
            rtt: None,
            detail: String::new(),
            timed_out: false,
        }
    };
    let start = Instant::now();
    let tracker = HealthTracker::new(1, 1, None);
    let task = tokio::spawn(monitor(
        Schedule::new(1, 0, Duration::ZERO, Duration::ZERO),
        probe,
        tracker,
        no_triggers(),
        tx,
    ));
    for _ in 0..3 {
        rx.recv().await.expect("monitor running");
    }
    assert_eq!(start.elapsed(), Duration::from_millis(2));
    drop(rx);
    task.await.expect("monitor ends");
}

#[tokio::test(start_paused = true)]
async fn monitor_ends_when_the_receiver_is_dropped_while_waiting() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let probe = |_: Cause| async {
        ProbeResult {
            ok: true,
            rtt: None,
            detail: String::new(),
            timed_out: false,
        }
    };
    let interval = Duration::from_secs(3600);
    let task = tokio::spawn(monitor(
        Schedule::new(1, 0, interval, Duration::ZERO),
        probe,
        HealthTracker::new(1, 1, None),
        no_triggers(),
        tx,
    ));
    rx.recv().await.expect("the first probe is immediate");
    let start = Instant::now();
    drop(rx);
    task.await.expect("monitor ends");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "without waiting for the next tick"
    );
}
