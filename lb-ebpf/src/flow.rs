//! Flows and path selection. The flow table is the fast path: a hit names the flow's VIP (by
//! id, checked against `LB_VIP_INFO`) and its path, so an established flow costs one hash
//! lookup. A flow stays on its path while the path is up; new and re-steered flows follow the
//! target's current decision (failover's active path or the active/active consistent-hash
//! table), which the control plane computed. Lookups only.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    Counter,
    hash::ring_slot,
    maps::{
        FILTER_PATH_SERVICE, FlowKey, FlowValue, PATH_UP, REV_F_SHADOWS_WHOLE, RING_SIZE,
        TARGET_MODE_RING, TARGET_MODE_SINGLE, VipInfo,
    },
};

use crate::{
    maps::{
        LB_FLOWS, LB_OUTBOUND, LB_PATHS, LB_REV_NAT, LB_RING, LB_SHADOWED, LB_TARGETS, LB_VIP_INFO,
    },
    stats::count,
};

/// A VIP as the datapath works with it.
#[derive(Clone, Copy)]
pub struct Vip {
    pub id: u32,
    pub info: VipInfo,
}

/// The VIP with id `id`, if it exists.
#[inline(always)]
pub fn vip(id: u32) -> Option<Vip> {
    LB_VIP_INFO.get(id).map(|info| Vip { id, info: *info })
}

/// The flow `key` and its VIP, if the flow table has it and its VIP still serves it.
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<(&'static mut FlowValue, Vip)> {
    let flow = LB_FLOWS.get_ptr_mut(key)?;
    // SAFETY: a value of an LRU hash map, valid during the program's run. A concurrent
    // eviction can recycle it (the kernel's caveat); the worst outcome is one packet on a stale
    // path id, which `assign` still validates.
    let flow = unsafe { &mut *flow };
    let vip = vip(flow.vip)?;
    vip.info.serves(key).then_some((flow, vip))
}

/// A path chosen for a packet.
#[derive(Clone, Copy)]
pub struct Chosen {
    pub id: u32,
    pub addr: [u8; 4],
}

/// A connection the VM opened through whole-address VIP `vip` that `key` (a packet from the
/// remote end) belongs to, while its path holds (`LB_OUTBOUND`: apart from the client flows,
/// which cannot evict it).
#[inline(always)]
pub fn outbound(key: &FlowKey, vip: &Vip) -> Option<Chosen> {
    if !vip.info.key.is_whole_address() {
        return None;
    }
    let flow = LB_OUTBOUND.get_ptr(key)?;
    // SAFETY: an LRU hash map value, read once while the program runs.
    let flow = unsafe { *flow };
    if flow.vip != vip.id {
        return None;
    }
    still_valid(flow.path, vip)
}

/// Records new flow `key` of whole-address VIP `vip` on `path` in `LB_SHADOWED` when a
/// service of the same path address answers from the flow's port (`REV_F_SHADOWS_WHOLE`): the
/// return program asks there whose reply it is. A cheap filter test first; a hash lookup only
/// for addresses that have services.
#[inline(always)]
pub fn note_shadowed(key: &FlowKey, vip: &Vip, path: &Chosen) {
    if !vip.info.key.is_whole_address()
        || crate::ingress::filter(path.addr) & FILTER_PATH_SERVICE == 0
    {
        return;
    }
    let service = lb_common::maps::EndpointKey::service(path.addr, key.proto, key.dport);
    let Some(rev) = LB_REV_NAT.get_ptr(service) else {
        return;
    };
    // SAFETY: a hash map value, read once while the program runs.
    if unsafe { (*rev).flags } & REV_F_SHADOWS_WHOLE == 0 {
        return;
    }
    let value = FlowValue {
        path: path.id,
        vip: vip.id,
        flags: 0,
    };
    if LB_SHADOWED.insert(key, value, u64::from(BPF_ANY)).is_ok() {
        count(Counter::FlowShadowed);
    } else {
        count(Counter::PinnedInsertFailed);
    }
}

/// The target's current choice for a flow, ignoring the flow table.
#[inline(always)]
pub fn policy(key: &FlowKey, target: u32) -> Result<Chosen, Counter> {
    let t = LB_TARGETS.get(target).ok_or(Counter::DropNoPath)?;
    let id = if t.mode == TARGET_MODE_SINGLE {
        t.active
    } else if t.mode == TARGET_MODE_RING {
        let slot = target.wrapping_mul(RING_SIZE).wrapping_add(ring_slot(key));
        *LB_RING.get(slot).ok_or(Counter::DropNoPath)?
    } else {
        return Err(Counter::DropNoPath);
    };
    let path = LB_PATHS.get(id).ok_or(Counter::DropNoPath)?;
    Ok(Chosen {
        id,
        addr: path.addr,
    })
}

/// The path of a packet that has no flow key (a fragment, without ports): the target's active
/// path in failover; an active/active target cannot place it (`not_placeable`).
#[inline(always)]
pub fn unkeyed(target: u32, not_placeable: Counter) -> Result<Chosen, Counter> {
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
        addr: path.addr,
    })
}

/// The flow's path if it still holds (up, and still a path of the VIP's target).
#[inline(always)]
fn still_valid(id: u32, vip: &Vip) -> Option<Chosen> {
    let path = LB_PATHS.get(id)?;
    (path.state == PATH_UP && path.target == vip.info.target).then_some(Chosen {
        id,
        addr: path.addr,
    })
}

/// The path for a packet of flow `key` to `vip`: the recorded path of `flow` (from [`lookup`])
/// while it holds, else the policy's choice, written over the stale one (re-steer) or recorded
/// (new flow).
#[inline(always)]
pub fn assign(key: &FlowKey, vip: &Vip, flow: Option<&mut FlowValue>) -> Result<Chosen, Counter> {
    if let Some(flow) = flow {
        if let Some(p) = still_valid(flow.path, vip) {
            count(Counter::FlowHit);
            return Ok(p);
        }
        let p = policy(key, vip.info.target)?;
        if p.id == flow.path {
            // `last-known` keeps sending to a path that is down: nothing to re-steer.
            count(Counter::FlowHit);
        } else {
            flow.path = p.id;
            count(Counter::FlowResteer);
        }
        return Ok(p);
    }
    let p = policy(key, vip.info.target)?;
    let value = FlowValue {
        path: p.id,
        vip: vip.id,
        flags: 0,
    };
    if LB_FLOWS.insert(key, value, u64::from(BPF_ANY)).is_err() {
        count(Counter::FlowInsertFailed);
    }
    count(Counter::FlowNew);
    Ok(p)
}

/// The path of an existing flow for a packet that must not create one (an ICMP error): the
/// recorded path while it holds, else the policy's choice.
#[inline(always)]
pub fn peek(key: &FlowKey, vip: &Vip) -> Result<Chosen, Counter> {
    if let Some((flow, _)) = lookup(key)
        && let Some(p) = still_valid(flow.path, vip)
    {
        return Ok(p);
    }
    if let Some(p) = outbound(key, vip) {
        return Ok(p);
    }
    policy(key, vip.info.target)
}
