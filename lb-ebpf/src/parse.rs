//! Bounds-checked packet access and one parser per layer (the shape of xdp-tools'
//! `parsing_helpers.h`). Every offset comes from a header size; each parser moves on only after
//! a successful bounds check.

use core::mem::{offset_of, size_of};

use crate::ctx::Packet;
use lb_common::{
    Counter,
    nat::L4,
    net::{
        ETH_HDR_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, EthHdr, ICMP_HDR_LEN,
        IPPROTO_AH, IPPROTO_DSTOPTS, IPPROTO_FRAGMENT, IPPROTO_HOPOPTS, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPPROTO_NONE, IPPROTO_ROUTING, IPPROTO_TCP, IPPROTO_UDP, IPV6_HDR_LEN,
        IPV6_MAX_EXT_HDRS, IcmpHdr, Ipv4Hdr, Ipv6FragHdr, Ipv6Hdr, Ipv6OptHdr, L4Quote, TcpHdr,
        UdpHdr, VLAN_HDR_LEN, VlanHdr,
    },
};

/// The one bounds-checked primitive: a pointer to a `T` at `off` bytes into the frame, if the
/// whole `T` lies inside it.
#[inline(always)]
pub fn ptr_at<T, C: Packet>(ctx: &C, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

/// The link layer of a frame that carries IPv4 or IPv6 (its Ethernet header at offset 0).
/// Scalars only: it is passed to the family handlers, BPF functions of their own, on the stack,
/// where the verifier does not let a packet pointer go in halves.
pub struct L2 {
    /// The frame carries one 802.1Q/802.1ad tag.
    pub vlan: bool,
    /// Offset of the IP header.
    pub l3: usize,
    /// The IP header is IPv6.
    pub ipv6: bool,
}

/// Ethernet, with at most one VLAN tag (in the frame, or outside it in an skb's metadata).
/// Anything but IPv4 and IPv6 is not ours; two tags belong to the kernel's VLAN devices.
#[inline(always)]
pub fn ethernet<C: Packet>(ctx: &C) -> Result<L2, Counter> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Counter::PassNotIp)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let mut proto = unsafe { (*eth).proto };
    let mut l3 = ETH_HDR_LEN;
    let mut vlan = false;
    let is_tag = |p: [u8; 2]| p == ETH_P_8021Q.to_be_bytes() || p == ETH_P_8021AD.to_be_bytes();
    if is_tag(proto) {
        let tag: *const VlanHdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(Counter::PassNotIp)?;
        // SAFETY: bounds checked above.
        proto = unsafe { (*tag).proto };
        l3 += VLAN_HDR_LEN;
        vlan = true;
        if is_tag(proto) || ctx.vlan_outside() {
            return Err(Counter::PassVlan);
        }
    }
    // IPv4 first: the IPv6 test costs the IPv4 path nothing.
    let ipv6 = if proto == ETH_P_IP.to_be_bytes() {
        false
    } else if proto == ETH_P_IPV6.to_be_bytes() {
        true
    } else {
        return Err(Counter::PassNotIp);
    };
    Ok(L2 { vlan, l3, ipv6 })
}

/// Where a datagram stands among its fragments.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    /// Not fragmented (an IPv6 atomic fragment included, RFC 6946).
    Whole,
    /// The first fragment: it carries the transport header.
    First,
    /// A later fragment: no transport header.
    Later,
}

/// The datagram of a packet that may be ours, once its IP header is read: its transport
/// protocol and where its payload lies.
#[derive(Clone, Copy)]
pub struct Datagram {
    /// The transport protocol (IPv6: the last extension header's next header).
    pub proto: u8,
    /// Offset of the transport header (after IPv4 options or IPv6 extension headers).
    pub l4: usize,
    /// Offset where the datagram ends (Ethernet padding may follow).
    pub end: usize,
    pub frag: Frag,
    /// The fragment identification: IPv4's 16 bits in the first two bytes, IPv6's 32.
    pub frag_id: [u8; 4],
    /// The IP total length (IPv6: 40 + payload length), what the FIB checks the MTU with.
    pub tot_len: u16,
    /// Must not be fragmented on the way: IPv4's DF; always for IPv6, whose routers never
    /// fragment.
    pub df: bool,
    /// What the FIB's policy routing sees of the header: IPv4's TOS byte, IPv6's traffic class
    /// and flow label (`bpf_fib_lookup`'s `tos` / `flowinfo`, as the bytes lie).
    pub tos: u32,
}

