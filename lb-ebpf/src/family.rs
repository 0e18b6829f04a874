//! The two address families. The datapath is written once, generic over [`Family`], and
//! compiled twice: the IPv4 instantiation is the code IPv4 always ran (the same maps, keys and
//! instructions), the IPv6 one uses the `*6` twins of every map whose key or value holds an
//! address. The family is decided once, by the EtherType (`parse::ethernet`); the two
//! instantiations never meet again. Maps indexed by ids (targets, paths, ring, counters,
//! traffic) serve both.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    maps::{HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Counter,
    hash::HashAddr,
    maps::{
        Addr4, Addr6, EndpointKey, FlowKey, FlowValue, FragKey, FragKey6, FragValue, NextHop,
        RevValue, VipValue, addr6_words, low32,
    },
    nat::IpHeader,
    net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IcmpHdr, Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    ctx::Packet,
    deliver::Plan,
    icmp,
    maps::{
        LB_ADDRS, LB_ADDRS6, LB_FLOWS, LB_FLOWS6, LB_FRAGS, LB_FRAGS6, LB_NEXTHOPS, LB_NEXTHOPS6,
        LB_OUTBOUND, LB_OUTBOUND6, LB_PLAN6, LB_REV_NAT, LB_REV_NAT6, LB_SHADOWED, LB_SHADOWED6,
        LB_VIPS, LB_VIPS6,
    },
    parse::{self, Datagram, L2},
    stats::Outcome,
};

/// What an ICMP or ICMPv6 message is to the datapath.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    EchoRequest,
    EchoReply,
    /// An error quoting a datagram, of a type lb translates.
    Error,
    /// ICMPv6 of the link or the host (neighbour discovery, MLD): never touched.
    Control,
    /// Anything else.
    Other,
}

/// How the TC hook has the kernel follow an address change in a transport checksum
/// (`bpf_l4_csum_replace` with `BPF_F_PSEUDO_HDR`).
#[derive(Clone, Copy)]
pub enum AddrFix {
    /// A 4-byte field: old and new as they lie in the packet.
    Word(u32, u32),
    /// A longer field, as a checksum difference (`Σ ~old + Σ new`, native word order); the
    /// skb's complete checksum must be moved back by it afterwards (see `ctx`).
    Diff(u32),
}

