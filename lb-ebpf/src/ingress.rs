//! The client-facing program: packets for a VIP get the chosen path's address (DNAT).

use lb_common::{
    Counter,
    hash::addr_slot,
    maps::{
        ADDR_EXPOSED, ADDR_PATH, ADDR_VIP, EndpointKey, FILTER_ADDR, FILTER_VIP_ADDR,
        FILTER_VIP_SERVICE, FRAG_DIR_IN, FlowKey,
    },
    nat::{L4, Side},
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    ctx::Packet,
    flow::{self, Segment, Vip},
    forward::{self, Flow, Next},
    frag, icmp,
    maps::{LB_ADDR_FILTER, LB_ADDRS, LB_VIPS},
    parse::{self, Transport},
    stats::{self, Dir, Outcome},
};

/// The address pre-filter: which kinds of entries may exist for `addr` (a superset).
#[inline(always)]
pub fn filter(addr: [u8; 4]) -> u32 {
    LB_ADDR_FILTER.get(addr_slot(addr)).copied().unwrap_or(0)
}

/// The `ADDR_*` bits of `addr` when it is a VIP or path address (`bits`: its filter slot).
#[inline(always)]
fn ours(addr: [u8; 4], bits: u32) -> u32 {
    if bits & FILTER_ADDR == 0 {
        return 0;
    }
    // SAFETY: a hash map value, read once while the program runs.
    LB_ADDRS.get_ptr(addr).map_or(0, |b| unsafe { *b })
}

/// Why a client packet to `dst` (filter slot `bits`) that no VIP covers is not translated: a
/// path address its target does not expose is dropped; anything else is not ours.
#[inline(always)]
fn not_a_vip(dst: [u8; 4], bits: u32) -> Counter {
    let kind = ours(dst, bits);
    if kind & ADDR_PATH != 0 && kind & ADDR_EXPOSED == 0 {
        Counter::DropToPath
    } else {
        Counter::PassNotForUs
    }
}

/// The VIP a packet to `addr` belongs to, from the VIP table: the service (`proto`, `port`)
/// first, then the whole address. `port` is `None` for protocols without services.
#[inline(always)]
pub fn lookup_vip(addr: [u8; 4], proto: u8, port: Option<[u8; 2]>, bits: u32) -> Option<Vip> {
    if bits & FILTER_VIP_SERVICE != 0
        && let Some(port) = port
        && let Some(v) = LB_VIPS.get_ptr(EndpointKey::service(addr, proto, port))
    {
        // SAFETY: a hash map value, read once while the program runs.
        return Some(unsafe { *v });
    }
    if bits & FILTER_VIP_ADDR != 0
        && let Some(v) = LB_VIPS.get_ptr(EndpointKey::addr(addr))
    {
        // SAFETY: as above.
        return Some(unsafe { *v });
    }
    None
}

/// A later fragment to a VIP (it carries no ports): it follows its datagram's first fragment
/// (`frag`). Untracked (its first fragment not seen yet, or evicted), only a whole-address
/// VIP of a failover target can place it (the active path, as the first fragment would go
/// unless its flow is pinned elsewhere); any other is dropped, counted.
#[inline(always)]
fn later_fragment<C: Packet>(
    ctx: &C,
    l2: &parse::L2,
    ip: &'static mut lb_common::net::Ipv4Hdr,
    bits: u32,
) -> Outcome {
    let (addr, rank, path) = match frag::follow(ip, FRAG_DIR_IN)? {
        Some(v) => (v.addr, v.vip_rank, v.path),
        None => {
            if !matches!(ip.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP) {
                return Err(Counter::DropUnsupportedProto);
            }
            let vip =
                lookup_vip(ip.dst, ip.proto, None, bits).ok_or(Counter::DropFragmentUntracked)?;
            let path = flow::unkeyed(vip.target, Counter::DropFragmentUntracked)?;
            (path.addr, vip.rank, path.id)
        }
    };
    if ip.ttl <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let next = forward::route_cached(
        ctx,
        ip,
        &Flow {
            src: ip.src,
            dst: addr,
            sport: [0, 0],
            dport: [0, 0],
        },
        forward::path_slot(path),
    )?;
    if let Next::TooBig(mtu) = next {
        return icmp::too_big(ctx, l2, mtu);
    }
    ctx.rewrite(ip, L4::Icmp, 0, Side::Dst, addr, None);
    stats::translated(ctx, Counter::NatIngress, rank, path, Dir::In);
    Ok(forward::finish(ctx, l2, ip, next))
}

