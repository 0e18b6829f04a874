//! The guest agent's TC programs (`lb guest run`, inside the VM; see `lb_common::guest`): a flow
//! the edge moved to another path keeps the socket it was made with.
//!
//! - [`lb_guest_in`] (clsact ingress of each given address's interface): a TCP segment or UDP
//!   datagram for given address B, with no socket of its own on B but an open one for the same
//!   client and ports on another given address A, is rewritten B → A and its flow recorded.
//! - [`lb_guest_out`] (clsact egress of the same interfaces): a reply of a recorded flow is
//!   rewritten A → B and sent out of B's interface (`bpf_redirect_neigh`, so B's routing
//!   applies: `lb guest plan`'s `from B lookup TABLE`).
//!
//! A separate object from the edge's (`lb`): the VM loads four small maps, not the edge's tables.
//! IPv4 only. The packet is read with `bpf_skb_load_bytes` (the agent's cost is a few helper
//! calls a packet; nothing here is on the edge's fast path) and written with the kernel's
//! checksum helpers, which keep partial, complete and unnecessary checksums right.
#![no_std]
#![no_main]
#![deny(clippy::indexing_slicing, clippy::panic, clippy::unwrap_used)]

use core::{ffi::c_void, mem::offset_of};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_ANY, BPF_F_CURRENT_NETNS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_TCP_CLOSE,
        BPF_TCP_ESTABLISHED, BPF_TCP_LISTEN, TC_ACT_OK, TC_ACT_SHOT, bpf_sock_tuple,
    },
    helpers::{
        bpf_ktime_get_ns, bpf_redirect_neigh, bpf_sk_lookup_udp, bpf_sk_release, bpf_skc_lookup_tcp,
    },
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray},
    programs::TcContext,
};
use lb_common::{
    guest::{
        DIR_IN, DIR_OUT, FLOW_FIN, FLOW_RST, FLOW_TABLE_SIZE, GuestAddr, GuestCounter, GuestFlow,
        GuestFlowKey, MAX_ADDRS,
    },
    net::{
        ETH_P_IP, EthHdr, ICMP_DEST_UNREACH, ICMP_TIME_EXCEEDED, IPPROTO_ICMP, IPPROTO_TCP,
        IPPROTO_UDP, IcmpHdr, Ipv4Hdr, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TcpHdr, UdpHdr,
    },
};

#[map]
static LBG_ADDRS: HashMap<[u8; 4], GuestAddr> = HashMap::with_max_entries(MAX_ADDRS, 0);

#[map]
static LBG_ADDR_LIST: Array<GuestAddr> = Array::with_max_entries(MAX_ADDRS, 0);

#[map]
static LBG_FLOWS: HashMap<GuestFlowKey, GuestFlow> = HashMap::with_max_entries(FLOW_TABLE_SIZE, 0);

#[map]
static LBG_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GuestCounter::COUNT, 0);

/// Arriving packets: B → A for a flow whose socket lives on A.
#[classifier]
pub fn lb_guest_in(ctx: TcContext) -> i32 {
    match ingress(&ctx) {
        Ok(verdict) => verdict,
        Err(counter) => {
            count(counter);
            TC_ACT_SHOT
        }
    }
}

/// Leaving packets: A → B for a recorded flow, sent out of B's interface.
#[classifier]
pub fn lb_guest_out(ctx: TcContext) -> i32 {
    match egress(&ctx) {
        Ok(verdict) => verdict,
        Err(counter) => {
            count(counter);
            TC_ACT_SHOT
        }
    }
}

const L3: usize = size_of::<EthHdr>();
const DADDR: usize = L3 + offset_of!(Ipv4Hdr, dst);
const SADDR: usize = L3 + offset_of!(Ipv4Hdr, src);
const IP_CHECK: usize = L3 + offset_of!(Ipv4Hdr, check);
const TCP_FLAGS: usize = offset_of!(TcpHdr, flags);

/// A TCP segment or UDP datagram of IPv4, as far as the programs read it.
struct Flow {
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
    /// TCP flags (0 for UDP).
    flags: u8,
    /// Offset of the TCP/UDP header.
    l4: usize,
}

