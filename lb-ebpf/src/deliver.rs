//! The second half of both handlers. Once a handler has decided how a packet is translated (a
//! [`Plan`]), the packet is routed, answered with an ICMP "too big" when it does not fit,
//! recorded for its later fragments, counted, translated and sent on: the same steps for
//! client packets (ingress) and the VM's replies (return).
//!
//! The IPv4 programs run both halves in one. The IPv6 twins cannot: IPv6's keys and addresses
//! make the two halves together larger than the verifier's 512-byte stack. So the IPv6 first
//! half leaves its plan in a per-CPU slot (`LB_PLAN6`) and tail-calls the second half, a
//! program of its own (`lb_deliver6`, `lb_deliver6_tc`), which reads the headers again and
//! carries on (Cilium splits its IPv6 handling the same way). A tail call runs on the same CPU
//! before anything else can, so the slot holds this packet's plan.

use lb_common::{
    Counter,
    maps::{FRAG_DIR_IN, FRAG_DIR_OUT, FlowKey},
    nat::Side,
};

use crate::{
    ctx::{self, Nat, Packet},
    family::Family,
    flow::{self, Segment},
    forward::{self, Flow, Next},
    frag,
    parse::{self, Datagram, Frag, L2, Transport},
    stats::{self, Dir, Outcome, Verdict},
};

/// How a packet is translated and where it goes, as the first half decided it. The direction
/// is not in it: the second half is a program per direction, so that each is verified for its
/// own side of the translation only.
#[derive(Clone, Copy)]
pub struct Plan<A> {
    pub d: Datagram,
    /// The packet as the FIB sees it once translated.
    pub flow: Flow<A>,
    /// What the translation writes (the side follows the direction).
    pub nat: Nat<A>,
    /// The next-hop cache slot (`forward::path_slot`, `forward::client_slot`).
    pub slot: u32,
    /// The traffic slot: the VIP's rank and the path.
    pub vip_rank: u8,
    pub path: u32,
    /// The path's passive-trigger threshold (ingress; 0 on return).
    pub passive_us: u32,
    /// A reply of the VM's that may pin its flow (return only), once it is known to go on.
    pub pin: Option<Pin>,
}

/// What [`flow::from_vm`] needs of a reply beyond the plan: the flow is the client's
/// (`Plan::flow`'s destination, the VIP, these ports as the client's packets carry them).
#[derive(Clone, Copy)]
pub struct Pin {
    pub vip: u32,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub segment: Segment,
    pub opens: bool,
}

/// Goes on with `plan`: inline (IPv4), or in the family's second program (IPv6, see the
/// module documentation).
#[inline(always)]
pub fn hand_on<C: Packet, F: Family>(
    ctx: &C,
    l2: &L2,
    ip: &mut F::Hdr,
    transport: Transport,
    plan: &Plan<F::Addr>,
    dir: Dir,
) -> Outcome {
    if !F::SPLIT {
        return deliver::<C, F>(ctx, l2, ip, transport, plan, dir);
    }
    let Some(slot) = F::plan() else {
        return Ok(Verdict::Fault);
    };
    // SAFETY: this CPU's slot, valid for the run and touched by no other CPU.
    unsafe { *slot = *plan };
    ctx.tail_call(match dir {
        Dir::In => lb_common::maps::CALL_DELIVER6_IN,
        Dir::Out => lb_common::maps::CALL_DELIVER6_OUT,
    });
    // Only a datapath loaded without its second program gets here; nothing was rewritten.
    Err(Counter::PassNoIpv6Program)
}

/// The second program's start: the plan the first half left, for the packet it left it for.
#[inline(always)]
pub fn resume<C: Packet, F: Family>(ctx: &C, dir: Dir) -> Outcome {
    let Some(slot) = F::plan() else {
        return Ok(Verdict::Fault);
    };
    // SAFETY: as in `hand_on`; the first half wrote it just before the tail call.
    let plan = unsafe { &*slot };
    let l2 = parse::ethernet(ctx)?;
    let ip = F::header(ctx, l2.l3)?;
    // Offsets read back from a map are unknown to the verifier: bounded again before use.
    let d = &plan.d;
    if d.l4 > parse::MAX_L4_OFF || d.end > usize::from(u16::MAX) {
        return Ok(Verdict::Fault);
    }
    let transport = if d.frag == Frag::Later {
        Transport::Other
    } else {
        parse::transport(ctx, d.proto, d.l4, d.end)?
    };
    deliver::<C, F>(ctx, &l2, ip, transport, plan, dir)
}

/// Routes, records, counts, translates and sends on a packet as `plan` says.
#[inline(always)]
fn deliver<C: Packet, F: Family>(
    ctx: &C,
    l2: &L2,
    ip: &mut F::Hdr,
    transport: Transport,
    plan: &Plan<F::Addr>,
    dir: Dir,
) -> Outcome {
    let d = &plan.d;
    let next = forward::route_cached::<C, F>(ctx, d, &plan.flow, plan.slot)?;
    if let Next::TooBig(mtu) = next {
        return F::too_big(ctx, l2, mtu);
    }
    if let (Dir::Out, Some(pin)) = (dir, &plan.pin) {
        let key = FlowKey::new(plan.flow.dst, plan.nat.addr, pin.sport, pin.dport, d.proto);
        flow::from_vm::<F>(&key, pin.vip, plan.path, pin.segment, pin.opens);
    }
    let (frag_dir, event, side) = match dir {
        Dir::In => (FRAG_DIR_IN, Counter::NatIngress, Side::Dst),
        Dir::Out => (FRAG_DIR_OUT, Counter::NatReturn, Side::Src),
    };
    if d.frag == Frag::First {
        frag::track::<F>(ip, d, frag_dir, plan.nat.addr, plan.vip_rank, plan.path);
    }
    if d.frag != Frag::Later {
        let tcp_flags = match &transport {
            Transport::Tcp(h) => Some(h.flags),
            _ => None,
        };
        stats::path_seen(plan.path, tcp_flags, dir, plan.passive_us);
    }
    let nat = Nat { side, ..plan.nat };
    ctx::translate::<C, F>(ctx, ip, transport.into_l4(F::ICMP_PSEUDO), &nat);
    stats::translated(ctx, event, plan.vip_rank, plan.path, dir);
    Ok(forward::finish::<C, F>(ctx, l2, ip, next))
}
