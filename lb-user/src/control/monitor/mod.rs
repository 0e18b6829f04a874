//! The async loop that probes one path on an interval and reports every result ([`monitor`]).
//!
//! The probe itself (TCP connect, ICMP echo, HTTP GET) is a closure handed to [`monitor`], so the
//! tests drive the loop with a fake probe under tokio's paused clock; no I/O happens here.

use std::{
    collections::VecDeque,
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use futures_util::{
    StreamExt as _,
    stream::{FuturesOrdered, FuturesUnordered},
};
use tokio::{
    sync::mpsc,
    time::{self, Instant},
};

use crate::control::health::{Event, Health, HealthTracker, ProbeResult, Trigger};

/// Probes one path every `interval` and sends an [`Event::Probe`] per result on `tx`; returns
/// when `tx`'s receiver is gone. `tx` is unbounded so that a receiver that is busy for a while
/// never holds the probes back (the daemon runs them on their own thread for that).
///
/// The first probe runs at once, the next ones on a grid from the start. The probe must bound
/// its own duration (its timeout, less than `interval`). A probe does not wait for the one
/// before it to end: up to `fall + 1` are out at once, so one that times out never delays the
/// next. Past that the grid waits: the next probe starts as soon as one ends and the grid
/// restarts from there (tokio's `MissedTickBehavior::Delay`), so probes never pile up. Results
/// are taken as they come; a failure of a probe sent before the last success is reported but
/// counts for nothing.
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
/// - `fall` consecutive explicit failures: a refusal, an unreachable, a wrong HTTP status
///   (they answer faster than the hold time). A probe that timed out on the grid is not one:
///   silence is the hold timer's to judge (see `HealthTracker::record_timeout`).
///
/// Up: `rise` consecutive successes. At a tie, a result is taken before the timer: an answer is
/// evidence of life.
///
/// **Fitting probes in the hold time**: probes go out every `interval − lead`, not every
/// `interval`. With `lead` the probe timeout divided by `fall`, the `fall`-th probe after a
/// success is answered (or times out) by the time the hold timer would expire; BFD sends its
/// packets early (by up to a quarter of the interval) for the same reason. And after a probe
/// timed out, while the path is up, they go out `fall` times as often until one succeeds
/// (HAProxy's `fastinter`): a path that lost a probe or two to random loss is asked again and
/// again before its hold time runs out, so it takes many losses in a row, not `fall`, to take
/// it down, while a dead path still goes down when the hold time runs out.
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
    // probe was sent and how late that was. A probe does not wait for the one before it (up to
    // `fall + 1` are out at once), so results may come out of the order sent.
    let prober = async {
        // The grid: every `period`, or every `fast` after a probe timed out while the path is
        // up, until one succeeds (HAProxy's `fastinter`), so that the hold time sees many
        // probes rather than `fall` of them before it judges. (An explicit failure is no
        // accident of loss: it keeps the grid.)
        let period = interval.saturating_sub(lead).max(Duration::from_millis(1));
        let fast = (period / fall).max(Duration::from_millis(1));
        let mut hurry = false;
        let mut due = Instant::now();
        let mut listening = true;
        let mut last_burst: Option<Instant> = None;
        let mut grid = FuturesUnordered::new();
        let in_flight = fall as usize + 1;
        // The burst in progress: its trigger, its probes, how many have left and when the next
        // one leaves.
        let mut burst: Option<Trigger> = None;
        let mut bursting = FuturesOrdered::new();
        let mut launched = 0u32;
        let mut next_at = Instant::now();
        loop {
            tokio::select! {
                biased;
                Some(done) = grid.next(), if !grid.is_empty() => {
                    let done: ProbeSent = done; // (for inference: pushed below)
                    if done.result.ok {
                        hurry = false;
                    } else if done.result.timed_out && !hurry && up.load(Ordering::Relaxed) {
                        hurry = true;
                        due = due.min(Instant::now() + fast);
                    }
                    if results_tx.send(done).await.is_err() {
                        return;
                    }
                }
                Some(done) = bursting.next(), if !bursting.is_empty() => {
                    let done: ProbeSent = done;
                    let ok = done.result.ok;
                    if results_tx.send(done).await.is_err() {
                        return;
                    }
                    if ok || (launched >= fall && bursting.is_empty()) {
                        // The first success ends it; what came during it is answered by it.
                        burst = None;
                        bursting = FuturesOrdered::new();
                        while triggers.try_recv().is_ok() {}
                    }
                }
                () = time::sleep_until(next_at), if burst.is_some() && launched < fall => {
                    let sent = Instant::now();
                    let result = probe(Cause::Trigger);
                    let trigger = burst.clone();
                    bursting.push_back(async move {
                        ProbeSent { sent, lag: None, trigger, result: result.await }
                    });
                    launched += 1;
                    next_at = sent + BURST_SPACING;
                }
                () = time::sleep_until(due), if grid.len() < in_flight => {
                    let sent = Instant::now();
                    let lag = Some(sent.saturating_duration_since(due));
                    // A late probe restarts the grid from when it left (MissedTickBehavior::Delay).
                    let step = if hurry && up.load(Ordering::Relaxed) { fast } else { period };
                    due = if due + step > sent { due + step } else { sent + step };
                    let result = probe(Cause::Grid);
                    grid.push(async move {
                        ProbeSent { sent, lag, trigger: None, result: result.await }
                    });
                }
                got = triggers.recv(), if listening && burst.is_none() => match got {
                    Some(trigger) => {
                        let now = Instant::now();
                        if up.load(Ordering::Relaxed)
                            && last_burst.is_none_or(|t| now - t >= interval)
                        {
                            // `fall` probes, BURST_SPACING apart, each sent without waiting for
                            // the one before (their results reach the decider in the order
                            // sent); the first success ends the burst.
                            last_burst = Some(now);
                            burst = Some(trigger);
                            launched = 0;
                            next_at = now;
                        }
                    }
                    None => listening = false,
                },
            }
        }
    };
    // The state: results as they come, and the hold timer between them.
    let decider = async {
        let mut last_ok = Instant::now();
        // When the failed probes sent after `last_ok` were sent (the latest `fall` of them).
        let mut failed_since_ok: VecDeque<Instant> = VecDeque::new();
        loop {
            let armed =
                tracker.state() == Some(Health::Up) && failed_since_ok.len() + 1 >= fall as usize;
            let (result, lag, transition) = tokio::select! {
                biased;
                _ = tx.closed() => return,
                got = results.recv() => {
                    let Some(ProbeSent { sent, lag, trigger, result }) = got else { return };
                    let mut transition = None;
                    if result.ok {
                        last_ok = last_ok.max(sent);
                        failed_since_ok.retain(|&f| f >= last_ok);
                        transition = tracker.record(true).1;
                    } else if sent >= last_ok {
                        failed_since_ok.push_back(sent);
                        if failed_since_ok.len() > fall as usize {
                            failed_since_ok.pop_front();
                        }
                        // A burst's timeouts count: the burst is there to decide at once.
                        transition = if result.timed_out && trigger.is_none() {
                            tracker.record_timeout().1
                        } else {
                            tracker.record(false).1
                        };
                    }
                    // (A failure of a probe sent before the last success says nothing new.)
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
                streak: tracker.streak(),
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

    /// The schedule of a path probed every `interval` with `timeout` (`None`: adaptive, taken
    /// as at most a quarter of the interval) and `fall`: probes go out early by the timeout
    /// over `fall` (at most half the interval in all), so that `fall` of them fit in the hold
    /// time with their timeouts.
    pub fn for_probe(
        path_id: u32,
        epoch: u64,
        interval: Duration,
        timeout: Option<Duration>,
        fall: u32,
    ) -> Self {
        let lead = timeout.unwrap_or(interval / 4).min(interval / 2) / fall.max(1);
        Self::new(path_id, epoch, interval, lead)
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
