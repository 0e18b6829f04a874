//! The path-facing program: packets from a path address get the VIP back as source (reverse
//! NAT). Stateless, from `LB_REV_NAT`; a packet of the VM's that leaves by a path the decision
//! rules would not send its flow's next client packets to (a connection the VM opened over a
//! standby path, a SYN-ACK during a transition) pins the flow there (`flow::from_vm`).

use lb_common::{
    Counter,
    maps::{
        EndpointKey, FILTER_PATH_ADDR, FILTER_PATH_SERVICE, FRAG_DIR_OUT, FlowKey,
        REV_F_SHADOWS_WHOLE, RevValue,
    },
    nat::{L4, Side},
    net::{ICMP_ECHO_REQUEST, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_SYN},
};

use crate::{
    ctx::Packet,
    flow::{self, Segment},
    forward::{self, Flow, Next},
    frag, icmp,
    ingress::filter,
    maps::{LB_PATH_IFACES, LB_REV_NAT, LB_SHADOWED},
    parse::{self, Transport},
    stats::{self, Dir, Outcome},
};

/// How to translate a packet from path address `addr`: the service (`proto`, source `port`)
/// first, then the whole address.
#[inline(always)]
pub fn lookup_rev(addr: [u8; 4], proto: u8, port: Option<[u8; 2]>, bits: u32) -> Option<RevValue> {
    if bits & FILTER_PATH_SERVICE != 0
        && let Some(port) = port
        && let Some(v) = LB_REV_NAT.get_ptr(EndpointKey::service(addr, proto, port))
    {
        // SAFETY: a hash map value, read once while the program runs.
        return Some(unsafe { *v });
    }
    if bits & FILTER_PATH_ADDR != 0
        && let Some(v) = LB_REV_NAT.get_ptr(EndpointKey::addr(addr))
    {
        // SAFETY: as above.
        return Some(unsafe { *v });
    }
    None
}

/// A reply from a service port of an address that also has a whole-address VIP
/// (`REV_F_SHADOWS_WHOLE`) belongs to that VIP when `LB_SHADOWED` holds that VIP's flow with
/// these ports (the ingress program notes them): the client reached the whole address on the
/// service's target port. Otherwise it is the service's. Costs two lookups, only for such
/// entries.
#[inline(always)]
pub fn disambiguate(
    rev: RevValue,
    path: [u8; 4],
    client: [u8; 4],
    client_port: [u8; 2],
    path_port: [u8; 2],
    proto: u8,
) -> RevValue {
    if rev.flags & REV_F_SHADOWS_WHOLE == 0 {
        return rev;
    }
    let Some(whole) = LB_REV_NAT.get_ptr(EndpointKey::addr(path)) else {
        return rev;
    };
    // SAFETY: a hash map value, read once while the program runs.
    let whole = unsafe { *whole };
    let key = FlowKey::new(client, whole.vip_addr, client_port, path_port, proto);
    match LB_SHADOWED.get_ptr(key) {
        // SAFETY: as above.
        Some(flow) if unsafe { (*flow).vip } == whole.vip_id => whole,
        _ => rev,
    }
}

/// Whether a packet from path `path` may arrive on `ifindex`: the interface its address is
/// routed through, as the control plane wrote it (0: not known, any).
#[inline(always)]
pub fn check_arrival(path: u32, ifindex: u32) -> Result<(), Counter> {
    match LB_PATH_IFACES.get(path) {
        Some(&want) if want != 0 && want != ifindex => Err(Counter::DropWrongInterface),
        _ => Ok(()),
    }
}

/// A later fragment from a path address (it carries no ports): it follows its datagram's
/// first fragment (`frag`). Untracked, a whole-address VIP's reverse entry (the address alone)
/// still translates it; one that only service VIPs cover cannot be placed and is dropped,
/// counted: a fragment never leaves with the path address.
#[inline(always)]
fn later_fragment<C: Packet>(
    ctx: &C,
    l2: &parse::L2,
    ip: &'static mut lb_common::net::Ipv4Hdr,
    bits: u32,
) -> Outcome {
    let (vip_addr, rank, path) = match frag::follow(ip, FRAG_DIR_OUT)? {
        Some(v) => (v.addr, v.vip_rank, v.path),
        None => {
            let rev =
                lookup_rev(ip.src, ip.proto, None, bits).ok_or(Counter::DropFragmentUntracked)?;
            (rev.vip_addr, rev.vip_rank, rev.path)
        }
    };
    check_arrival(path, ctx.ingress_ifindex())?;
    if ip.ttl <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let next = forward::route_cached(
        ctx,
        ip,
        &Flow {
            src: vip_addr,
            dst: ip.dst,
            sport: [0, 0],
            dport: [0, 0],
        },
        forward::client_slot(ip.dst),
    )?;
    if let Next::TooBig(mtu) = next {
        return icmp::too_big(ctx, l2, mtu);
    }
    ctx.rewrite(ip, L4::Icmp, 0, Side::Src, vip_addr, None);
    stats::translated(ctx, Counter::NatReturn, rank, path, Dir::Out);
    Ok(forward::finish(ctx, l2, ip, next))
}

