//! ICMPv6 errors about translated flows (destination unreachable, packet too big, time
//! exceeded, parameter problem), translated both ways as `icmp` does for IPv4, and the Packet
//! Too Big the datapath sends for a packet that does not fit the egress MTU (IPv6 routers never
//! fragment, RFC 8200 §5): PMTU discovery works through the NAT.
//!
//! The errors run in programs of their own (`lb_error6_in`, `lb_error6_out`), reached by a
//! tail call from the IPv6 first halves when they meet an ICMPv6 error: errors are rare, and
//! each program gets its own stack. The ICMPv6 checksum covers the outer pseudo-header (unlike
//! ICMP's), so an outer address change is patched into it too.

use core::ptr::null_mut;

use aya_ebpf::helpers::bpf_csum_diff;
use lb_common::{
    Counter, csum,
    icmp::{PTB6_OVERHEAD, PTB6_QUOTE, ptb6_headers},
    maps::{FILTER_PATH_ADDR, FILTER_PATH_SERVICE, FlowKey, REV_F_SHADOWS_WHOLE},
    nat::{self, IpHeader, Side},
    net::{
        ETH_HDR_LEN, ETH_P_IPV6, EthHdr, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, IPPROTO_ICMPV6,
        IPPROTO_TCP, IPPROTO_UDP, IPV6_HDR_LEN, IcmpHdr, Ipv6Hdr, L4Quote, TcpHdr, VLAN_HDR_LEN,
        VlanHdr,
    },
};

use crate::{
    ctx::Packet,
    family::{Family, V6, filter},
    flow,
    forward::{self, Flow},
    icmp::too_big_allowed,
    ingress::lookup_vip,
    maps::LB_SCRATCH,
    parse::{self, Datagram, L2, Transport, in_datagram, ptr_at},
    reverse::{check_arrival, disambiguate, lookup_rev},
    stats::{self, Dir, Outcome, Verdict, count},
};

/// The datagram an ICMPv6 error quotes: its fixed header and the first 8 bytes of its
/// transport header, which must follow the fixed header directly.
struct Quote6 {
    ip: &'static mut Ipv6Hdr,
    l4: &'static mut L4Quote,
    /// The quoted TCP checksum, when the error quotes that far.
    tcp_check: Option<&'static mut [u8; 2]>,
}

/// Parses the datagram quoted by the ICMPv6 error at `icmp` (the outer datagram ends at
/// `end`). A quote cut short or not IPv6 is `DropBadIcmpQuote`; one whose transport header does
/// not follow the fixed header (extension headers: lb translates none of those flows' errors)
/// is not ours.
#[inline(always)]
fn quote6<C: Packet>(ctx: &C, icmp: usize, end: usize) -> Result<Quote6, Counter> {
    const BAD: Counter = Counter::DropBadIcmpQuote;
    let inner = icmp + size_of::<IcmpHdr>();
    // SAFETY: bounds checked by `in_datagram`; see `parse::ipv4` for the lifetime.
    let ip: &mut Ipv6Hdr = unsafe { &mut *in_datagram(ctx, inner, end).ok_or(BAD)? };
    if ip.version() != 6 {
        return Err(BAD);
    }
    if !matches!(ip.next_hdr, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6) {
        return Err(Counter::PassIcmpNotOurs);
    }
    let l4_off = inner + IPV6_HDR_LEN;
    // SAFETY: as above.
    let l4: &mut L4Quote = unsafe { &mut *in_datagram(ctx, l4_off, end).ok_or(BAD)? };
    let tcp_check = if ip.next_hdr == IPPROTO_TCP {
        // SAFETY: as above.
        in_datagram::<[u8; 2], C>(ctx, l4_off + core::mem::offset_of!(TcpHdr, check), end)
            .map(|p| unsafe { &mut *p })
    } else {
        None
    };
    Ok(Quote6 { ip, l4, tcp_check })
}

