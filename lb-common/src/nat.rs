//! Header rewrites of the NAT: addresses, ports, TTL, and every checksum they touch, patched
//! incrementally. Pure functions over header views, so the datapath and the host tests run the
//! same code.

use crate::{
    csum,
    net::{
        IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IcmpHdr, Ipv4Hdr, Ipv6Hdr, L4Quote, TcpHdr,
        UdpHdr,
    },
};

/// Which end of a header a rewrite changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

/// The transport header whose checksum (and port on the rewritten side) follows an address
/// rewrite.
pub enum L4<'a> {
    Tcp(&'a mut TcpHdr),
    Udp(&'a mut UdpHdr),
    /// ICMP (or no transport header: a later fragment): its checksum covers no
    /// pseudo-header, and echo identifiers are not translated.
    Icmp,
    /// ICMPv6: its checksum covers the pseudo-header (RFC 4443 §2.3), so it follows the
    /// address; echo identifiers are not translated.
    Icmp6(&'a mut IcmpHdr),
}

/// An IP header the NAT rewrites: IPv4 or IPv6.
pub trait IpHeader {
    /// The address, in network byte order.
    type Addr: Copy + PartialEq;
    fn src(&self) -> Self::Addr;
    fn dst(&self) -> Self::Addr;
    /// The TTL (IPv4) or hop limit (IPv6).
    fn hop_limit(&self) -> u8;
    /// Replaces the address on `side`, keeping the header's own checksum right (IPv4 has one);
    /// returns the old one.
    fn set_addr(&mut self, side: Side, new: Self::Addr) -> Self::Addr;
    /// Decrements the TTL (IPv4) or hop limit (IPv6). The caller made sure it is above 1.
    fn decrement_ttl(&mut self);
    /// A checksum whose pseudo-header holds an address that changed from `old` to `new`.
    fn replace_addr(check: [u8; 2], old: Self::Addr, new: Self::Addr) -> [u8; 2];
}

impl IpHeader for Ipv4Hdr {
    type Addr = [u8; 4];
    #[inline(always)]
    fn src(&self) -> [u8; 4] {
        self.src
    }
    #[inline(always)]
    fn dst(&self) -> [u8; 4] {
        self.dst
    }
    #[inline(always)]
    fn hop_limit(&self) -> u8 {
        self.ttl
    }
    #[inline(always)]
    fn set_addr(&mut self, side: Side, new: [u8; 4]) -> [u8; 4] {
        set_addr(self, side, new)
    }
    #[inline(always)]
    fn decrement_ttl(&mut self) {
        decrement_ttl(self)
    }
    #[inline(always)]
    fn replace_addr(check: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
        csum::replace32(check, old, new)
    }
}

impl IpHeader for Ipv6Hdr {
    type Addr = [u8; 16];
    #[inline(always)]
    fn src(&self) -> [u8; 16] {
        self.src
    }
    #[inline(always)]
    fn dst(&self) -> [u8; 16] {
        self.dst
    }
    #[inline(always)]
    fn hop_limit(&self) -> u8 {
        self.hop_limit
    }
    /// IPv6 has no header checksum.
    #[inline(always)]
    fn set_addr(&mut self, side: Side, new: [u8; 16]) -> [u8; 16] {
        let field = match side {
            Side::Src => &mut self.src,
            Side::Dst => &mut self.dst,
        };
        let old = *field;
        *field = new;
        old
    }
    #[inline(always)]
    fn decrement_ttl(&mut self) {
        self.hop_limit = self.hop_limit.wrapping_sub(1);
    }
    #[inline(always)]
    fn replace_addr(check: [u8; 2], old: [u8; 16], new: [u8; 16]) -> [u8; 2] {
        csum::replace128(check, old, new)
    }
}

/// UDP over IPv4 sends 0 for "no checksum", so a computed 0 is sent as its other
/// one's-complement form (RFC 768).
#[inline(always)]
fn udp_nonzero(check: [u8; 2]) -> [u8; 2] {
    if check == [0, 0] { [0xff, 0xff] } else { check }
}

/// Replaces the address on `side`, keeping the IPv4 header checksum right; returns the old one.
#[inline(always)]
pub fn set_addr(ip: &mut Ipv4Hdr, side: Side, new: [u8; 4]) -> [u8; 4] {
    let field = match side {
        Side::Src => &mut ip.src,
        Side::Dst => &mut ip.dst,
    };
    let old = *field;
    *field = new;
    ip.check = csum::replace32(ip.check, old, new);
    old
}

/// Decrements the TTL, keeping the header checksum right. The caller made sure `ttl > 1`.
#[inline(always)]
pub fn decrement_ttl(ip: &mut Ipv4Hdr) {
    let old = [ip.ttl, ip.proto];
    ip.ttl = ip.ttl.wrapping_sub(1);
    ip.check = csum::replace16(ip.check, old, [ip.ttl, ip.proto]);
}

#[inline(always)]
fn port_field<'a>(sport: &'a mut [u8; 2], dport: &'a mut [u8; 2], side: Side) -> &'a mut [u8; 2] {
    match side {
        Side::Src => sport,
        Side::Dst => dport,
    }
}

/// What a rewrite changed among the fields a TCP, UDP or ICMPv6 checksum covers: the address
/// (in the pseudo-header) and the port, each as (old, new).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Changed<A = [u8; 4]> {
    pub addr: (A, A),
    pub port: Option<([u8; 2], [u8; 2])>,
}

/// Translates one packet: the address on `side` becomes `addr` and, with `port`, the port on
/// the same side becomes `port`. The IPv4 checksum and the TCP/UDP/ICMPv6 checksum (whose
/// pseudo-header covers the address) are patched; a UDP checksum of 0 ("none", IPv4 only: the
/// datapath drops such IPv6 datagrams before) stays 0.
#[inline(always)]
pub fn rewrite<H: IpHeader>(
    ip: &mut H,
    l4: L4<'_>,
    side: Side,
    addr: H::Addr,
    port: Option<[u8; 2]>,
) {
    let (l4, changed) = rewrite_fields(ip, l4, side, addr, port);
    let follow = |check: [u8; 2]| {
        let check = H::replace_addr(check, changed.addr.0, changed.addr.1);
        match changed.port {
            Some((old, new)) => csum::replace16(check, old, new),
            None => check,
        }
    };
    match l4 {
        L4::Tcp(tcp) => tcp.check = follow(tcp.check),
        // A UDP checksum of 0 means none: it stays 0.
        L4::Udp(udp) if udp.check != [0, 0] => udp.check = udp_nonzero(follow(udp.check)),
        L4::Icmp6(icmp) => icmp.check = follow(icmp.check),
        L4::Udp(_) | L4::Icmp => {}
    }
}

/// [`rewrite`] but for the TCP/UDP checksum, which is left as it was; returns the transport
/// header and what changed under that checksum. For a hook that has the kernel patch it (TC:
/// an skb may carry a partial checksum, the pseudo-header sum a device completes, which an
/// incremental update of the finished form would move the wrong way).
#[inline(always)]
pub fn rewrite_fields<'a, H: IpHeader>(
    ip: &mut H,
    l4: L4<'a>,
    side: Side,
    addr: H::Addr,
    port: Option<[u8; 2]>,
) -> (L4<'a>, Changed<H::Addr>) {
    let old = ip.set_addr(side, addr);
    let mut changed = Changed {
        addr: (old, addr),
        port: None,
    };
    let l4 = match l4 {
        L4::Tcp(tcp) => {
            if let Some(port) = port {
                let field = port_field(&mut tcp.sport, &mut tcp.dport, side);
                changed.port = Some((*field, port));
                *field = port;
            }
            L4::Tcp(tcp)
        }
        L4::Udp(udp) => {
            if let Some(port) = port {
                let field = port_field(&mut udp.sport, &mut udp.dport, side);
                changed.port = Some((*field, port));
                *field = port;
            }
            L4::Udp(udp)
        }
        L4::Icmp => L4::Icmp,
        L4::Icmp6(icmp) => L4::Icmp6(icmp),
    };
    (l4, changed)
}