#[inline(always)]
pub fn handle<C: Packet>(ctx: &C) -> Outcome {
    let l2 = parse::ethernet(ctx)?;
    let ip = parse::ipv4(ctx, l2.l3)?;
    let bits = filter(ip.src);
    let ours = bits & (FILTER_PATH_ADDR | FILTER_PATH_SERVICE) != 0;
    // ICMP errors come from routers too: they are matched on the datagram they quote.
    if !ours && ip.proto != IPPROTO_ICMP {
        return Err(Counter::PassNotForUs);
    }
    let (l4, end) = parse::ipv4_payload(ctx, l2.l3, ip)
        .map_err(|reason| if ours { reason } else { Counter::PassBadIpv4 })?;
    if ip.is_later_fragment() {
        if !ours {
            return Err(Counter::PassNotForUs);
        }
        return later_fragment(ctx, &l2, ip, bits);
    }
    // An unfragmented datagram, or a first fragment: it carries the ports, and goes through
    // like any packet (recorded, so its later fragments follow).
    let first_fragment = ip.is_fragment();
    let transport = match parse::transport(ctx, ip.proto, l4, end) {
        Ok(Transport::Icmp(h)) if h.is_error() => {
            return icmp::return_error(ctx, &l2, ip, h, l4, end);
        }
        Ok(t) if ours => t,
        Ok(_) => return Err(Counter::PassNotForUs),
        Err(reason) => return Err(if ours { reason } else { Counter::PassNotForUs }),
    };
    // `opens`: the packet may open a flow of the VM's (TCP: a SYN, with or without ACK; UDP
    // and ICMP echo requests only through a whole-address VIP, checked below).
    let (ports, segment, opens) = match &transport {
        Transport::Tcp(h) => (
            Some((h.sport, h.dport)),
            Segment::tcp(h.flags),
            h.flags & TCP_SYN != 0,
        ),
        Transport::Udp(h) => (Some((h.sport, h.dport)), Segment::NotTcp, true),
        Transport::Icmp(h) if h.is_echo() => (
            Some((h.echo_id(), [0, 0])),
            Segment::NotTcp,
            h.ty == ICMP_ECHO_REQUEST,
        ),
        Transport::Icmp(_) | Transport::Other => (None, Segment::NotTcp, false),
    };
    let service_port = match ip.proto {
        IPPROTO_TCP | IPPROTO_UDP => ports.map(|(sport, _)| sport),
        _ => None,
    };
    let Some(rev) = lookup_rev(ip.src, ip.proto, service_port, bits) else {
        if first_fragment {
            frag::pass(ip, FRAG_DIR_OUT);
        }
        return Err(Counter::PassNotForUs);
    };
    let Some((sport, dport)) = ports else {
        return Err(if ip.proto == IPPROTO_ICMP {
            Counter::DropUnsupportedIcmp
        } else {
            Counter::DropUnsupportedProto
        });
    };
    let rev = disambiguate(rev, ip.src, ip.dst, dport, sport, ip.proto);
    check_arrival(rev.path, ctx.ingress_ifindex())?;
    if ip.ttl <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let new_port = (service_port.is_some() && rev.vip_port != [0, 0]).then_some(rev.vip_port);
    let next = forward::route_cached(
        ctx,
        ip,
        &Flow {
            src: rev.vip_addr,
            dst: ip.dst,
            sport: new_port.unwrap_or(sport),
            dport,
        },
        forward::client_slot(ip.dst),
    )?;
    if let Next::TooBig(mtu) = next {
        return icmp::too_big(ctx, &l2, mtu);
    }
    {
        // The flow as the client's packets key it: ports swapped (the VIP's port for a
        // service), except ICMP echo, keyed (identifier, 0) both ways.
        let (rsport, rdport) = if ip.proto == IPPROTO_ICMP {
            (sport, dport)
        } else {
            (dport, new_port.unwrap_or(sport))
        };
        let opens = opens && (segment != Segment::NotTcp || rev.vip_port == [0, 0]);
        flow::from_vm(
            &FlowKey::new(ip.dst, rev.vip_addr, rsport, rdport, ip.proto),
            rev.vip_id,
            rev.path,
            segment,
            opens,
        );
    }
    if first_fragment {
        frag::track(ip, FRAG_DIR_OUT, rev.vip_addr, rev.vip_rank, rev.path);
    }
    let tcp_flags = match &transport {
        Transport::Tcp(h) => Some(h.flags),
        _ => None,
    };
    stats::path_seen(rev.path, tcp_flags, Dir::Out, 0);

    ctx.rewrite(
        ip,
        transport.into_l4(),
        l4,
        Side::Src,
        rev.vip_addr,
        new_port,
    );
    stats::translated(ctx, Counter::NatReturn, rev.vip_rank, rev.path, Dir::Out);
    Ok(forward::finish(ctx, &l2, ip, next))
}
