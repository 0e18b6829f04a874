//! Notify hooks (keepalived's `notify`): a target's `notify.command` runs on each transition
//! of its paths and each drain, with the details in `LB_*` environment variables.
//!
//! The daemon never waits for a hook: it hands the notification to the target's queue and goes
//! on. One hook of a target runs at a time, in the order of the events (a script that keeps
//! state sees them in order); each is killed at `notify.timeout_ms`. A queue that is full (a
//! hook slower than its target's events) drops the notification, logged and counted; so do a
//! failure to start and a non-zero exit. Nothing a hook does reaches the datapath.

use std::{collections::BTreeMap, process::Stdio, sync::Arc};

use log::{info, warn};
use tokio::{process::Command, sync::mpsc};

use crate::{config::Notify, metrics::HookCounts};

/// How many notifications of one target may wait for its hook.
pub const QUEUE: usize = 64;

/// What a hook is told, as `LB_*` variables (`LB_EVENT`, `LB_TARGET`, …).
pub(crate) type Vars = Vec<(&'static str, String)>;

pub(crate) type Counts = Arc<std::sync::Mutex<HookCounts>>;

/// The hook runners, one per target with a `notify` section.
#[derive(Default)]
pub(crate) struct Hooks {
    runners: BTreeMap<String, (Notify, mpsc::Sender<Vars>)>,
    pub counts: Counts,
}

impl Hooks {
    /// Follows a configuration: a runner per target with `notify`, started on `rt`; a
    /// runner whose settings changed is replaced (the queued notifications of the old one
    /// still run).
    pub(crate) fn configure<'a>(
        &mut self,
        targets: impl Iterator<Item = (&'a str, Option<&'a Notify>)>,
        rt: &tokio::runtime::Handle,
    ) {
        let mut next = BTreeMap::new();
        for (name, notify) in targets {
            let Some(notify) = notify else { continue };
            match self.runners.remove(name) {
                Some((old, tx)) if old == *notify => {
                    next.insert(name.to_string(), (old, tx));
                }
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    rt.spawn(run(
                        name.to_string(),
                        notify.clone(),
                        rx,
                        Arc::clone(&self.counts),
                    ));
                    next.insert(name.to_string(), (notify.clone(), tx));
                }
            }
        }
        self.runners = next;
    }

    /// Queues a notification for target `target`'s hook, if it has one.
    pub(crate) fn notify(&self, target: &str, vars: Vars) {
        let Some((_, tx)) = self.runners.get(target) else {
            return;
        };
        if tx.try_send(vars).is_err() {
            warn!(
                "{target}: notify hook: {QUEUE} notifications are waiting already; this one is dropped"
            );
            lock(&self.counts).dropped += 1;
        }
    }
}

fn lock(c: &Counts) -> std::sync::MutexGuard<'_, HookCounts> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs target `target`'s hook for each notification, one at a time.
async fn run(target: String, notify: Notify, mut rx: mpsc::Receiver<Vars>, counts: Counts) {
    while let Some(vars) = rx.recv().await {
        let result = once(&notify, &vars).await;
        let event = vars
            .iter()
            .find(|(k, _)| *k == "LB_EVENT")
            .map_or("", |(_, v)| v.as_str());
        let mut c = lock(&counts);
        match result {
            Outcome::Ok => c.ok += 1,
            Outcome::Failed(why) => {
                c.failed += 1;
                warn!("{target}: notify hook for {event}: {why}");
            }
            Outcome::TimedOut => {
                c.timed_out += 1;
                warn!(
                    "{target}: notify hook for {event}: still running after {:?}: killed",
                    notify.timeout
                );
            }
        }
    }
}

enum Outcome {
    Ok,
    Failed(String),
    TimedOut,
}

async fn once(notify: &Notify, vars: &Vars) -> Outcome {
    let Some((program, args)) = notify.command.split_first() else {
        return Outcome::Failed("no command".into());
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v)))
        // The daemon's own notification channel is not the hook's.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("starting {program}: {e}")),
    };
    match tokio::time::timeout(notify.timeout, child.wait_with_output()).await {
        // Dropping the future drops the child: killed (`kill_on_drop`) and reaped by tokio.
        Err(_) => Outcome::TimedOut,
        Ok(Err(e)) => Outcome::Failed(format!("waiting for {program}: {e}")),
        Ok(Ok(out)) => {
            let said = |bytes: &[u8]| {
                let text = String::from_utf8_lossy(bytes);
                let text = text.trim();
                let mut cut: String = text.chars().take(200).collect();
                if cut.len() < text.len() {
                    cut.push('…');
                }
                cut
            };
            if out.status.success() {
                let stdout = said(&out.stdout);
                if !stdout.is_empty() {
                    info!("notify hook {program}: {stdout}");
                }
                Outcome::Ok
            } else {
                Outcome::Failed(format!(
                    "{program} exited with {}: {}",
                    out.status,
                    said(&out.stderr)
                ))
            }
        }
    }
}

/// The variables every notification has: what, when, which target.
pub(crate) fn base(event: &str, target: &str) -> Vars {
    vec![
        ("LB_EVENT", event.to_string()),
        ("LB_TARGET", target.to_string()),
        (
            "LB_TIME",
            humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        ),
        ("LB_PID", std::process::id().to_string()),
    ]
}
