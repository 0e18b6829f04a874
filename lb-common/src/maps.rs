//! The datapath's maps: names, capacities, and key/value layouts.
//!
//! Rules every type here follows: `#[repr(C)]`, `Copy`, no implicit padding (explicit `_pad`
//! fields, always zero), sizes asserted at compile time, addresses and ports in network byte
//! order as byte arrays, no `bool`/`enum`/`Option` (small integers with named constants
//! instead; the user side converts with checked `TryFrom`).

use core::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

// ---- Map names: identical to the eBPF statics, at most 15 bytes (the kernel truncates). ----

/// [`EndpointKey`] (VIP address, and protocol+port for a service) → [`VipValue`]: everything a
/// packet to the VIP needs, in one lookup.
pub const VIPS: &str = "LB_VIPS";
/// VIP id → [`VipInfo`]: the control plane's record of each VIP id (the programs never read
/// it; they have [`VipValue`]).
pub const VIP_INFO: &str = "LB_VIP_INFO";
/// [`EndpointKey`] (path address, and protocol+port for a service) → [`RevValue`].
pub const REV_NAT: &str = "LB_REV_NAT";
/// Target id → [`TargetValue`].
pub const TARGETS: &str = "LB_TARGETS";
/// Path id → [`PathValue`].
pub const PATHS: &str = "LB_PATHS";
/// [`ring_index`] → path id: the consistent-hash tables of active/active targets, two per
/// target (the current one and, during a transition, the previous one; [`TargetValue::ring_half`]).
pub const RING: &str = "LB_RING";
/// [`FlowKey`] → [`FlowValue`]: the exception table of flows pinned by a client's packet (an
/// established TCP connection kept on the previous decision's path). A plain hash map: nothing
/// evicts an entry; the control plane expires idle ones. Consulted only while the target's
/// [`EXC_SEQ`] says exceptions may exist.
pub const FLOWS: &str = "LB_FLOWS";
/// Target id → `u64`: how many exceptions the datapath has pinned for the target (atomic
/// adds). The datapath consults the exception tables for a target only while this is above
/// the target's [`TargetValue::exc_clear`]; the control plane raises that to this count once a
/// sweep found none of the target's exceptions left (see `docs/DATAPATH.md`).
pub const EXC_SEQ: &str = "LB_EXC_SEQ";
/// Slot 0 → [`TokenBucket`], per CPU: the budget of exceptions client packets may pin.
pub const PIN_BUCKET: &str = "LB_PIN_BUCKET";
/// [`crate::hash::addr_slot`] → `FILTER_*` bits: a superset test run before any hash lookup.
pub const ADDR_FILTER: &str = "LB_ADDR_FILTER";
/// Interface index → interface index: the devmap the programs redirect through.
pub const TX_PORTS: &str = "LB_TX_PORTS";
/// [`crate::Counter`] → `u64`, per CPU.
pub const COUNTERS: &str = "LB_COUNTERS";
/// [`pair_slot`] (path id, VIP rank) → [`TrafficStats`], per CPU: a translated packet's one
/// traffic slot. A VIP's traffic is the sum over its target's paths at its rank, a path's the
/// sum over the ranks.
pub const PAIR_STATS: &str = "LB_PAIR_STATS";
/// Address → `ADDR_*` bits: every VIP and path address, exactly (the filter's
/// [`FILTER_ADDR`] bit is its superset). The ingress program drops client packets from these
/// addresses (martians) and to path addresses that are not exposed.
pub const ADDRS: &str = "LB_ADDRS";
/// Path id → interface index its replies must arrive on (0: not known, any). Written by the
/// control plane from the FIB (or the path's `interface`); the return program drops a reply
/// from the path's address that arrives elsewhere (a spoofer on another segment).
pub const PATH_IFACES: &str = "LB_PATH_IFACES";
/// Slot 0 → [`Settings`]: datapath settings from the configuration.
pub const SETTINGS: &str = "LB_SETTINGS";
/// Slot 0 → [`TokenBucket`], per CPU: the budget of "fragmentation needed" answers.
pub const TOO_BIG_BUCKET: &str = "LB_TOO_BIG";
/// [`FlowKey`] → [`FlowValue`]: exceptions pinned by a VM's packet, kept apart from the ones
/// client packets pin so that no client traffic can crowd them out: connections the VM opened
/// over a path the current decision does not choose for them, and connections a TCP SYN-ACK
/// shows were accepted on a path the decision rules would not send their next packets to. A
/// plain hash map, expired by the control plane.
pub const OUTBOUND: &str = "LB_OUTBOUND";
/// [`FlowKey`] → [`FlowValue`]: client flows of a whole-address VIP on a port that a service
/// of the same path address answers from, which the return program asks to tell the two
/// apart. Only traffic to such a port can evict them.
pub const SHADOWED: &str = "LB_SHADOWED";
/// [`FragKey`] → [`FragValue`]: the fragment-tracking LRU. A datagram's first fragment carries
/// its ports and decides where the datagram goes; later ones carry none and follow the entry.
pub const FRAGS: &str = "LB_FRAGS";

// ---- The IPv6 twins: the same tables keyed by IPv6 addresses (see `docs/DATAPATH.md`,
// "IPv6"). Each holds what its IPv4 twin holds, for VIPs and path addresses of that family;
// the maps keyed by ids (targets, paths, ring, counters, stats) serve both families. ----

/// [`EndpointKey6`] → [`VipValue`]: [`VIPS`] for IPv6 VIPs.
pub const VIPS6: &str = "LB_VIPS6";
/// [`EndpointKey6`] → [`RevValue6`]: [`REV_NAT`] for IPv6 path addresses.
pub const REV_NAT6: &str = "LB_REV_NAT6";
/// [`FlowKey6`] → [`FlowValue`]: [`FLOWS`] for IPv6 flows. Allocated as entries are pinned
/// (`BPF_F_NO_PREALLOC`), so an IPv4-only edge spends no memory on it.
pub const FLOWS6: &str = "LB_FLOWS6";
/// [`FlowKey6`] → [`FlowValue`]: [`OUTBOUND`] for IPv6 flows, allocated as [`FLOWS6`].
pub const OUTBOUND6: &str = "LB_OUTBOUND6";
/// [`FlowKey6`] → [`FlowValue`]: [`SHADOWED`] for IPv6 flows.
pub const SHADOWED6: &str = "LB_SHADOWED6";
/// [`FragKey6`] → [`FragValue6`]: [`FRAGS`] for IPv6 datagrams.
pub const FRAGS6: &str = "LB_FRAGS6";
/// IPv6 address → `ADDR_*` bits: [`ADDRS`] for IPv6 addresses.
pub const ADDRS6: &str = "LB_ADDRS6";
/// [`NextHop6`]s, per CPU: [`NEXTHOPS`] for IPv6 destinations, the same slots.
pub const NEXTHOPS6: &str = "LB_NEXTHOPS6";
/// Slot 0 → `[u32; 4]`, per CPU: the IPv6 extension-header walk's result passes through it, so
/// that the verifier checks what follows the walk once, not once for every way through it; and
/// the MTU handed to the Packet Too Big program ([`CALL_TOO_BIG6`]).
pub const SCRATCH: &str = "LB_SCRATCH";
/// The program array through which the XDP programs hand an IPv6 packet to their IPv6 twin
/// (slots `CALL_*`, a tail call): each family is verified as a program of its own. One array
/// per hook, as a program array holds programs of one type.
pub const CALLS: &str = "LB_CALLS";
/// [`CALLS`] of the TC programs.
pub const CALLS_TC: &str = "LB_CALLS_TC";
/// [`CALLS`] slot of the ingress program's IPv6 twin.
pub const CALL_INGRESS6: u32 = 0;
/// [`CALLS`] slot of the return program's IPv6 twin.
pub const CALL_RETURN6: u32 = 1;
/// [`CALLS`] slots of the IPv6 twins' second half (routing and translating): ingress, return.
pub const CALL_DELIVER6_IN: u32 = 2;
pub const CALL_DELIVER6_OUT: u32 = 3;
/// [`CALLS`] slots of the IPv6 twins' ICMPv6 error programs: to a VIP, from a path.
pub const CALL_ERROR6_IN: u32 = 4;
pub const CALL_ERROR6_OUT: u32 = 5;
/// [`CALLS`] slot of the IPv6 twins' Packet Too Big program (the MTU in [`SCRATCH`]).
pub const CALL_TOO_BIG6: u32 = 6;
/// Slots in [`CALLS`] and [`CALLS_TC`].
pub const CALL_SLOTS: u32 = 7;
/// Slot 0 → the plan the IPv6 twins hand to their second half, per CPU (`lb-ebpf`'s `deliver`):
/// [`PLAN6_BYTES`] bytes that live only from the tail call to the second half's start.
pub const PLAN6: &str = "LB_PLAN6";
/// The size of [`PLAN6`]'s value (checked against the datapath's type when it is built).
pub const PLAN6_BYTES: usize = 128;

