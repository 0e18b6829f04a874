//! systemd's service notifications (`Type=notify`, sd_notify(3)): READY once the
//! configuration is applied and the control socket listens, RELOADING and READY around a
//! reload, STOPPING at the end, a STATUS line, and the watchdog's keep-alive when the unit
//! sets `WatchdogSec=`. Without `NOTIFY_SOCKET` (not run by systemd) each is a no-op.

use std::time::Duration;

use log::debug;
use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("notifying systemd: {e}");
    }
}

/// Start-up done: serving.
pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins (systemd wants the monotonic time with it, to match the reload to the
/// request).
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub(crate) fn stopping() {
    send(&[NotifyState::Stopping]);
}

pub(crate) fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// How often to tell the watchdog the daemon's loop is alive: half its timeout (`None`: no
/// watchdog).
pub(crate) fn watchdog_every() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

pub(crate) fn watchdog() {
    send(&[NotifyState::Watchdog]);
}
