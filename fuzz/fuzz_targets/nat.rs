//! The rewrite shared with the datapath (`lb_common::nat::rewrite`) on arbitrary TCP and UDP
//! datagrams: after a translation every checksum verifies against a full recomputation, and
//! translating back restores the datagram byte for byte.
#![no_main]

use lb_common::{
    csum,
    nat::{self, L4, Side},
    net::{IPPROTO_TCP, IPPROTO_UDP, Ipv4Hdr, TcpHdr, UdpHdr},
};
use libfuzzer_sys::fuzz_target;

const IP: usize = 20;

/// A view of `T` at `off` in `buf` (every header type is `repr(C)` of bytes: alignment 1).
fn view<T>(buf: &mut [u8], off: usize) -> &mut T {
    assert!(off + size_of::<T>() <= buf.len());
    // SAFETY: in bounds (checked), alignment 1, every bit pattern valid.
    unsafe { &mut *buf.as_mut_ptr().add(off).cast::<T>() }
}

/// The TCP/UDP checksum of the datagram in `buf`, computed from scratch.
fn l4_checksum(buf: &[u8], proto: u8) -> [u8; 2] {
    let l4 = &buf[IP..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&buf[12..20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let check_at = if proto == IPPROTO_TCP { 16 } else { 6 };
    let mut covered = l4.to_vec();
    covered[check_at..check_at + 2].copy_from_slice(&[0, 0]);
    let sum = csum::sum_words(csum::sum_words(0, &pseudo), &covered);
    let check = (!csum::fold(sum)).to_be_bytes();
    // UDP sends a computed 0 as 0xffff (0 means "no checksum").
    if proto == IPPROTO_UDP && check == [0, 0] {
        [0xff, 0xff]
    } else {
        check
    }
}

fn ip_checksum(buf: &[u8]) -> [u8; 2] {
    let mut h = buf[..IP].to_vec();
    h[10..12].copy_from_slice(&[0, 0]);
    csum::checksum(0, &h)
}

fn translate(buf: &mut [u8], proto: u8, side: Side, addr: [u8; 4], port: Option<[u8; 2]>) {
    let (head, rest) = buf.split_at_mut(IP);
    let ip: &mut Ipv4Hdr = view(head, 0);
    let l4 = if proto == IPPROTO_TCP {
        L4::Tcp(view::<TcpHdr>(rest, 0))
    } else {
        L4::Udp(view::<UdpHdr>(rest, 0))
    };
    nat::rewrite(ip, l4, side, addr, port);
}

fuzz_target!(|data: &[u8]| {
    // Parameters first: protocol, side, new address, new port (or none), then the datagram.
    let [p, s, a0, a1, a2, a3, has_port, q0, q1, rest @ ..] = data else {
        return;
    };
    let proto = if p & 1 == 0 { IPPROTO_TCP } else { IPPROTO_UDP };
    let l4_len = if proto == IPPROTO_TCP { 20 } else { 8 };
    if rest.len() < IP + l4_len || rest.len() > 1500 {
        return;
    }
    let side = if s & 1 == 0 { Side::Src } else { Side::Dst };
    let addr = [*a0, *a1, *a2, *a3];
    let port = (has_port & 1 == 1).then_some([*q0, *q1]);

    // A well-formed datagram from the bytes: version 4, no options, lengths and checksums right.
    let mut buf = rest.to_vec();
    buf[0] = 0x45;
    let total = buf.len() as u16;
    buf[2..4].copy_from_slice(&total.to_be_bytes());
    buf[9] = proto;
    if proto == IPPROTO_UDP {
        let len = (buf.len() - IP) as u16;
        buf[IP + 4..IP + 6].copy_from_slice(&len.to_be_bytes());
    }
    let ip = ip_checksum(&buf);
    buf[10..12].copy_from_slice(&ip);
    let check_at = IP + if proto == IPPROTO_TCP { 16 } else { 6 };
    // UDP may carry no checksum (0): it must stay 0.
    let no_udp_checksum = proto == IPPROTO_UDP && p & 2 != 0;
    let l4 = if no_udp_checksum {
        [0, 0]
    } else {
        l4_checksum(&buf, proto)
    };
    buf[check_at..check_at + 2].copy_from_slice(&l4);
    let original = buf.clone();

    let (addr_at, port_at) = match side {
        Side::Src => (12, IP),
        Side::Dst => (16, IP + 2),
    };
    let old_addr: [u8; 4] = buf[addr_at..addr_at + 4].try_into().unwrap();
    let old_port: [u8; 2] = buf[port_at..port_at + 2].try_into().unwrap();
    translate(&mut buf, proto, side, addr, port);

    assert_eq!(&buf[addr_at..addr_at + 4], &addr);
    if let Some(port) = port {
        assert_eq!(&buf[port_at..port_at + 2], &port);
    }
    assert_eq!(&buf[10..12], &ip_checksum(&buf), "IPv4 checksum");
    let want = if no_udp_checksum {
        [0, 0]
    } else {
        l4_checksum(&buf, proto)
    };
    assert_eq!(&buf[check_at..check_at + 2], &want, "TCP/UDP checksum");

    translate(&mut buf, proto, side, old_addr, port.map(|_| old_port));
    assert_eq!(buf, original, "translating back restores the datagram");
});