// ---- Control-plane state, pinned beside the datapath's maps. The programs never read these;
// they live in the object so that one load creates (and one pin directory keeps) everything the
// daemon and the CLI share, and a daemon restart or the CLI finds names and decisions there. ----

/// Slot 0 → [`ControlMeta`]: the layout this pin directory was created with, the daemon's pid.
pub const META: &str = "LB_META";
/// Target id → [`TargetMeta`]: name and policy of each target.
pub const TARGET_META: &str = "LB_TARGET_META";
/// Path id → [`PathMeta`]: name, policy inputs and last probe figures of each path.
pub const PATH_META: &str = "LB_PATH_META";
/// Per path: when the datapath last saw a TCP handshake start toward it and answered from it
/// ([`PathSeen`]), for the control plane's "datapath suspect" check. Shared across CPUs (a
/// lost race only shifts a timestamp).
pub const PATH_SEEN: &str = "LB_PATH_SEEN";
/// A ring buffer of [`PassiveEvent`]s: the datapath's word that a path's client traffic goes
/// unanswered (the passive trigger). The daemon probes the path at once.
pub const EVENTS: &str = "LB_EVENTS";
/// Path id → `u32`: what an operator said of the path ([`ADMIN_ENABLED`], [`ADMIN_DISABLED`],
/// or any other value: draining until that Unix second). Written by `lb path`; read by the
/// control plane only.
pub const ADMIN: &str = "LB_ADMIN";
/// [`ADMIN`]: nothing said, or enabled again.
pub const ADMIN_ENABLED: u32 = 0;
/// [`ADMIN`]: disabled: the path takes no new flows and its flows move (as if down).
pub const ADMIN_DISABLED: u32 = 1;
/// Interface name ([`IfaceKey`]) → [`IfaceMeta`]: the hook the daemon attached the interface's
/// program at, and why (for `lb status`).
pub const IFACES: &str = "LB_IFACES";

// ---- Benchmark support (`cargo xtask bench`): in the same object, never loaded by the
// daemon. ----

/// Slot 0 → [`BenchTemplate`]: the frame the measuring entry points restore, and how to vary it.
pub const BENCH: &str = "LB_BENCH";
/// Slot 0 → `u64` per CPU: a sequence the measuring entry points draw new flows from.
pub const BENCH_SEQ: &str = "LB_BENCH_SEQ";
/// Slot 0 → `u64` per CPU: frames the sink program counted and dropped.
pub const BENCH_SINK: &str = "LB_BENCH_SINK";
/// The benchmark maps.
pub const BENCH_MAPS: [&str; 3] = [BENCH, BENCH_SEQ, BENCH_SINK];

/// Benchmark programs: the floor (returns XDP_PASS), the restore alone, the two programs behind
/// a restore, a traffic generator for live frames, a bare redirect, and a counting sink.
pub const PROG_BENCH_FLOOR: &str = "bench_floor";
pub const PROG_BENCH_RESTORE: &str = "bench_restore";
pub const PROG_BENCH_INGRESS: &str = "bench_ingress";
pub const PROG_BENCH_RETURN: &str = "bench_return";
pub const PROG_BENCH_GEN: &str = "bench_gen";
pub const PROG_BENCH_REDIRECT: &str = "bench_redirect";
pub const PROG_BENCH_SINK: &str = "bench_sink";
/// The stateless-NAT reference: the job of a flow hit (parse, rewrite the destination, fix the
/// checksums and TTL, write MACs, redirect) with no lookup, no flow and no FIB: the physical
/// limit of this job on the machine at hand, which the per-packet costs are compared with.
pub const PROG_BENCH_NAT_REF: &str = "bench_nat_ref";
/// What the reference writes: the destination a flow hit to `VIP` gets (the fixtures' path
/// NN1) and the next hop's MACs.
pub const BENCH_NAT_REF_DST: [u8; 4] = [192, 0, 2, 70];
pub const BENCH_NAT_REF_SMAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
pub const BENCH_NAT_REF_DMAC: [u8; 6] = [2, 0, 0, 0, 0, 0x46];
pub const BENCH_PROGRAMS: [&str; 8] = [
    PROG_BENCH_FLOOR,
    PROG_BENCH_RESTORE,
    PROG_BENCH_INGRESS,
    PROG_BENCH_RETURN,
    PROG_BENCH_GEN,
    PROG_BENCH_REDIRECT,
    PROG_BENCH_SINK,
    PROG_BENCH_NAT_REF,
];

/// Largest frame a [`BenchTemplate`] holds.
pub const BENCH_FRAME: usize = 128;

/// How the measuring entry points vary the restored frame's flow (source address low byte and
/// source port at the IPv4/UDP offsets of an untagged, option-less frame).
/// The same flow every time.
pub const BENCH_VARY_NONE: u32 = 0;
/// A new flow every time (sequence).
pub const BENCH_VARY_SEQUENCE: u32 = 1;
/// A random one of `flows` flows.
pub const BENCH_VARY_RANDOM: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchTemplate {
    /// Bytes of `frame` in use: a multiple of 8, at most [`BENCH_FRAME`].
    pub len: u32,
    /// `BENCH_VARY_*`.
    pub vary: u32,
    /// Flows `BENCH_VARY_RANDOM` picks from, and the modulus of the sequence for the generator.
    pub flows: u32,
    /// Interface the redirect program sends to (a key of the devmap).
    pub port: u32,
    pub frame: [u8; BENCH_FRAME],
}

impl Default for BenchTemplate {
    fn default() -> Self {
        Self {
            len: 0,
            vary: 0,
            flows: 0,
            port: 0,
            frame: [0; BENCH_FRAME],
        }
    }
}

/// The flow (source address, source port) number `i` of a varied frame: source addresses
/// 198.51.100.0-255 by `i >> 16`, ports by `i & 0xffff`. The same on both sides, so user space
/// fills the flow table with the flows the datapath then looks up.
#[inline(always)]
pub const fn bench_flow(i: u32) -> ([u8; 4], [u8; 2]) {
    ([198, 51, 100, (i >> 16) as u8], (i as u16).to_be_bytes())
}

