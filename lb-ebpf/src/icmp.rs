//! ICMP errors about translated flows (destination unreachable, fragmentation needed, time
//! exceeded, parameter problem). The quoted datagram is translated like the flow it belongs to,
//! so the receiving stack matches it to its socket: PMTU discovery works through the NAT.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use lb_common::{
    Counter,
    icmp::{QUOTE_PAYLOAD, TOO_BIG_OVERHEAD, icmp_checksum_add, too_big_headers},
    maps::{
        DEFAULT_TOO_BIG_BURST, DEFAULT_TOO_BIG_PER_SEC, FILTER_PATH_ADDR, FILTER_PATH_SERVICE,
        FlowKey, REV_F_SHADOWS_WHOLE,
    },
    nat::{self, Side},
    net::{
        ETH_HDR_LEN, ETH_P_IP, EthHdr, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, IPPROTO_ICMP,
        IPPROTO_TCP, IPPROTO_UDP, IcmpHdr, Ipv4Hdr, L4Quote, VLAN_HDR_LEN, VlanHdr,
    },
};

use crate::{
    ctx::Packet,
    family::{V4, filter},
    flow,
    forward::{self, Flow},
    ingress::lookup_vip,
    maps::{LB_SETTINGS, LB_TOO_BIG},
    parse::{self, Datagram, L2, ptr_at},
    reverse::{disambiguate, lookup_rev},
    stats::Verdict,
    stats::{self, Dir, Outcome, count},
};

/// The flow ports of a quoted datagram, as (quoted source, quoted destination); an ICMP echo's
/// identifier stands for its source port. `None` for what lb does not translate.
#[inline(always)]
fn quoted_ports(proto: u8, q: &L4Quote) -> Option<([u8; 2], [u8; 2])> {
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => Some((q.sport, q.dport)),
        // Quoted ICMP header: type, code, checksum, then the identifier in `rest`.
        IPPROTO_ICMP if q.sport[0] == ICMP_ECHO_REQUEST || q.sport[0] == ICMP_ECHO_REPLY => {
            Some(([q.rest[0], q.rest[1]], [0, 0]))
        }
        _ => None,
    }
}

#[inline(always)]
fn service_port(proto: u8, port: [u8; 2]) -> Option<[u8; 2]> {
    matches!(proto, IPPROTO_TCP | IPPROTO_UDP).then_some(port)
}

/// An ICMP error sent to a VIP, about a datagram the VIP sent (a reply, translated by the
/// return program). The outer destination and the quoted source go back to the path address.
#[inline(always)]
pub fn ingress_error<C: Packet>(
    ctx: &C,
    l2: &L2,
    ip: &mut Ipv4Hdr,
    icmp: &mut IcmpHdr,
    d: &Datagram,
    bits: u32,
) -> Outcome {
    let q = parse::icmp_quote(ctx, d.l4, d.end).ok_or(Counter::DropBadIcmpQuote)?;
    if q.ip.src != ip.dst {
        return Err(Counter::PassIcmpNotOurs);
    }
    let (qsport, qdport) = quoted_ports(q.ip.proto, q.l4).ok_or(Counter::PassIcmpNotOurs)?;
    let vip = lookup_vip::<V4>(q.ip.src, q.ip.proto, service_port(q.ip.proto, qsport), bits)
        .ok_or(Counter::PassIcmpNotOurs)?;
    if ip.ttl <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    // The flow as the ingress side keys it: client → VIP.
    let (ksport, kdport) = if q.ip.proto == IPPROTO_ICMP {
        (qsport, qdport)
    } else {
        (qdport, qsport)
    };
    let key = FlowKey::new(q.ip.dst, q.ip.src, ksport, kdport, q.ip.proto);
    let path = flow::peek::<V4>(&key, &vip)?;
    let target_port = vip.target_port;
    let new_port = (service_port(q.ip.proto, qsport).is_some() && target_port != [0, 0])
        .then_some(target_port);
    let next = forward::route_quiet::<C, V4>(
        ctx,
        d,
        &Flow {
            src: ip.src,
            dst: path.addr,
            sport: [0; 2],
            dport: [0; 2],
        },
    )?;

    nat::set_addr(ip, Side::Dst, path.addr);
    nat::rewrite_icmp_quote(
        icmp,
        q.ip,
        q.l4,
        q.tcp_check,
        Side::Src,
        path.addr,
        new_port,
    );
    stats::translated(ctx, Counter::IcmpErrorIngress, vip.rank, path.id, Dir::In);
    Ok(forward::finish::<C, V4>(ctx, l2, ip, next))
}

