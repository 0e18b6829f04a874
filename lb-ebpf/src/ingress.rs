//! The client-facing program: packets for a VIP get the chosen path's address (DNAT).

use lb_common::{
    Counter,
    maps::{
        ADDR_EXPOSED, ADDR_PATH, ADDR_VIP, EndpointKey, FILTER_ADDR, FILTER_VIP_ADDR,
        FILTER_VIP_SERVICE, FRAG_DIR_IN, FlowKey,
    },
    nat::{IpHeader, Side},
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    ctx::{Nat, Packet},
    deliver::{self, Plan},
    family::{Family, IcmpKind, V4, V6, filter},
    flow::{self, Segment, Vip},
    forward::{self, Flow},
    frag,
    parse::{self, Datagram, Frag, Transport},
    stats::{Dir, Outcome},
};

/// The `ADDR_*` bits of `addr` when it is a VIP or path address (`bits`: its filter slot).
#[inline(always)]
fn ours<F: Family>(addr: &F::Addr, bits: u32) -> u32 {
    if bits & FILTER_ADDR == 0 {
        return 0;
    }
    // SAFETY: a hash map value, read once while the program runs.
    F::addrs().get_ptr(addr).map_or(0, |b| unsafe { *b })
}

/// Why a client packet to `dst` (filter slot `bits`) that no VIP covers is not translated: a
/// path address its target does not expose is dropped; anything else is not ours.
#[inline(always)]
fn not_a_vip<F: Family>(dst: &F::Addr, bits: u32) -> Counter {
    let kind = ours::<F>(dst, bits);
    if kind & ADDR_PATH != 0 && kind & ADDR_EXPOSED == 0 {
        Counter::DropToPath
    } else {
        Counter::PassNotForUs
    }
}

/// The VIP a packet to `addr` belongs to, from the VIP table: the service (`proto`, `port`)
/// first, then the whole address. `port` is `None` for protocols without services.
#[inline(always)]
pub fn lookup_vip<F: Family>(
    addr: F::Addr,
    proto: u8,
    port: Option<[u8; 2]>,
    bits: u32,
) -> Option<Vip> {
    if bits & FILTER_VIP_SERVICE != 0
        && let Some(port) = port
        && let Some(v) = F::vips().get_ptr(EndpointKey::service(addr, proto, port))
    {
        // SAFETY: a hash map value, read once while the program runs.
        return Some(unsafe { *v });
    }
    if bits & FILTER_VIP_ADDR != 0
        && let Some(v) = F::vips().get_ptr(EndpointKey::addr(addr))
    {
        // SAFETY: as above.
        return Some(unsafe { *v });
    }
    None
}

/// Whether `proto` is one the datapath translates for a whole-address VIP.
#[inline(always)]
pub fn translatable<F: Family>(proto: u8) -> bool {
    proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == F::ICMP
}

/// A later fragment to a VIP (it carries no ports): it follows its datagram's first fragment
/// (`frag`). Untracked (its first fragment not seen yet, or evicted), only a whole-address
/// VIP of a failover target can place it (the active path, as the first fragment would go
/// unless its flow is pinned elsewhere); any other is dropped, counted.
#[inline(always)]
fn later_fragment<C: Packet, F: Family>(
    ctx: &C,
    l2: &parse::L2,
    ip: &'static mut F::Hdr,
    d: &Datagram,
) -> Outcome {
    let bits = filter(&ip.dst());
    let (addr, rank, path) = match frag::follow::<F>(ip, d, FRAG_DIR_IN)? {
        Some(v) => (v.addr, v.vip_rank, v.path),
        None => {
            if !translatable::<F>(d.proto) {
                return Err(Counter::DropUnsupportedProto);
            }
            let vip = lookup_vip::<F>(ip.dst(), d.proto, None, bits)
                .ok_or(Counter::DropFragmentUntracked)?;
            let path = flow::unkeyed::<F>(vip.target, Counter::DropFragmentUntracked)?;
            (path.addr, vip.rank, path.id)
        }
    };
    if ip.hop_limit() <= 1 {
        return Err(Counter::PassTtlExpired);
    }
    let plan = Plan {
        d: *d,
        flow: Flow {
            src: ip.src(),
            dst: addr,
            sport: [0, 0],
            dport: [0, 0],
        },
        nat: Nat {
            side: Side::Dst,
            addr,
            port: None,
            l4_off: 0,
        },
        slot: forward::path_slot(path),
        vip_rank: rank,
        path,
        passive_us: 0,
        pin: None,
    };
    deliver::hand_on::<C, F>(ctx, l2, ip, Transport::Other, &plan, Dir::In)
}