/// The ring buffer aya-log-ebpf declares for the programs' (rare) log records.
pub const AYA_LOGS: &str = "AYA_LOGS";

/// [`NextHop`]s, per CPU: the last FIB answer for a destination, reused for a short while.
/// Slots `0..MAX_PATHS` by path id (ingress); then [`RETURN_NEXTHOPS`] slots by a hash of the
/// client's address (return).
pub const NEXTHOPS: &str = "LB_NEXTHOPS";
/// Return-side slots of [`NEXTHOPS`] (a power of two).
pub const RETURN_NEXTHOPS: u32 = 1024;

/// Every map of lb's own, for the test that checks them against the built object (which also
/// has [`AYA_LOGS`]).
pub const ALL: [&str; 40] = [
    VIPS,
    VIP_INFO,
    REV_NAT,
    TARGETS,
    PATHS,
    RING,
    FLOWS,
    ADDR_FILTER,
    TX_PORTS,
    COUNTERS,
    PAIR_STATS,
    NEXTHOPS,
    META,
    TARGET_META,
    PATH_META,
    ADMIN,
    PATH_SEEN,
    EVENTS,
    FRAGS,
    IFACES,
    ADDRS,
    PATH_IFACES,
    SETTINGS,
    TOO_BIG_BUCKET,
    OUTBOUND,
    SHADOWED,
    EXC_SEQ,
    PIN_BUCKET,
    VIPS6,
    REV_NAT6,
    FLOWS6,
    OUTBOUND6,
    SHADOWED6,
    FRAGS6,
    ADDRS6,
    NEXTHOPS6,
    SCRATCH,
    CALLS,
    CALLS_TC,
    PLAN6,
];

/// Program (function) names in the object.
pub const PROG_INGRESS: &str = "lb_ingress";
pub const PROG_RETURN: &str = "lb_return";
/// The same two programs at the TC hook (sched_cls on clsact ingress).
pub const PROG_INGRESS_TC: &str = "lb_ingress_tc";
pub const PROG_RETURN_TC: &str = "lb_return_tc";
/// The IPv6 twins of the four programs, reached only by a tail call from them ([`CALLS`],
/// [`CALLS_TC`]), never attached.
pub const PROG_INGRESS6: &str = "lb_ingress6";
pub const PROG_RETURN6: &str = "lb_return6";
pub const PROG_INGRESS6_TC: &str = "lb_ingress6_tc";
pub const PROG_RETURN6_TC: &str = "lb_return6_tc";
/// The IPv6 twins' second halves ([`CALL_DELIVER6_IN`], [`CALL_DELIVER6_OUT`]), at each hook.
pub const PROG_DELIVER6_IN: &str = "lb_deliver6_in";
pub const PROG_DELIVER6_OUT: &str = "lb_deliver6_out";
pub const PROG_DELIVER6_IN_TC: &str = "lb_deliver6_in_tc";
pub const PROG_DELIVER6_OUT_TC: &str = "lb_deliver6_out_tc";
/// The IPv6 twins' ICMPv6 error programs ([`CALL_ERROR6_IN`], [`CALL_ERROR6_OUT`]).
pub const PROG_ERROR6_IN: &str = "lb_error6_in";
pub const PROG_ERROR6_OUT: &str = "lb_error6_out";
pub const PROG_ERROR6_IN_TC: &str = "lb_error6_in_tc";
pub const PROG_ERROR6_OUT_TC: &str = "lb_error6_out_tc";
/// The IPv6 twins' Packet Too Big program ([`CALL_TOO_BIG6`]).
pub const PROG_TOO_BIG6: &str = "lb_too_big6";
pub const PROG_TOO_BIG6_TC: &str = "lb_too_big6_tc";

// ---- Capacities. ----

/// VIP entries (whole-address and service) and VIP ids.
pub const MAX_VIPS: u32 = 4096;
/// VIPs (whole-address and service) one target may serve: each has a rank below this among
/// its target's VIPs, the column of its traffic in [`PAIR_STATS`].
pub const MAX_VIPS_PER_TARGET: u32 = 16;
/// Slots of [`PAIR_STATS`]: one per (path, VIP rank).
pub const MAX_PAIRS: u32 = MAX_PATHS * MAX_VIPS_PER_TARGET;
// A reverse-NAT entry per (VIP, path of its target): within the table whatever the
// configuration, so the configuration checks the VIPs per target alone.
const _: () = assert!(MAX_PAIRS <= MAX_REV_NAT && MAX_VIPS_PER_TARGET.is_power_of_two());

/// The [`PAIR_STATS`] slot of the traffic of VIP rank `rank` over path `path`.
#[inline(always)]
pub const fn pair_slot(path: u32, rank: u8) -> u32 {
    path.wrapping_mul(MAX_VIPS_PER_TARGET) | (rank as u32 & (MAX_VIPS_PER_TARGET - 1))
}
/// Reverse-NAT entries: one per (path, VIP) pair.
pub const MAX_REV_NAT: u32 = 16384;
pub const MAX_TARGETS: u32 = 256;
pub const MAX_PATHS: u32 = 1024;
/// Slots of one target's consistent-hash table; prime, as Maglev requires.
pub const RING_SIZE: u32 = 4099;
/// Two tables per target: the current one and the previous one ([`TargetValue::ring_half`]).
pub const RING_ENTRIES: u32 = MAX_TARGETS * 2 * RING_SIZE;

/// The index into [`RING`] of `slot` of target `target`'s table in half `half` (0 or 1).
#[inline(always)]
pub const fn ring_index(target: u32, half: u8, slot: u32) -> u32 {
    (target.wrapping_mul(2).wrapping_add((half & 1) as u32))
        .wrapping_mul(RING_SIZE)
        .wrapping_add(slot)
}

/// Default capacity of the exception table ([`FLOWS`]; `flow_table_size` in the
/// configuration). Only flows that must not follow their target's current decision are kept.
pub const FLOW_TABLE_SIZE: u32 = 1 << 18;
pub const ADDR_FILTER_BITS: u32 = 16;
pub const ADDR_FILTER_SIZE: u32 = 1 << ADDR_FILTER_BITS;
pub const MAX_TX_PORTS: u32 = 64;
/// Datagrams whose fragments are tracked at once. Shared by all CPUs (one LRU list): the
/// fragments of a datagram may arrive on different CPUs, since receive hashing sees ports in
/// the first fragment only.
pub const FRAG_TABLE_SIZE: u32 = 8192;
/// Entries of [`ADDRS`]: every VIP and path address.
pub const MAX_ADDRS: u32 = MAX_VIPS + MAX_PATHS;
/// Exceptions the VM's packets may pin at once ([`OUTBOUND`]).
pub const OUTBOUND_TABLE_SIZE: u32 = 1 << 18;
/// Whole-address flows on shadowed ports tracked at once ([`SHADOWED`]).
pub const SHADOWED_TABLE_SIZE: u32 = 65536;
/// Interfaces [`IFACES`] describes (at least every interface lb attaches to).
pub const MAX_IFACES: u32 = 256;

/// Written by the XDP programs into the metadata in front of a packet they translated and
/// hand to the kernel (a fallback, counted); a TC program of ours on the same interface (there
/// is one only while a reload moves the interface between hooks) lets such a packet pass
/// instead of taking it for a client packet to a path address.
pub const HANDED_OFF: u32 = 0x6c62_4b21;

