//! Measuring entry points for `cargo xtask bench`, never loaded by the daemon.
//!
//! `BPF_PROG_TEST_RUN` with `repeat` does not restore the frame between iterations, so a
//! program that rewrites it would measure its own output after the first run. These entry
//! points first copy the template frame back (`LB_BENCH`), optionally give it another flow,
//! then run the real handler; `bench_restore` does the copy alone, so its cost can be
//! subtracted. The generator, the bare redirect and the sink serve the throughput rig.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_prandom_u32,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    csum,
    maps::{
        BENCH_FRAME, BENCH_NAT_REF_DMAC, BENCH_NAT_REF_DST, BENCH_NAT_REF_SMAC, BENCH_VARY_NONE,
        BENCH_VARY_RANDOM, BENCH_VARY_SEQUENCE, BenchTemplate, bench_flow,
    },
    nat::{self, L4, Side},
    net::{ETH_HDR_LEN, ETH_P_IP, ETH_P_IPV6, EthHdr, IPPROTO_UDP, Ipv4Hdr, UdpHdr},
};

use crate::{maps::LB_TX_PORTS, parse::ptr_at};

#[map]
pub static LB_BENCH: Array<BenchTemplate> = Array::with_max_entries(1, 0);

#[map]
pub static LB_BENCH_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static LB_BENCH_SINK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Offsets in an untagged, option-less IPv4/UDP frame.
const SRC_ADDR: usize = 14 + 12;
const SRC_PORT: usize = 14 + 20;
/// The same in an untagged IPv6/UDP frame without extension headers: the source address's
/// last four bytes, the source port, the UDP checksum.
const SRC_ADDR6: usize = 14 + 8 + 12;
const SRC_PORT6: usize = 14 + 40;
const UDP_CHECK6: usize = 14 + 40 + 6;

#[inline(always)]
fn next_seq() -> u32 {
    match LB_BENCH_SEQ.get_ptr_mut(0) {
        Some(p) => {
            // SAFETY: a per-CPU slot, valid for the run and touched by no other CPU.
            let v = unsafe { &mut *p };
            *v += 1;
            *v as u32
        }
        None => 0,
    }
}

/// Writes flow number `i`'s source address and port into the frame (IPv4 or IPv6 by its
/// EtherType). An IPv6 frame's UDP checksum follows (IPv6 forbids none); an IPv4 template has
/// none.
#[inline(always)]
fn set_flow(ctx: &XdpContext, i: u32, with_addr: bool) -> Option<()> {
    let (addr, port) = bench_flow(i);
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: bounds-checked.
    let v6 = unsafe { (*eth).proto } == ETH_P_IPV6.to_be_bytes();
    let (addr_at, port_at) = if v6 {
        (SRC_ADDR6, SRC_PORT6)
    } else {
        (SRC_ADDR, SRC_PORT)
    };
    let mut old_addr = [0u8; 4];
    if with_addr {
        let a: *mut [u8; 4] = ptr_at(ctx, addr_at)?;
        // SAFETY: bounds-checked.
        unsafe {
            old_addr = *a;
            *a = addr;
        }
    }
    let p: *mut [u8; 2] = ptr_at(ctx, port_at)?;
    // SAFETY: bounds-checked.
    let old_port = unsafe { core::ptr::replace(p, port) };
    if v6 {
        let c: *mut [u8; 2] = ptr_at(ctx, UDP_CHECK6)?;
        // SAFETY: bounds-checked.
        unsafe {
            let mut check = *c;
            if with_addr {
                check = csum::replace32(check, old_addr, addr);
            }
            *c = csum::replace16(check, old_port, port);
        }
    }
    Some(())
}

