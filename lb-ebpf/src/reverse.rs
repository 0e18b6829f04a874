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
    nat::{IpHeader, Side},
    net::{IPPROTO_TCP, IPPROTO_UDP, TCP_SYN},
};

use crate::{
    ctx::{Nat, Packet},
    deliver::{self, Pin, Plan},
    family::{Family, IcmpKind, V4, V6, filter},
    flow::Segment,
    forward::{self, Flow},
    frag,
    maps::LB_PATH_IFACES,
    parse::{self, Datagram, Frag, Transport},
    stats::{Dir, Outcome},
};

/// How to translate a packet from path address `addr`: the service (`proto`, source `port`)
/// first, then the whole address.
#[inline(always)]
pub fn lookup_rev<F: Family>(
    addr: F::Addr,
    proto: u8,
    port: Option<[u8; 2]>,
    bits: u32,
) -> Option<RevValue<F::Addr>> {
    if bits & FILTER_PATH_SERVICE != 0
        && let Some(port) = port
        && let Some(v) = F::rev_nat().get_ptr(EndpointKey::service(addr, proto, port))
    {
        // SAFETY: a hash map value, read once while the program runs.
        return Some(unsafe { *v });
    }
    if bits & FILTER_PATH_ADDR != 0
        && let Some(v) = F::rev_nat().get_ptr(EndpointKey::addr(addr))
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
///
/// `reply`: the reply's own flow (path address and port → client address and port).
/// The caller checks `REV_F_SHADOWS_WHOLE` first, so that other packets build no key.
#[inline(always)]
pub fn disambiguate<F: Family>(rev: &mut RevValue<F::Addr>, reply: &FlowKey<F::Addr>) {
    if let Some(whole) = shadowing::<F>(reply) {
        *rev = whole;
    }
}

/// The whole-address VIP's reverse entry when the reply's flow is one of its shadowed flows.
#[inline(always)]
fn shadowing<F: Family>(reply: &FlowKey<F::Addr>) -> Option<RevValue<F::Addr>> {
    let whole = F::rev_nat().get_ptr(EndpointKey::addr(reply.src))?;
    // SAFETY: a hash map value, read once while the program runs.
    let whole = unsafe { *whole };
    let key = FlowKey::new(
        reply.dst,
        whole.vip_addr,
        reply.dport,
        reply.sport,
        reply.proto,
    );
    let flow = F::shadowed().get_ptr(key)?;
    // SAFETY: as above.
    (unsafe { (*flow).vip } == whole.vip_id).then_some(whole)
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
fn later_fragment<C: Packet, F: Family>(
    ctx: &C,
    l2: &parse::L2,
    ip: &'static mut F::Hdr,
    d: &Datagram,
) -> Outcome {
    let bits = filter(&ip.src());
    let (vip_addr, rank, path) = match frag::follow::<F>(ip, d, FRAG_DIR_OUT)? {
        Some(v) => (v.addr, v.vip_rank, v.path),
        None => {
            let rev = lookup_rev::<F>(ip.src(), d.proto, None, bits)
                .ok_or(Counter::DropFragmentUntracked)?;
            (rev.vip_addr, rev.vip_rank, rev.path)
        }
    };
    check_arrival(path, ctx.ingress_ifindex())?;
    if ip.hop_limit() <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let dst = ip.dst();
    let plan = Plan {
        d: *d,
        flow: Flow {
            src: vip_addr,
            dst,
            sport: [0, 0],
            dport: [0, 0],
        },
        nat: Nat {
            side: Side::Src,
            addr: vip_addr,
            port: None,
            l4_off: 0,
        },
        slot: forward::client_slot(&dst),
        vip_rank: rank,
        path,
        passive_us: 0,
        pin: None,
    };
    deliver::hand_on::<C, F>(ctx, l2, ip, Transport::Other, &plan, Dir::Out)
}

#[inline(always)]
pub fn handle<C: Packet>(ctx: &C) -> Outcome {
    let l2 = parse::ethernet(ctx)?;
    if l2.ipv6 {
        // To the IPv6 twin (`main`), which starts over with [`handle6`].
        ctx.tail_call(lb_common::maps::CALL_RETURN6);
        return Err(Counter::PassNoIpv6Program);
    }
    handle_ip::<C, V4>(ctx, l2)
}

/// The IPv6 twin's handler.
#[inline(always)]
pub fn handle6<C: Packet>(ctx: &C) -> Outcome {
    let l2 = parse::ethernet(ctx)?;
    if !l2.ipv6 {
        return Err(Counter::PassNotIp);
    }
    handle_ip::<C, V6>(ctx, l2)
}

/// One family's handler.
#[inline(always)]
fn handle_ip<C: Packet, F: Family>(ctx: &C, l2: parse::L2) -> Outcome {
    let ip = F::header(ctx, l2.l3)?;
    let (src, dst) = (ip.src(), ip.dst());
    let bits = filter(&src);
    let ours = bits & (FILTER_PATH_ADDR | FILTER_PATH_SERVICE) != 0;
    // ICMP errors come from routers too: they are matched on the datagram they quote.
    if !ours && F::header_proto(ip).is_some_and(|p| p != F::ICMP) {
        return Err(Counter::PassNotForUs);
    }
    let d = F::payload(ctx, l2.l3, ip).map_err(|reason| if ours { reason } else { F::PASS_BAD })?;
    if !ours && d.proto != F::ICMP {
        return Err(Counter::PassNotForUs);
    }
    if d.frag == Frag::Later {
        if !ours {
            return Err(Counter::PassNotForUs);
        }
        return later_fragment::<C, F>(ctx, &l2, ip, &d);
    }
    // An unfragmented datagram, or a first fragment: it carries the ports, and goes through
    // like any packet (recorded, so its later fragments follow).
    let proto = d.proto;
    let transport = match parse::transport(ctx, proto, d.l4, d.end) {
        Ok(Transport::Icmp(h)) if F::icmp_kind(h) == IcmpKind::Error => {
            return F::return_error(ctx, &l2, ip, h, &d);
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
        Transport::Icmp(h) => match F::icmp_kind(h) {
            IcmpKind::EchoRequest => (Some((h.echo_id(), [0, 0])), Segment::NotTcp, true),
            IcmpKind::EchoReply => (Some((h.echo_id(), [0, 0])), Segment::NotTcp, false),
            IcmpKind::Control => return Err(Counter::PassIcmp6Control),
            IcmpKind::Error | IcmpKind::Other => (None, Segment::NotTcp, false),
        },
        Transport::Other => (None, Segment::NotTcp, false),
    };
    let service_port = match proto {
        IPPROTO_TCP | IPPROTO_UDP => ports.map(|(sport, _)| sport),
        _ => None,
    };
    let Some(rev) = lookup_rev::<F>(src, proto, service_port, bits) else {
        if d.frag == Frag::First {
            frag::pass::<F>(ip, &d, FRAG_DIR_OUT);
        }
        return Err(Counter::PassNotForUs);
    };
    let Some((sport, dport)) = ports else {
        return Err(if proto == F::ICMP {
            Counter::DropUnsupportedIcmp
        } else {
            Counter::DropUnsupportedProto
        });
    };
    if let Transport::Udp(h) = &transport
        && F::UDP_ZERO_INVALID
        && h.check == [0, 0]
    {
        return Err(Counter::DropUdp6ZeroChecksum);
    }
    let mut rev = rev;
    if rev.flags & REV_F_SHADOWS_WHOLE != 0 {
        disambiguate::<F>(&mut rev, &FlowKey::new(src, dst, sport, dport, proto));
    }
    check_arrival(rev.path, ctx.ingress_ifindex())?;
    if ip.hop_limit() <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let new_port = (service_port.is_some() && rev.vip_port != [0, 0]).then_some(rev.vip_port);
    // The flow as the client's packets key it: ports swapped (the VIP's port for a service),
    // except ICMP echo, keyed (identifier, 0) both ways.
    let (csport, cdport) = if proto == F::ICMP {
        (sport, dport)
    } else {
        (dport, new_port.unwrap_or(sport))
    };
    let plan = Plan {
        d,
        flow: Flow {
            src: rev.vip_addr,
            dst,
            sport: new_port.unwrap_or(sport),
            dport,
        },
        nat: Nat {
            side: Side::Src,
            addr: rev.vip_addr,
            port: new_port,
            l4_off: d.l4,
        },
        slot: forward::client_slot(&dst),
        vip_rank: rev.vip_rank,
        path: rev.path,
        passive_us: 0,
        pin: Some(Pin {
            vip: rev.vip_id,
            sport: csport,
            dport: cdport,
            segment,
            opens: opens && (segment != Segment::NotTcp || rev.vip_port == [0, 0]),
        }),
    };
    deliver::hand_on::<C, F>(ctx, &l2, ip, transport, &plan, Dir::Out)
}