/// Path id / target id meaning "none".
pub const NO_ID: u32 = u32::MAX;

// ---- Address filter bits. ----

/// Some whole-address VIP hashes to this slot.
pub const FILTER_VIP_ADDR: u32 = 1 << 0;
/// Some service VIP hashes to this slot.
pub const FILTER_VIP_SERVICE: u32 = 1 << 1;
/// Some path address with a whole-address VIP hashes to this slot.
pub const FILTER_PATH_ADDR: u32 = 1 << 2;
/// Some path address with a service VIP hashes to this slot.
pub const FILTER_PATH_SERVICE: u32 = 1 << 3;
/// Some VIP or path address hashes to this slot (see [`ADDRS`]).
pub const FILTER_ADDR: u32 = 1 << 4;

// ---- `ADDRS` bits. ----

/// The address is a VIP's.
pub const ADDR_VIP: u32 = 1 << 0;
/// The address is a path's.
pub const ADDR_PATH: u32 = 1 << 1;
/// A path address its target exposes to the client side (`expose_paths`): client packets to
/// it pass to the kernel as before.
pub const ADDR_EXPOSED: u32 = 1 << 2;

/// [`SETTINGS`]' one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// "Fragmentation needed" answers per second, per CPU (0: settings not written yet, the
    /// defaults apply).
    pub too_big_per_sec: u32,
    /// How many may go out at once after a quiet time.
    pub too_big_burst: u32,
    /// Exceptions client packets may pin per second, per CPU (0: the default).
    pub pin_per_sec: u32,
    /// How many at once after a quiet time.
    pub pin_burst: u32,
}

/// Defaults of [`Settings`], as the kernel's `icmp_msgs_per_sec` and `icmp_msgs_burst`.
pub const DEFAULT_TOO_BIG_PER_SEC: u32 = 1000;
pub const DEFAULT_TOO_BIG_BURST: u32 = 50;
/// Defaults of the pin budget: every old connection of a busy target pins once, on its first
/// packet after a decision change; one refused goes to its path anyway and tries again on its
/// next packet.
pub const DEFAULT_PIN_PER_SEC: u32 = 10_000;
pub const DEFAULT_PIN_BURST: u32 = 10_000;

/// A token bucket in nanoseconds: `tokens` whole answers may go; `stamp_ns` is when the
/// bucket was last filled (`bpf_ktime_get_coarse_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    pub tokens: u64,
    pub stamp_ns: u64,
}