/// One address family of the datapath.
pub trait Family: 'static {
    type Addr: Copy + Default + PartialEq + HashAddr + 'static;
    type Hdr: IpHeader<Addr = Self::Addr> + 'static;
    type FragKey: 'static;
    /// [`NextHop`]'s padding for this address size.
    type NextHopPad: Copy + Default + 'static;

    /// The family's ICMP protocol number.
    const ICMP: u8;
    /// ICMP's checksum covers the pseudo-header (ICMPv6), so echo follows a NAT.
    const ICMP_PSEUDO: bool;
    /// UDP without a checksum (0) is invalid (IPv6).
    const UDP_ZERO_INVALID: bool;
    /// Why a packet that is not ours, with an IP header that does not hold together, passes.
    const PASS_BAD: Counter;
    /// The handlers' second half (`deliver`) runs as a program of its own, reached by a tail
    /// call with the plan in [`Family::plan`]: IPv6's keys and addresses make both halves
    /// together too large for one 512-byte stack. IPv4 runs both inline.
    const SPLIT: bool;

    fn vips() -> &'static HashMap<EndpointKey<Self::Addr>, VipValue>;
    fn rev_nat() -> &'static HashMap<EndpointKey<Self::Addr>, RevValue<Self::Addr>>;
    fn addrs() -> &'static HashMap<Self::Addr, u32>;
    fn flows() -> &'static HashMap<FlowKey<Self::Addr>, FlowValue>;
    fn outbound() -> &'static HashMap<FlowKey<Self::Addr>, FlowValue>;
    fn shadowed() -> &'static LruHashMap<FlowKey<Self::Addr>, FlowValue>;
    fn frags() -> &'static LruHashMap<Self::FragKey, FragValue<Self::Addr>>;
    fn nexthops() -> &'static PerCpuArray<NextHop<Self::Addr, Self::NextHopPad>>;
    /// This CPU's slot for the plan handed to the second half (see [`Family::SPLIT`]).
    fn plan() -> Option<*mut Plan<Self::Addr>>;

    /// A path's address (`PathValue::addr`, both families' form) in this family.
    fn path_addr(addr: &Addr6) -> Self::Addr;

    /// The fixed IP header at `l3`.
    fn header<C: Packet>(ctx: &C, l3: usize) -> Result<&'static mut Self::Hdr, Counter>;
    /// The transport protocol when the fixed header says it (IPv4; IPv6 has extension
    /// headers to walk first).
    fn header_proto(ip: &Self::Hdr) -> Option<u8>;
    /// The datagram behind the header: protocol, payload bounds, fragment.
    fn payload<C: Packet>(ctx: &C, l3: usize, ip: &Self::Hdr) -> Result<Datagram, Counter>;
    /// The fragment-tracking key of datagram `d` in direction `dir`.
    fn frag_key(ip: &Self::Hdr, d: &Datagram, dir: u8) -> Self::FragKey;

    fn icmp_kind(h: &IcmpHdr) -> IcmpKind;

    /// Fills the family's part of a FIB query: the family, addresses, TOS/flow label.
    fn fib(p: &mut bpf_fib_lookup, d: &Datagram, src: &Self::Addr, dst: &Self::Addr);

    /// How the TC hook patches a transport checksum for an address change.
    fn addr_fix(old: &Self::Addr, new: &Self::Addr) -> AddrFix;

    /// An ICMP error sent to a VIP, about a datagram the VIP sent (see `icmp`).
    fn ingress_error<C: Packet>(
        ctx: &C,
        l2: &L2,
        ip: &mut Self::Hdr,
        icmp: &mut IcmpHdr,
        d: &Datagram,
        bits: u32,
    ) -> Outcome;
    /// An ICMP error from the path side about a datagram a client sent (see `icmp`).
    fn return_error<C: Packet>(
        ctx: &C,
        l2: &L2,
        ip: &mut Self::Hdr,
        icmp: &mut IcmpHdr,
        d: &Datagram,
    ) -> Outcome;
    /// Answers a packet larger than the egress MTU (`mtu`) that must not be fragmented.
    fn too_big<C: Packet>(ctx: &C, l2: &L2, mtu: u16) -> Outcome;
}

pub enum V4 {}
pub enum V6 {}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

impl Family for V4 {
    type Addr = Addr4;
    type Hdr = Ipv4Hdr;
    type FragKey = FragKey;
    type NextHopPad = [u8; 4];

    const ICMP: u8 = IPPROTO_ICMP;
    const ICMP_PSEUDO: bool = false;
    const UDP_ZERO_INVALID: bool = false;
    const PASS_BAD: Counter = Counter::PassBadIpv4;
    const SPLIT: bool = false;

