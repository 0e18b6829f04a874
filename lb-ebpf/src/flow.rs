//! Path selection, stateless by default. A packet's path follows from its target's current
//! decision (failover's active path, or the consistent-hash ring), the same for every packet
//! of a flow while the decision holds: no flow table, no insert. State exists only for the
//! exceptions, the flows that must not follow the current decision, and is consulted only
//! while the target's exception count ([`LB_EXC_SEQ`]) says some may exist:
//!
//! - during a transition (the control plane keeps the previous decision beside the current
//!   one), a TCP packet that is not a SYN belongs to a connection older than the change: it
//!   follows the previous decision while that path is up, and pins itself there (`LB_FLOWS`,
//!   rate-limited per CPU) so that a later change does not move it; a SYN whose flow's
//!   previous path differs pins the new connection to the current path (the client's next
//!   segment marks that pin answered), since with several edges the VM's SYN-ACK may come back
//!   through another edge than its SYN;
//! - a packet of the VM's that leaves by a path the rules would not send its flow's next
//!   packets to pins the flow there (`LB_OUTBOUND`, see `reverse`): a connection the VM opened
//!   over a standby path, a connection accepted (SYN-ACK) on the current path of a flow whose
//!   previous decision differs;
//! - whole-address flows on a port a service of the same path address answers from
//!   (`LB_SHADOWED`, for the return side).
//!
//! Lookups and pins only; the control plane expires exceptions and ends transitions.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_ktime_get_coarse_ns,
    maps::HashMap,
};
use lb_common::{
    Counter,
    hash::ring_slot,
    maps::{
        DEFAULT_PIN_BURST, DEFAULT_PIN_PER_SEC, FILTER_PATH_SERVICE, FLOW_F_CLOSING,
        FLOW_F_FROM_SYN, FLOW_F_REPLIED, FlowKey, FlowValue, NO_ID, PATH_UP, REV_F_SHADOWS_WHOLE,
        SEEN_GRANULARITY_NS, TARGET_MODE_RING, TARGET_MODE_SINGLE, TargetValue, VipValue,
        ring_index,
    },
    net::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

use crate::{
    family::{Family, filter},
    maps::{LB_EXC_SEQ, LB_PATHS, LB_PIN_BUCKET, LB_RING, LB_SETTINGS, LB_TARGETS},
    stats::count,
};

/// A VIP as the datapath works with it: its `LB_VIPS` value.
pub type Vip = VipValue;

/// A path chosen for a packet.
#[derive(Clone, Copy)]
pub struct Chosen<A> {
    pub id: u32,
    pub addr: A,
    /// The path's passive-trigger threshold (`PathValue::passive_us`).
    pub passive_us: u32,
}

/// What a TCP segment's flags say about its connection, for path selection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Not TCP: follows the current decision.
    NotTcp,
    /// A SYN without ACK: a new connection, follows the current decision.
    Syn,
    /// Any other segment: a connection that exists already.
    Established { closing: bool },
}