/// Copies the template back over the frame (8 bytes at a time), then varies its flow.
#[inline(always)]
fn restore(ctx: &XdpContext) -> Option<()> {
    let t = LB_BENCH.get(0)?;
    let len = t.len as usize;
    let mut i = 0;
    while i < BENCH_FRAME / 8 {
        let off = i * 8;
        if off + 8 > len {
            break;
        }
        let dst: *mut [u8; 8] = ptr_at(ctx, off)?;
        let src = t.frame.get(off..off + 8)?;
        // SAFETY: `dst` bounds-checked; `src` is 8 bytes of the template.
        unsafe {
            core::ptr::copy_nonoverlapping(src.as_ptr(), dst.cast::<u8>(), 8);
        }
        i += 1;
    }
    match t.vary {
        BENCH_VARY_NONE => Some(()),
        BENCH_VARY_SEQUENCE => set_flow(ctx, next_seq(), true),
        BENCH_VARY_RANDOM => {
            // SAFETY: a helper without arguments.
            let r = unsafe { bpf_get_prandom_u32() };
            set_flow(ctx, r % t.flows.max(1), true)
        }
        _ => Some(()),
    }
}

/// Restores the frame, then runs `handler` (or passes, for the restore's own cost).
#[inline(always)]
pub fn measured(ctx: &XdpContext, handler: Option<fn(&XdpContext) -> u32>) -> u32 {
    if restore(ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    match handler {
        Some(h) => h(ctx),
        None => xdp_action::XDP_PASS,
    }
}

/// Live-frames traffic generator: the template frame with a new source port per frame (modulo
/// `flows`), sent out of the interface it runs on. The template has UDP checksum 0, so the
/// frame stays valid.
#[inline(always)]
pub fn generate(ctx: &XdpContext) -> u32 {
    // Live frames recycle their pages without restoring the bytes: what the edge rewrote in
    // place would come back. Start from the template every time.
    if restore(ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    let flows = LB_BENCH.get(0).map_or(1, |t| t.flows.max(1));
    let _ = set_flow(ctx, next_seq() % flows, false);
    xdp_action::XDP_TX
}

/// Sends every frame to the template's `port` through the devmap: the rig's ceiling.
#[inline(always)]
pub fn redirect(_ctx: &XdpContext) -> u32 {
    let port = LB_BENCH.get(0).map_or(0, |t| t.port);
    LB_TX_PORTS
        .redirect(port, 0)
        .unwrap_or(xdp_action::XDP_DROP)
}

/// Counts and drops.
#[inline(always)]
pub fn sink(_ctx: &XdpContext) -> u32 {
    if let Some(p) = LB_BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot.
        unsafe { *p += 1 };
    }
    xdp_action::XDP_DROP
}

/// The stateless-NAT reference (`lb_common::maps::PROG_BENCH_NAT_REF`): an untagged IPv4/UDP
/// frame gets a fixed destination, its checksums (the same incremental arithmetic as the
/// datapath), TTL and MACs, and goes to the template's `port` through the devmap. No flow, no
/// VIP, no FIB: what a flow hit would cost if the datapath did nothing else.
#[inline(always)]
pub fn nat_ref(ctx: &XdpContext) -> u32 {
    let (Some(eth), Some(ip)) = (
        ptr_at::<EthHdr, _>(ctx, 0),
        ptr_at::<Ipv4Hdr, _>(ctx, ETH_HDR_LEN),
    ) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: both bounds-checked just above.
    let (eth, ip) = unsafe { (&mut *eth, &mut *ip) };
    if eth.proto != ETH_P_IP.to_be_bytes() || ip.version_ihl != 0x45 || ip.proto != IPPROTO_UDP {
        return xdp_action::XDP_PASS;
    }
    let Some(udp) = ptr_at::<UdpHdr, _>(ctx, ETH_HDR_LEN + 20) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: bounds-checked just above.
    let udp = unsafe { &mut *udp };
    nat::rewrite(ip, L4::Udp(udp), Side::Dst, BENCH_NAT_REF_DST, None);
    nat::decrement_ttl(ip);
    eth.dst = BENCH_NAT_REF_DMAC;
    eth.src = BENCH_NAT_REF_SMAC;
    redirect(ctx)
}
