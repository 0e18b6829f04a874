//! Forwarding a translated packet: `bpf_fib_lookup` for the egress interface and next-hop MAC,
//! then `XDP_TX` (same interface) or `XDP_REDIRECT` through the devmap. What XDP cannot finish
//! goes to the kernel, counted.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_FWD_DISABLED, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LKUP_RET_UNSUPP_LWT,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns},
};
use lb_common::{
    Counter,
    hash::HashAddr,
    maps::{MAX_PATHS, NEXTHOP_TTL_NS, NextHop, RETURN_NEXTHOPS},
    nat::IpHeader,
    net::EthHdr,
};

use crate::{
    ctx::Packet,
    family::Family,
    parse::{Datagram, L2},
    stats::Verdict,
};

/// Where the FIB says a packet goes.
pub struct Route {
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
}

/// What to do with a packet once translated.
pub enum Next {
    Send(Route),
    Kernel(Counter),
    /// Larger than the egress MTU (the value) with DF set (or IPv6): answer with an ICMP
    /// "fragmentation needed" (ICMPv6 "packet too big") instead of translating. Never returned
    /// for a packet that is an ICMP error.
    TooBig(u16),
}

/// The addresses and ports a packet will carry once translated: what the FIB is asked about.
#[derive(Clone, Copy)]
pub struct Flow<A> {
    pub src: A,
    pub dst: A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
}

/// Looks the translated packet up in the FIB, before anything is rewritten, so a packet that
/// cannot be forwarded leaves untouched.
#[inline(always)]
pub fn route<C: Packet, F: Family>(
    ctx: &C,
    d: &Datagram,
    flow: &Flow<F::Addr>,
) -> Result<Next, Counter> {
    route_with::<C, F>(ctx, d, flow)
}

/// [`route`] for a packet that must not be answered with an ICMP error (it is one): too big
/// with DF is a counted drop.
#[inline(always)]
pub fn route_quiet<C: Packet, F: Family>(
    ctx: &C,
    d: &Datagram,
    flow: &Flow<F::Addr>,
) -> Result<Next, Counter> {
    match route::<C, F>(ctx, d, flow)? {
        Next::TooBig(_) => Err(Counter::DropFragmentNeeded),
        next => Ok(next),
    }
}