/// Translates the datagram quoted by an ICMP error: its address on `side` becomes `addr`, and
/// with `port` its port on that side becomes `port`.
///
/// Kept right: the quoted IPv4 checksum; the quoted UDP checksum (non-zero ones); the quoted TCP
/// checksum when `tcp_check` points at it (it lies past the 8 bytes an error must quote, so the
/// caller passes it only when quoted); and the ICMP checksum, which covers every changed byte.
/// The outer header is the caller's business.
#[inline(always)]
pub fn rewrite_icmp_quote(
    icmp: &mut IcmpHdr,
    inner: &mut Ipv4Hdr,
    quote: &mut L4Quote,
    tcp_check: Option<&mut [u8; 2]>,
    side: Side,
    addr: [u8; 4],
    port: Option<[u8; 2]>,
) {
    let inner_check = inner.check;
    let old = set_addr(inner, side, addr);
    let mut outer = csum::replace32(icmp.check, old, addr);
    outer = csum::replace16(outer, inner_check, inner.check);

    let old_port = *port_field(&mut quote.sport, &mut quote.dport, side);
    let l4_check = |check: [u8; 2]| {
        let check = csum::replace32(check, old, addr);
        match port {
            Some(port) => csum::replace16(check, old_port, port),
            None => check,
        }
    };
    if inner.proto == IPPROTO_UDP {
        let [a, b, c0, c1] = quote.rest;
        if [c0, c1] != [0, 0] {
            let check = udp_nonzero(l4_check([c0, c1]));
            outer = csum::replace16(outer, [c0, c1], check);
            quote.rest = [a, b, check[0], check[1]];
        }
    } else if inner.proto == IPPROTO_TCP
        && let Some(field) = tcp_check
    {
        let check = l4_check(*field);
        outer = csum::replace16(outer, *field, check);
        *field = check;
    }
    if let Some(port) = port {
        let field = port_field(&mut quote.sport, &mut quote.dport, side);
        outer = csum::replace16(outer, *field, port);
        *field = port;
    }
    icmp.check = outer;
}