impl TokenBucket {
    /// Takes one token at `now_ns` from a bucket filled at `per_sec` up to `burst`; `false`
    /// when there is none. Time is credited in whole tokens only, so a slow rate still adds up.
    #[inline(always)]
    pub fn take(&mut self, now_ns: u64, per_sec: u32, burst: u32) -> bool {
        let per_sec = u64::from(per_sec.max(1));
        let burst = u64::from(burst.max(1));
        let ns_per_token = 1_000_000_000 / per_sec;
        if self.stamp_ns == 0 {
            self.tokens = burst;
            self.stamp_ns = now_ns;
        }
        let elapsed = now_ns.saturating_sub(self.stamp_ns);
        let new = elapsed / ns_per_token.max(1);
        if new > 0 {
            self.tokens = (self.tokens + new).min(burst);
            self.stamp_ns += new * ns_per_token;
            if self.tokens == burst {
                self.stamp_ns = now_ns;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// An IPv4 address as the maps hold it: network byte order.
pub type Addr4 = [u8; 4];
/// An IPv6 address as the maps hold it: network byte order.
pub type Addr6 = [u8; 16];

/// `addr` as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2): the form the
/// maps shared by both families ([`PathValue`], [`VipInfo`]) hold an IPv4 address in. No
/// IPv6 VIP or path address may lie in `::ffff:0:0/96` (the configuration refuses them), so
/// the form also says the family.
#[inline(always)]
pub const fn mapped(addr: Addr4) -> Addr6 {
    let [a, b, c, d] = addr;
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

/// The IPv4 address of an IPv4-mapped `addr` ([`mapped`]); `None` for an IPv6 address.
#[inline(always)]
pub const fn unmapped(addr: &Addr6) -> Option<Addr4> {
    match addr {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d] => Some([*a, *b, *c, *d]),
        _ => None,
    }
}

/// The last 4 bytes of `addr`: its IPv4 address when it is IPv4-mapped ([`mapped`]). For the
/// datapath, which knows the family from the packet and must not branch again.
#[inline(always)]
pub const fn low32(addr: &Addr6) -> Addr4 {
    let [.., a, b, c, d] = *addr;
    [a, b, c, d]
}

/// An address of either family in the form the shared maps hold it ([`mapped`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr6Of(pub Addr6);

impl From<Addr4> for Addr6Of {
    fn from(a: Addr4) -> Self {
        Addr6Of(mapped(a))
    }
}

impl From<Addr6> for Addr6Of {
    fn from(a: Addr6) -> Self {
        Addr6Of(a)
    }
}

/// An IPv6 address as four 32-bit words, each read by `word` (`u32::from_be_bytes` for the
/// hashes, `u32::from_ne_bytes` for the kernel, which takes the words as they lie in memory).
#[inline(always)]
pub fn addr6_words(a: &Addr6, word: fn([u8; 4]) -> u32) -> [u32; 4] {
    let [
        a0,
        a1,
        a2,
        a3,
        a4,
        a5,
        a6,
        a7,
        a8,
        a9,
        a10,
        a11,
        a12,
        a13,
        a14,
        a15,
    ] = *a;
    [
        word([a0, a1, a2, a3]),
        word([a4, a5, a6, a7]),
        word([a8, a9, a10, a11]),
        word([a12, a13, a14, a15]),
    ]
}

/// An address with an optional protocol and port: keys [`VIPS`] (a VIP) and [`REV_NAT`] (a
/// path address), and with an IPv6 address ([`EndpointKey6`]) their twins [`VIPS6`] and
/// [`REV_NAT6`]. `proto == 0 && port == [0, 0]` is the whole-address entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey<A = Addr4> {
    pub addr: A,
    pub port: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
}

/// [`EndpointKey`] of an IPv6 address; also the control plane's key of a VIP of either family
/// (an IPv4 address [`mapped`]).
pub type EndpointKey6 = EndpointKey<Addr6>;

impl<A: Copy> EndpointKey<A> {
    /// The key of a whole-address entry.
    #[inline(always)]
    pub const fn addr(addr: A) -> Self {
        Self {
            addr,
            port: [0; 2],
            proto: 0,
            _pad: 0,
        }
    }
    #[inline(always)]
    pub const fn service(addr: A, proto: u8, port: [u8; 2]) -> Self {
        Self {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
    /// A key of `addr`, whole-address or for `service` (protocol, port).
    pub fn with(addr: A, service: Option<(u8, u16)>) -> Self {
        match service {
            None => Self::addr(addr),
            Some((proto, port)) => Self::service(addr, proto, port.to_be_bytes()),
        }
    }
    pub fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
    pub fn is_whole_address(&self) -> bool {
        self.proto == 0
    }
}

impl EndpointKey {
    pub fn new(addr: Ipv4Addr, service: Option<(u8, u16)>) -> Self {
        Self::with(addr.octets(), service)
    }
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.addr)
    }
    /// The same key in the form both families share ([`mapped`]).
    pub fn widened(&self) -> EndpointKey6 {
        EndpointKey6 {
            addr: mapped(self.addr),
            port: self.port,
            proto: self.proto,
            _pad: 0,
        }
    }
}

impl EndpointKey6 {
    /// The key of `addr` of either family (an IPv4 address [`mapped`]).
    pub fn of(addr: IpAddr, service: Option<(u8, u16)>) -> Self {
        let addr = match addr {
            IpAddr::V4(a) => mapped(a.octets()),
            IpAddr::V6(a) => a.octets(),
        };
        Self::with(addr, service)
    }
    /// The address, in its own family ([`unmapped`]).
    pub fn ip(&self) -> IpAddr {
        match unmapped(&self.addr) {
            Some(a) => IpAddr::V4(Ipv4Addr::from(a)),
            None => IpAddr::V6(Ipv6Addr::from(self.addr)),
        }
    }
    /// The IPv4 key of an IPv4-mapped key (its entry lives in the IPv4 maps); `None` for an
    /// IPv6 one.
    pub fn narrowed(&self) -> Option<EndpointKey> {
        unmapped(&self.addr).map(|addr| EndpointKey {
            addr,
            port: self.port,
            proto: self.proto,
            _pad: 0,
        })
    }
}

/// A VIP, by id (also its index into [`VIP_STATS`]). An all-zero entry is a free id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// The VIP's own key: in [`VIPS`] for an IPv4 VIP (held here [`mapped`]), in [`VIPS6`]
    /// for an IPv6 one.
    pub key: EndpointKey6,
    /// Index into [`TARGETS`].
    pub target: u32,
    /// Destination port after translation; `[0, 0]` keeps the client's port.
    pub target_port: [u8; 2],
    /// The VIP's rank among its target's VIPs ([`pair_slot`]).
    pub rank: u8,
    /// `VIP_INFO_F_*`: how the control plane treats the VIP.
    pub flags: u8,
}

/// [`VipInfo::flags`]: the VIP's state does not decide its address's announcement
/// (`announce: false`).
pub const VIP_INFO_F_NO_ANNOUNCE: u8 = 1 << 0;

/// [`VIPS`]' value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    /// The VIP's id (its index into [`VIP_INFO`]).
    pub id: u32,
    /// Index into [`TARGETS`].
    pub target: u32,
    /// Destination port after translation; `[0, 0]` keeps the client's port.
    pub target_port: [u8; 2],
    /// `VIP_F_*` bits.
    pub flags: u8,
    /// The VIP's rank among its target's VIPs ([`pair_slot`]).
    pub rank: u8,
}

/// A whole-address VIP (not a service).
pub const VIP_F_WHOLE: u8 = 1 << 0;

impl VipValue {
    /// What [`VIPS`] holds for VIP `id` described by `info`.
    pub fn of(id: u32, info: &VipInfo) -> Self {
        Self {
            id,
            target: info.target,
            target_port: info.target_port,
            flags: if info.key.is_whole_address() {
                VIP_F_WHOLE
            } else {
                0
            },
            rank: info.rank,
        }
    }
    #[inline(always)]
    pub const fn is_whole_address(&self) -> bool {
        self.flags & VIP_F_WHOLE != 0
    }
}

impl VipInfo {
    /// Whether this VIP serves flow `key`: same address, and for a service the same protocol
    /// and destination port. A flow whose VIP id no longer serves it (removed, or the id given
    /// to another VIP) is treated as a new flow.
    #[inline(always)]
    pub fn serves<A: Copy + Into<Addr6Of>>(&self, key: &FlowKey<A>) -> bool {
        let Addr6Of(dst) = key.dst.into();
        self.key.addr == dst
            && (self.key.proto == 0 || (self.key.proto == key.proto && self.key.port == key.dport))
    }
}

/// Target modes: how the datapath picks a path for a flow.
/// No usable path: packets are dropped (`Counter::DropNoPath`).
pub const TARGET_MODE_NONE: u8 = 0;
/// Every flow goes to `TargetValue::active` (failover, or `last-known` with all down).
pub const TARGET_MODE_SINGLE: u8 = 1;
/// Flows index the target's table in [`RING`] with the flow hash (active/active).
pub const TARGET_MODE_RING: u8 = 2;

/// The control plane's decision for one target: the current one and, during a transition, the
/// previous one, which established TCP connections without an exception keep following while
/// its path is up (see `docs/DATAPATH.md`, "Stateless by default").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetValue {
    /// One of `TARGET_MODE_*`.
    pub mode: u8,
    /// The previous decision's `TARGET_MODE_*`; `TARGET_MODE_NONE`: no transition.
    pub prev_mode: u8,
    /// The half of the target's [`RING`] tables the current ring is in; a previous ring is in
    /// the other half.
    pub ring_half: u8,
    pub _pad: u8,
    /// The path id for `TARGET_MODE_SINGLE`, else [`NO_ID`].
    pub active: u32,
    /// The previous decision's path id for `TARGET_MODE_SINGLE`, else [`NO_ID`].
    pub prev_active: u32,
    pub _pad2: u32,
    /// The datapath consults the exception tables while the target's [`EXC_SEQ`] is above
    /// this: the pin count at which the control plane last found none of the target's
    /// exceptions (0: a new target, which has none).
    pub exc_clear: u64,
}

impl TargetValue {
    /// No usable path.
    pub const fn none() -> Self {
        Self::new(TARGET_MODE_NONE, NO_ID, 0)
    }
    /// Every flow to path `active`.
    pub const fn single(active: u32) -> Self {
        Self::new(TARGET_MODE_SINGLE, active, 0)
    }
    /// Flows by the ring in half `half`.
    pub const fn ring(half: u8) -> Self {
        Self::new(TARGET_MODE_RING, NO_ID, half)
    }
    const fn new(mode: u8, active: u32, ring_half: u8) -> Self {
        Self {
            mode,
            prev_mode: TARGET_MODE_NONE,
            ring_half,
            _pad: 0,
            active,
            prev_active: NO_ID,
            _pad2: 0,
            exc_clear: 0,
        }
    }
    /// This decision, with `prev` (its current part) as the previous one. A previous ring is
    /// the other half's: `prev` must name the other half.
    pub const fn with_previous(mut self, prev: &TargetValue) -> Self {
        self.prev_mode = prev.mode;
        self.prev_active = prev.active;
        self
    }
    /// Whether a transition is in force (a previous decision kept).
    pub const fn in_transition(&self) -> bool {
        self.prev_mode != TARGET_MODE_NONE
    }
}

/// Path states as the datapath sees them. Anything but `PATH_UP`: no exception or previous
/// decision sends a flow there.
pub const PATH_DOWN: u8 = 0;
pub const PATH_UP: u8 = 1;
pub const PATH_DISABLED: u8 = 2;

/// One path to a target: the address the VM has on it and its state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathValue {
    /// The VM's address on the path: IPv6, or IPv4 [`mapped`]. A target's VIPs of one family
    /// only ever use its paths of the same family: the control plane gives a target with paths
    /// of both families one target id per family, each with that family's paths and VIPs.
    pub addr: Addr6,
    /// One of `PATH_*`.
    pub state: u8,
    pub _pad: [u8; 3],
    /// The target this path belongs to: an exception whose path slot now belongs to another
    /// target (after a reload) is stale.
    pub target: u32,
    /// The passive trigger's threshold, microseconds (0: off): client traffic toward the path
    /// unanswered for longer raises a [`PassiveEvent`].
    pub passive_us: u32,
}