/// An ICMP error from the path side (the VM, or a router on the path) about a datagram a client
/// sent to a VIP, translated on ingress. The quoted destination goes back to the VIP, and so
/// does the outer source when the VM itself reports.
#[inline(always)]
pub fn return_error<C: Packet>(
    ctx: &C,
    l2: &L2,
    ip: &mut Ipv4Hdr,
    icmp: &mut IcmpHdr,
    d: &Datagram,
) -> Outcome {
    let q = parse::icmp_quote(ctx, d.l4, d.end).ok_or(Counter::PassIcmpNotOurs)?;
    let bits = filter(&q.ip.dst);
    if bits & (FILTER_PATH_ADDR | FILTER_PATH_SERVICE) == 0 || q.ip.src != ip.dst {
        return Err(Counter::PassIcmpNotOurs);
    }
    let (qsport, qdport) = quoted_ports(q.ip.proto, q.l4).ok_or(Counter::PassIcmpNotOurs)?;
    let mut rev = lookup_rev::<V4>(q.ip.dst, q.ip.proto, service_port(q.ip.proto, qdport), bits)
        .ok_or(Counter::PassIcmpNotOurs)?;
    if rev.flags & REV_F_SHADOWS_WHOLE != 0 {
        let reply = FlowKey::new(q.ip.dst, q.ip.src, qdport, qsport, q.ip.proto);
        disambiguate::<V4>(&mut rev, &reply);
    }
    // From the VM or a router on its path: either way it comes over the path's interface.
    crate::reverse::check_arrival(rev.path, ctx.ingress_ifindex())?;
    if ip.ttl <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let from_vm = ip.src == q.ip.dst;
    let src = if from_vm { rev.vip_addr } else { ip.src };
    let new_port = (service_port(q.ip.proto, qdport).is_some() && rev.vip_port != [0, 0])
        .then_some(rev.vip_port);
    let next = forward::route_quiet::<C, V4>(
        ctx,
        d,
        &Flow {
            src,
            dst: ip.dst,
            sport: [0; 2],
            dport: [0; 2],
        },
    )?;

    if from_vm {
        nat::set_addr(ip, Side::Src, rev.vip_addr);
    }
    nat::rewrite_icmp_quote(
        icmp,
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
    Ok(forward::finish::<C, V4>(ctx, l2, ip, next))
}

/// Takes a token from this CPU's budget of "fragmentation needed" answers (`LB_TOO_BIG`, at
/// the rate in `LB_SETTINGS`): the kernel's ICMP rate limit does not see what XDP and TC send,
/// so without one the datapath would answer spoofed sources 1:1 at line rate.
#[inline(always)]
pub fn too_big_allowed() -> bool {
    let (per_sec, burst) = match LB_SETTINGS.get(0) {
        Some(s) if s.too_big_per_sec != 0 => (s.too_big_per_sec, s.too_big_burst),
        _ => (DEFAULT_TOO_BIG_PER_SEC, DEFAULT_TOO_BIG_BURST),
    };
    let Some(bucket) = LB_TOO_BIG.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: this CPU's slot, valid for the run and touched by no other CPU.
    unsafe { (*bucket).take(now, per_sec, burst) }
}

/// Longest quote: an IPv4 header with 40 bytes of options, plus `QUOTE_PAYLOAD`.
const MAX_QUOTE_WORDS: usize = (60 + QUOTE_PAYLOAD) / 4;

/// Answers the packet in the frame (IPv4 at `l2.l3`, its transport header parsed) with an
/// ICMP "fragmentation needed" announcing `mtu`, quoting its IPv4 header and first 8 payload
/// bytes untranslated, sent back where it came from with `XDP_TX`.
///
/// Reshapes the frame in place: 28 bytes of headroom for the new IPv4 and ICMP headers (the
/// original IPv4 header then sits right where the quote belongs), and the tail cut after the
/// quote. Every earlier packet pointer is invalid afterwards.
#[inline(always)]
pub fn too_big<C: Packet>(ctx: &C, l2: &L2, mtu: u16) -> Outcome {
    const FAILED: Counter = Counter::DropFragmentNeeded;
    if !too_big_allowed() {
        return Err(Counter::DropTooBigRateLimited);
    }
    // A tag in the frame stays in the reply, which goes back to the same VLAN (an skb's tag
    // outside the frame stays with the skb).
    let l3 = if l2.vlan {
        ETH_HDR_LEN + VLAN_HDR_LEN
    } else {
        ETH_HDR_LEN
    };
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(FAILED)?;
    let tag: *const VlanHdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(FAILED)?;
    let ip: *const Ipv4Hdr = ptr_at(ctx, l3).ok_or(FAILED)?;
    // SAFETY: all three bounds-checked just above.
    let (eth, tag, ip) = unsafe { (*eth, *tag, *ip) };
    let quote_len = usize::from(ip.ihl()) * 4 + QUOTE_PAYLOAD;
    let new_len = l3 + TOO_BIG_OVERHEAD + quote_len;

    // The frame holds the parsed transport header, so it is at least `new_len` long once
    // grown by the overhead, and only shrinks. A failure may leave it reshaped: drop it,
    // counted.
    if !ctx.reshape(TOO_BIG_OVERHEAD, new_len) {
        return Err(FAILED);
    }
    let (ip_hdr, icmp_hdr) = too_big_headers(ip.src, ip.dst, quote_len as u16, mtu);
    let out_eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(FAILED)?;
    let out_tag: *mut VlanHdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(FAILED)?;
    let out_ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(FAILED)?;
    let out_icmp: *mut IcmpHdr = ptr_at(ctx, l3 + lb_common::net::IPV4_HDR_LEN).ok_or(FAILED)?;
    let mut check = icmp_hdr.check;
    let quote = l3 + TOO_BIG_OVERHEAD;
    for i in 0..MAX_QUOTE_WORDS {
        if i * 4 >= quote_len {
            break;
        }
        let word: *const [u8; 4] = ptr_at(ctx, quote + i * 4).ok_or(FAILED)?;
        // SAFETY: bounds-checked just above.
        check = icmp_checksum_add(check, unsafe { *word });
    }
    // SAFETY: all four bounds-checked after the reshaping.
    unsafe {
        *out_eth = EthHdr {
            dst: eth.src,
            src: eth.dst,
            proto: if l2.vlan {
                eth.proto
            } else {
                ETH_P_IP.to_be_bytes()
            },
        };
        if l2.vlan {
            *out_tag = VlanHdr {
                tci: tag.tci,
                proto: ETH_P_IP.to_be_bytes(),
            };
        }
        *out_ip = ip_hdr;
        *out_icmp = IcmpHdr { check, ..icmp_hdr };
    }
    count(Counter::IcmpTooBigSent);
    ctx.bounce();
    Ok(Verdict::Tx)
}
