//! The map statics. Names, sizes and layouts come from `lb_common::maps`; the user side reads
//! the same definitions.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::maps::{
    ADDR_FILTER_SIZE, ControlMeta, EVENTS_BYTES, EndpointKey, FLOW_TABLE_SIZE, FRAG_TABLE_SIZE,
    FlowKey, FlowValue, FragKey, FragValue, IfaceKey, IfaceMeta, MAX_ADDRS, MAX_IFACES, MAX_PAIRS,
    MAX_PATHS, MAX_REV_NAT, MAX_TARGETS, MAX_TX_PORTS, MAX_VIPS, NextHop, OUTBOUND_TABLE_SIZE,
    PathMeta, PathSeen, PathValue, RING_ENTRIES, RevValue, SHADOWED_TABLE_SIZE, Settings,
    TargetMeta, TargetValue, TokenBucket, TrafficStats, VipInfo, VipValue,
};
use lb_common::maps::{Addr6, EndpointKey6, FlowKey6, FragKey6, FragValue6, NextHop6, RevValue6};

#[map]
pub static LB_VIPS: HashMap<EndpointKey, VipValue> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map]
pub static LB_VIP_INFO: Array<VipInfo> = Array::with_max_entries(MAX_VIPS, 0);

#[map]
pub static LB_REV_NAT: HashMap<EndpointKey, RevValue> = HashMap::with_max_entries(MAX_REV_NAT, 0);

#[map]
pub static LB_TARGETS: Array<TargetValue> = Array::with_max_entries(MAX_TARGETS, 0);

#[map]
pub static LB_PATHS: Array<PathValue> = Array::with_max_entries(MAX_PATHS, 0);

#[map]
pub static LB_RING: Array<u32> = Array::with_max_entries(RING_ENTRIES, 0);

/// A plain hash map: a flood cannot evict an exception (see `flow`).
#[map]
pub static LB_FLOWS: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(FLOW_TABLE_SIZE, 0);

/// See `flow`.
#[map]
pub static LB_EXC_SEQ: Array<u64> = Array::with_max_entries(MAX_TARGETS, 0);

#[map]
pub static LB_PIN_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static LB_ADDRS: HashMap<[u8; 4], u32> = HashMap::with_max_entries(MAX_ADDRS, 0);

#[map]
pub static LB_PATH_IFACES: Array<u32> = Array::with_max_entries(MAX_PATHS, 0);

#[map]
pub static LB_SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
pub static LB_TOO_BIG: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// A plain hash map, apart from `LB_FLOWS`: client packets cannot crowd it (see `flow`).
#[map]
pub static LB_OUTBOUND: HashMap<FlowKey, FlowValue> =
    HashMap::with_max_entries(OUTBOUND_TABLE_SIZE, 0);

#[map]
pub static LB_SHADOWED: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(SHADOWED_TABLE_SIZE, 0);

/// See `frag`.
#[map]
pub static LB_FRAGS: LruHashMap<FragKey, FragValue> =
    LruHashMap::with_max_entries(FRAG_TABLE_SIZE, 0);

#[map]
pub static LB_ADDR_FILTER: Array<u32> = Array::with_max_entries(ADDR_FILTER_SIZE, 0);

#[map]
pub static LB_TX_PORTS: DevMapHash = DevMapHash::with_max_entries(MAX_TX_PORTS, 0);

#[map]
pub static LB_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(lb_common::Counter::COUNT, 0);

#[map]
pub static LB_PAIR_STATS: PerCpuArray<TrafficStats> = PerCpuArray::with_max_entries(MAX_PAIRS, 0);

/// Per CPU: see `forward::route_cached`.
#[map]
pub static LB_NEXTHOPS: PerCpuArray<NextHop> =
    PerCpuArray::with_max_entries(MAX_PATHS + lb_common::maps::RETURN_NEXTHOPS, 0);

// ---- The IPv6 twins (see `family`). ----

#[map]
pub static LB_VIPS6: HashMap<EndpointKey6, VipValue> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map]
pub static LB_REV_NAT6: HashMap<EndpointKey6, RevValue6> =
    HashMap::with_max_entries(MAX_REV_NAT, 0);

/// Allocated as exceptions are pinned: an IPv4-only edge spends no memory on it.
#[map]
pub static LB_FLOWS6: HashMap<FlowKey6, FlowValue> =
    HashMap::with_max_entries(FLOW_TABLE_SIZE, BPF_F_NO_PREALLOC);

#[map]
pub static LB_OUTBOUND6: HashMap<FlowKey6, FlowValue> =
    HashMap::with_max_entries(OUTBOUND_TABLE_SIZE, BPF_F_NO_PREALLOC);

#[map]
pub static LB_SHADOWED6: LruHashMap<FlowKey6, FlowValue> =
    LruHashMap::with_max_entries(SHADOWED_TABLE_SIZE, 0);

#[map]
pub static LB_FRAGS6: LruHashMap<FragKey6, FragValue6> =
    LruHashMap::with_max_entries(FRAG_TABLE_SIZE, 0);

#[map]
pub static LB_ADDRS6: HashMap<Addr6, u32> = HashMap::with_max_entries(MAX_ADDRS, 0);

/// See `parse::forget`.
#[map]
pub static LB_SCRATCH: PerCpuArray<[u32; 4]> = PerCpuArray::with_max_entries(1, 0);

/// See `main` (the IPv6 twins).
#[map]
pub static LB_CALLS: ProgramArray = ProgramArray::with_max_entries(lb_common::maps::CALL_SLOTS, 0);

/// [`LB_CALLS`] of the TC programs.
#[map]
pub static LB_CALLS_TC: ProgramArray =
    ProgramArray::with_max_entries(lb_common::maps::CALL_SLOTS, 0);

/// See `deliver`.
#[map]
pub static LB_PLAN6: PerCpuArray<crate::deliver::Plan<Addr6>> = PerCpuArray::with_max_entries(1, 0);

const _: () = assert!(
    size_of::<crate::deliver::Plan<Addr6>>() == lb_common::maps::PLAN6_BYTES,
    "lb_common::maps::PLAN6_BYTES is the size of the plan"
);

#[map]
pub static LB_NEXTHOPS6: PerCpuArray<NextHop6> =
    PerCpuArray::with_max_entries(MAX_PATHS + lb_common::maps::RETURN_NEXTHOPS, 0);

// ---- Control-plane state: never read by the programs (see `lb_common::maps::META`). ----

#[map]
pub static LB_META: Array<ControlMeta> = Array::with_max_entries(1, 0);

#[map]
pub static LB_TARGET_META: Array<TargetMeta> = Array::with_max_entries(MAX_TARGETS, 0);

#[map]
pub static LB_PATH_META: Array<PathMeta> = Array::with_max_entries(MAX_PATHS, 0);

#[map]
pub static LB_ADMIN: Array<u32> = Array::with_max_entries(MAX_PATHS, 0);

#[map]
pub static LB_PATH_SEEN: Array<PathSeen> = Array::with_max_entries(MAX_PATHS, 0);

/// See `stats::path_seen`.
#[map]
pub static LB_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static LB_IFACES: HashMap<IfaceKey, IfaceMeta> = HashMap::with_max_entries(MAX_IFACES, 0);
