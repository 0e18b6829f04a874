//! Path selection: the flow table keeps a flow on its path while the path is up; new and
//! re-steered flows follow the target's current decision (failover's active path or the
//! active/active consistent-hash table), which the control plane computed. Lookups only.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    Counter,
    hash::ring_slot,
    maps::{
        FlowKey, FlowValue, PATH_UP, RING_SIZE, TARGET_MODE_RING, TARGET_MODE_SINGLE, VipValue,
    },
};

use crate::{
    maps::{LB_FLOWS, LB_PATHS, LB_RING, LB_TARGETS},
    stats::count,
};

/// A path chosen for a packet.
#[derive(Clone, Copy)]
pub struct Chosen {
    pub id: u32,
    pub addr: [u8; 4],
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
    Ok(Chosen { id, addr: path.addr })
}

/// The flow's path if it still holds (up, and still a path of the VIP's target).
#[inline(always)]
fn still_valid(id: u32, vip: &VipValue) -> Option<Chosen> {
    let path = LB_PATHS.get(id)?;
    (path.state == PATH_UP && path.target == vip.target).then_some(Chosen { id, addr: path.addr })
}

/// The path for a packet of flow `key` to `vip`: its recorded path while that holds, else the
/// policy's choice, which is recorded (new flow) or written over the stale one (re-steer).
#[inline(always)]
pub fn assign(key: &FlowKey, vip: &VipValue) -> Result<Chosen, Counter> {
    if let Some(flow) = LB_FLOWS.get_ptr_mut(key) {
        // SAFETY: a value of an LRU hash map, valid during the program's run. A concurrent
        // eviction can recycle it (the kernel's caveat); the worst outcome is one packet on a
        // stale path id, which the checks below still validate.
        let flow = unsafe { &mut *flow };
        if let Some(p) = still_valid(flow.path, vip) {
            count(Counter::FlowHit);
            return Ok(p);
        }
        let p = policy(key, vip.target)?;
        if p.id == flow.path {
            // `last-known` keeps sending to a path that is down: nothing to re-steer.
            count(Counter::FlowHit);
        } else {
            flow.path = p.id;
            count(Counter::FlowResteer);
        }
        return Ok(p);
    }
    let p = policy(key, vip.target)?;
    let value = FlowValue { path: p.id, flags: 0 };
    if LB_FLOWS.insert(key, &value, u64::from(BPF_ANY)).is_err() {
        count(Counter::FlowInsertFailed);
    }
    count(Counter::FlowNew);
    Ok(p)
}

/// The path of an existing flow for a packet that must not create one (an ICMP error): the
/// recorded path while it holds, else the policy's choice.
#[inline(always)]
pub fn peek(key: &FlowKey, vip: &VipValue) -> Result<Chosen, Counter> {
    if let Some(flow) = LB_FLOWS.get_ptr(key) {
        // SAFETY: see `assign`.
        let id = unsafe { (*flow).path };
        if let Some(p) = still_valid(id, vip) {
            return Ok(p);
        }
    }
    policy(key, vip.target)
}
