//! Per-path health: the rise/fall state machine ([`HealthTracker`], pure) and the async loop that
//! probes one path on an interval and reports every result ([`monitor`]).
//!
//! The probe itself (TCP connect, ICMP echo, HTTP GET) is a closure handed to [`monitor`], so the
//! tests drive the loop with a fake probe under tokio's paused clock; no I/O happens here.

use std::{
    collections::VecDeque,
    fmt,
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use tokio::{
    sync::mpsc,
    time::{self, Instant, MissedTickBehavior},
};

/// The health of one path, once known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Health {
    Up,
    Down,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Up => "up",
            Health::Down => "down",
        })
    }
}

/// A change of a path's health, with the reason for the logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// `None`: the state was unknown (no probe result yet).
    pub from: Option<Health>,
    pub to: Health,
    /// E.g. "3 consecutive failures (fall 3)" or "first probe succeeded".
    pub reason: String,
}

/// How many results [`HealthTracker::history`] shows.
pub const HISTORY_LEN: usize = 16;

/// The rise/fall state machine of one path.
///
/// With a known state, `rise` consecutive successes bring a down path up and `fall` consecutive
/// failures bring an up path down; so does the hold timer [`monitor`] keeps
/// ([`HealthTracker::hold_expired`]). A result that agrees with the current state resets the
/// count, so a probe that flaps (ok, fail, ok, ...) never changes a known state unless `rise` or
/// `fall` is 1.
///
/// An unknown state (no result yet, `initial: None`) is decided by the first result alone: there
/// is nothing to protect yet, waiting `rise` intervals before sending to a path that answers would
/// drop its traffic for nothing, and waiting `fall` intervals before declaring an unanswering
/// path down would keep sending to a dead path.
#[derive(Clone, Debug)]
pub struct HealthTracker {
    rise: u32,
    fall: u32,
    state: Option<Health>,
    /// Consecutive results that contradict `state` (reset by one that agrees).
    streak: u32,
    /// The last [`HISTORY_LEN`] results, oldest first.
    history: VecDeque<bool>,
}

impl HealthTracker {
    /// `rise` and `fall` of 0 are taken as 1 (one result is the least that can decide).
    pub fn new(rise: u32, fall: u32, initial: Option<Health>) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            state: initial,
            streak: 0,
            history: VecDeque::with_capacity(HISTORY_LEN),
        }
    }

    /// The current state; `None` until the first result when started unknown.
    pub fn state(&self) -> Option<Health> {
        self.state
    }

    /// The last results, oldest first, `+` a success and `-` a failure (e.g. `"++--+---"`).
    pub fn history(&self) -> String {
        self.history
            .iter()
            .map(|&ok| if ok { '+' } else { '-' })
            .collect()
    }

    /// The `fall` in force.
    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// No probe has succeeded for the hold time (BFD's detection time): an up path goes down,
    /// with `reason`. Anything else is left as it is.
    pub fn hold_expired(&mut self, reason: String) -> Option<Transition> {
        if self.state != Some(Health::Up) {
            return None;
        }
        self.state = Some(Health::Down);
        self.streak = 0;
        Some(Transition {
            from: Some(Health::Up),
            to: Health::Down,
            reason,
        })
    }

    /// Takes one probe result; returns the transition it causes, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        self.record(ok).1
    }

    /// [`Self::observe`], also returning the state after the result (known from then on).
    fn record(&mut self, ok: bool) -> (Health, Option<Transition>) {
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(ok);

        let seen = if ok { Health::Up } else { Health::Down };
        let Some(state) = self.state else {
            self.state = Some(seen);
            self.streak = 0;
            let outcome = if ok { "succeeded" } else { "failed" };
            let transition = Transition {
                from: None,
                to: seen,
                reason: format!("first probe {outcome}"),
            };
            return (seen, Some(transition));
        };
        if seen == state {
            self.streak = 0;
            return (state, None);
        }
        self.streak += 1;
        let (needed, results, knob) = if ok {
            (self.rise, "successes", "rise")
        } else {
            (self.fall, "failures", "fall")
        };
        if self.streak < needed {
            return (state, None);
        }
        self.state = Some(seen);
        let count = self.streak;
        self.streak = 0;
        let transition = Transition {
            from: Some(state),
            to: seen,
            reason: format!("{count} consecutive {results} ({knob} {needed})"),
        };
        (seen, Some(transition))
    }
}

/// The outcome of one probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub ok: bool,
    /// Round-trip time, when the probe measured one (normally only on success).
    pub rtt: Option<Duration>,
    /// What happened, for the logs (e.g. "connected", "connection refused", "timed out").
    pub detail: String,
}

