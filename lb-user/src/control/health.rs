//! Per-path health: the rise/fall state machine ([`HealthTracker`], pure), what a probe task
//! reports ([`Event`]) and how the daemon judges a report against what it knows ([`judge`]).

use std::{collections::VecDeque, fmt, time::Duration};

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

    /// Results in a row that contradict the state (toward `fall` while up, `rise` while
    /// down); 0 when the last one agreed.
    pub fn streak(&self) -> u32 {
        self.streak
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

    /// Takes a probe that timed out on its grid. While the path is up it is shown in the history
    /// and counts for nothing else: silence is the hold timer's to judge, which random loss
    /// rarely fools, while `fall` timeouts in a row it does often (10 % of round trips lost
    /// makes three in a row about once in a thousand probes). Otherwise it is a failure.
    pub(crate) fn record_timeout(&mut self) -> (Health, Option<Transition>) {
        if self.state != Some(Health::Up) {
            return self.record(false);
        }
        if self.history.len() == HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back(false);
        (Health::Up, None)
    }

    /// Takes one probe result; returns the transition it causes, if any.
    pub fn observe(&mut self, ok: bool) -> Option<Transition> {
        self.record(ok).1
    }

    /// [`Self::observe`], also returning the state after the result (known from then on).
    pub(crate) fn record(&mut self, ok: bool) -> (Health, Option<Transition>) {
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
    /// No answer came within the timeout (as opposed to an explicit failure: refused,
    /// unreachable, a wrong HTTP status).
    pub timed_out: bool,
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
        /// [`HealthTracker::streak`] after this result.
        streak: u32,
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

/// Health as shown to people.
pub fn health_name(h: Option<Health>) -> &'static str {
    match h {
        Some(Health::Up) => "up",
        Some(Health::Down) => "down",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {

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

    /// Guards the split between the hold timer and `fall`: a timeout on the grid of an up path
    /// is shown but neither counts toward `fall` nor breaks a streak of explicit failures; of a
    /// path that is down, or not known yet, it is a failure.
    #[test]
    fn a_timeout_of_an_up_path_is_the_hold_timers_to_judge() {
        let mut up = HealthTracker::new(2, 3, Some(Health::Up));
        for _ in 0..10 {
            assert_eq!(up.record_timeout(), (Health::Up, None));
        }
        assert_eq!(up.history(), "-".repeat(10));
        // Two explicit failures, a timeout, a third explicit failure: down.
        assert_eq!(up.observe(false), None);
        assert_eq!(up.observe(false), None);
        assert_eq!(up.record_timeout(), (Health::Up, None));
        let t = up.observe(false).expect("the third explicit failure");
        assert_eq!(t.to, Health::Down);
        // Down: a timeout resets the streak of successes.
        assert_eq!(up.observe(true), None);
        assert_eq!(up.record_timeout(), (Health::Down, None));
        assert_eq!(up.observe(true), None);
        assert!(up.observe(true).is_some(), "rise 2 after the timeout");
        // Unknown: a timeout decides.
        let mut unknown = HealthTracker::new(2, 3, None);
        let (state, t) = unknown.record_timeout();
        assert_eq!((state, t.map(|t| t.to)), (Health::Down, Some(Health::Down)));
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

    fn event(epoch: u64, state: Health, transition: Option<Transition>) -> Event {
        Event::Probe {
            path_id: 1,
            epoch,
            result: None,
            state,
            transition,
            history: String::new(),
            streak: 0,
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
}
