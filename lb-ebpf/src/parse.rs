//! Bounds-checked packet access and one parser per layer (the shape of xdp-tools'
//! `parsing_helpers.h`). Every offset comes from a header size; each parser moves on only after
//! a successful bounds check.

use core::mem::{offset_of, size_of};

use crate::ctx::Packet;
use lb_common::{
    Counter,
    nat::L4,
    net::{
        ETH_HDR_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, EthHdr, ICMP_HDR_LEN, IPPROTO_ICMP,
        IPPROTO_TCP, IPPROTO_UDP, IcmpHdr, Ipv4Hdr, L4Quote, TcpHdr, UdpHdr, VLAN_HDR_LEN, VlanHdr,
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

/// The link layer of a frame that carries IPv4.
pub struct L2 {
    pub eth: *mut EthHdr,
    /// The frame carries one 802.1Q/802.1ad tag.
    pub vlan: bool,
    /// Offset of the IPv4 header.
    pub l3: usize,
}

/// Ethernet, with at most one VLAN tag (in the frame, or outside it in an skb's metadata).
/// Anything but IPv4 is not ours; two tags belong to the kernel's VLAN devices.
#[inline(always)]
pub fn ethernet<C: Packet>(ctx: &C) -> Result<L2, Counter> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Counter::PassNotIpv4)?;
    // SAFETY: `ptr_at` checked that the header lies inside the frame.
    let mut proto = unsafe { (*eth).proto };
    let mut l3 = ETH_HDR_LEN;
    let mut vlan = false;
    let is_tag = |p: [u8; 2]| p == ETH_P_8021Q.to_be_bytes() || p == ETH_P_8021AD.to_be_bytes();
    if is_tag(proto) {
        let tag: *const VlanHdr = ptr_at(ctx, ETH_HDR_LEN).ok_or(Counter::PassNotIpv4)?;
        // SAFETY: bounds checked above.
        proto = unsafe { (*tag).proto };
        l3 += VLAN_HDR_LEN;
        vlan = true;
        if is_tag(proto) || ctx.vlan_outside() {
            return Err(Counter::PassVlan);
        }
    }
    if proto != ETH_P_IP.to_be_bytes() {
        return Err(Counter::PassNotIpv4);
    }
    Ok(L2 { eth, vlan, l3 })
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

/// Where the IPv4 payload lies, for a packet that is ours: `(start, end)` offsets. Checks IHL,
/// and that the total length covers the header and fits in the packet (Ethernet padding may
/// follow it).
#[inline(always)]
pub fn ipv4_payload<C: Packet>(
    ctx: &C,
    l3: usize,
    ip: &Ipv4Hdr,
) -> Result<(usize, usize), Counter> {
    let hlen = usize::from(ip.ihl()) * 4;
    let tot = usize::from(ip.tot_len());
    // The whole packet: an skb's data may go on past what the program sees directly (and a
    // GSO skb's IPv4 total length covers all of it); every access is bounds-checked anyway.
    let frame = ctx.len();
    if hlen < size_of::<Ipv4Hdr>() || tot < hlen || l3 + tot > frame {
        return Err(Counter::DropBadIpv4);
    }
    Ok((l3 + hlen, l3 + tot))
}

/// A pointer to a `T` at `off` that also lies inside the IP datagram ending at `end`.
#[inline(always)]
fn in_datagram<T, C: Packet>(ctx: &C, off: usize, end: usize) -> Option<*mut T> {
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
    /// The view the NAT rewrite patches: TCP and UDP checksums cover the addresses, ICMP's
    /// does not.
    #[inline(always)]
    pub fn into_l4(self) -> L4<'static> {
        match self {
            Transport::Tcp(h) => L4::Tcp(h),
            Transport::Udp(h) => L4::Udp(h),
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
        IPPROTO_ICMP => Transport::Icmp(unsafe { &mut *in_datagram(ctx, l4, end).ok_or(SHORT)? }),
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