    #[inline(always)]
    fn vips() -> &'static HashMap<EndpointKey<Addr4>, VipValue> {
        &LB_VIPS
    }
    #[inline(always)]
    fn rev_nat() -> &'static HashMap<EndpointKey<Addr4>, RevValue<Addr4>> {
        &LB_REV_NAT
    }
    #[inline(always)]
    fn addrs() -> &'static HashMap<Addr4, u32> {
        &LB_ADDRS
    }
    #[inline(always)]
    fn flows() -> &'static HashMap<FlowKey<Addr4>, FlowValue> {
        &LB_FLOWS
    }
    #[inline(always)]
    fn outbound() -> &'static HashMap<FlowKey<Addr4>, FlowValue> {
        &LB_OUTBOUND
    }
    #[inline(always)]
    fn shadowed() -> &'static LruHashMap<FlowKey<Addr4>, FlowValue> {
        &LB_SHADOWED
    }
    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey, FragValue<Addr4>> {
        &LB_FRAGS
    }
    #[inline(always)]
    fn nexthops() -> &'static PerCpuArray<NextHop<Addr4, [u8; 4]>> {
        &LB_NEXTHOPS
    }
    #[inline(always)]
    fn plan() -> Option<*mut Plan<Addr4>> {
        None
    }
    #[inline(always)]
    fn path_addr(addr: &Addr6) -> Addr4 {
        low32(addr)
    }
    #[inline(always)]
    fn header<C: Packet>(ctx: &C, l3: usize) -> Result<&'static mut Ipv4Hdr, Counter> {
        parse::ipv4(ctx, l3)
    }
    #[inline(always)]
    fn header_proto(ip: &Ipv4Hdr) -> Option<u8> {
        Some(ip.proto)
    }
    #[inline(always)]
    fn payload<C: Packet>(ctx: &C, l3: usize, ip: &Ipv4Hdr) -> Result<Datagram, Counter> {
        parse::ipv4_payload(ctx, l3, ip)
    }
    #[inline(always)]
    fn frag_key(ip: &Ipv4Hdr, _d: &Datagram, dir: u8) -> FragKey {
        FragKey {
            src: ip.src,
            dst: ip.dst,
            id: ip.id,
            proto: ip.proto,
            dir,
        }
    }
    #[inline(always)]
    fn icmp_kind(h: &IcmpHdr) -> IcmpKind {
        match h.ty {
            lb_common::net::ICMP_ECHO_REQUEST => IcmpKind::EchoRequest,
            lb_common::net::ICMP_ECHO_REPLY => IcmpKind::EchoReply,
            _ if h.is_error() => IcmpKind::Error,
            _ => IcmpKind::Other,
        }
    }
    #[inline(always)]
    fn fib(p: &mut bpf_fib_lookup, d: &Datagram, src: &Addr4, dst: &Addr4) {
        p.family = AF_INET;
        p.__bindgen_anon_2.tos = d.tos as u8;
        p.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(*src);
        p.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(*dst);
    }
    #[inline(always)]
    fn addr_fix(old: &Addr4, new: &Addr4) -> AddrFix {
        AddrFix::Word(u32::from_ne_bytes(*old), u32::from_ne_bytes(*new))
    }
    #[inline(always)]
    fn ingress_error<C: Packet>(
        ctx: &C,
        l2: &L2,
        ip: &mut Ipv4Hdr,
        icmp: &mut IcmpHdr,
        d: &Datagram,
        bits: u32,
    ) -> Outcome {
        icmp::ingress_error(ctx, l2, ip, icmp, d, bits)
    }
    #[inline(always)]
    fn return_error<C: Packet>(
        ctx: &C,
        l2: &L2,
        ip: &mut Ipv4Hdr,
        icmp: &mut IcmpHdr,
        d: &Datagram,
    ) -> Outcome {
        icmp::return_error(ctx, l2, ip, icmp, d)
    }
    #[inline(always)]
    fn too_big<C: Packet>(ctx: &C, l2: &L2, mtu: u16) -> Outcome {
        icmp::too_big(ctx, l2, mtu)
    }
}

impl Family for V6 {
    type Addr = Addr6;
    type Hdr = Ipv6Hdr;
    type FragKey = FragKey6;
    type NextHopPad = [u8; 0];

    const ICMP: u8 = IPPROTO_ICMPV6;
    const ICMP_PSEUDO: bool = true;
    const UDP_ZERO_INVALID: bool = true;
    const PASS_BAD: Counter = Counter::PassBadIpv6;
    const SPLIT: bool = true;