/// What [`monitor`] reports to the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// One probe result of path `path_id`, sent for every probe (the daemon keeps the RTTs), or
    /// the hold timer's expiry (`result` `None`).
    Probe {
        path_id: u32,
        /// Which probe task of the path sent it ([`monitor`]'s `epoch`): a task replaced by a
        /// reload may still have results on their way, which [`judge`] drops.
        epoch: u64,
        result: Option<ProbeResult>,
        /// The state after this result (always known once a result has been seen).
        state: Health,
        /// `Some` when this result changed the state: the daemon recomputes its decisions.
        transition: Option<Transition>,
        /// [`HealthTracker::history`] after this result.
        history: String,
        /// How late this probe was sent after its place on the grid: the probe scheduling
        /// lag. `None` for the hold timer's expiry and for probes sent at once on a
        /// [`Trigger`] (off the grid).
        lag: Option<Duration>,
    },
}

impl Event {
    pub fn path_id(&self) -> u32 {
        let Event::Probe { path_id, .. } = self;
        *path_id
    }
}

/// The datapath's word that a path's client traffic goes unanswered (the passive trigger):
/// [`monitor`] probes the path at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trigger {
    /// What went unanswered, for the logs ("a SYN", "traffic").
    pub what: &'static str,
    pub waited: Duration,
}

/// What a probe event does to the daemon's view of its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// From a probe task that was replaced (a reload changed the path's probe): ignored, since
    /// the task now in charge started from the state the daemon had.
    Stale,
    /// The path's health stays as the daemon has it.
    Same,
    /// The path's health changes.
    Change(Transition),
}