#[inline(always)]
pub fn handle<C: Packet>(ctx: &C) -> Outcome {
    let l2 = parse::ethernet(ctx)?;
    if l2.ipv6 {
        // To the IPv6 twin (`main`), which starts over with [`handle6`].
        ctx.tail_call(lb_common::maps::CALL_INGRESS6);
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
    // Nothing from the client side comes from one of our addresses: spoofed, or looping.
    if ours::<F>(&src, filter(&src)) & (ADDR_VIP | ADDR_PATH) != 0 {
        return Err(Counter::DropMartian);
    }
    let bits = filter(&dst);
    if bits & (FILTER_VIP_ADDR | FILTER_VIP_SERVICE) == 0 {
        return Err(not_a_vip::<F>(&dst, bits));
    }
    let d = F::payload(ctx, l2.l3, ip)?;
    if d.frag == Frag::Later {
        return later_fragment::<C, F>(ctx, &l2, ip, &d);
    }
    // An unfragmented datagram, or a first fragment: it carries the ports, and goes through
    // like any packet (recorded, so its later fragments follow).
    let proto = d.proto;
    let transport = match parse::transport(ctx, proto, d.l4, d.end)? {
        Transport::Icmp(h) => match F::icmp_kind(h) {
            IcmpKind::Error => return F::ingress_error(ctx, &l2, ip, h, &d, bits),
            IcmpKind::Control => return Err(Counter::PassIcmp6Control),
            _ => Transport::Icmp(h),
        },
        t => t,
    };
    // Ports of the flow; `None` for what has no flow (other protocols, other ICMP).
    let ports = match &transport {
        Transport::Tcp(h) => Some((h.sport, h.dport)),
        Transport::Udp(h) => Some((h.sport, h.dport)),
        Transport::Icmp(h) => match F::icmp_kind(h) {
            IcmpKind::EchoRequest | IcmpKind::EchoReply => Some((h.echo_id(), [0, 0])),
            _ => None,
        },
        Transport::Other => None,
    };
    let service_port = match proto {
        IPPROTO_TCP | IPPROTO_UDP => ports.map(|(_, dport)| dport),
        _ => None,
    };
    let Some(vip) = lookup_vip::<F>(dst, proto, service_port, bits) else {
        let reason = not_a_vip::<F>(&dst, bits);
        if d.frag == Frag::First && reason == Counter::PassNotForUs {
            frag::pass::<F>(ip, &d, FRAG_DIR_IN);
        }
        return Err(reason);
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
    if ip.hop_limit() <= 1 {
        // Untranslated, so the kernel's "time exceeded" quotes what the client sent.
        return Err(Counter::PassTtlExpired);
    }
    let key = FlowKey::new(src, dst, sport, dport, proto);

    let segment = match &transport {
        Transport::Tcp(h) => Segment::tcp(h.flags),
        _ => Segment::NotTcp,
    };
    // The target's decision, or the flow's exception; a whole-address flow on a shadowed port
    // is noted for the return side.
    let path = flow::choose::<F>(&key, &vip, segment)?;
    flow::note_shadowed::<F>(&key, &vip, &path);
    let target_port = vip.target_port;
    let new_port = (service_port.is_some() && target_port != [0, 0]).then_some(target_port);
    let plan = Plan {
        d,
        flow: Flow {
            src,
            dst: path.addr,
            sport,
            dport: new_port.unwrap_or(dport),
        },
        nat: Nat {
            side: Side::Dst,
            addr: path.addr,
            port: new_port,
            l4_off: d.l4,
        },
        slot: forward::path_slot(path.id),
        vip_rank: vip.rank,
        path: path.id,
        passive_us: path.passive_us,
        pin: None,
    };
    deliver::hand_on::<C, F>(ctx, &l2, ip, transport, &plan, Dir::In)
}