    #[inline(always)]
    fn vips() -> &'static HashMap<EndpointKey<Addr6>, VipValue> {
        &LB_VIPS6
    }
    #[inline(always)]
    fn rev_nat() -> &'static HashMap<EndpointKey<Addr6>, RevValue<Addr6>> {
        &LB_REV_NAT6
    }
    #[inline(always)]
    fn addrs() -> &'static HashMap<Addr6, u32> {
        &LB_ADDRS6
    }
    #[inline(always)]
    fn flows() -> &'static HashMap<FlowKey<Addr6>, FlowValue> {
        &LB_FLOWS6
    }
    #[inline(always)]
    fn outbound() -> &'static HashMap<FlowKey<Addr6>, FlowValue> {
        &LB_OUTBOUND6
    }
    #[inline(always)]
    fn shadowed() -> &'static LruHashMap<FlowKey<Addr6>, FlowValue> {
        &LB_SHADOWED6
    }
    #[inline(always)]
    fn frags() -> &'static LruHashMap<FragKey6, FragValue<Addr6>> {
        &LB_FRAGS6
    }
    #[inline(always)]
    fn nexthops() -> &'static PerCpuArray<NextHop<Addr6, [u8; 0]>> {
        &LB_NEXTHOPS6
    }
    #[inline(always)]
    fn plan() -> Option<*mut Plan<Addr6>> {
        LB_PLAN6.get_ptr_mut(0)
    }
    #[inline(always)]
    fn path_addr(addr: &Addr6) -> Addr6 {
        *addr
    }
    /// Neighbour discovery and the rest of the link's ICMPv6 come without extension headers
    /// (RFC 4861 §6.1.1 and §7.1.1: hop limit 255, next header ICMPv6); MLD's come with a
    /// hop-by-hop header but to multicast addresses, never ours. Passed before anything else,
    /// whatever the addresses.
    #[inline(always)]
    fn header<C: Packet>(ctx: &C, l3: usize) -> Result<&'static mut Ipv6Hdr, Counter> {
        let ip = parse::ipv6(ctx, l3)?;
        if ip.next_hdr == IPPROTO_ICMPV6
            && let Some(h) = parse::ptr_at::<IcmpHdr, C>(ctx, l3 + lb_common::net::IPV6_HDR_LEN)
            // SAFETY: bounds checked by `ptr_at`.
            && unsafe { (*h).is_control6() }
        {
            return Err(Counter::PassIcmp6Control);
        }
        Ok(ip)
    }
    #[inline(always)]
    fn header_proto(_ip: &Ipv6Hdr) -> Option<u8> {
        None
    }
    #[inline(always)]
    fn payload<C: Packet>(ctx: &C, l3: usize, ip: &Ipv6Hdr) -> Result<Datagram, Counter> {
        parse::ipv6_payload(ctx, l3, ip)
    }
    #[inline(always)]
    fn frag_key(ip: &Ipv6Hdr, d: &Datagram, dir: u8) -> FragKey6 {
        FragKey6 {
            src: ip.src,
            dst: ip.dst,
            id: d.frag_id,
            proto: d.proto,
            dir,
            _pad: [0; 2],
        }
    }
    #[inline(always)]
    fn icmp_kind(h: &IcmpHdr) -> IcmpKind {
        match h.ty {
            lb_common::net::ICMP6_ECHO_REQUEST => IcmpKind::EchoRequest,
            lb_common::net::ICMP6_ECHO_REPLY => IcmpKind::EchoReply,
            _ if h.is_control6() => IcmpKind::Control,
            _ if h.is_error6() => IcmpKind::Error,
            _ => IcmpKind::Other,
        }
    }
    #[inline(always)]
    fn fib(p: &mut bpf_fib_lookup, d: &Datagram, src: &Addr6, dst: &Addr6) {
        p.family = AF_INET6;
        // Traffic class and flow label, as the kernel's own IPv6 route lookup sees them.
        p.__bindgen_anon_2.flowinfo = d.tos;
        // Four words as they lie in memory.
        p.__bindgen_anon_3.ipv6_src = addr6_words(src, u32::from_ne_bytes);
        p.__bindgen_anon_4.ipv6_dst = addr6_words(dst, u32::from_ne_bytes);
    }
    #[inline(always)]
    fn addr_fix(old: &Addr6, new: &Addr6) -> AddrFix {
        AddrFix::Diff(lb_common::csum::diff128(old, new, u16::from_ne_bytes))
    }
    /// In a program of its own (`icmp6`).
    #[inline(always)]
    fn ingress_error<C: Packet>(
        ctx: &C,
        _l2: &L2,
        _ip: &mut Ipv6Hdr,
        _icmp: &mut IcmpHdr,
        _d: &Datagram,
        _bits: u32,
    ) -> Outcome {
        ctx.tail_call(lb_common::maps::CALL_ERROR6_IN);
        Err(Counter::PassNoIpv6Program)
    }
    /// In a program of its own (`icmp6`).
    #[inline(always)]
    fn return_error<C: Packet>(
        ctx: &C,
        _l2: &L2,
        _ip: &mut Ipv6Hdr,
        _icmp: &mut IcmpHdr,
        _d: &Datagram,
    ) -> Outcome {
        ctx.tail_call(lb_common::maps::CALL_ERROR6_OUT);
        Err(Counter::PassNoIpv6Program)
    }
    #[inline(always)]
    fn too_big<C: Packet>(ctx: &C, _l2: &L2, mtu: u16) -> Outcome {
        crate::icmp6::hand_to_too_big(ctx, mtu)
    }
}

/// The address pre-filter: which kinds of entries may exist for `addr` (a superset).
#[inline(always)]
pub fn filter<A: HashAddr>(addr: &A) -> u32 {
    crate::maps::LB_ADDR_FILTER
        .get(addr.filter_slot())
        .copied()
        .unwrap_or(0)
}