/// Judges `event` for a path whose probe task now in charge has `current` epoch (`None`: the
/// path has none, it was removed) and whose health the daemon has as `known`.
///
/// The event's `state` is the probe task's own: when it differs from `known` without a
/// transition (the two drifted apart), it is taken as a change all the same, so the daemon
/// always ends up with the state of the task in charge.
pub fn judge(event: &Event, current: Option<u64>, known: Option<Health>) -> Verdict {
    let Event::Probe {
        epoch,
        state,
        transition,
        ..
    } = event;
    if current != Some(*epoch) {
        return Verdict::Stale;
    }
    match transition {
        Some(t) if known != Some(t.to) => Verdict::Change(t.clone()),
        _ if known != Some(*state) => Verdict::Change(Transition {
            from: known,
            to: *state,
            reason: "the probe task's state".into(),
        }),
        _ => Verdict::Same,
    }
}

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
/// traffic go unanswered) makes an up path be probed at once, `fall` times back to back until
/// one succeeds, so a dead path goes down in `fall` timeouts instead of waiting for its grid.
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
            for _ in 0..fall {
                let sent = Instant::now();
                let result = probe(Cause::Trigger).await;
                let ok = result.ok;
                let trigger = Some(trigger.clone());
                if results_tx
                    .send(ProbeSent {
                        sent,
                        lag: None,
                        trigger,
                        result,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                if ok {
                    break;
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
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;

    fn feed(tracker: &mut HealthTracker, results: &str) -> Vec<Transition> {
        results
            .chars()
            .filter_map(|c| tracker.observe(c == '+'))
            .collect()
    }

    #[test]
    fn unknown_state_is_decided_by_the_first_result() {
        let mut up = HealthTracker::new(3, 3, None);
        assert_eq!(up.state(), None);
        let t = up.observe(true);
        assert_eq!(
            t,
            Some(Transition {
                from: None,
                to: Health::Up,
                reason: "first probe succeeded".into()
            })
        );
        assert_eq!(up.state(), Some(Health::Up));

        let mut down = HealthTracker::new(3, 3, None);
        let t = down.observe(false).expect("first result decides");
        assert_eq!((t.from, t.to), (None, Health::Down));
        assert_eq!(t.reason, "first probe failed");
        // From then on rise applies: two successes are not enough with rise 3.
        assert!(feed(&mut down, "++").is_empty());
        assert_eq!(down.state(), Some(Health::Down));
    }

    #[test]
    fn fall_consecutive_failures_bring_up_down() {
        let mut t = HealthTracker::new(2, 3, Some(Health::Up));
        assert!(feed(&mut t, "--").is_empty());
        assert_eq!(t.state(), Some(Health::Up));
        let down = t.observe(false).expect("third failure");
        assert_eq!(down.from, Some(Health::Up));
        assert_eq!(down.to, Health::Down);
        assert_eq!(down.reason, "3 consecutive failures (fall 3)");
        // Further failures change nothing.
        assert!(feed(&mut t, "-----").is_empty());
    }

    #[test]
    fn rise_consecutive_successes_bring_down_up() {
        let mut t = HealthTracker::new(2, 3, Some(Health::Down));
        assert!(feed(&mut t, "+").is_empty());
        let up = t.observe(true).expect("second success");
        assert_eq!((up.from, up.to), (Some(Health::Down), Health::Up));
        assert_eq!(up.reason, "2 consecutive successes (rise 2)");
    }

    #[test]
    fn an_opposite_result_resets_the_streak() {
        let mut t = HealthTracker::new(3, 3, Some(Health::Up));
        assert!(feed(&mut t, "--+--+--").is_empty());
        assert_eq!(t.state(), Some(Health::Up));
        let down = feed(&mut t, "-");
        assert_eq!(down.len(), 1, "the third failure in a row");
        assert!(feed(&mut t, "++-++-++").is_empty());
        assert_eq!(t.state(), Some(Health::Down));
    }

    #[test]
    fn a_flapping_probe_never_flips_a_known_state() {
        for initial in [Health::Up, Health::Down] {
            for n in 2..=5 {
                let mut t = HealthTracker::new(n, n, Some(initial));
                let flaps = "+-".repeat(50);
                assert!(feed(&mut t, &flaps).is_empty(), "{initial} rise/fall {n}");
                assert_eq!(t.state(), Some(initial));
            }
        }
    }

    #[test]
    fn rise_and_fall_of_zero_act_as_one() {
        let mut t = HealthTracker::new(0, 0, Some(Health::Up));
        assert_eq!(feed(&mut t, "-+-").len(), 3);
    }

    #[test]
    fn history_shows_the_last_16_results_oldest_first() {
        let mut t = HealthTracker::new(3, 3, None);
        assert_eq!(t.history(), "");
        feed(&mut t, "++--+---");
        assert_eq!(t.history(), "++--+---");
        feed(&mut t, "++++----++++");
        assert_eq!(t.history(), "+---++++----++++");
        assert_eq!(t.history().len(), HISTORY_LEN);
    }

    const SECOND: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    /// A trigger channel that never carries one (its sender is gone).
    fn no_triggers() -> mpsc::Receiver<Trigger> {
        mpsc::channel(1).1
    }

    fn event(epoch: u64, state: Health, transition: Option<Transition>) -> Event {
        Event::Probe {
            path_id: 1,
            epoch,
            result: None,
            state,
            transition,
            history: String::new(),
            lag: None,
        }
    }

    /// Guards the reload race: a reload replaced the probe task (epoch 1 → 2) while the old
    /// task's "down" was queued; the new task started from "up" and would never send it again,
    /// so applying the old one would leave a live path down for good.
    #[test]
    fn results_of_a_replaced_probe_task_are_dropped() {
        let down = Transition {
            from: Some(Health::Up),
            to: Health::Down,
            reason: "3 consecutive failures (fall 3)".into(),
        };
        let stale = event(1, Health::Down, Some(down.clone()));
        assert_eq!(judge(&stale, Some(2), Some(Health::Up)), Verdict::Stale);
        assert_eq!(
            judge(&stale, None, Some(Health::Up)),
            Verdict::Stale,
            "path removed"
        );
        assert_eq!(
            judge(&stale, Some(1), Some(Health::Up)),
            Verdict::Change(down),
            "from the task in charge"
        );
        let same = event(2, Health::Up, None);
        assert_eq!(judge(&same, Some(2), Some(Health::Up)), Verdict::Same);
    }

    #[test]
    fn a_task_whose_state_drifted_from_the_daemons_is_followed() {
        let drifted = event(3, Health::Up, None);
        let Verdict::Change(t) = judge(&drifted, Some(3), Some(Health::Down)) else {
            panic!("the task's state wins");
        };
        assert_eq!((t.from, t.to), (Some(Health::Down), Health::Up));
        // A transition the daemon already has changes nothing.
        let again = event(
            3,
            Health::Up,
            Some(Transition {
                from: Some(Health::Down),
                to: Health::Up,
                reason: String::new(),
            }),
        );
        assert_eq!(judge(&again, Some(3), Some(Health::Up)), Verdict::Same);
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

    fn transitions(events: &[(Duration, Event)]) -> Vec<(Duration, Transition)> {
        events
            .iter()
            .filter_map(|(at, Event::Probe { transition, .. })| {
                transition.clone().map(|t| (*at, t))
            })
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
            lag,
        } = first;
        assert_eq!((*path_id, *epoch), (7, 0));
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

    #[tokio::test(start_paused = true)]
    async fn monitor_a_slow_probe_delays_the_grid() {
        // The second probe (at 1 s) takes 2.5 s: the third starts when it ends (3.5 s), and the
        // grid goes on from there.
        let starts = Arc::new(Mutex::new(Vec::new()));
        let start = Instant::now();
        let probe = {
            let starts = Arc::clone(&starts);
            move |_: Cause| {
                let mut starts = starts.lock().expect("not poisoned");
                starts.push(start.elapsed());
                let slow = starts.len() == 2;
                async move {
                    if slow {
                        time::sleep(Duration::from_millis(2500)).await;
                    }
                    ProbeResult {
                        ok: true,
                        rtt: None,
                        detail: String::new(),
                    }
                }
            }
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(monitor(
            Schedule::new(1, 0, SECOND, Duration::ZERO),
            probe,
            // A hold time (fall × interval) longer than the slow probe: grid timing alone.
            HealthTracker::new(1, 100, None),
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
        assert_eq!(ms[..5], [0, 1000, 3500, 4500, 5500]);
        // The third probe was due at 2 s: the lag the daemon exports.
        assert_eq!(lags, [0, 0, 1500, 0, 0]);
    }

    /// Guards the hold timer against a late grid: the probe sent at 1 s takes 3.5 s to
    /// succeed (as if the thread had stalled), so no probe is sent from 1 s to 4.5 s. The hold
    /// time (3 s from the success sent at 0 s) passes with no probe failed: the path stays up.
    #[tokio::test(start_paused = true)]
    async fn monitor_the_hold_timer_waits_for_the_probes_it_counts_on() {
        let calls = Arc::new(Mutex::new(0u32));
        let probe = {
            let calls = Arc::clone(&calls);
            move |_: Cause| {
                let mut calls = calls.lock().expect("not poisoned");
                *calls += 1;
                let slow = *calls == 2;
                async move {
                    if slow {
                        time::sleep(Duration::from_millis(3500)).await;
                    }
                    ProbeResult {
                        ok: true,
                        rtt: Some(MS),
                        detail: "connected".into(),
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
        let Event::Probe { lag, .. } = &seen[2].1;
        assert_eq!(
            *lag,
            Some(Duration::from_millis(2500)),
            "due at 2 s, sent at 4.5 s"
        );
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
        // Successes at 0, 1, 2 s; down at 2 + 2 = 4 s; failures reported at 3.3, 4.3, ... s.
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
                (4300, Some(false), Health::Down),
                (5300, Some(false), Health::Down)
            ]
        );
    }

    /// Guards the lead: with probes every second less 100 ms (a 300 ms timeout over fall 3), two
    /// probes timing out after a success are not enough to take the path down: the third,
    /// sent at 2.7 s, answers before the hold time (3 s) runs out. Without the lead it would
    /// leave at 3 s, exactly when the timer fires, and the path would go down on two losses.
    #[tokio::test(start_paused = true)]
    async fn monitor_fall_minus_one_losses_never_take_a_path_down() {
        for (lead, downs) in [(100 * MS, 0), (Duration::ZERO, 1)] {
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
                    }
                }
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let tracker = HealthTracker::new(2, 3, Some(Health::Up));
            let task = tokio::spawn(monitor(
                Schedule::new(1, 0, SECOND, lead),
                probe,
                tracker,
                no_triggers(),
                tx,
            ));
            let mut seen = Vec::new();
            while start.elapsed() < 3500 * MS {
                let event = rx.recv().await.expect("running");
                seen.push((start.elapsed(), event));
            }
            drop(rx);
            task.await.expect("monitor ends");
            let got: Vec<_> = transitions(&seen)
                .into_iter()
                .filter(|(_, t)| t.to == Health::Down)
                .collect();
            assert_eq!(got.len(), downs, "lead {lead:?}: {got:?}");
        }
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
    /// three times back to back, and is down 30 ms later (the hold timer alone would take it
    /// down at 3 s), saying why.
    #[tokio::test(start_paused = true)]
    async fn monitor_a_trigger_probes_at_once_fall_times() {
        let (events, sent) = run_triggered(500 * MS, &[500 * MS], 2 * SECOND).await;
        let down = transitions(&events);
        assert_eq!(down.len(), 1, "{down:?}");
        assert_eq!(down[0].0, 530 * MS);
        assert_eq!(
            down[0].1.reason,
            "3 consecutive failures (fall 3), probed at once: a SYN unanswered for 8ms"
        );
        assert_eq!(sent[..4], [Duration::ZERO, 500 * MS, 510 * MS, 520 * MS]);
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
        let (events, sent) =
            run_triggered(10 * SECOND, &[300 * MS, 600 * MS], SECOND + 500 * MS).await;
        assert!(transitions(&events).is_empty());
        assert_eq!(sent, [Duration::ZERO, 300 * MS, SECOND]);

        // Down by the hold timer at 3 s (failing from 0.5 s): triggers after that are dropped.
        let (events, sent) = run_triggered(500 * MS, &[3500 * MS], 3800 * MS).await;
        assert_eq!(transitions(&events).len(), 1);
        assert_eq!(sent, [0, 1, 2, 3].map(|s| s * SECOND));
    }

    #[tokio::test(start_paused = true)]
    async fn monitor_a_zero_interval_is_one_millisecond() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let probe = |_: Cause| async {
            ProbeResult {
                ok: true,
                rtt: None,
                detail: String::new(),
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
}
