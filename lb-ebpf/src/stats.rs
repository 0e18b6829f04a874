//! Counting: verdicts and reasons into `LB_COUNTERS`, traffic into the per VIP / per path
//! arrays. Per-CPU maps, so plain increments are race-free.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use aya_log_ebpf::error;
use lb_common::{Counter, counters::Disposition, maps::TrafficStats};

use crate::maps::{LB_COUNTERS, LB_PATH_STATS, LB_VIP_STATS};

/// A packet the handler dealt with.
pub enum Verdict {
    /// Translated and sent on by the program: `XDP_TX` or `XDP_REDIRECT`.
    Sent(u32),
    /// Translated, then handed to the kernel to forward, for the reason given.
    Kernel(Counter),
}

/// `Err(reason)`: not translated; the reason's disposition says pass or drop.
pub type Outcome = Result<Verdict, Counter>;

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(c) = LB_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU array slot, valid for the program's run and touched by no other CPU.
        unsafe { *c += 1 };
    }
}

/// Turns a handler's outcome into an XDP action, counting the reason and the verdict.
#[inline(always)]
pub fn record(ctx: &XdpContext, outcome: Outcome) -> u32 {
    let action = match outcome {
        Ok(Verdict::Sent(action)) => action,
        Ok(Verdict::Kernel(reason)) => {
            count(reason);
            xdp_action::XDP_PASS
        }
        Err(reason) => {
            count(reason);
            match reason.disposition() {
                Some(Disposition::Pass) => xdp_action::XDP_PASS,
                Some(Disposition::Drop) => xdp_action::XDP_DROP,
                // A handler returned an event counter as a reason: a bug, not packet content.
                None => {
                    error!(
                        ctx,
                        "internal fault: counter {} used as a drop reason", reason as u32
                    );
                    xdp_action::XDP_ABORTED
                }
            }
        }
    };
    count(Counter::verdict(action));
    action
}

/// Direction of a translated packet, for the traffic counters.
#[derive(Clone, Copy)]
pub enum Dir {
    /// Client → VM.
    In,
    /// VM → client.
    Out,
}

#[inline(always)]
fn add(stats: *mut TrafficStats, dir: Dir, bytes: u64) {
    // SAFETY: a per-CPU array slot, valid for the program's run and touched by no other CPU.
    let s = unsafe { &mut *stats };
    match dir {
        Dir::In => {
            s.in_packets += 1;
            s.in_bytes += bytes;
        }
        Dir::Out => {
            s.out_packets += 1;
            s.out_bytes += bytes;
        }
    }
}

/// Counts one translated packet: the `event`, and the whole frame against its VIP and path.
#[inline(always)]
pub fn translated(ctx: &XdpContext, event: Counter, vip: u32, path: u32, dir: Dir) {
    count(event);
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    if let Some(s) = LB_VIP_STATS.get_ptr_mut(vip) {
        add(s, dir, bytes);
    }
    if let Some(s) = LB_PATH_STATS.get_ptr_mut(path) {
        add(s, dir, bytes);
    }
}
