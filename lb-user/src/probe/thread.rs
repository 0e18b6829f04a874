//! The probes' own thread ([`ProbeThread`]) and what it is judged by ([`ProbeStats`]: probes
//! per path and the scheduling lag).
//!
//! Detection is only as good as the probes' timing: with a hold time of `fall × interval`, a
//! probe sent 10 ms late at a 10 ms interval is a third of the budget gone. So the probes, their
//! sockets and their timers run on a runtime with one worker thread and nothing else on it; map
//! writes, reloads, sweeps, netlink and the CLI's signals run on the daemon's thread, and the
//! metrics on theirs. The probe tasks hand their results over an unbounded channel, so a busy
//! daemon thread never holds a probe back (it keeps up on average: an event costs it
//! microseconds).

use std::{
    collections::{BTreeMap, VecDeque},
    io,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::runtime::{Builder, Handle, Runtime};

/// A tokio runtime with one worker thread (`lb-probes`) for the probe tasks.
pub struct ProbeThread {
    /// Always `Some` until dropped.
    runtime: Option<Runtime>,
}

impl ProbeThread {
    pub fn start() -> io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("lb-probes")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Where to spawn probe tasks and create what they use (`handle().enter()` while creating
    /// sockets, so they register with this runtime's reactor).
    pub fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("present until dropped")
            .handle()
    }
}

impl Drop for ProbeThread {
    /// Stops the probe tasks without waiting: dropping a runtime from within another one (the
    /// daemon's) is not allowed to block.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How far back [`ProbeStats::lag`] looks.
pub const LAG_WINDOW: Duration = Duration::from_secs(10);
/// The most lag samples kept (the newest): 1,000 paths probed every 10 ms give 100,000 a
/// second, and a scrape sorts what is kept.
pub const LAG_SAMPLES: usize = 65_536;

/// The probe scheduling lag over the last [`LAG_WINDOW`]: how late probes were sent after their
/// place on their path's grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// How many probes these are taken over.
    pub samples: usize,
}

/// Probe results per path since the daemon started, and the recent scheduling lag; written by
/// the daemon as results arrive, read by the metrics thread.
#[derive(Debug, Default)]
pub struct ProbeStats {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    probes: BTreeMap<u32, u64>,
    /// Passive triggers per path, and the last one's time.
    triggers: BTreeMap<u32, (u64, Option<Instant>)>,
    /// (when recorded, lag), oldest first.
    lags: VecDeque<(Instant, Duration)>,
}

impl ProbeStats {
    /// One probe result of `path`, sent `lag` after it was due (`None`: off the grid, on a
    /// passive trigger), recorded at `now`.
    pub fn record(&self, path: u32, lag: Option<Duration>, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *inner.probes.entry(path).or_default() += 1;
        let Some(lag) = lag else { return };
        if inner.lags.len() == LAG_SAMPLES {
            inner.lags.pop_front();
        }
        inner.lags.push_back((now, lag));
    }

    /// A passive trigger about `path` came at `now`.
    pub fn trigger(&self, path: u32, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inner.triggers.entry(path).or_default();
        entry.0 += 1;
        entry.1 = Some(now);
    }

    /// Passive triggers per path id since the daemon started.
    pub fn triggers(&self) -> BTreeMap<u32, u64> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.triggers.iter().map(|(p, (n, _))| (*p, *n)).collect()
    }

    /// Probe results per path id since the daemon started.
    pub fn probes(&self) -> BTreeMap<u32, u64> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.probes.clone()
    }

    /// The lag quantiles over the probes recorded in the [`LAG_WINDOW`] before `now` (nearest
    /// rank), `None` without any.
    pub fn lag(&self, now: Instant) -> Option<Lag> {
        let mut lags: Vec<Duration> = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            while inner
                .lags
                .front()
                .is_some_and(|(at, _)| now.saturating_duration_since(*at) > LAG_WINDOW)
            {
                inner.lags.pop_front();
            }
            inner.lags.iter().map(|(_, lag)| *lag).collect()
        };
        if lags.is_empty() {
            return None;
        }
        lags.sort_unstable();
        let rank = |q: f64| {
            let n = lags.len();
            let r = ((q * n as f64).ceil() as usize).clamp(1, n);
            lags[r - 1]
        };
        Some(Lag {
            p50: rank(0.5),
            p99: rank(0.99),
            max: rank(1.0),
            samples: lags.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn quantiles_are_nearest_rank() {
        let stats = ProbeStats::default();
        let now = Instant::now();
        assert_eq!(stats.lag(now), None);
        // 1..=100 ms, recorded out of order.
        for i in (1..=100u32).rev() {
            stats.record(i % 3, Some(MS * i), now);
        }
        let lag = stats.lag(now).expect("samples");
        assert_eq!((lag.p50, lag.p99, lag.max), (MS * 50, MS * 99, MS * 100));
        assert_eq!(lag.samples, 100);
        let probes = stats.probes();
        assert_eq!(probes.values().sum::<u64>(), 100);
        assert_eq!(probes[&0], 33);
    }

    #[test]
    fn one_sample_is_every_quantile() {
        let stats = ProbeStats::default();
        let now = Instant::now();
        stats.record(1, Some(MS * 7), now);
        let lag = stats.lag(now).expect("a sample");
        assert_eq!((lag.p50, lag.p99, lag.max), (MS * 7, MS * 7, MS * 7));
    }

    #[test]
    fn old_samples_leave_the_window_and_counts_stay() {
        let stats = ProbeStats::default();
        let start = Instant::now();
        stats.record(1, Some(MS * 500), start);
        let later = start + LAG_WINDOW + MS;
        stats.record(1, Some(MS), later);
        let lag = stats.lag(later).expect("the recent sample");
        assert_eq!((lag.max, lag.samples), (MS, 1));
        assert_eq!(stats.probes()[&1], 2, "counts are since the start");
        assert_eq!(stats.lag(later + LAG_WINDOW + MS), None);
    }

    #[test]
    fn only_the_newest_samples_are_kept() {
        let stats = ProbeStats::default();
        let now = Instant::now();
        stats.record(1, Some(Duration::from_secs(1)), now);
        for _ in 0..LAG_SAMPLES {
            stats.record(1, Some(MS), now);
        }
        let lag = stats.lag(now).expect("samples");
        assert_eq!((lag.max, lag.samples), (MS, LAG_SAMPLES));
    }

    #[test]
    fn probe_tasks_run_while_the_caller_blocks() {
        let thread = ProbeThread::start().expect("a runtime");
        let (tx, rx) = std::sync::mpsc::channel();
        thread.handle().spawn(async move {
            tokio::time::sleep(MS).await;
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send(name);
        });
        // The spawning thread runs nothing: the task runs on the probe thread all the same.
        let name = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the task ran");
        assert_eq!(name.as_deref(), Some("lb-probes"));
    }
}