/// [`rewrite_icmp_quote`] for an ICMPv6 error quoting an IPv6 datagram (its transport header
/// right behind the fixed header). Unlike ICMP's, the ICMPv6 checksum covers the outer
/// pseudo-header: `outer` is the outer address the caller changed (old, new), if any.
///
/// Kept right: the quoted UDP checksum (non-zero ones: a zero one, invalid over IPv6, is left
/// alone), the quoted TCP checksum when `tcp_check` points at it, the quoted ICMPv6 echo's
/// checksum (it covers the quoted pseudo-header), and the ICMPv6 checksum.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn rewrite_icmp6_quote(
    icmp: &mut IcmpHdr,
    outer: Option<([u8; 16], [u8; 16])>,
    inner: &mut Ipv6Hdr,
    quote: &mut L4Quote,
    tcp_check: Option<&mut [u8; 2]>,
    side: Side,
    addr: [u8; 16],
    port: Option<[u8; 2]>,
) {
    let mut check = icmp.check;
    if let Some((old, new)) = outer {
        check = csum::replace128(check, old, new);
    }
    let old = inner.set_addr(side, addr);
    check = csum::replace128(check, old, addr);
    let old_port = *port_field(&mut quote.sport, &mut quote.dport, side);
    let l4_check = |c: [u8; 2]| {
        let c = csum::replace128(c, old, addr);
        match port {
            Some(port) => csum::replace16(c, old_port, port),
            None => c,
        }
    };
    match inner.next_hdr {
        IPPROTO_UDP => {
            let [a, b, c0, c1] = quote.rest;
            if [c0, c1] != [0, 0] {
                let new = udp_nonzero(l4_check([c0, c1]));
                check = csum::replace16(check, [c0, c1], new);
                quote.rest = [a, b, new[0], new[1]];
            }
        }
        IPPROTO_TCP => {
            if let Some(field) = tcp_check {
                let new = l4_check(*field);
                check = csum::replace16(check, *field, new);
                *field = new;
            }
        }
        IPPROTO_ICMPV6 => {
            // Type and code, then the checksum, where a port would be.
            let new = csum::replace128(quote.dport, old, addr);
            check = csum::replace16(check, quote.dport, new);
            quote.dport = new;
        }
        _ => {}
    }
    if let Some(port) = port
        && inner.next_hdr != IPPROTO_ICMPV6
    {
        let field = port_field(&mut quote.sport, &mut quote.dport, side);
        check = csum::replace16(check, *field, port);
        *field = port;
    }
    icmp.check = check;
}