/// The flow ports of a quoted datagram, as (quoted source, quoted destination); an ICMPv6
/// echo's identifier stands for its source port. `None` for what lb does not translate.
#[inline(always)]
fn quoted_ports(proto: u8, q: &L4Quote) -> Option<([u8; 2], [u8; 2])> {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => Some((q.sport, q.dport)),
        // Quoted ICMPv6 header: type, code, checksum, then the identifier.
        IPPROTO_ICMPV6 if q.sport[0] == ICMP6_ECHO_REQUEST || q.sport[0] == ICMP6_ECHO_REPLY => {
            Some(([q.rest[0], q.rest[1]], [0, 0]))
        }
        _ => None,
    }
}

#[inline(always)]
fn service_port(proto: u8, port: [u8; 2]) -> Option<[u8; 2]> {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP).then_some(port)
}

/// The packet again, as the first half saw it: an ICMPv6 error.
#[inline(always)]
fn reread<C: Packet>(
    ctx: &C,
) -> Result<(L2, &'static mut Ipv6Hdr, &'static mut IcmpHdr, Datagram), Counter> {
    let l2 = parse::ethernet(ctx)?;
    let ip = V6::header(ctx, l2.l3)?;
    let d = V6::payload(ctx, l2.l3, ip)?;
    match parse::transport(ctx, d.proto, d.l4, d.end)? {
        Transport::Icmp(h) if d.proto == IPPROTO_ICMPV6 => Ok((l2, ip, h, d)),
        _ => Err(Counter::PassNotForUs),
    }
}

/// `lb_error6_in`: an ICMPv6 error sent to a VIP, about a datagram the VIP sent (a reply,
/// translated by the return program). The outer destination and the quoted source go back to
/// the path address.
#[inline(always)]
pub fn error_in<C: Packet>(ctx: &C) -> Outcome {
    let (l2, ip, icmp, d) = reread(ctx)?;
    let q = quote6(ctx, d.l4, d.end)?;
    if q.ip.src != ip.dst {
        return Err(Counter::PassIcmpNotOurs);
    }
    let proto = q.ip.next_hdr;
    let (qsport, qdport) = quoted_ports(proto, q.l4).ok_or(Counter::PassIcmpNotOurs)?;
    let bits = filter(&ip.dst);
    let vip = lookup_vip::<V6>(q.ip.src, proto, service_port(proto, qsport), bits)
        .ok_or(Counter::PassIcmpNotOurs)?;
    if ip.hop_limit <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    // The flow as the ingress side keys it: client → VIP.
    let (ksport, kdport) = if proto == IPPROTO_ICMPV6 {
        (qsport, qdport)
    } else {
        (qdport, qsport)
    };
    let key = FlowKey::new(q.ip.dst, q.ip.src, ksport, kdport, proto);
    let path = flow::peek::<V6>(&key, &vip)?;
    let target_port = vip.target_port;
    let new_port =
        (service_port(proto, qsport).is_some() && target_port != [0, 0]).then_some(target_port);
    let next = forward::route_quiet::<C, V6>(
        ctx,
        &d,
        &Flow {
            src: ip.src,
            dst: path.addr,
            sport: [0; 2],
            dport: [0; 2],
        },
    )?;
    let old = ip.set_addr(Side::Dst, path.addr);
    nat::rewrite_icmp6_quote(
        icmp,
        Some((old, path.addr)),
        q.ip,
        q.l4,
        q.tcp_check,
        Side::Src,
        path.addr,
        new_port,
    );
    stats::translated(ctx, Counter::IcmpErrorIngress, vip.rank, path.id, Dir::In);
    Ok(forward::finish::<C, V6>(ctx, &l2, ip, next))
}

