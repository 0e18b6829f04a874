//! The async loop that probes one path on an interval and reports every result ([`monitor`]).
//!
//! The probe itself (TCP connect, ICMP echo, HTTP GET) is a closure handed to [`monitor`], so the
//! tests drive the loop with a fake probe under tokio's paused clock; no I/O happens here.

use std::{
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures_util::{StreamExt as _, stream::FuturesOrdered};
use tokio::{
    sync::mpsc,
    time::{self, Instant, MissedTickBehavior},
};

use crate::control::health::{Event, Health, HealthTracker, ProbeResult, Trigger};

/// Probes one path every `interval` and sends an [`Event::Probe`] per result on `tx`; returns
/// when `tx`'s receiver is gone. `tx` is unbounded so that a receiver that is busy for a while
/// never holds the probes back (the daemon runs them on their own thread for that).
///
/// The first probe runs at once, the next ones on an `interval` grid from the start. The probe
/// must bound its own duration (its timeout) and should finish well within `interval`; one that
/// overruns delays the grid ([`MissedTickBehavior::Delay`]): the next probe starts as soon as the
/// late one ends and the grid restarts from there, so probes never pile up.
///
/// Down, two ways, whichever comes first:
/// - **the hold timer** (BFD's detection time): no probe has succeeded for `fall × interval`,
///   counted from the time the last successful probe was *sent* (or from the start, for a path
///   that starts up), and the `fall − 1` probes sent since have failed. A path that fails just
///   after a successful probe left is down `fall × interval` later at worst: each probe's
///   timeout ends before the next one is due, so on the grid those `fall − 1` failures are in
///   by then and the budget is the worst case. Off the grid (a stalled host delayed the
///   probes), the timer waits for the probes it counts on: a path is never declared down for
///   probes that were not sent, and a stall of the whole thread is not a failure of the path;
/// - `fall` consecutive failed results (a refusal or an error answers faster than a timeout).
///
/// Up: `rise` consecutive successes. At a tie, a result is taken before the timer: an answer is
/// evidence of life.
///
/// **Fitting `fall` probes in the hold time**: probes go out every `interval − lead`, not every
/// `interval`. With `lead` the probe timeout divided by `fall`, the `fall`-th probe after a
/// success is answered (or times out) by the time the hold timer would expire, so `fall − 1`
/// lost probes never take a path down; BFD sends its packets early (by up to a quarter of the
/// interval) for the same reason. Without it the `fall`-th probe would leave exactly at the
/// deadline, and `fall − 1` losses in a row (1 % of the time at 10 % loss) would be enough.
///
/// **The passive trigger**: a [`Trigger`] on `triggers` (the datapath saw the path's client
/// traffic go unanswered) makes an up path be probed at once, `fall` times in quick succession
/// ([`BURST_SPACING`] apart, each without waiting for the one before) until one succeeds, so a
/// dead path goes down one timeout and `(fall − 1) × BURST_SPACING` after the trigger instead
/// of waiting for its grid.
/// The probes alone decide: a trigger on a live path (one-way UDP, a VM that drops a SYN)
/// costs a probe and changes nothing. One burst per `interval` at most; triggers that come
/// meanwhile are dropped, and so are those about a path that is down.
///
/// An `interval` of zero is taken as 1 ms (tokio's interval panics on zero; the configuration
/// should never give one).
pub async fn monitor<F, Fut>(
    schedule: Schedule,
    mut probe: F,
    mut tracker: HealthTracker,
    mut triggers: mpsc::Receiver<Trigger>,
    tx: mpsc::UnboundedSender<Event>,
) where
    F: FnMut(Cause) -> Fut,
    Fut: Future<Output = ProbeResult>,
{
    let Schedule {
        path_id,
        epoch,
        interval,
        lead,
    } = schedule;
    let interval = interval.max(Duration::from_millis(1));
    let hold = interval.saturating_mul(tracker.fall());
    let fall = tracker.fall();
    // Whether the path is up, as the decider last knew it (for the prober's bursts).
    let up = AtomicBool::new(tracker.state() == Some(Health::Up));
    let (results_tx, mut results) = mpsc::channel::<ProbeSent>(1);
    // The probes, on their grid and in bursts on a trigger; each result with the time its
    // probe was sent and how late that was.
    let prober = async {
        let mut ticks = time::interval(interval.saturating_sub(lead).max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut listening = true;
        let mut last_burst: Option<Instant> = None;
        loop {
            let trigger = tokio::select! {
                biased;
                due = ticks.tick() => {
                    let sent = Instant::now();
                    let result = probe(Cause::Grid).await;
                    let lag = Some(sent.saturating_duration_since(due));
                    if results_tx.send(ProbeSent { sent, lag, trigger: None, result }).await.is_err() {
                        return;
                    }
                    continue;
                }
                got = triggers.recv(), if listening => match got {
                    Some(trigger) => trigger,
                    None => {
                        listening = false;
                        continue;
                    }
                },
            };
            let now = Instant::now();
            if !up.load(Ordering::Relaxed) || last_burst.is_some_and(|t| now - t < interval) {
                continue;
            }
            last_burst = Some(now);
            // `fall` probes, BURST_SPACING apart, each sent without waiting for the one before
            // (results still reach the decider in the order sent); the first success ends it.
            let mut inflight = FuturesOrdered::new();
            let mut launched = 0u32;
            let mut next_at = now;
            loop {
                tokio::select! {
                    biased;
                    Some((sent, result)) = inflight.next(), if !inflight.is_empty() => {
                        let result: ProbeResult = result; // (for inference: pushed below)
                        let ok = result.ok;
                        let trigger = Some(trigger.clone());
                        let done = ProbeSent { sent, lag: None, trigger, result };
                        if results_tx.send(done).await.is_err() {
                            return;
                        }
                        if ok || (launched >= fall && inflight.is_empty()) {
                            break;
                        }
                    }
                    () = time::sleep_until(next_at), if launched < fall => {
                        let sent = Instant::now();
                        let result = probe(Cause::Trigger);
                        inflight.push_back(async move { (sent, result.await) });
                        launched += 1;
                        next_at = sent + BURST_SPACING;
                    }
                }
            }
            // What came during the burst is answered by it.
            while triggers.try_recv().is_ok() {}
        }
    };
    // The state: results as they come, and the hold timer between them.
    let decider = async {
        let mut last_ok = Instant::now();
        // Failed results of probes sent after `last_ok` (results come in the order sent).
        let mut failed_since_ok = 0u32;
        loop {
            let armed = tracker.state() == Some(Health::Up)
                && failed_since_ok.saturating_add(1) >= tracker.fall();
            let (result, lag, transition) = tokio::select! {
                biased;
                _ = tx.closed() => return,
                got = results.recv() => {
                    let Some(ProbeSent { sent, lag, trigger, result }) = got else { return };
                    if result.ok {
                        last_ok = last_ok.max(sent);
                        failed_since_ok = 0;
                    } else {
                        failed_since_ok = failed_since_ok.saturating_add(1);
                    }
                    let (_, mut transition) = tracker.record(result.ok);
                    if let (Some(t), Some(trigger)) = (transition.as_mut(), trigger) {
                        t.reason = format!(
                            "{}, probed at once: {} unanswered for {:?}",
                            t.reason, trigger.what, trigger.waited
                        );
                    }
                    (Some(result), lag, transition)
                }
                _ = time::sleep_until(last_ok + hold), if armed => {
                    let reason = format!(
                        "no successful probe for {hold:?} (fall {} × interval {interval:?})",
                        tracker.fall()
                    );
                    (None, None, tracker.hold_expired(reason))
                }
            };
            let Some(state) = tracker.state() else {
                continue;
            };
            up.store(state == Health::Up, Ordering::Relaxed);
            let event = Event::Probe {
                path_id,
                epoch,
                result,
                state,
                transition,
                history: tracker.history(),
                lag,
            };
            if tx.send(event).is_err() {
                return;
            }
        }
    };
    tokio::select! {
        biased;
        () = prober => {}
        () = decider => {}
    }
}

/// How far apart a trigger's burst probes leave. Apart rather than at once, so that one lost
/// burst of packets is less likely to fail them all; not one after another's timeout, which
/// would make the burst `fall` timeouts long.
pub const BURST_SPACING: Duration = Duration::from_millis(1);

/// Why [`monitor`] runs a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Its place on the interval grid.
    Grid,
    /// A [`Trigger`]'s burst: the probe may want a timeout that a host's hiccup cannot reach,
    /// since the burst's probes follow each other within milliseconds.
    Trigger,
}

/// Which path [`monitor`] probes, as which task, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub path_id: u32,
    /// Tags the events ([`Event::Probe`]'s `epoch`).
    pub epoch: u64,
    /// The hold time is `fall × interval`.
    pub interval: Duration,
    /// Probes go out every `interval − lead` (see [`monitor`]).
    pub lead: Duration,
}

impl Schedule {
    pub fn new(path_id: u32, epoch: u64, interval: Duration, lead: Duration) -> Self {
        Self {
            path_id,
            epoch,
            interval,
            lead,
        }
    }
}

/// A probe's result as the prober hands it to the decider.
struct ProbeSent {
    sent: Instant,
    /// `None`: sent at once on `trigger`, off the grid.
    lag: Option<Duration>,
    trigger: Option<Trigger>,
    result: ProbeResult,
}

#[cfg(test)]
mod tests;