/// The fixed IPv4 header, enough to read the addresses. Too short or not version 4: not ours.
#[inline(always)]
pub fn ipv4<C: Packet>(ctx: &C, l3: usize) -> Result<&'static mut Ipv4Hdr, Counter> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, l3).ok_or(Counter::PassBadIpv4)?;
    // SAFETY: bounds checked; the frame outlives the program's run, which is all `'static`
    // means here, and nothing else aliases the header.
    let ip = unsafe { &mut *ip };
    if ip.version() != 4 {
        return Err(Counter::PassBadIpv4);
    }
    Ok(ip)
}

/// Where the IPv4 payload lies, for a packet that is ours. Checks IHL, and that the total
/// length covers the header and fits in the packet (Ethernet padding may follow it).
#[inline(always)]
pub fn ipv4_payload<C: Packet>(ctx: &C, l3: usize, ip: &Ipv4Hdr) -> Result<Datagram, Counter> {
    let hlen = usize::from(ip.ihl()) * 4;
    let tot = usize::from(ip.tot_len());
    // The whole packet: an skb's data may go on past what the program sees directly (and a
    // GSO skb's IPv4 total length covers all of it); every access is bounds-checked anyway.
    let frame = ctx.len();
    if hlen < size_of::<Ipv4Hdr>() || tot < hlen || l3 + tot > frame {
        return Err(Counter::DropBadIpv4);
    }
    let frag = if ip.is_later_fragment() {
        Frag::Later
    } else if ip.is_fragment() {
        Frag::First
    } else {
        Frag::Whole
    };
    let [i0, i1] = ip.id;
    Ok(Datagram {
        proto: ip.proto,
        l4: l3 + hlen,
        end: l3 + tot,
        frag,
        frag_id: [i0, i1, 0, 0],
        tot_len: ip.tot_len(),
        df: ip.dont_fragment(),
        tos: u32::from(ip.tos),
    })
}

/// The fixed IPv6 header. Too short or not version 6: not ours.
#[inline(always)]
pub fn ipv6<C: Packet>(ctx: &C, l3: usize) -> Result<&'static mut Ipv6Hdr, Counter> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, l3).ok_or(Counter::PassBadIpv6)?;
    // SAFETY: bounds checked; see `ipv4` for the lifetime.
    let ip = unsafe { &mut *ip };
    if ip.version() != 6 {
        return Err(Counter::PassBadIpv6);
    }
    Ok(ip)
}

/// The furthest a transport header may start from the frame's start, so the extension-header
/// walk stays inside what both hooks see directly (`ctx::TC_PULL`) and its offsets have a
/// bound the verifier can check: 134 bytes of extension headers behind Ethernet, a VLAN tag
/// and the fixed header. Longer chains are passed, counted.
pub const MAX_L4_OFF: usize = 192;

/// Extension headers the walk does not cross: authentication (it covers the addresses),
/// mobility, HIP, shim6, the experimental ones, and "no next header". Passed, counted.
#[inline(always)]
fn opaque_ext(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_AH | IPPROTO_NONE | 135 | 139 | 140 | 253 | 254
    )
}

/// Where the IPv6 payload lies, for a packet that may be ours: the payload length must fit in
/// the packet, and a bounded walk over the extension headers (RFC 8200 §4: hop-by-hop first,
/// destination options, routing with no segments left, fragment) finds the transport header.
/// Anything else is `PassIpv6Ext`; a header cut short by the datagram is `DropBadIpv6`.
#[inline(always)]
pub fn ipv6_payload<C: Packet>(ctx: &C, l3: usize, ip: &Ipv6Hdr) -> Result<Datagram, Counter> {
    const BAD: Counter = Counter::DropBadIpv6;
    const EXT: Counter = Counter::PassIpv6Ext;
    let plen = usize::from(ip.payload_len());
    if plen == 0 {
        // A jumbogram (RFC 2675), or nothing at all.
        return Err(EXT);
    }
    let end = l3 + IPV6_HDR_LEN + plen;
    if end > ctx.len() {
        return Err(BAD);
    }
    let first = l3 + IPV6_HDR_LEN;
    let (next, off, frag, frag_id) = if is_ext(ip.next_hdr) {
        walk(ctx, ip.next_hdr, first, end)?
    } else {
        (ip.next_hdr, first, Frag::Whole, [0; 4])
    };
    if off > MAX_L4_OFF || off > end {
        return Err(if off > end { BAD } else { EXT });
    }
    Ok(Datagram {
        proto: next,
        l4: off,
        end,
        frag,
        frag_id,
        tot_len: (IPV6_HDR_LEN + plen).min(usize::from(u16::MAX)) as u16,
        df: true,
        tos: {
            let [v, b1, b2, b3] = ip.vtc_flow;
            u32::from_ne_bytes([v & 0x0f, b1, b2, b3])
        },
    })
}

