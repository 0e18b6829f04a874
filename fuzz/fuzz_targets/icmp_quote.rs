//! The ICMP-quote translation shared with the datapath (`lb_common::nat::rewrite_icmp_quote`)
//! on arbitrary errors quoting TCP, UDP or ICMP datagrams: afterwards the ICMP checksum and the
//! quoted IPv4 checksum equal a full recomputation and the quote carries the new address (and
//! port); translating back restores the error (a checksum's two forms of zero aside).
#![no_main]

use lb_common::{
    csum,
    nat::{self, Side},
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IcmpHdr, Ipv4Hdr, L4Quote},
};
use libfuzzer_sys::fuzz_target;

/// ICMP header, quoted IPv4 header, the quoted transport's first 8 bytes, and 8 more (a TCP
/// quote that reaches its checksum, at 16..18).
const ICMP: usize = 0;
const INNER: usize = 8;
const QUOTE: usize = INNER + 20;
const LEN: usize = QUOTE + 18;

fn view<T>(buf: &mut [u8], off: usize) -> &mut T {
    assert!(off + size_of::<T>() <= buf.len());
    // SAFETY: in bounds (checked), alignment 1, every bit pattern valid.
    unsafe { &mut *buf.as_mut_ptr().add(off).cast::<T>() }
}

fn translate(
    buf: &mut [u8],
    quoted_tcp_check: bool,
    side: Side,
    addr: [u8; 4],
    port: Option<[u8; 2]>,
) {
    let (icmp, rest) = buf.split_at_mut(INNER);
    let (inner, rest) = rest.split_at_mut(QUOTE - INNER);
    let (quote, rest) = rest.split_at_mut(8);
    let tcp_check = quoted_tcp_check.then(|| view::<[u8; 2]>(rest, 8));
    nat::rewrite_icmp_quote(
        view::<IcmpHdr>(icmp, 0),
        view::<Ipv4Hdr>(inner, 0),
        view::<L4Quote>(quote, 0),
        tcp_check,
        side,
        addr,
        port,
    );
}

fn fix_inner_checksum(buf: &mut [u8]) {
    buf[INNER + 10..INNER + 12].copy_from_slice(&[0, 0]);
    let c = csum::checksum(0, &buf[INNER..QUOTE]);
    buf[INNER + 10..INNER + 12].copy_from_slice(&c);
}

fn icmp_checksum(buf: &[u8]) -> [u8; 2] {
    let mut b = buf.to_vec();
    b[ICMP + 2..ICMP + 4].copy_from_slice(&[0, 0]);
    csum::checksum(0, &b)
}

/// Equal, counting a checksum's two forms of zero (0x0000, 0xffff) as one.
fn same_checksum(a: &[u8], b: &[u8]) -> bool {
    a == b || (matches!(a, [0, 0] | [0xff, 0xff]) && matches!(b, [0, 0] | [0xff, 0xff]))
}

fuzz_target!(|data: &[u8]| {
    let [p, s, a0, a1, a2, a3, has_port, q0, q1, rest @ ..] = data else {
        return;
    };
    let Some(body) = rest.get(..LEN) else {
        return;
    };
    let proto = [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP][usize::from(p % 3)];
    let quoted_tcp_check = proto == IPPROTO_TCP && p & 0x10 != 0;
    let side = if s & 1 == 0 { Side::Src } else { Side::Dst };
    let addr = [*a0, *a1, *a2, *a3];
    // ICMP echo quotes are translated by address only.
    let port = (has_port & 1 == 1 && proto != IPPROTO_ICMP).then_some([*q0, *q1]);

    let mut buf = body.to_vec();
    buf[ICMP] = 3; // destination unreachable
    buf[INNER] = 0x45;
    buf[INNER + 9] = proto;
    fix_inner_checksum(&mut buf);
    let c = icmp_checksum(&buf);
    buf[ICMP + 2..ICMP + 4].copy_from_slice(&c);
    let original = buf.clone();

    let (addr_at, port_at) = match side {
        Side::Src => (INNER + 12, QUOTE),
        Side::Dst => (INNER + 16, QUOTE + 2),
    };
    let old_addr: [u8; 4] = buf[addr_at..addr_at + 4].try_into().unwrap();
    let old_port: [u8; 2] = buf[port_at..port_at + 2].try_into().unwrap();
    translate(&mut buf, quoted_tcp_check, side, addr, port);

    assert_eq!(&buf[addr_at..addr_at + 4], &addr);
    if let Some(port) = port {
        assert_eq!(&buf[port_at..port_at + 2], &port);
    }
    let mut inner = buf.clone();
    fix_inner_checksum(&mut inner);
    assert_eq!(
        &buf[INNER + 10..INNER + 12],
        &inner[INNER + 10..INNER + 12],
        "quoted IPv4 checksum"
    );
    assert_eq!(
        &buf[ICMP + 2..ICMP + 4],
        &icmp_checksum(&buf),
        "ICMP checksum"
    );
    if proto == IPPROTO_UDP && original[QUOTE + 6..QUOTE + 8] == [0, 0] {
        assert_eq!(
            &buf[QUOTE + 6..QUOTE + 8],
            &[0, 0],
            "no UDP checksum stays none"
        );
    }

    translate(
        &mut buf,
        quoted_tcp_check,
        side,
        old_addr,
        port.map(|_| old_port),
    );
    for (i, (a, b)) in buf.chunks(2).zip(original.chunks(2)).enumerate() {
        assert!(
            same_checksum(a, b) && (a == b || is_checksum(i * 2, proto)),
            "byte {}: {a:02x?} != {b:02x?}",
            i * 2
        );
    }
});

/// Whether the 16-bit word at `off` is a checksum field.
fn is_checksum(off: usize, proto: u8) -> bool {
    off == ICMP + 2
        || off == INNER + 10
        || (proto == IPPROTO_UDP && off == QUOTE + 6)
        || (proto == IPPROTO_TCP && off == QUOTE + 16)
}