impl PathValue {
    /// The path's address in its own family ([`unmapped`]).
    pub fn ip(&self) -> IpAddr {
        match unmapped(&self.addr) {
            Some(a) => IpAddr::V4(Ipv4Addr::from(a)),
            None => IpAddr::V6(Ipv6Addr::from(self.addr)),
        }
    }
}

/// How a reply from a path address is translated back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RevValue<A = Addr4> {
    pub vip_addr: A,
    /// Source port to restore; `[0, 0]` keeps the VM's port (whole-address VIPs).
    pub vip_port: [u8; 2],
    /// `REV_F_*` bits.
    pub flags: u8,
    /// The VIP's rank among its target's VIPs ([`pair_slot`]).
    pub vip_rank: u8,
    pub vip_id: u32,
    pub path: u32,
}

/// [`RevValue`] of an IPv6 VIP ([`REV_NAT6`]).
pub type RevValue6 = RevValue<Addr6>;

/// On a service entry: the same path address also has a whole-address VIP, so a reply from
/// this port may belong to either. The return program asks `LB_SHADOWED`: an entry of the
/// whole-address VIP with these ports means the reply is that VIP's.
pub const REV_F_SHADOWS_WHOLE: u8 = 1 << 0;

/// A flow as the ingress side sees it: client → VIP. ICMP echo flows use the echo identifier
/// as `sport` and zero as `dport`.
///
/// Aligned to 4 so the BPF compiler moves its address fields as words, not bytes; the padding
/// is two scalars, not a `[u8; 3]`, whose zeroing the BPF target compiles to a call of a
/// byte-wise `memset` on every packet (measured: `llvm-objdump -d` of `bench_ingress`).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey<A = Addr4> {
    pub src: A,
    pub dst: A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
    pub _pad: u8,
    pub _pad2: u16,
}

/// [`FlowKey`] of an IPv6 flow ([`FLOWS6`], [`OUTBOUND6`], [`SHADOWED6`]).
pub type FlowKey6 = FlowKey<Addr6>;

impl<A: Copy> FlowKey<A> {
    #[inline(always)]
    pub const fn new(src: A, dst: A, sport: [u8; 2], dport: [u8; 2], proto: u8) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// Pinned by a packet of the VM's ([`OUTBOUND`]): a connection it opened, or a SYN-ACK.
pub const FLOW_F_FROM_PATH: u32 = 1 << 0;
/// The other side has answered since the pin (for a client's pin: a packet from the path; for
/// the VM's: one from the client).
pub const FLOW_F_REPLIED: u32 = 1 << 1;
/// A TCP FIN or RST was seen: the connection is closing, its exception expires soon.
pub const FLOW_F_CLOSING: u32 = 1 << 2;
/// Pinned by the client's SYN during a transition (the flow's previous path differs from its
/// current one): the client's next segment, which it sends only after the VM's SYN-ACK, marks
/// it replied.
pub const FLOW_F_FROM_SYN: u32 = 1 << 3;

/// An exception: where flow `key` goes instead of its target's decision ([`FLOWS`],
/// [`OUTBOUND`], [`SHADOWED`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub path: u32,
    /// The VIP id the flow belongs to.
    pub vip: u32,
    /// `FLOW_F_*` bits.
    pub flags: u32,
    pub _pad: u32,
    /// When a packet of the flow was last seen (`bpf_ktime_get_coarse_ns`, refreshed at most
    /// every [`SEEN_GRANULARITY_NS`]).
    pub seen_ns: u64,
}

impl FlowValue {
    pub const fn new(path: u32, vip: u32, flags: u32, seen_ns: u64) -> Self {
        Self {
            path,
            vip,
            flags,
            _pad: 0,
            seen_ns,
        }
    }
}

/// How stale [`FlowValue::seen_ns`] may get before a packet refreshes it: a busy exception does
/// not write its entry on every packet.
pub const SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

/// A fragmented datagram in one direction: RFC 791's (source, destination, protocol,
/// identification).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub id: [u8; 2],
    pub proto: u8,
    /// `FRAG_DIR_*`: the ingress and return programs keep their datagrams apart.
    pub dir: u8,
}

/// An IPv6 datagram in one direction: RFC 8200's (source, destination, identification), and
/// the fragmentable part's first header (redundant, as in [`FragKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey6 {
    pub src: Addr6,
    pub dst: Addr6,
    pub id: [u8; 4],
    pub proto: u8,
    /// `FRAG_DIR_*`.
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// A datagram seen by the ingress program (toward a VIP).
pub const FRAG_DIR_IN: u8 = 0;
/// A datagram seen by the return program (from a path address).
pub const FRAG_DIR_OUT: u8 = 1;

/// The datagram is not ours (its first fragment was passed untranslated): neither are its
/// later fragments.
pub const FRAG_F_PASS: u8 = 1 << 0;

/// Where a tracked datagram's later fragments go: `addr` replaces the destination (ingress) or
/// the source (return); `path` and `vip_rank` are the traffic slot it is counted in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue<A = Addr4> {
    pub addr: A,
    pub path: u32,
    /// `FRAG_F_*` bits.
    pub flags: u8,
    /// The VIP's rank among its target's VIPs ([`pair_slot`]).
    pub vip_rank: u8,
    pub _pad: [u8; 2],
}

/// [`FragValue`] of an IPv6 datagram ([`FRAGS6`]).
pub type FragValue6 = FragValue<Addr6>;

/// Per VIP or per path traffic. "in" is toward the VM, "out" is toward the clients.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficStats {
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

impl TrafficStats {
    /// Sum over CPUs.
    pub fn add(&mut self, other: &Self) {
        self.in_packets += other.in_packets;
        self.in_bytes += other.in_bytes;
        self.out_packets += other.out_packets;
        self.out_bytes += other.out_bytes;
    }
}

const _: () = {
    assert!(size_of::<EndpointKey>() == 8);
    assert!(size_of::<EndpointKey6>() == 20);
    assert!(size_of::<VipInfo>() == 28);
    assert!(size_of::<VipValue>() == 12);
    assert!(size_of::<TargetValue>() == 24);
    assert!(size_of::<PathValue>() == 28);
    assert!(size_of::<RevValue>() == 16);
    assert!(size_of::<RevValue6>() == 28);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<FlowKey6>() == 40);
    assert!(size_of::<FlowValue>() == 24);
    assert!(size_of::<TrafficStats>() == 32);
    assert!(size_of::<FragKey>() == 12);
    assert!(size_of::<FragValue>() == 12);
    assert!(size_of::<FragKey6>() == 40);
    assert!(size_of::<FragValue6>() == 24);
    let mut names: &[&str] = &ALL;
    while let [name, rest @ ..] = names {
        assert!(name.len() <= 15, "map names are at most 15 bytes");
        names = rest;
    }
};

/// Bytes of a target or path name, NUL-padded.
pub const NAME_LEN: usize = 32;

/// The version of everything pinned: bump it with any change of a map's name, type, key, value
/// or capacity. A daemon refuses to adopt pinned state of another layout (unless told to
/// replace it).
pub const LAYOUT_VERSION: u32 = 11;