/// `lb_error6_out`: an ICMPv6 error from the path side (the VM, or a router on the path) about
/// a datagram a client sent to a VIP, translated on ingress. The quoted destination goes back
/// to the VIP, and so does the outer source when the VM itself reports.
#[inline(always)]
pub fn error_out<C: Packet>(ctx: &C) -> Outcome {
    let (l2, ip, icmp, d) = reread(ctx)?;
    let q = quote6(ctx, d.l4, d.end).map_err(|_| Counter::PassIcmpNotOurs)?;
    let bits = filter(&q.ip.dst);
    if bits & (FILTER_PATH_ADDR | FILTER_PATH_SERVICE) == 0 || q.ip.src != ip.dst {
        return Err(Counter::PassIcmpNotOurs);
    }
    let proto = q.ip.next_hdr;
    let (qsport, qdport) = quoted_ports(proto, q.l4).ok_or(Counter::PassIcmpNotOurs)?;
    let mut rev = lookup_rev::<V6>(q.ip.dst, proto, service_port(proto, qdport), bits)
        .ok_or(Counter::PassIcmpNotOurs)?;
    if rev.flags & REV_F_SHADOWS_WHOLE != 0 {
        let reply = FlowKey::new(q.ip.dst, q.ip.src, qdport, qsport, proto);
        disambiguate::<V6>(&mut rev, &reply);
    }
    // From the VM or a router on its path: either way it comes over the path's interface.
    check_arrival(rev.path, ctx.ingress_ifindex())?;
    if ip.hop_limit <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let from_vm = ip.src == q.ip.dst;
    let src = if from_vm { rev.vip_addr } else { ip.src };
    let new_port =
        (service_port(proto, qdport).is_some() && rev.vip_port != [0, 0]).then_some(rev.vip_port);
    let next = forward::route_quiet::<C, V6>(
        ctx,
        &d,
        &Flow {
            src,
            dst: ip.dst,
            sport: [0; 2],
            dport: [0; 2],
        },
    )?;
    let outer = if from_vm {
        Some((ip.set_addr(Side::Src, rev.vip_addr), rev.vip_addr))
    } else {
        None
    };
    nat::rewrite_icmp6_quote(
        icmp,
        outer,
        q.ip,
        q.l4,
        q.tcp_check,
        Side::Dst,
        rev.vip_addr,
        new_port,
    );
    stats::translated(
        ctx,
        Counter::IcmpErrorReturn,
        rev.vip_rank,
        rev.path,
        Dir::Out,
    );
    Ok(forward::finish::<C, V6>(ctx, &l2, ip, next))
}

/// Hands the packet to the Packet Too Big program (`lb_too_big6`, a tail call; the MTU in the
/// per-CPU `LB_SCRATCH` slot): the second halves' stack has no room for it.
#[inline(always)]
pub fn hand_to_too_big<C: Packet>(ctx: &C, mtu: u16) -> Outcome {
    let Some(slot) = LB_SCRATCH.get_ptr_mut(0) else {
        return Ok(Verdict::Fault);
    };
    // SAFETY: this CPU's slot, valid for the run and touched by no other CPU.
    unsafe { (*slot)[0] = u32::from(mtu) };
    ctx.tail_call(lb_common::maps::CALL_TOO_BIG6);
    Err(Counter::PassNoIpv6Program)
}

/// `lb_too_big6`: the packet a second half found too big, with the MTU it left.
#[inline(always)]
pub fn too_big_program<C: Packet>(ctx: &C) -> Outcome {
    let Some(slot) = LB_SCRATCH.get_ptr(0) else {
        return Ok(Verdict::Fault);
    };
    // SAFETY: as in `hand_to_too_big`, which wrote it just before the tail call.
    let mtu = unsafe { (*slot)[0] } as u16;
    let l2 = parse::ethernet(ctx)?;
    too_big(ctx, &l2, mtu)
}

/// The Packet Too Big's quote is summed in this many pieces of this many bytes.
const PTB6_CHUNKS: usize = 4;
const PTB6_CHUNK: usize = PTB6_QUOTE / PTB6_CHUNKS;
const _: () = assert!(PTB6_CHUNK * PTB6_CHUNKS == PTB6_QUOTE && PTB6_CHUNK.is_multiple_of(4));