impl Segment {
    #[inline(always)]
    pub fn tcp(flags: u8) -> Self {
        if flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            Segment::Syn
        } else {
            Segment::Established {
                closing: flags & (TCP_FIN | TCP_RST) != 0,
            }
        }
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Whether exceptions of target `target` (decision `t`) may exist: the datapath has pinned
/// some since the pin count the control plane last found none at.
#[inline(always)]
pub fn exceptions_may_exist(target: u32, t: &TargetValue) -> bool {
    match LB_EXC_SEQ.get_ptr(target) {
        // SAFETY: an array slot, valid for the program's run; other CPUs add to it atomically.
        Some(seq) => (unsafe { core::ptr::read_volatile(seq) }) > t.exc_clear,
        None => true,
    }
}

/// Counts one pin of target `target`'s, after its entry is in: from now on the datapath
/// consults the exception tables for it (the control plane clears only past counts it saw
/// before its sweep began).
#[inline(always)]
fn note_pin(target: u32) {
    if let Some(seq) = LB_EXC_SEQ.get_ptr_mut(target) {
        // SAFETY: an array slot, valid and aligned for the program's run; shared by the CPUs,
        // so added to atomically. The BPF target has no compare-and-swap, so `AtomicU64` offers
        // no `fetch_add`; the intrinsic is the instruction itself (BPF_ATOMIC | BPF_ADD).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(seq, 1) };
    }
}

/// Path `id` when it can carry a flow of target `target`: up, and still that target's.
#[inline(always)]
fn usable<F: Family>(id: u32, target: u32) -> Option<Chosen<F::Addr>> {
    let path = LB_PATHS.get(id)?;
    (path.state == PATH_UP && path.target == target).then(|| Chosen {
        id,
        addr: F::path_addr(&path.addr),
        passive_us: path.passive_us,
    })
}

/// The path id a decision (`mode`, `active`, ring `half`) of target `target` gives flow `key`.
#[inline(always)]
fn pick<F: Family>(
    mode: u8,
    active: u32,
    half: u8,
    target: u32,
    key: &FlowKey<F::Addr>,
) -> Option<u32> {
    if mode == TARGET_MODE_SINGLE {
        Some(active)
    } else if mode == TARGET_MODE_RING {
        LB_RING
            .get(ring_index(target, half, ring_slot(key)))
            .copied()
    } else {
        None
    }
}

/// The current decision's path for `key` (no state check: `last-known` keeps naming a path
/// that is down).
#[inline(always)]
fn current<F: Family>(
    t: &TargetValue,
    target: u32,
    key: &FlowKey<F::Addr>,
) -> Result<Chosen<F::Addr>, Counter> {
    let id = pick::<F>(t.mode, t.active, t.ring_half, target, key).ok_or(Counter::DropNoPath)?;
    let path = LB_PATHS.get(id).ok_or(Counter::DropNoPath)?;
    Ok(Chosen {
        id,
        addr: F::path_addr(&path.addr),
        passive_us: path.passive_us,
    })
}

/// The previous decision's path for `key` while a transition is in force, when it differs
/// from the current one's (`current`) and is still usable.
#[inline(always)]
fn previous<F: Family>(
    t: &TargetValue,
    target: u32,
    key: &FlowKey<F::Addr>,
    current: u32,
) -> Option<Chosen<F::Addr>> {
    if !t.in_transition() {
        return None;
    }
    let id = pick::<F>(t.prev_mode, t.prev_active, t.ring_half ^ 1, target, key)?;
    if id == current || id == NO_ID {
        return None;
    }
    usable::<F>(id, target)
}

/// Where the decision rules send packets of flow `key` (target `target`, decision `t`) that
/// have no exception: an established TCP connection's to the previous decision's path while it
/// differs and is up, anything else to the current decision's. `Err` when the target has no
/// path at all.
#[inline(always)]
pub fn by_rules<F: Family>(
    t: &TargetValue,
    target: u32,
    key: &FlowKey<F::Addr>,
    segment: Segment,
) -> Result<(Chosen<F::Addr>, bool), Counter> {
    let cur = current::<F>(t, target, key)?;
    if let Segment::Established { .. } = segment
        && let Some(p) = previous::<F>(t, target, key, cur.id)
    {
        return Ok((p, true));
    }
    Ok((cur, false))
}

/// An exception of flow `key` to `vip` in `map` while its path is usable: refreshed (last
/// seen, closing, `answered` marks it replied). One whose path is no longer usable is removed.
#[inline(always)]
fn exception<F: Family>(
    map: &HashMap<FlowKey<F::Addr>, FlowValue>,
    key: &FlowKey<F::Addr>,
    vip: u32,
    target: u32,
    segment: Segment,
    answered: bool,
) -> Option<Chosen<F::Addr>> {
    let e = map.get_ptr_mut(key)?;
    // SAFETY: a hash map value, valid during the program's run. Another CPU may refresh it at
    // the same time: a lost update only shifts a timestamp or a flag by one packet.
    let e = unsafe { &mut *e };
    if e.vip != vip {
        return None;
    }
    let Some(p) = usable::<F>(e.path, target) else {
        let _ = map.remove(key);
        count(Counter::ExceptionStale);
        return None;
    };
    // A client's segment after its SYN was pinned: it has seen the VM's SYN-ACK (which may
    // have come back through another edge, where this pin is not).
    let answered = answered
        || (e.flags & FLOW_F_FROM_SYN != 0 && matches!(segment, Segment::Established { .. }));
    touch(e, segment, answered);
    Some(p)
}

/// Refreshes exception `e` for a packet of its flow.
#[inline(always)]
fn touch(e: &mut FlowValue, segment: Segment, answered: bool) {
    let mut flags = e.flags;
    if answered {
        flags |= FLOW_F_REPLIED;
    }
    if let Segment::Established { closing: true } = segment {
        flags |= FLOW_F_CLOSING;
    }
    if flags != e.flags {
        e.flags = flags;
    }
    let now = now_ns();
    if now > e.seen_ns.wrapping_add(SEEN_GRANULARITY_NS) {
        e.seen_ns = now;
    }
}

/// Takes one token from this CPU's pin budget.
#[inline(always)]
fn pin_allowed() -> bool {
    let (per_sec, burst) = match LB_SETTINGS.get(0) {
        Some(s) if s.pin_per_sec != 0 => (s.pin_per_sec, s.pin_burst),
        _ => (DEFAULT_PIN_PER_SEC, DEFAULT_PIN_BURST),
    };
    let Some(bucket) = LB_PIN_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU array slot, valid for the program's run and touched by no other CPU.
    unsafe { &mut *bucket }.take(now_ns(), per_sec, burst)
}

/// Pins flow `key` (of VIP `vip`, target `target`) to path `path` in `map`; `Ok` when it is
/// in. An entry already there (another CPU's, or an earlier connection's) is left as it is: a
/// packet never repoints a pin, so a spoofed SYN cannot move an established connection.
#[inline(always)]
fn pin<A>(
    map: &HashMap<FlowKey<A>, FlowValue>,
    key: &FlowKey<A>,
    vip: u32,
    target: u32,
    path: u32,
    flags: u32,
) -> bool {
    let value = FlowValue::new(path, vip, flags, now_ns());
    if map.insert(key, value, u64::from(BPF_NOEXIST)).is_err() {
        if map.get_ptr(key).is_none() {
            count(Counter::ExceptionInsertFailed);
        }
        return false;
    }
    note_pin(target);
    true
}

/// The path for a packet of flow `key` to `vip` from a client (ingress). A SYN opens a new
/// connection: it follows the current decision without looking at the exceptions (an
/// exception of its 5-tuple belongs to an earlier connection; the VM's SYN-ACK replaces it).
#[inline(always)]
pub fn choose<F: Family>(
    key: &FlowKey<F::Addr>,
    vip: &Vip,
    segment: Segment,
) -> Result<Chosen<F::Addr>, Counter> {
    let target = vip.target;
    let t = LB_TARGETS.get(target).ok_or(Counter::DropNoPath)?;
    if segment != Segment::Syn && exceptions_may_exist(target, t) {
        let found = match exception::<F>(F::flows(), key, vip.id, target, segment, false) {
            Some(p) => Some(p),
            None => exception::<F>(F::outbound(), key, vip.id, target, segment, true),
        };
        if let Some(p) = found {
            count(Counter::ExceptionHit);
            return Ok(p);
        }
    }
    let (p, on_previous) = by_rules::<F>(t, target, key, segment)?;
    if on_previous {
        count(Counter::FlowPrevious);
        if !pin_allowed() {
            count(Counter::ExceptionRateLimited);
        } else if pin(F::flows(), key, vip.id, target, p.id, 0) {
            count(Counter::ExceptionPinned);
        }
        return Ok(p);
    }
    count(Counter::FlowDecided);
    // A new connection during a transition, on a flow whose previous path differs: pinned to
    // the current path by its SYN, so that its next segments (without SYN) are not taken for
    // an older connection's. The VM's SYN-ACK pins it too, but only on the edge it comes back
    // through, which with several edges is often not this one.
    if segment == Segment::Syn && previous::<F>(t, target, key, p.id).is_some() {
        if !pin_allowed() {
            count(Counter::ExceptionRateLimited);
        } else if pin(F::flows(), key, vip.id, target, p.id, FLOW_F_FROM_SYN) {
            count(Counter::ExceptionPinned);
        }
    }
    Ok(p)
}

/// The path of an existing flow for a packet that must not create state (an ICMP error):
/// its exception, else the decision rules for an established flow.
#[inline(always)]
pub fn peek<F: Family>(key: &FlowKey<F::Addr>, vip: &Vip) -> Result<Chosen<F::Addr>, Counter> {
    let target = vip.target;
    let t = LB_TARGETS.get(target).ok_or(Counter::DropNoPath)?;
    let segment = if key.proto == lb_common::net::IPPROTO_TCP {
        Segment::Established { closing: false }
    } else {
        Segment::NotTcp
    };
    if exceptions_may_exist(target, t) {
        for map in [F::flows(), F::outbound()] {
            if let Some(e) = map.get_ptr(key) {
                // SAFETY: a hash map value, read once while the program runs.
                let e = unsafe { *e };
                if e.vip == vip.id
                    && let Some(p) = usable::<F>(e.path, target)
                {
                    return Ok(p);
                }
            }
        }
    }
    by_rules::<F>(t, target, key, segment).map(|(p, _)| p)
}

/// The path of a packet that has no flow key (a fragment, without ports): the target's active
/// path in failover; an active/active target cannot place it (`not_placeable`).
#[inline(always)]
pub fn unkeyed<F: Family>(target: u32, not_placeable: Counter) -> Result<Chosen<F::Addr>, Counter> {
    let t = LB_TARGETS.get(target).ok_or(Counter::DropNoPath)?;
    if t.mode == TARGET_MODE_RING {
        return Err(not_placeable);
    }
    if t.mode != TARGET_MODE_SINGLE {
        return Err(Counter::DropNoPath);
    }
    let path = LB_PATHS.get(t.active).ok_or(Counter::DropNoPath)?;
    Ok(Chosen {
        id: t.active,
        addr: F::path_addr(&path.addr),
        passive_us: path.passive_us,
    })
}

/// A packet of the VM's from path `path` (return side), of flow `key` as the client's packets
/// carry it (VIP `vip`, `segment` its TCP flags; `opens` when it may open a flow: a SYN, or for
/// a whole-address VIP a UDP datagram or an ICMP echo request). Refreshes the flow's exception
/// when there is one; otherwise pins the flow to `path` when it opens and the decision rules
/// would send its next packets elsewhere.
#[inline(always)]
pub fn from_vm<F: Family>(
    key: &FlowKey<F::Addr>,
    vip: u32,
    path: u32,
    segment: Segment,
    opens: bool,
) {
    let Some(p) = LB_PATHS.get(path) else {
        return;
    };
    let target = p.target;
    let Some(t) = LB_TARGETS.get(target) else {
        return;
    };
    let consult = exceptions_may_exist(target, t);
    if consult && segment != Segment::NotTcp {
        // A reply confirms (or closes) the client's pin and the VM's own. A SYN-ACK from
        // another path than an exception's: the VM accepted a new connection on this 5-tuple,
        // the exception belonged to an earlier one.
        for (map, answered) in [(F::flows(), true), (F::outbound(), false)] {
            if let Some(e) = map.get_ptr_mut(key) {
                // SAFETY: a hash map value, valid during the program's run; see `exception`.
                let e = unsafe { &mut *e };
                if e.vip == vip && e.path == path {
                    touch(e, segment, answered);
                    return;
                }
                if opens {
                    let _ = map.remove(key);
                    count(Counter::ExceptionStale);
                }
            }
        }
    }
    if !opens {
        return;
    }
    // Where the flow's next packets from the client would go. A SYN-ACK or the VM's own SYN:
    // those of an established connection. UDP and ICMP follow the current decision, except
    // right after a change, when a datagram from the previous decision's path is taken for
    // a reply already in flight, not a new flow.
    let rules_segment = match segment {
        Segment::NotTcp => Segment::NotTcp,
        _ => Segment::Established { closing: false },
    };
    let Ok((rule, _)) = by_rules::<F>(t, target, key, rules_segment) else {
        return;
    };
    if rule.id == path {
        return;
    }
    if segment == Segment::NotTcp
        && let Ok(cur) = current::<F>(t, target, key)
        && previous::<F>(t, target, key, cur.id).is_some_and(|p| p.id == path)
    {
        return;
    }
    if consult && (F::flows().get_ptr(key).is_some() || F::outbound().get_ptr(key).is_some()) {
        // The client's own exception, or one pinned already: never overwritten.
        return;
    }
    if pin(
        F::outbound(),
        key,
        vip,
        target,
        path,
        lb_common::maps::FLOW_F_FROM_PATH,
    ) {
        count(Counter::ExceptionFromVm);
    }
}

/// Records new flow `key` of whole-address VIP `vip` on `path` in `LB_SHADOWED` when a
/// service of the same path address answers from the flow's port (`REV_F_SHADOWS_WHOLE`): the
/// return program asks there whose reply it is. A cheap filter test first; a hash lookup only
/// for addresses that have services.
#[inline(always)]
pub fn note_shadowed<F: Family>(key: &FlowKey<F::Addr>, vip: &Vip, path: &Chosen<F::Addr>) {
    if !vip.is_whole_address() || filter(&path.addr) & FILTER_PATH_SERVICE == 0 {
        return;
    }
    shadow::<F>(key, vip, path);
}

#[inline(always)]
fn shadow<F: Family>(key: &FlowKey<F::Addr>, vip: &Vip, path: &Chosen<F::Addr>) {
    let service = lb_common::maps::EndpointKey::service(path.addr, key.proto, key.dport);
    let Some(rev) = F::rev_nat().get_ptr(service) else {
        return;
    };
    // SAFETY: a hash map value, read once while the program runs.
    if unsafe { (*rev).flags } & REV_F_SHADOWS_WHOLE == 0 {
        return;
    }
    // SAFETY: as above.
    if let Some(e) = F::shadowed().get_ptr(key)
        && unsafe { (*e).vip == vip.id && (*e).path == path.id }
    {
        return;
    }
    let value = FlowValue::new(path.id, vip.id, 0, now_ns());
    if F::shadowed().insert(key, value, u64::from(BPF_ANY)).is_ok() {
        count(Counter::FlowShadowed);
    } else {
        count(Counter::ExceptionInsertFailed);
    }
}