/// What the extension-header walk found: the transport protocol, its offset, the fragment.
type Walk = (u8, usize, Frag, [u8; 4]);

/// The walk's state, kept in a per-CPU map slot (`LB_SCRATCH`) from one header to the next:
/// read back, its values are unknown to the verifier, so each step is checked once, and what
/// follows the walk once, not once for every way through the headers before (each a different
/// offset: the unrolled walk cost about 100,000 verified instructions per header of the bound).
/// Every bound is checked again after each read.
struct WalkState(*mut [u32; 4]);

impl WalkState {
    #[inline(always)]
    fn new() -> Option<Self> {
        crate::maps::LB_SCRATCH.get_ptr_mut(0).map(WalkState)
    }

    #[inline(always)]
    fn put(&self, (next, off, frag, id): Walk) {
        let frag = match frag {
            Frag::Whole => 0,
            Frag::First => 1,
            Frag::Later => 2,
        };
        // SAFETY: this CPU's slot, valid for the run and touched by no other CPU. Volatile, so
        // that the compiler does not hand the values on in registers.
        unsafe {
            core::ptr::write_volatile(
                self.0,
                [off as u32, u32::from(next), frag, u32::from_ne_bytes(id)],
            )
        };
    }

    #[inline(always)]
    fn get(&self) -> Walk {
        // SAFETY: as in `put`.
        let [off, next, frag, id] = unsafe { core::ptr::read_volatile(self.0) };
        let frag = match frag {
            0 => Frag::Whole,
            1 => Frag::First,
            _ => Frag::Later,
        };
        (next as u8, off as usize, frag, id.to_ne_bytes())
    }
}

/// The bounded walk over the extension headers from `first` (the first one's type `next`).
#[inline(always)]
fn walk<C: Packet>(ctx: &C, next: u8, first: usize, end: usize) -> Result<Walk, Counter> {
    const BAD: Counter = Counter::DropBadIpv6;
    const EXT: Counter = Counter::PassIpv6Ext;
    let state = WalkState::new().ok_or(EXT)?;
    state.put((next, first, Frag::Whole, [0; 4]));
    for i in 0..IPV6_MAX_EXT_HDRS {
        let (mut next, mut off, mut frag, mut frag_id) = state.get();
        if off > MAX_L4_OFF {
            return Err(EXT);
        }
        match next {
            IPPROTO_HOPOPTS if i != 0 => return Err(EXT),
            IPPROTO_HOPOPTS | IPPROTO_DSTOPTS => {
                // SAFETY: bounds checked by `in_datagram`.
                let h: Ipv6OptHdr =
                    unsafe { *in_datagram::<Ipv6OptHdr, C>(ctx, off, end).ok_or(BAD)? };
                next = h.next_hdr;
                off += h.bytes();
            }
            IPPROTO_ROUTING => {
                // Next header, length, routing type, segments left.
                // SAFETY: as above.
                let [n, len, _, left] =
                    unsafe { *in_datagram::<[u8; 4], C>(ctx, off, end).ok_or(BAD)? };
                if left != 0 {
                    return Err(EXT);
                }
                next = n;
                off += (usize::from(len) + 1) * 8;
            }
            IPPROTO_FRAGMENT => {
                if frag != Frag::Whole {
                    return Err(EXT);
                }
                // SAFETY: as above.
                let h: Ipv6FragHdr =
                    unsafe { *in_datagram::<Ipv6FragHdr, C>(ctx, off, end).ok_or(BAD)? };
                next = h.next_hdr;
                off += size_of::<Ipv6FragHdr>();
                if h.is_fragment() {
                    frag_id = h.id;
                    if h.is_later_fragment() {
                        // No transport header follows: the walk ends here.
                        state.put((next, off, Frag::Later, frag_id));
                        break;
                    }
                    frag = Frag::First;
                }
            }
            _ if opaque_ext(next) => return Err(EXT),
            // The transport header: the walk ends here.
            _ => break,
        }
        state.put((next, off, frag, frag_id));
    }
    // Every way out of the loop meets here, through the slot.
    let (next, off, frag, frag_id) = state.get();
    if frag != Frag::Later && is_ext(next) {
        // The bound was reached with extension headers left.
        return Err(EXT);
    }
    Ok((next, off, frag, frag_id))
}

