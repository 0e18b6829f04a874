//! Counting: verdicts and reasons into `LB_COUNTERS`, traffic into the per VIP / per path
//! arrays. Per-CPU maps, so plain increments are race-free.

use crate::ctx::Packet;
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use aya_log_ebpf::error;
use lb_common::{
    Counter,
    counters::Disposition,
    maps::{TrafficStats, pair_slot},
    net::{TCP_ACK, TCP_SYN},
};

use crate::maps::{LB_COUNTERS, LB_PAIR_STATS, LB_PATH_SEEN};

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

/// Records what a TCP segment with `flags`, forwarded to (`Dir::In`) or from (`Dir::Out`)
/// path `path`, says about the path's datapath: the first SYN waiting for an answer, and the
/// last SYN-ACK. Writes only when that changes (or once a second for SYN-ACKs), so busy paths
/// do not bounce the shared cache line between CPUs.
#[inline(always)]
pub fn handshake(path: u32, flags: u8, dir: Dir) {
    let syn = flags & TCP_SYN != 0;
    let ack = flags & TCP_ACK != 0;
    if !syn {
        return;
    }
    let Some(seen) = LB_PATH_SEEN.get_ptr_mut(path) else {
        return;
    };
    // SAFETY: an array slot, valid for the program's run. Other CPUs may write it at the same
    // time; a lost update only shifts a timestamp.
    let seen = unsafe { &mut *seen };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    match (dir, ack) {
        (Dir::In, false) if seen.syn_pending_ns <= seen.synack_ns => seen.syn_pending_ns = now,
        (Dir::Out, true)
            if seen.syn_pending_ns > seen.synack_ns || now > seen.synack_ns + 1_000_000_000 =>
        {
            seen.synack_ns = now;
        }
        _ => {}
    }
}
