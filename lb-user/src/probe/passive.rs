//! The passive trigger's daemon side: the datapath writes a [`PassiveEvent`] to its `LB_EVENTS`
//! ring buffer when a path's client traffic goes unanswered past the path's threshold
//! (`PathValue::passive_us`); [`listen`] hands each one to that path's probe task, which probes
//! the path at once ([`crate::control::health::monitor`]). No polling: the ring buffer's descriptor wakes
//! the task.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use lb_common::maps::{PASSIVE_SYN, PassiveEvent};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{control::health::Trigger, probe::thread::ProbeStats};

/// Each path's probe task, by path id, as the daemon started them.
pub type Triggers = Arc<Mutex<HashMap<u32, mpsc::Sender<Trigger>>>>;

/// What an event says, for the probe task.
pub fn trigger_of(event: &PassiveEvent) -> Trigger {
    Trigger {
        what: if event.kind == PASSIVE_SYN {
            "a SYN"
        } else {
            "traffic"
        },
        waited: Duration::from_nanos(event.waited_ns),
    }
}

/// Reads `ring` on a task of the current runtime (the probes' own) and hands each event to its
/// path's task in `triggers` (a task busy with one already drops it), counting them in `stats`.
pub fn listen(
    ring: RingBuf<MapData>,
    triggers: Triggers,
    stats: Arc<ProbeStats>,
) -> std::io::Result<()> {
    // SAFETY: the ring buffer owns its map's descriptor, which stays open and the same for as
    // long as the `AsyncFd` (which owns the ring buffer) lives.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }?;
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                let Some(event) = PassiveEvent::from_bytes(&item) else {
                    continue;
                };
                stats.trigger(event.path, Instant::now());
                let sender = triggers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&event.path)
                    .cloned();
                if let Some(sender) = sender {
                    let _ = sender.try_send(trigger_of(&event));
                }
            }
            guard.clear_ready();
        }
    });
    Ok(())
}