#[inline(always)]
pub fn handle<C: Packet>(ctx: &C) -> Outcome {
    let l2 = parse::ethernet(ctx)?;
    let ip = parse::ipv4(ctx, l2.l3)?;
    // Nothing from the client side comes from one of our addresses: spoofed, or looping.
    if ours(ip.src, filter(ip.src)) & (ADDR_VIP | ADDR_PATH) != 0 {
        return Err(Counter::DropMartian);
    }
    let bits = filter(ip.dst);
    if bits & (FILTER_VIP_ADDR | FILTER_VIP_SERVICE) == 0 {
        return Err(not_a_vip(ip.dst, bits));
    }
    let (l4, end) = parse::ipv4_payload(ctx, l2.l3, ip)?;
    if ip.is_later_fragment() {
        return later_fragment(ctx, &l2, ip, bits);
    }
    // An unfragmented datagram, or a first fragment: it carries the ports, and goes through
    // like any packet (recorded, so its later fragments follow).
    let first_fragment = ip.is_fragment();
    let transport = match parse::transport(ctx, ip.proto, l4, end)? {
        Transport::Icmp(h) if h.is_error() => {
            return icmp::ingress_error(ctx, &l2, ip, h, l4, end, bits);
        }
        t => t,
    };
    // Ports of the flow; `None` for what has no flow (other protocols, other ICMP).
    let ports = match &transport {
        Transport::Tcp(h) => Some((h.sport, h.dport)),
        Transport::Udp(h) => Some((h.sport, h.dport)),
        Transport::Icmp(h) if h.is_echo() => Some((h.echo_id(), [0, 0])),
        Transport::Icmp(_) | Transport::Other => None,
    };
    let service_port = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => ports.map(|(_, dport)| dport),
        _ => None,
    };
    let Some(vip) = lookup_vip(ip.dst, ip.proto, service_port, bits) else {
        let reason = not_a_vip(ip.dst, bits);
        if first_fragment && reason == Counter::PassNotForUs {
            frag::pass(ip, FRAG_DIR_IN);
        }
        return Err(reason);
    };
    let key = ports.map(|(sport, dport)| FlowKey::new(ip.src, ip.dst, sport, dport, ip.proto));
    let Some(key) = key else {
        return Err(if ip.proto == IPPROTO_ICMP {
            Counter::DropUnsupportedIcmp
        } else {
            Counter::DropUnsupportedProto
        });
    };
    if ip.ttl <= 1 {
        // Untranslated, so the kernel's "time exceeded" quotes what the client sent.
        return Err(Counter::PassTtlExpired);
    }

    let (sport, dport) = (key.sport, key.dport);
    let segment = match &transport {
        Transport::Tcp(h) => Segment::tcp(h.flags),
        _ => Segment::NotTcp,
    };
    // The target's decision, or the flow's exception; a whole-address flow on a shadowed port
    // is noted for the return side.
    let path = flow::choose(&key, &vip, segment)?;
    flow::note_shadowed(&key, &vip, &path);
    let target_port = vip.target_port;
    let new_port = (service_port.is_some() && target_port != [0, 0]).then_some(target_port);
    let next = forward::route_cached(
        ctx,
        ip,
        &Flow {
            src: ip.src,
            dst: path.addr,
            sport,
            dport: new_port.unwrap_or(dport),
        },
        forward::path_slot(path.id),
    )?;
    if let Next::TooBig(mtu) = next {
        return icmp::too_big(ctx, &l2, mtu);
    }

    if first_fragment {
        frag::track(ip, FRAG_DIR_IN, path.addr, vip.rank, path.id);
    }
    let tcp_flags = match &transport {
        Transport::Tcp(h) => Some(h.flags),
        _ => None,
    };
    stats::path_seen(path.id, tcp_flags, Dir::In, path.passive_us);
    ctx.rewrite(ip, transport.into_l4(), l4, Side::Dst, path.addr, new_port);
    stats::translated(ctx, Counter::NatIngress, vip.rank, path.id, Dir::In);
    Ok(forward::finish(ctx, &l2, ip, next))
}