/// A fingerprint of the layout: the version, and every map's name with the sizes of the types
/// it holds. Computed at compile time, so a change that forgets the version still changes it.
pub const LAYOUT: u64 = {
    const fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
        let mut rest = bytes;
        while let [b, tail @ ..] = rest {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
            rest = tail;
        }
        h
    }
    let mut h = fnv(0xcbf2_9ce4_8422_2325, &LAYOUT_VERSION.to_le_bytes());
    let mut names: &[&str] = &ALL;
    while let [name, rest @ ..] = names {
        h = fnv(h, name.as_bytes());
        names = rest;
    }
    let sizes = [
        size_of::<EndpointKey>(),
        size_of::<VipInfo>(),
        size_of::<VipValue>(),
        size_of::<TargetValue>(),
        size_of::<PathValue>(),
        size_of::<RevValue>(),
        size_of::<FlowKey>(),
        size_of::<FlowValue>(),
        size_of::<TrafficStats>(),
        size_of::<ControlMeta>(),
        size_of::<TargetMeta>(),
        size_of::<PathMeta>(),
        size_of::<NextHop>(),
        size_of::<PathSeen>(),
        size_of::<PassiveEvent>(),
        size_of::<FragKey>(),
        size_of::<FragValue>(),
        size_of::<EndpointKey6>(),
        size_of::<RevValue6>(),
        size_of::<FlowKey6>(),
        size_of::<FragKey6>(),
        size_of::<FragValue6>(),
        size_of::<NextHop6>(),
        size_of::<IfaceKey>(),
        size_of::<IfaceMeta>(),
        FRAG_TABLE_SIZE as usize,
        MAX_IFACES as usize,
        size_of::<Settings>(),
        size_of::<TokenBucket>(),
        MAX_ADDRS as usize,
        OUTBOUND_TABLE_SIZE as usize,
        SHADOWED_TABLE_SIZE as usize,
        MAX_VIPS as usize,
        MAX_REV_NAT as usize,
        MAX_TARGETS as usize,
        MAX_PATHS as usize,
        RING_SIZE as usize,
        ADDR_FILTER_SIZE as usize,
        MAX_TX_PORTS as usize,
        crate::Counter::COUNT as usize,
        PLAN6_BYTES,
    ];
    let mut sizes: &[usize] = &sizes;
    while let [n, rest @ ..] = sizes {
        h = fnv(h, &(*n as u64).to_le_bytes());
        sizes = rest;
    }
    h
};

/// [`META`]'s one entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlMeta {
    /// [`LAYOUT`] of the build that created the pinned maps.
    pub layout: u64,
    /// The running daemon's pid (0: none has run or it stopped cleanly).
    pub daemon_pid: u32,
    /// The routing table the daemon keeps the servable VIPs' host routes in (`announce.table`;
    /// with `announce_protocol` 0: none). `lb status` and `lb down` find the routes here.
    pub announce_table: u32,
    /// When the daemon last (re)applied a configuration, Unix nanoseconds.
    pub applied_ns: u64,
    /// The route protocol of those routes (`announce.protocol`); 0: the daemon keeps none.
    pub announce_protocol: u8,
    pub _pad: [u8; 7],
}

/// How long the ingress program reuses a path's FIB answer ([`NEXTHOPS`]) before asking the
/// FIB again: a route or neighbour change reaches packets of that path within this time.
pub const NEXTHOP_TTL_NS: u64 = 50_000_000;

/// A path's next hop as `bpf_fib_lookup` last answered (ingress), per CPU. `P` pads the
/// struct to a multiple of 8 bytes for the address size: see [`NextHop6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NextHop<A = Addr4, P = [u8; 4]> {
    /// `bpf_ktime_get_coarse_ns` after which the entry is stale (0: empty).
    pub expires_ns: u64,
    /// The egress interface.
    pub ifindex: u32,
    /// The ingress interface the answer was for (forwarding and policy depend on it).
    pub in_ifindex: u32,
    /// The destination the answer was for.
    pub dst: A,
    /// The largest IP total length (IPv6: 40 + payload length) the FIB accepted for this
    /// path (MTU checks: larger packets ask the FIB again).
    pub max_len: u16,
    pub _pad: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    pub _pad2: P,
}

/// [`NextHop`] of an IPv6 destination ([`NEXTHOPS6`]): 48 bytes, no padding at the end.
pub type NextHop6 = NextHop<Addr6, [u8; 0]>;

/// Target modes as configured (not the datapath's `TARGET_MODE_*`).
pub const CONFIG_MODE_FAILOVER: u8 = 0;
pub const CONFIG_MODE_ACTIVE_ACTIVE: u8 = 1;
pub const ALL_DOWN_DROP: u8 = 0;
pub const ALL_DOWN_LAST_KNOWN: u8 = 1;

/// A target as configured. `used == 0`: a free id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetMeta {
    pub name: [u8; NAME_LEN],
    /// `CONFIG_MODE_*`.
    pub mode: u8,
    /// 1: preempt.
    pub preempt: u8,
    /// `ALL_DOWN_*`.
    pub all_down: u8,
    pub used: u8,
    pub _pad: [u8; 4],
    /// When the transition in force began (the decision changed with a previous one kept),
    /// Unix nanoseconds; 0: none.
    pub transition_ns: u64,
}

/// Health as the control plane last saw it (the datapath's [`PathValue::state`] also folds in
/// administrative state).
pub const HEALTH_UNKNOWN: u8 = 0;
pub const HEALTH_UP: u8 = 1;
pub const HEALTH_DOWN: u8 = 2;

/// A path as configured, and what its probes last said. `used == 0`: a free id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathMeta {
    pub name: [u8; NAME_LEN],
    pub priority: u32,
    pub weight: u32,
    /// When the state last changed, Unix nanoseconds.
    pub changed_ns: u64,
    /// Round-trip time of the last successful probe, microseconds (0: none yet).
    pub rtt_us: u32,
    /// `HEALTH_*`.
    pub health: u8,
    pub used: u8,
    /// 1: the control plane flagged the path "datapath suspect" (probes succeed, client TCP
    /// handshakes go unanswered).
    pub suspect: u8,
    pub _pad: u8,
}

/// What the datapath saw of a path's TCP handshakes, in `bpf_ktime_get_coarse_ns` time
/// (CLOCK_MONOTONIC_COARSE).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathSeen {
    /// The first SYN forwarded to the path since its last SYN-ACK came back (0: none).
    pub syn_pending_ns: u64,
    /// The last SYN-ACK from the path.
    pub synack_ns: u64,
    /// The first packet forwarded to the path since one last came back from it.
    pub in_pending_ns: u64,
    /// A packet from the path last came back (written at most once per clock tick).
    pub out_ns: u64,
    /// The last [`PassiveEvent`] about the path.
    pub signalled_ns: u64,
}

/// What a [`PassiveEvent`] saw.
pub const PASSIVE_SYN: u32 = 1;
pub const PASSIVE_SILENCE: u32 = 2;
/// The least time between two [`PassiveEvent`]s about one path.
pub const PASSIVE_EVENT_GAP_NS: u64 = 10_000_000;
/// Bytes of the [`EVENTS`] ring buffer (a page: events are few and small).
pub const EVENTS_BYTES: u32 = 4096;

/// The datapath's word (ring buffer [`EVENTS`]) that path `path`'s client traffic has gone
/// unanswered for `waited_ns`, past the path's `passive_us`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassiveEvent {
    pub path: u32,
    /// `PASSIVE_SYN`: a TCP SYN waits for its SYN-ACK; `PASSIVE_SILENCE`: packets go to the
    /// path and none comes back.
    pub kind: u32,
    pub waited_ns: u64,
}