/// What the programs leave alone: not IPv4, not TCP/UDP, or not readable as such.
enum Parsed {
    Flow(Flow),
    /// An ICMP error quoting a TCP segment or UDP datagram that left from `quoted.src`.
    IcmpError(Quote),
    /// A fragment, for this destination.
    Fragment([u8; 4]),
    Other,
}

/// An ICMP error (destination unreachable, time exceeded) to one of our addresses, about a
/// packet this host sent: `flow` is the quoted packet's (`src` the VM's address), `l4` the ICMP
/// header's offset.
struct Quote {
    /// The outer destination (the address the error came to).
    dst: [u8; 4],
    flow: Flow,
    /// Offset of the ICMP header.
    icmp: usize,
    /// Offset of the quoted IPv4 header.
    inner: usize,
}

/// Reads the ICMP error at `l4` (IPv4 header `ip` before it), if it quotes a TCP segment or UDP
/// datagram with a plain 20-byte header and its ports.
#[inline(always)]
fn parse_icmp(ctx: &TcContext, ip: &Ipv4Hdr, l4: usize) -> Parsed {
    let Ok([ty, _code]) = ctx.load::<[u8; 2]>(l4) else {
        return Parsed::Other;
    };
    if ty != ICMP_DEST_UNREACH && ty != ICMP_TIME_EXCEEDED {
        return Parsed::Other;
    }
    let inner = l4 + 8;
    let Ok(q) = ctx.load::<Ipv4Hdr>(inner) else {
        return Parsed::Other;
    };
    if q.version() != 4
        || usize::from(q.ihl()) * 4 != size_of::<Ipv4Hdr>()
        || (q.proto != IPPROTO_TCP && q.proto != IPPROTO_UDP)
        || q.is_fragment()
    {
        return Parsed::Other;
    }
    let ql4 = inner + size_of::<Ipv4Hdr>();
    let Ok([s0, s1, d0, d1]) = ctx.load::<[u8; 4]>(ql4) else {
        return Parsed::Other;
    };
    Parsed::IcmpError(Quote {
        dst: ip.dst,
        flow: Flow {
            src: q.src,
            dst: q.dst,
            sport: [s0, s1],
            dport: [d0, d1],
            proto: q.proto,
            flags: 0,
            l4: ql4,
        },
        icmp: l4,
        inner,
    })
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Parsed {
    let Ok(proto) = ctx.load::<[u8; 2]>(offset_of!(EthHdr, proto)) else {
        return Parsed::Other;
    };
    if u16::from_be_bytes(proto) != ETH_P_IP {
        return Parsed::Other;
    }
    let Ok(ip) = ctx.load::<Ipv4Hdr>(L3) else {
        return Parsed::Other;
    };
    let ihl = usize::from(ip.ihl()) * 4;
    if ip.version() != 4 || ihl < size_of::<Ipv4Hdr>() {
        return Parsed::Other;
    }
    if ip.proto != IPPROTO_TCP && ip.proto != IPPROTO_UDP && ip.proto != IPPROTO_ICMP {
        return Parsed::Other;
    }
    // More fragments, or an offset: the datagram's other fragments carry no ports.
    if ip.is_fragment() {
        return Parsed::Fragment(ip.dst);
    }
    let l4 = L3 + ihl;
    if ip.proto == IPPROTO_ICMP {
        return parse_icmp(ctx, &ip, l4);
    }
    let Ok(ports) = ctx.load::<[u8; 4]>(l4) else {
        return Parsed::Other;
    };
    let flags = if ip.proto == IPPROTO_TCP {
        match ctx.load::<u8>(l4 + TCP_FLAGS) {
            Ok(flags) => flags,
            Err(_) => return Parsed::Other,
        }
    } else {
        0
    };
    // A header cut before its checksum is no segment to move: the rewrite could not fix it.
    let check = if ip.proto == IPPROTO_TCP {
        offset_of!(TcpHdr, check)
    } else {
        offset_of!(UdpHdr, check)
    };
    if ctx.load::<[u8; 2]>(l4 + check).is_err() {
        return Parsed::Other;
    }
    let [s0, s1, d0, d1] = ports;
    Parsed::Flow(Flow {
        src: ip.src,
        dst: ip.dst,
        sport: [s0, s1],
        dport: [d0, d1],
        proto: ip.proto,
        flags,
        l4,
    })
}

#[inline(always)]
fn ingress(ctx: &TcContext) -> Result<i32, GuestCounter> {
    let flow = match parse(ctx) {
        Parsed::Flow(flow) => flow,
        Parsed::IcmpError(quote) => return icmp_error(ctx, &quote),
        Parsed::Fragment(dst) => {
            // SAFETY: a lookup of a map value that is only read.
            if unsafe { LBG_ADDRS.get(dst) }.is_some() {
                count(GuestCounter::Fragment);
            }
            return Ok(TC_ACT_OK);
        }
        Parsed::Other => return Ok(TC_ACT_OK),
    };
    // SAFETY: as above.
    let Some(here) = (unsafe { LBG_ADDRS.get(flow.dst) }).copied() else {
        return Ok(TC_ACT_OK);
    };
    let key = GuestFlowKey::new(
        flow.dst, flow.src, flow.dport, flow.sport, flow.proto, DIR_IN,
    );
    let syn = flow.flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    if let Some(record) = LBG_FLOWS.get_ptr_mut(key) {
        // SAFETY: a pointer into the map's value, valid for this run.
        let record = unsafe { &mut *record };
        let to = record.addr;
        if syn {
            // A new connection reusing the ports of a moved one: it belongs where it arrives.
            let _ = LBG_FLOWS.remove(key.twin(to));
            let _ = LBG_FLOWS.remove(key);
            count(GuestCounter::StaleRemoved);
            return Ok(TC_ACT_OK);
        }
        touch(record, flow.flags);
        rewrite(ctx, &flow, DADDR, flow.dst, to)?;
        count(GuestCounter::InMoved);
        return Ok(TC_ACT_OK);
    }
    if syn {
        return Ok(TC_ACT_OK);
    }
    // The flow's own address first: its ordinary traffic costs one lookup.
    match socket(ctx, &flow, flow.dst) {
        Socket::Open => {
            // A flow moved away from here that the edge brought back: its replies must leave
            // from here again, by this path.
            let out = key.twin(flow.dst);
            if let Some(moved) = LBG_FLOWS.get_ptr(out) {
                // SAFETY: a pointer into the map's value, read at once.
                let there = unsafe { (*moved).addr };
                let _ = LBG_FLOWS.remove(out.twin(there));
                let _ = LBG_FLOWS.remove(out);
                count(GuestCounter::Returned);
            }
            return Ok(TC_ACT_OK);
        }
        Socket::Bound => return Ok(TC_ACT_OK),
        Socket::None => {}
    }
    let Some(home) = other_home(ctx, &flow) else {
        count(GuestCounter::NoSocket);
        return Ok(TC_ACT_OK);
    };
    let now = now_ns();
    let out = GuestFlow {
        addr: flow.dst,
        ifindex: here.ifindex,
        seen_ns: now,
        flags: 0,
        _pad: 0,
    };
    let mut record = GuestFlow {
        addr: home.addr,
        ifindex: home.ifindex,
        seen_ns: now,
        flags: 0,
        _pad: 0,
    };
    touch(&mut record, flow.flags);
    let twin = key.twin(home.addr);
    if LBG_FLOWS.insert(twin, out, u64::from(BPF_ANY)).is_err() {
        count(GuestCounter::TableFull);
        return Ok(TC_ACT_OK);
    }
    if LBG_FLOWS.insert(key, record, u64::from(BPF_ANY)).is_err() {
        let _ = LBG_FLOWS.remove(twin);
        count(GuestCounter::TableFull);
        return Ok(TC_ACT_OK);
    }
    count(GuestCounter::FlowsRecorded);
    rewrite(ctx, &flow, DADDR, flow.dst, home.addr)?;
    count(GuestCounter::InMoved);
    Ok(TC_ACT_OK)
}

/// An ICMP error about a moved flow's reply (sent as B by the egress program; a router on B's
/// path answered it, or the edge translated one from beyond): it goes to A, quoting the packet
/// as A's socket sent it, so that the socket learns it (a smaller path MTU above all: without
/// this a moved connection would stall in a PMTU black hole).
#[inline(always)]
fn icmp_error(ctx: &TcContext, quote: &Quote) -> Result<i32, GuestCounter> {
    let q = &quote.flow;
    // The error came to the address its quoted packet left from, one of ours.
    if quote.dst != q.src {
        return Ok(TC_ACT_OK);
    }
    // The reply left as B: its flow's IN record (keyed as the client's packets arrive at B).
    let key = GuestFlowKey::new(q.src, q.dst, q.sport, q.dport, q.proto, DIR_IN);
    let Some(record) = LBG_FLOWS.get_ptr(key) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: a pointer into the map's value, read at once.
    let to = unsafe { (*record).addr };
    let (old, new) = (
        u64::from(u32::from_ne_bytes(q.src)),
        u64::from(u32::from_ne_bytes(to)),
    );
    let inner_check = quote.inner + offset_of!(Ipv4Hdr, check);
    let inner_src = quote.inner + offset_of!(Ipv4Hdr, src);
    // The quoted header's checksum balances its address within the ICMP message. The quoted
    // transport checksum, when the quote holds it (RFC 792 asks for 8 bytes: UDP's, not TCP's;
    // Linux quotes more), covers the address through its pseudo-header: its change is the ICMP
    // checksum's to balance. A UDP datagram sent without a checksum (0) keeps none.
    ctx.l3_csum_replace(inner_check, old, new, 4)
        .map_err(|_| GuestCounter::RewriteFailed)?;
    let l4_check = q.l4
        + if q.proto == IPPROTO_TCP {
            offset_of!(TcpHdr, check)
        } else {
            offset_of!(UdpHdr, check)
        };
    if let Ok(before) = ctx.load::<u16>(l4_check)
        && (before != 0 || q.proto == IPPROTO_TCP)
    {
        ctx.l3_csum_replace(l4_check, old, new, 4)
            .map_err(|_| GuestCounter::RewriteFailed)?;
        let after = ctx
            .load::<u16>(l4_check)
            .map_err(|_| GuestCounter::RewriteFailed)?;
        ctx.l3_csum_replace(
            quote.icmp + offset_of!(IcmpHdr, check),
            u64::from(before),
            u64::from(after),
            2,
        )
        .map_err(|_| GuestCounter::RewriteFailed)?;
    }
    ctx.store(inner_src, &(new as u32), 0)
        .and_then(|()| ctx.l3_csum_replace(IP_CHECK, old, new, 4))
        .and_then(|()| ctx.store(DADDR, &(new as u32), 0))
        .map_err(|_| GuestCounter::RewriteFailed)?;
    count(GuestCounter::IcmpMoved);
    Ok(TC_ACT_OK)
}

#[inline(always)]
fn egress(ctx: &TcContext) -> Result<i32, GuestCounter> {
    let Parsed::Flow(flow) = parse(ctx) else {
        return Ok(TC_ACT_OK);
    };
    let key = GuestFlowKey::new(
        flow.src, flow.dst, flow.sport, flow.dport, flow.proto, DIR_OUT,
    );
    let Some(record) = LBG_FLOWS.get_ptr_mut(key) else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: a pointer into the map's value, valid for this run.
    let record = unsafe { &mut *record };
    touch(record, flow.flags);
    let (to, ifindex) = (record.addr, record.ifindex);
    rewrite(ctx, &flow, SADDR, flow.src, to)?;
    count(GuestCounter::OutMoved);
    // SAFETY: the program's own context.
    if unsafe { (*ctx.skb.skb).ifindex } == ifindex {
        return Ok(TC_ACT_OK);
    }
    // SAFETY: a helper on scalars (no parameters: the route for the new source is looked up).
    let verdict = unsafe { bpf_redirect_neigh(ifindex, core::ptr::null_mut(), 0, 0) } as i32;
    if verdict == TC_ACT_SHOT {
        return Err(GuestCounter::RedirectFailed);
    }
    count(GuestCounter::OutRedirected);
    Ok(verdict)
}

/// Whether a socket for the flow lives on `local`.
enum Socket {
    /// A connection (TCP in any state but listening or closed; connected UDP).
    Open,
    /// A UDP socket bound to the port but not connected: the address serves the datagram.
    Bound,
    /// Nothing, or only a TCP listener (which would answer the segment with a reset).
    None,
}

#[inline(always)]
fn socket(ctx: &TcContext, flow: &Flow, local: [u8; 4]) -> Socket {
    // SAFETY: zero is a valid tuple; its IPv4 member is then filled in.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    // SAFETY: writing the union's IPv4 member, the one the 12-byte size below selects.
    unsafe {
        let v4 = &mut tuple.__bindgen_anon_1.ipv4;
        v4.saddr = u32::from_ne_bytes(flow.src);
        v4.daddr = u32::from_ne_bytes(local);
        v4.sport = u16::from_ne_bytes(flow.sport);
        v4.dport = u16::from_ne_bytes(flow.dport);
    }
    // The size is a literal at each call: the verifier wants a constant it can see.
    let netns = BPF_F_CURRENT_NETNS as u64;
    let tcp = flow.proto == IPPROTO_TCP;
    // SAFETY: the program's context and a tuple on the stack; a non-null result holds a
    // reference, released below on the only path that follows.
    let sk = unsafe {
        if tcp {
            bpf_skc_lookup_tcp(
                ctx.as_ptr(),
                &mut tuple,
                size_of::<[u32; 3]>() as u32,
                netns,
                0,
            )
        } else {
            bpf_sk_lookup_udp(
                ctx.as_ptr(),
                &mut tuple,
                size_of::<[u32; 3]>() as u32,
                netns,
                0,
            )
        }
    };
    if sk.is_null() {
        return Socket::None;
    }
    // SAFETY: non-null, held; `state` is readable on every socket kind.
    let state = unsafe { (*sk).state };
    // SAFETY: released once, the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast::<c_void>()) };
    match (tcp, state) {
        (true, BPF_TCP_LISTEN | BPF_TCP_CLOSE) => Socket::None,
        (true, _) | (false, BPF_TCP_ESTABLISHED) => Socket::Open,
        (false, _) => Socket::Bound,
    }
}

/// Another given address where the flow's connection is open.
#[inline(always)]
fn other_home(ctx: &TcContext, flow: &Flow) -> Option<GuestAddr> {
    for i in 0..MAX_ADDRS {
        let Some(entry) = LBG_ADDR_LIST.get(i).copied() else {
            break;
        };
        if entry.ifindex == 0 || entry.addr == flow.dst {
            continue;
        }
        if let Socket::Open = socket(ctx, flow, entry.addr) {
            return Some(entry);
        }
    }
    None
}

/// Rewrites the IPv4 address at `at` from `old` to `new`, with both checksums.
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    at: usize,
    old: [u8; 4],
    new: [u8; 4],
) -> Result<(), GuestCounter> {
    let (check, udp) = if flow.proto == IPPROTO_TCP {
        (offset_of!(TcpHdr, check), false)
    } else {
        (offset_of!(UdpHdr, check), true)
    };
    // UDP's "no checksum" (0) stays 0; one that computes to 0 becomes 0xffff.
    let zero = if udp {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let (old, new) = (
        u64::from(u32::from_ne_bytes(old)),
        u64::from(u32::from_ne_bytes(new)),
    );
    let flags = u64::from(BPF_F_PSEUDO_HDR) | zero | 4;
    ctx.l4_csum_replace(flow.l4 + check, old, new, flags)
        .and_then(|()| ctx.l3_csum_replace(IP_CHECK, old, new, 4))
        .and_then(|()| ctx.store(at, &(new as u32), 0))
        .map_err(|_| GuestCounter::RewriteFailed)
}

#[inline(always)]
fn touch(record: &mut GuestFlow, tcp_flags: u8) {
    record.seen_ns = now_ns();
    if tcp_flags & TCP_FIN != 0 {
        record.flags |= FLOW_FIN;
    }
    if tcp_flags & TCP_RST != 0 {
        record.flags |= FLOW_RST;
    }
}

#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn count(counter: GuestCounter) {
    if let Some(n) = LBG_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's slot; nothing else runs on it meanwhile.
        unsafe { *n += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