#[inline(always)]
fn route_with<C: Packet, F: Family>(
    ctx: &C,
    d: &Datagram,
    flow: &Flow<F::Addr>,
) -> Result<Next, Counter> {
    // SAFETY: a plain C struct; all-zero is its "unset" state.
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.l4_protocol = d.proto;
    p.sport = u16::from_ne_bytes(flow.sport);
    p.dport = u16::from_ne_bytes(flow.dport);
    p.__bindgen_anon_1.tot_len = ctx.fib_tot_len(d.tot_len);
    F::fib(&mut p, d, &flow.src, &flow.dst);
    // A tagged packet is looked up as arriving on the interface that carries the tag, not on
    // its VLAN device: routes and forwarding are the same unless policy rules name the VLAN
    // device as the input interface (documented).
    p.ifindex = ctx.ingress_ifindex();
    // SAFETY: `p` is a valid `bpf_fib_lookup` of the size passed, and `ctx` is the program's.
    let rc = unsafe { fib_lookup(ctx.as_ptr(), &mut p, size_of::<bpf_fib_lookup>() as i32, 0) };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(Next::Send(Route {
            ifindex: p.ifindex,
            smac: p.smac,
            dmac: p.dmac,
        })),
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(Next::Kernel(Counter::PassNoNeighbour)),
        // A local (or broadcast...) destination: this host's own traffic, e.g. the reply to a
        // health probe from a path address. Left alone, untranslated.
        BPF_FIB_LKUP_RET_NOT_FWDED => Err(Counter::PassLocal),
        // Left untranslated: the kernel answers as a host that does not forward.
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(Counter::PassForwardingOff),
        BPF_FIB_LKUP_RET_UNSUPP_LWT => Ok(Next::Kernel(Counter::PassFibUnsupported)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED if d.df => {
            // SAFETY: on FRAG_NEEDED the kernel wrote the MTU into this union member.
            Ok(Next::TooBig(unsafe { p.__bindgen_anon_1.mtu_result }))
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Ok(Next::Kernel(Counter::PassFragmentNeeded)),
        _ => Err(Counter::DropNoRoute),
    }
}

/// The next-hop cache slot of a packet toward path `path` (ingress).
#[inline(always)]
pub fn path_slot(path: u32) -> u32 {
    path
}

/// The next-hop cache slot of a packet toward client `addr` (return).
#[inline(always)]
pub fn client_slot<A: HashAddr>(addr: &A) -> u32 {
    MAX_PATHS + (addr.filter_slot() & (RETURN_NEXTHOPS - 1))
}

/// [`route`], through a per-CPU cache of FIB answers (`LB_NEXTHOPS`, slot from [`path_slot`]
/// or [`client_slot`]): an answer is reused while it is fresh ([`NEXTHOP_TTL_NS`]), for the
/// same destination and ingress interface, and for packets no longer than one the FIB
/// accepted; otherwise the FIB is asked, and a forwarding answer kept. The FIB lookup is most
/// of the per-packet cost; a route or neighbour change reaches packets within the TTL. The
/// cache assumes the route does not depend on the packet's source address.
#[inline(always)]
pub fn route_cached<C: Packet, F: Family>(
    ctx: &C,
    d: &Datagram,
    flow: &Flow<F::Addr>,
    slot: u32,
) -> Result<Next, Counter> {
    route_cached_inline::<C, F>(ctx, d, flow, slot)
}

#[inline(always)]
fn route_cached_inline<C: Packet, F: Family>(
    ctx: &C,
    d: &Datagram,
    flow: &Flow<F::Addr>,
    slot: u32,
) -> Result<Next, Counter> {
    let tot_len = d.tot_len;
    let in_ifindex = ctx.ingress_ifindex();
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let cached = F::nexthops().get_ptr_mut(slot);
    if let Some(c) = cached {
        // SAFETY: a per-CPU slot, valid for the run and touched by no other CPU.
        let c = unsafe { &*c };
        if now < c.expires_ns
            && c.dst == flow.dst
            && c.in_ifindex == in_ifindex
            && tot_len <= c.max_len
        {
            return Ok(Next::Send(Route {
                ifindex: c.ifindex,
                smac: c.smac,
                dmac: c.dmac,
            }));
        }
    }
    let next = route::<C, F>(ctx, d, flow)?;
    if let (Next::Send(r), Some(c)) = (&next, cached) {
        // SAFETY: as above.
        let c = unsafe { &mut *c };
        let same = now < c.expires_ns
            && c.dst == flow.dst
            && c.ifindex == r.ifindex
            && c.in_ifindex == in_ifindex
            && c.dmac == r.dmac;
        *c = NextHop {
            expires_ns: now + NEXTHOP_TTL_NS,
            ifindex: r.ifindex,
            in_ifindex,
            dst: flow.dst,
            max_len: if same {
                c.max_len.max(tot_len)
            } else {
                tot_len
            },
            _pad: 0,
            smac: r.smac,
            dmac: r.dmac,
            _pad2: Default::default(),
        };
    }
    Ok(next)
}

/// Sends a translated packet on: TTL and MACs for a packet the datapath forwards itself (a
/// VLAN tag it arrived with removed); nothing more for one the kernel forwards (it decrements
/// the TTL, needs our MAC as destination, and its VLAN device takes the tag).
#[inline(always)]
pub fn finish<C: Packet, F: Family>(ctx: &C, l2: &L2, ip: &mut F::Hdr, next: Next) -> Verdict {
    let route = match next {
        Next::Send(route) => route,
        Next::Kernel(reason) => {
            ctx.hand_off();
            return Verdict::Kernel(reason);
        }
        // Handlers answer `TooBig` before translating; reaching here is a bug, not the packet.
        Next::TooBig(_) => return Verdict::Fault,
    };
    let verdict = if route.ifindex == ctx.ingress_ifindex() {
        ctx.bounce();
        Verdict::Tx
    } else if ctx.redirect(route.ifindex) {
        Verdict::Redirect
    } else {
        ctx.hand_off();
        return Verdict::Kernel(Counter::PassNoTxPort);
    };
    ip.decrement_ttl();
    if l2.vlan || ctx.vlan_outside() {
        if !ctx.untag(l2, route.dmac, route.smac) {
            return Verdict::Fault;
        }
        return verdict;
    }
    let Some(eth) = crate::parse::ptr_at::<EthHdr, C>(ctx, 0) else {
        return Verdict::Fault;
    };
    // SAFETY: bounds-checked just above.
    unsafe {
        (*eth).dst = route.dmac;
        (*eth).src = route.smac;
    }
    verdict
}