/// A next-header value the walk itself steps over.
#[inline(always)]
fn is_ext(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS | IPPROTO_DSTOPTS | IPPROTO_ROUTING | IPPROTO_FRAGMENT
    ) || opaque_ext(next)
}

/// A pointer to a `T` at `off` that also lies inside the IP datagram ending at `end`.
#[inline(always)]
pub fn in_datagram<T, C: Packet>(ctx: &C, off: usize, end: usize) -> Option<*mut T> {
    if off + size_of::<T>() > end {
        return None;
    }
    ptr_at(ctx, off)
}

/// The transport header of a datagram.
pub enum Transport {
    Tcp(&'static mut TcpHdr),
    Udp(&'static mut UdpHdr),
    Icmp(&'static mut IcmpHdr),
    /// Another protocol: not parsed.
    Other,
}

impl Transport {
    /// The view the NAT rewrite patches: TCP, UDP and ICMPv6 checksums cover the addresses,
    /// ICMP's does not (`icmp6`: the datagram is IPv6).
    #[inline(always)]
    pub fn into_l4(self, icmp6: bool) -> L4<'static> {
        match self {
            Transport::Tcp(h) => L4::Tcp(h),
            Transport::Udp(h) => L4::Udp(h),
            Transport::Icmp(h) if icmp6 => L4::Icmp6(h),
            Transport::Icmp(_) | Transport::Other => L4::Icmp,
        }
    }
}

/// Parses TCP, UDP or ICMP at `l4`; a header cut short by the frame or by the IP total length
/// is `DropShortL4`.
#[inline(always)]
pub fn transport<C: Packet>(
    ctx: &C,
    proto: u8,
    l4: usize,
    end: usize,
) -> Result<Transport, Counter> {
    const SHORT: Counter = Counter::DropShortL4;
    // SAFETY (each arm): `in_datagram` checked the bounds; see `ipv4` for the lifetime.
    Ok(match proto {
        IPPROTO_TCP => Transport::Tcp(unsafe { &mut *in_datagram(ctx, l4, end).ok_or(SHORT)? }),
        IPPROTO_UDP => Transport::Udp(unsafe { &mut *in_datagram(ctx, l4, end).ok_or(SHORT)? }),
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            Transport::Icmp(unsafe { &mut *in_datagram(ctx, l4, end).ok_or(SHORT)? })
        }
        _ => Transport::Other,
    })
}

/// The datagram an ICMP error quotes.
pub struct Quote {
    pub ip: &'static mut Ipv4Hdr,
    pub l4: &'static mut L4Quote,
    /// The quoted TCP checksum, when the error quotes that far.
    pub tcp_check: Option<&'static mut [u8; 2]>,
}

/// Parses the datagram quoted by the ICMP error at `icmp` (the outer datagram ends at `end`):
/// an IPv4 header and the first 8 bytes of its transport header. `None` when truncated, not
/// IPv4, or a non-first fragment (which quotes no transport header).
#[inline(always)]
pub fn icmp_quote<C: Packet>(ctx: &C, icmp: usize, end: usize) -> Option<Quote> {
    let inner = icmp + ICMP_HDR_LEN;
    // SAFETY: bounds checked by `in_datagram`; see `ipv4` for the lifetime.
    let ip: &mut Ipv4Hdr = unsafe { &mut *in_datagram(ctx, inner, end)? };
    let hlen = usize::from(ip.ihl()) * 4;
    if ip.version() != 4
        || hlen < size_of::<Ipv4Hdr>()
        || ip.frag_word() & lb_common::net::IP_OFFSET_MASK != 0
    {
        return None;
    }
    let l4_off = inner + hlen;
    // SAFETY: as above.
    let l4: &mut L4Quote = unsafe { &mut *in_datagram(ctx, l4_off, end)? };
    let tcp_check = if ip.proto == IPPROTO_TCP {
        // SAFETY: as above.
        in_datagram::<[u8; 2], C>(ctx, l4_off + offset_of!(TcpHdr, check), end)
            .map(|p| unsafe { &mut *p })
    } else {
        None
    };
    Some(Quote { ip, l4, tcp_check })
}