/// Answers the packet in the frame (IPv6 at `l2.l3`, longer than the link's MTU) with an ICMPv6
/// Packet Too Big announcing `mtu`, quoting its first [`PTB6_QUOTE`] bytes untranslated, sent
/// back where it came from. Never to an unspecified or multicast source (RFC 4443 §2.4(e)).
///
/// Reshapes the frame in place: 48 bytes of headroom for the new IPv6 and ICMPv6 headers (the
/// original packet then starts right where the quote belongs), and the tail cut after the
/// quote. Every earlier packet pointer is invalid afterwards.
#[inline(always)]
pub fn too_big<C: Packet>(ctx: &C, l2: &L2, mtu: u16) -> Outcome {
    const FAILED: Counter = Counter::DropFragmentNeeded;
    let l3 = if l2.vlan {
        ETH_HDR_LEN + VLAN_HDR_LEN
    } else {
        ETH_HDR_LEN
    };
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(FAILED)?;
    let tag: *const VlanHdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(FAILED)?;
    let ip: *const Ipv6Hdr = ptr_at(ctx, l3).ok_or(FAILED)?;
    // SAFETY: all three bounds-checked just above.
    let (eth, tag, ip) = unsafe { (*eth, *tag, *ip) };
    if ip.src == [0; 16] || ip.src[0] == 0xff {
        return Err(FAILED);
    }
    if !too_big_allowed() {
        return Err(Counter::DropTooBigRateLimited);
    }
    // A packet too big for a link of at least 1280 bytes is longer than the quote; a shorter
    // one (an MTU below IPv6's minimum) is not answered.
    if ctx.len() < l3 + PTB6_QUOTE {
        return Err(FAILED);
    }
    let new_len = l3 + PTB6_OVERHEAD + PTB6_QUOTE;
    // A failure may leave the frame reshaped: drop it, counted.
    if !ctx.reshape(PTB6_OVERHEAD, new_len) {
        return Err(FAILED);
    }
    let (ip_hdr, icmp_hdr) = ptb6_headers(ip.src, ip.dst, u32::from(mtu).max(1280));
    let out_eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(FAILED)?;
    let out_tag: *mut VlanHdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(FAILED)?;
    let out_ip: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(FAILED)?;
    let out_icmp: *mut IcmpHdr = ptr_at(ctx, l3 + IPV6_HDR_LEN).ok_or(FAILED)?;
    // The quote's sum, by the kernel (`bpf_csum_diff`, at most 512 bytes a call on older
    // kernels): a loop of 308 loads is more than the verifier follows well. The helper sums the
    // bytes as they lie in memory; folded, that is the big-endian sum byte-swapped on a
    // little-endian machine (RFC 1071 §2(B)).
    let quote = l3 + PTB6_OVERHEAD;
    let mut sum: u32 = 0;
    for i in 0..PTB6_CHUNKS {
        let chunk: *mut [u8; PTB6_CHUNK] = ptr_at(ctx, quote + i * PTB6_CHUNK).ok_or(FAILED)?;
        // SAFETY: bounds-checked just above: the whole chunk lies in the packet.
        let r = unsafe { bpf_csum_diff(null_mut(), 0, chunk.cast(), PTB6_CHUNK as u32, sum) };
        if r < 0 {
            return Err(FAILED);
        }
        sum = r as u32;
    }
    let folded = csum::fold(sum);
    let be = u16::from_be_bytes(folded.to_ne_bytes());
    let check = csum::replace16(icmp_hdr.check, [0, 0], be.to_be_bytes());
    // SAFETY: all four bounds-checked after the reshaping.
    unsafe {
        *out_eth = EthHdr {
            dst: eth.src,
            src: eth.dst,
            proto: if l2.vlan {
                eth.proto
            } else {
                ETH_P_IPV6.to_be_bytes()
            },
        };
        if l2.vlan {
            *out_tag = VlanHdr {
                tci: tag.tci,
                proto: ETH_P_IPV6.to_be_bytes(),
            };
        }
        *out_ip = ip_hdr;
        *out_icmp = IcmpHdr { check, ..icmp_hdr };
    }
    count(Counter::IcmpTooBigSent);
    ctx.bounce();
    Ok(Verdict::Tx)
}