impl PassiveEvent {
    /// The event as the ring buffer holds it (native byte order), or `None` when `bytes` is
    /// not one.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let path = u32::from_ne_bytes(bytes.get(0..4)?.try_into().ok()?);
        let kind = u32::from_ne_bytes(bytes.get(4..8)?.try_into().ok()?);
        let waited_ns = u64::from_ne_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self {
            path,
            kind,
            waited_ns,
        })
    }
}

impl PathSeen {
    /// How long a SYN to the path has waited for any SYN-ACK from it, at `now_ns`; `None` when
    /// none waits. One-way traffic (UDP) never counts: only TCP handshakes, which always get an
    /// answer from a living VM, are watched.
    pub fn unanswered_ns(&self, now_ns: u64) -> Option<u64> {
        (self.syn_pending_ns != 0 && self.syn_pending_ns > self.synack_ns)
            .then(|| now_ns.saturating_sub(self.syn_pending_ns))
    }
}

/// Bytes of an interface name (the kernel's `IFNAMSIZ`, NUL included).
pub const IFNAME_LEN: usize = 16;
/// Bytes of [`IfaceMeta::why`].
pub const WHY_LEN: usize = 112;

/// An interface by name, NUL-padded: [`IFACES`]' key (names are what the link pins carry).
pub type IfaceKey = [u8; IFNAME_LEN];

/// `IfaceMeta::hook`.
pub const IFACE_HOOK_XDP: u8 = 1;
pub const IFACE_HOOK_TC: u8 = 2;

/// How the daemon attached an interface's program, as it said in its log.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IfaceMeta {
    /// `IFACE_HOOK_*`.
    pub hook: u8,
    pub _pad: [u8; 7],
    /// The attach mode (`native` for XDP, `tcx` for TC), NUL-padded.
    pub mode: [u8; 8],
    /// Why this hook: the reason the daemon logged, NUL-padded, cut at a character boundary.
    pub why: [u8; WHY_LEN],
}

/// A text as stored in a meta map: its first `N` bytes (cut at a character boundary),
/// NUL-padded.
pub fn encode_str<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    for (o, b) in out.iter_mut().zip(text.as_bytes().iter().take(end)) {
        *o = *b;
    }
    out
}

/// The text stored by [`encode_str`] (invalid UTF-8 is replaced, never a panic).
pub fn decode_str<const N: usize>(text: &[u8; N]) -> &str {
    let end = text.iter().position(|b| *b == 0).unwrap_or(N);
    let bytes = text.get(..end).unwrap_or(&[]);
    core::str::from_utf8(bytes).unwrap_or("?")
}

/// A name as stored in a meta map: the first `NAME_LEN` bytes, NUL-padded.
pub fn encode_name(name: &str) -> [u8; NAME_LEN] {
    encode_str(name)
}

/// The name stored by [`encode_name`] (invalid UTF-8 is replaced, never a panic).
pub fn decode_name(name: &[u8; NAME_LEN]) -> &str {
    decode_str(name)
}

const _: () = {
    assert!(size_of::<BenchTemplate>() == 16 + BENCH_FRAME);
    assert!(size_of::<ControlMeta>() == 32);
    assert!(size_of::<NextHop>() == 40);
    assert!(size_of::<NextHop6>() == 48);
    assert!(size_of::<TargetMeta>() == 48);
    assert!(size_of::<PathMeta>() == 56);
    assert!(size_of::<PathSeen>() == 40);
    assert!(size_of::<PassiveEvent>() == 16);
    assert!(size_of::<IfaceMeta>() == 128);
    assert!(size_of::<Settings>() == 16);
    assert!(size_of::<TokenBucket>() == 16);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and
    // has no implicit padding (sizes asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for VipInfo {}
    unsafe impl aya::Pod for VipValue {}
    unsafe impl aya::Pod for TargetValue {}
    unsafe impl aya::Pod for PathValue {}
    unsafe impl aya::Pod for RevValue {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for TrafficStats {}
    unsafe impl aya::Pod for ControlMeta {}
    unsafe impl aya::Pod for PathSeen {}
    unsafe impl aya::Pod for TargetMeta {}
    unsafe impl aya::Pod for PathMeta {}
    unsafe impl aya::Pod for BenchTemplate {}
    unsafe impl aya::Pod for NextHop {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragValue {}
    unsafe impl aya::Pod for IfaceMeta {}
    unsafe impl aya::Pod for EndpointKey6 {}
    unsafe impl aya::Pod for RevValue6 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for FragKey6 {}
    unsafe impl aya::Pod for FragValue6 {}
    unsafe impl aya::Pod for NextHop6 {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for TokenBucket {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_addresses_are_held_mapped_and_come_back() {
        let v4 = [192, 0, 2, 70];
        let m = mapped(v4);
        assert_eq!(
            Ipv6Addr::from(m),
            "::ffff:192.0.2.70".parse::<Ipv6Addr>().expect("an address")
        );
        assert_eq!(unmapped(&m), Some(v4));
        assert_eq!(low32(&m), v4);
        let v6 = "2001:db8::70".parse::<Ipv6Addr>().expect("an address");
        assert_eq!(unmapped(&v6.octets()), None);
        // An IPv4-compatible (deprecated) address is not IPv4-mapped.
        assert_eq!(unmapped(&mapped(v4).map(|_| 0)), None);
    }

    #[test]
    fn a_vip_key_of_either_family_says_its_family() {
        let svc = Some((6, 443));
        let k4 = EndpointKey6::of("203.0.113.10".parse().expect("an address"), svc);
        assert_eq!(
            k4.ip(),
            "203.0.113.10".parse::<IpAddr>().expect("an address")
        );
        assert_eq!(
            k4.narrowed(),
            Some(EndpointKey::new(Ipv4Addr::new(203, 0, 113, 10), svc))
        );
        assert_eq!(k4.narrowed().map(|k| k.widened()), Some(k4));
        let k6 = EndpointKey6::of("2001:db8::10".parse().expect("an address"), None);
        assert_eq!(
            k6.ip(),
            "2001:db8::10".parse::<IpAddr>().expect("an address")
        );
        assert_eq!(k6.narrowed(), None);
        assert!(k6.is_whole_address());
        let p = PathValue {
            addr: mapped([192, 0, 2, 70]),
            ..PathValue::default()
        };
        assert_eq!(p.ip(), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 70)));
    }

    #[test]
    fn a_vip_serves_flows_of_its_family_only() {
        let info = VipInfo {
            key: EndpointKey::new(Ipv4Addr::new(203, 0, 113, 10), Some((6, 443))).widened(),
            ..VipInfo::default()
        };
        let flow = |dst, dport: u16, proto| {
            FlowKey::new([198, 51, 100, 1], dst, [1, 2], dport.to_be_bytes(), proto)
        };
        assert!(info.serves(&flow([203, 0, 113, 10], 443, 6)));
        assert!(!info.serves(&flow([203, 0, 113, 10], 443, 17)));
        assert!(!info.serves(&flow([203, 0, 113, 11], 443, 6)));
        let info6 = VipInfo {
            key: EndpointKey6::of("2001:db8::10".parse().expect("an address"), None),
            ..VipInfo::default()
        };
        let f6 = FlowKey6::new(
            [0; 16],
            "2001:db8::10"
                .parse::<Ipv6Addr>()
                .expect("an address")
                .octets(),
            [1, 2],
            [0, 80],
            6,
        );
        assert!(info6.serves(&f6));
        assert!(!info.serves(&f6));
    }
}
