//! Counting: verdicts and reasons into `LB_COUNTERS`, traffic into the per VIP / per path
//! arrays. Per-CPU maps, so plain increments are race-free.

use crate::ctx::Packet;
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use aya_log_ebpf::error;
use lb_common::{
    Counter,
    counters::Disposition,
    maps::{
        PASSIVE_EVENT_GAP_NS, PASSIVE_SILENCE, PASSIVE_SYN, PassiveEvent, TrafficStats, pair_slot,
    },
    net::{TCP_ACK, TCP_SYN},
};

use crate::maps::{LB_COUNTERS, LB_EVENTS, LB_PAIR_STATS, LB_PATH_SEEN};

/// A packet the handler dealt with.
pub enum Verdict {
    /// Sent back out of the interface it came in on by the program (`XDP_TX`; TC: a redirect
    /// to that interface).
    Tx,
    /// Sent out of another interface by the program (`XDP_REDIRECT`, TC: `TC_ACT_REDIRECT`).
    Redirect,
    /// Translated, then handed to the kernel to forward, for the reason given.
    Kernel(Counter),
    /// Something that cannot happen did: a bug, never the packet's content.
    Fault,
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

/// The verdict counters (named after XDP's actions; the TC hook counts into the same).
const fn verdict_counter(verdict: &Result<Verdict, Counter>) -> Counter {
    match verdict {
        Ok(Verdict::Tx) => Counter::XdpTx,
        Ok(Verdict::Redirect) => Counter::XdpRedirect,
        Ok(Verdict::Kernel(_)) => Counter::XdpPass,
        Ok(Verdict::Fault) => Counter::XdpAborted,
        Err(reason) => match reason.disposition() {
            Some(Disposition::Pass) => Counter::XdpPass,
            Some(Disposition::Drop) => Counter::XdpDrop,
            None => Counter::XdpAborted,
        },
    }
}

/// Turns a handler's outcome into the hook's return code, counting the reason and the verdict,
/// after the hook has completed what it deferred ([`Packet::commit`]).
#[inline(always)]
pub fn record<C: Packet>(ctx: &C, outcome: Outcome) -> u32 {
    let mut verdict = verdict_counter(&outcome);
    match outcome {
        Ok(Verdict::Kernel(reason)) | Err(reason) => count(reason),
        Ok(_) => {}
    }
    if verdict == Counter::XdpAborted {
        // A handler returned an event counter as a reason, or a fault: a bug.
        error!(ctx, "internal fault: the handler's outcome has no verdict");
    } else if !ctx.commit() {
        error!(ctx, "internal fault: the checksum update was refused");
        verdict = Counter::XdpAborted;
    }
    count(verdict);
    match verdict {
        Counter::XdpTx => C::TX,
        Counter::XdpRedirect => C::REDIRECT,
        Counter::XdpPass => C::PASS,
        Counter::XdpDrop => C::DROP,
        _ => C::ABORTED,
    }
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

/// Counts one translated packet: the `event`, and the whole frame in its one traffic slot,
/// (path `path`, VIP rank `vip_rank`): the VIP's and the path's traffic are sums of those.
#[inline(always)]
pub fn translated<C: Packet>(ctx: &C, event: Counter, vip_rank: u8, path: u32, dir: Dir) {
    count(event);
    if let Some(s) = LB_PAIR_STATS.get_ptr_mut(pair_slot(path, vip_rank)) {
        add(s, dir, ctx.len() as u64);
    }
}

/// Records what forwarding one packet to (`Dir::In`) or from (`Dir::Out`) path `path` says
/// about the path's datapath (`tcp_flags`: the segment's, for TCP): the first SYN waiting for
/// an answer and the last SYN-ACK; the first packet toward the path since one came back, and
/// when one last came back. Writes only when that changes (or once per clock tick for packets
/// coming back), so busy paths do not bounce the shared cache line between CPUs.
///
/// The passive trigger: toward a path with a threshold (`passive_us`, 0: off), a packet finding
/// a SYN or any traffic unanswered for longer raises a [`PassiveEvent`] on `LB_EVENTS`, at most
/// one per path every `PASSIVE_EVENT_GAP_NS`. The daemon then probes the path at once; the
/// event decides nothing by itself.
#[inline(always)]
pub fn path_seen(path: u32, tcp_flags: Option<u8>, dir: Dir, passive_us: u32) {
    let Some(seen) = LB_PATH_SEEN.get_ptr_mut(path) else {
        return;
    };
    // SAFETY: an array slot, valid for the program's run. Other CPUs may write it at the same
    // time; a lost update only shifts a timestamp.
    let seen = unsafe { &mut *seen };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let flags = tcp_flags.unwrap_or(0);
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    match dir {
        Dir::In => {
            if syn && !ack && seen.syn_pending_ns <= seen.synack_ns {
                seen.syn_pending_ns = now;
            }
            if seen.in_pending_ns <= seen.out_ns && seen.in_pending_ns != now {
                seen.in_pending_ns = now;
            }
            if passive_us == 0 {
                return;
            }
            let syn_wait = if seen.syn_pending_ns > seen.synack_ns {
                now.saturating_sub(seen.syn_pending_ns)
            } else {
                0
            };
            let silence = if seen.in_pending_ns > seen.out_ns {
                now.saturating_sub(seen.in_pending_ns)
            } else {
                0
            };
            let (kind, waited) = if syn_wait >= silence {
                (PASSIVE_SYN, syn_wait)
            } else {
                (PASSIVE_SILENCE, silence)
            };
            if waited > u64::from(passive_us) * 1000
                && now > seen.signalled_ns + PASSIVE_EVENT_GAP_NS
            {
                seen.signalled_ns = now;
                let event = PassiveEvent {
                    path,
                    kind,
                    waited_ns: waited,
                };
                // A full ring only loses this word; the next packet says it again.
                let _ = LB_EVENTS.output::<PassiveEvent>(&event, 0);
            }
        }
        Dir::Out => {
            if syn
                && ack
                && (seen.syn_pending_ns > seen.synack_ns || now > seen.synack_ns + 1_000_000_000)
            {
                seen.synack_ns = now;
            }
            if seen.in_pending_ns > seen.out_ns || now > seen.out_ns {
                seen.out_ns = now;
            }
        }
    }
}
