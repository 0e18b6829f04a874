use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::csum;

use super::*;
use crate::probe::{
    http::{HTTP_PORT, QUOTE_MAX, host, parse_status_line, quote},
    https::{HTTPS_PORT, handshake_detail},
    icmp::{
        ECHO_LEN, EchoReply, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, ICMP6_ECHO_REPLY,
        ICMP6_ECHO_REQUEST, Registration, Waiters, echo_request, echo_request6, icmp6_filter,
    },
};

const PEER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 7);
const PEER: IpAddr = IpAddr::V4(PEER4);
const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);
const IDENT: u16 = 0x1234;
const NONCE: u64 = 0xdead_beef_0000_0000;

const MS: Duration = Duration::from_millis(1);

/// Guards the adaptive timeout (RFC 6298's estimator): the interval until a first success,
/// then srtt + 4 × rttvar, which narrows towards the RTT while it is steady, widens at once
/// when it jumps, and stays within [1 ms, interval]; a configured timeout never moves.
#[test]
fn probe_timeout_adapts_to_the_round_trip_within_bounds() {
    let interval = 100 * MS;
    let max = interval - MS;
    let mut t = ProbeTimeout::new(None, interval);
    assert_eq!(t.current(), max);
    t.sample(10 * MS);
    // srtt 10, rttvar 5.
    assert_eq!(t.current(), 30 * MS);
    for _ in 0..40 {
        t.sample(10 * MS);
    }
    let steady = t.current();
    assert!(steady >= 10 * MS && steady < 11 * MS, "{steady:?}");
    // A jump to 40 ms widens it past the new RTT at once.
    t.sample(40 * MS);
    assert!(t.current() > 40 * MS, "{:?}", t.current());
    // Bounds.
    let mut slow = ProbeTimeout::new(None, interval);
    slow.sample(90 * MS);
    assert_eq!(slow.current(), max);
    let mut fast = ProbeTimeout::new(None, interval);
    for _ in 0..40 {
        fast.sample(Duration::from_micros(50));
    }
    assert_eq!(fast.current(), MS);
    // Configured: fixed.
    let mut fixed = ProbeTimeout::new(Some(80 * MS), interval);
    fixed.sample(MS);
    assert_eq!(fixed.current(), 80 * MS);
}

/// Guards the schedule: a timeout of the whole interval (allowed by the configuration)
/// ends a millisecond before the next probe is due, so that a dead path's timed-out probes
/// do not push every next probe a little later.
#[test]
fn probe_timeout_ends_before_the_next_probe() {
    let interval = 100 * MS;
    assert_eq!(
        ProbeTimeout::new(Some(interval), interval).current(),
        99 * MS
    );
    assert_eq!(ProbeTimeout::new(None, interval).current(), 99 * MS);
    // A 1 ms interval (the least a configuration allows is more) still gets 1 ms.
    assert_eq!(ProbeTimeout::new(None, MS).current(), MS);
}

/// The reply a host sends to `request` (type 0, checksum recomputed) inside an IPv4 header
/// from `from`, as a raw socket delivers it.
fn reply_datagram(request: &[u8], from: Ipv4Addr) -> Vec<u8> {
    let mut icmp = request.to_vec();
    icmp[0] = ICMP_ECHO_REPLY;
    icmp[2..4].copy_from_slice(&[0, 0]);
    let check = csum::checksum(0, &icmp);
    icmp[2..4].copy_from_slice(&check);
    datagram(&icmp, from)
}

fn datagram(icmp: &[u8], from: Ipv4Addr) -> Vec<u8> {
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&from.octets());
    ip.extend_from_slice(&[127, 0, 0, 1]);
    let check = csum::checksum(0, &ip);
    ip[10..12].copy_from_slice(&check);
    ip.extend_from_slice(icmp);
    ip
}

/// The daemon shares one prober between tasks and spawns its probes.
#[test]
fn prober_and_probes_can_be_shared_and_spawned() {
    fn shared<T: Send + Sync>() {}
    fn spawnable<T: Send>(_: &T) {}
    shared::<Prober>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let prober = Prober::new().unwrap();
    let spec = ProbeSpec {
        kind: ProbeKind::Icmp,
        address: PEER,
        source: None,
        interface: None,
        timeout: Duration::from_secs(1),
    };
    spawnable(&prober.probe(&spec));
}

#[test]
fn status_lines() {
    assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
    assert_eq!(
        parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
        Some(503)
    );
    assert_eq!(parse_status_line(b"HTTP/1.1 204"), Some(204));
    assert_eq!(parse_status_line(b"HTTP/1.1 200OK"), None);
    assert_eq!(parse_status_line(b"HTTP/1.1 20"), None);
    assert_eq!(parse_status_line(b"HTTP/2 200 OK"), None);
    assert_eq!(parse_status_line(b"HTTP/1.x 200 OK"), None);
    assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH_9.6"), None);
    assert_eq!(parse_status_line(b""), None);
}

#[test]
fn quotes_are_short_and_printable() {
    assert_eq!(quote(b"ab\x00\r"), "ab\\x00\\r");
    let long = [b'x'; 100];
    assert_eq!(quote(&long), format!("{}...", "x".repeat(QUOTE_MAX)));
}

#[test]
fn millis_formats() {
    assert_eq!(millis(Duration::from_millis(250)), "250 ms");
    assert_eq!(millis(Duration::from_micros(1)), "0.001 ms");
}

#[test]
fn echo_request_checksum_verifies() {
    let request = echo_request(IDENT, 7, 42, 99);
    assert_eq!(csum::checksum(0, &request), [0, 0]);
    assert_eq!(request[0], ICMP_ECHO_REQUEST);
    assert_eq!(request[4..8], [0x12, 0x34, 0, 7]);
}

#[test]
fn parses_a_reply_and_ignores_the_rest() {
    let request = echo_request(IDENT, 7, 42, 99);
    let reply = reply_datagram(&request, PEER4);
    assert_eq!(
        EchoReply::parse(&reply),
        Some(EchoReply {
            source: PEER,
            ident: IDENT,
            seq: 7,
            token: Some(42),
        })
    );
    // The request itself, as the raw socket sees it on loopback.
    assert_eq!(EchoReply::parse(&datagram(&request, PEER4)), None);
    // A corrupted reply.
    let mut bad = reply.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(EchoReply::parse(&bad), None);
    // Truncated anywhere.
    for len in 0..28 {
        assert_eq!(EchoReply::parse(&reply[..len]), None, "{len} bytes");
    }
    // Destination unreachable.
    let mut unreachable = vec![3, 1, 0, 0, 0, 0, 0, 0];
    let check = csum::checksum(0, &unreachable);
    unreachable[2..4].copy_from_slice(&check);
    assert_eq!(EchoReply::parse(&datagram(&unreachable, PEER4)), None);
}

/// Hands an IPv4 datagram to `waiters` as the receive task does.
fn deliver4(waiters: &Waiters, packet: &[u8], at: Instant) -> bool {
    waiters.deliver(IDENT, EchoReply::parse(packet).as_ref(), at)
}

/// The request a registered probe would send.
fn request_for(registration: &Registration<'_>) -> [u8; ECHO_LEN] {
    echo_request(IDENT, registration.seq, registration.token, 0)
}

#[test]
fn delivers_only_the_matching_reply() {
    let waiters = Waiters::default();
    let counter = AtomicU64::new(0);
    let (first, mut first_rx) = waiters.register(&counter, NONCE, PEER).unwrap();
    let (second, mut second_rx) = waiters.register(&counter, NONCE, PEER).unwrap();
    assert_eq!(waiters.len(), 2);
    let now = Instant::now();

    // Another process's ping, another address, another token: all ignored.
    let other_ident = echo_request(IDENT + 1, first.seq, first.token, 0);
    assert!(!deliver4(
        &waiters,
        &reply_datagram(&other_ident, PEER4),
        now
    ));
    let elsewhere = reply_datagram(&request_for(&first), Ipv4Addr::new(10, 0, 0, 8));
    assert!(!deliver4(&waiters, &elsewhere, now));
    let stale = echo_request(IDENT, first.seq, first.token ^ 1, 0);
    assert!(!deliver4(&waiters, &reply_datagram(&stale, PEER4), now));
    assert_eq!(waiters.len(), 2);

    // The second probe's reply goes to the second probe only.
    assert!(deliver4(
        &waiters,
        &reply_datagram(&request_for(&second), PEER4),
        now
    ));
    assert_eq!(second_rx.try_recv().unwrap(), now);
    assert!(first_rx.try_recv().is_err());
    // A duplicate reply finds nobody.
    assert!(!deliver4(
        &waiters,
        &reply_datagram(&request_for(&second), PEER4),
        now
    ));
    drop(second);
    assert_eq!(waiters.len(), 1);
    drop(first);
    assert_eq!(waiters.len(), 0);
}

#[test]
fn a_late_reply_is_ignored() {
    let waiters = Waiters::default();
    let counter = AtomicU64::new(0);
    let (registration, _rx) = waiters.register(&counter, NONCE, PEER).unwrap();
    let late = reply_datagram(&request_for(&registration), PEER4);
    // The probe times out: its future, and so its registration, is dropped.
    drop(registration);
    assert_eq!(waiters.len(), 0);
    assert!(!deliver4(&waiters, &late, Instant::now()));
    assert_eq!(waiters.len(), 0);
}

#[test]
fn a_reply_racing_the_timeout_is_harmless() {
    let waiters = Waiters::default();
    let counter = AtomicU64::new(0);
    let (registration, rx) = waiters.register(&counter, NONCE, PEER).unwrap();
    let reply = reply_datagram(&request_for(&registration), PEER4);
    // The receiver is gone (the probe future is being dropped) but the registration not yet.
    drop(rx);
    assert!(!deliver4(&waiters, &reply, Instant::now()));
    drop(registration);
    assert_eq!(waiters.len(), 0);
}

#[test]
fn sequence_numbers_in_use_are_skipped() {
    let waiters = Waiters::default();
    let counter = AtomicU64::new(0);
    let (old, _old_rx) = waiters.register(&counter, NONCE, PEER).unwrap();
    // 65536 probes later the sequence number comes round while the old one still waits.
    counter.store(1 << 16, Ordering::Relaxed);
    let (new, _new_rx) = waiters.register(&counter, NONCE, PEER).unwrap();
    assert_eq!(old.seq, 0);
    assert_eq!(new.seq, 1);
    assert_ne!(old.token, new.token);
}

/// The ICMPv6 echo reply a host sends to `request`: the same message, type 129. A raw ICMPv6
/// socket delivers the message alone; its checksum is the kernel's to check.
fn reply6(request: &[u8]) -> Vec<u8> {
    let mut icmp = request.to_vec();
    icmp[0] = ICMP6_ECHO_REPLY;
    icmp
}

#[test]
fn icmpv6_echo_request_leaves_the_checksum_to_the_kernel() {
    let request = echo_request6(IDENT, 7, 42, 99);
    assert_eq!(request[0], ICMP6_ECHO_REQUEST);
    assert_eq!(request[1], 0, "code");
    assert_eq!(request[2..4], [0, 0], "the kernel fills the checksum in");
    assert_eq!(request[4..8], [0x12, 0x34, 0, 7]);
    assert_eq!(request[8..16], 42u64.to_be_bytes());
    // The same layout as the IPv4 request, but for its type and checksum.
    let v4 = echo_request(IDENT, 7, 42, 99);
    assert_eq!(request[4..], v4[4..]);
    assert_eq!(icmp::Family::V6.request(IDENT, 7, 42, 99), request);
    assert_eq!(icmp::Family::V4.request(IDENT, 7, 42, 99), v4);
}

#[test]
fn parses_an_icmpv6_reply_and_ignores_the_rest() {
    let request = echo_request6(IDENT, 7, 42, 99);
    let reply = reply6(&request);
    let want = EchoReply {
        source: IpAddr::V6(PEER6),
        ident: IDENT,
        seq: 7,
        token: Some(42),
    };
    assert_eq!(EchoReply::parse6(&reply, PEER6), Some(want));
    let v6 = icmp::Family::V6;
    assert_eq!(
        v6.parse(&reply, Some(IpAddr::V6(PEER6))),
        EchoReply::parse6(&reply, PEER6)
    );
    // Without a sender, or with an IPv4 one, nothing is matched.
    assert_eq!(v6.parse(&reply, None), None);
    assert_eq!(v6.parse(&reply, Some(PEER)), None);
    // The request itself (our own on loopback).
    assert_eq!(EchoReply::parse6(&request, PEER6), None);
    // A neighbour advertisement, an echo reply with another code.
    let mut na = reply.clone();
    na[0] = 136;
    assert_eq!(EchoReply::parse6(&na, PEER6), None);
    let mut code = reply.clone();
    code[1] = 1;
    assert_eq!(EchoReply::parse6(&code, PEER6), None);
    // Truncated below the echo header; a payload too short for a token.
    for len in 0..8 {
        assert_eq!(EchoReply::parse6(&reply[..len], PEER6), None, "{len} bytes");
    }
    assert_eq!(
        EchoReply::parse6(&reply[..12], PEER6).map(|r| r.token),
        Some(None)
    );
    // An IPv4 datagram is not read as ICMPv6, nor the reverse.
    assert_eq!(EchoReply::parse(&reply), None);
}

#[test]
fn delivers_only_the_matching_icmpv6_reply() {
    let waiters = Waiters::default();
    let counter = AtomicU64::new(0);
    let peer = IpAddr::V6(PEER6);
    let (probe, mut rx) = waiters.register(&counter, NONCE, peer).unwrap();
    let now = Instant::now();
    let message = reply6(&echo_request6(IDENT, probe.seq, probe.token, 0));
    let deliver = |from: Ipv6Addr| {
        let reply = icmp::Family::V6.parse(&message, Some(IpAddr::V6(from)));
        waiters.deliver(IDENT, reply.as_ref(), now)
    };
    // Another address, and the same echo from the IPv4 peer: ignored.
    assert!(!deliver(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 8)));
    let v4 = reply_datagram(&echo_request(IDENT, probe.seq, probe.token, 0), PEER4);
    assert!(!deliver4(&waiters, &v4, now));
    assert_eq!(waiters.len(), 1);
    assert!(deliver(PEER6));
    assert_eq!(rx.try_recv().unwrap(), now);
    drop(probe);
    assert_eq!(waiters.len(), 0);
}

/// The kernel copies every ICMPv6 message (neighbour discovery included) to every raw ICMPv6
/// socket unless its filter blocks the type: only echo replies pass.
#[test]
fn the_icmpv6_filter_passes_echo_replies_only() {
    let filter = icmp6_filter(ICMP6_ECHO_REPLY);
    let blocks = |t: u8| filter[usize::from(t >> 5)] & (1 << (t & 31)) != 0;
    assert!(!blocks(ICMP6_ECHO_REPLY));
    for t in (0..=255u8).filter(|t| *t != ICMP6_ECHO_REPLY) {
        assert!(blocks(t), "type {t} passes");
    }
    assert_eq!(filter[4], !(1 << 1), "129 is bit 1 of word 4");
}

/// RFC 9110 7.2 and RFC 3986: the port only when it is not the scheme's (80, or 443 for
/// https), an IPv6 address in brackets.
#[test]
fn http_host_header() {
    let v6 = IpAddr::V6(PEER6);
    assert_eq!(host(PEER, 80, HTTP_PORT), "10.0.0.7");
    assert_eq!(host(PEER, 8080, HTTP_PORT), "10.0.0.7:8080");
    assert_eq!(host(v6, 80, HTTP_PORT), "[2001:db8::7]");
    assert_eq!(host(v6, 8080, HTTP_PORT), "[2001:db8::7]:8080");
    assert_eq!(host(PEER, 443, HTTPS_PORT), "10.0.0.7");
    assert_eq!(host(PEER, 80, HTTPS_PORT), "10.0.0.7:80");
    assert_eq!(host(v6, 443, HTTPS_PORT), "[2001:db8::7]");
}

/// What an operator reads when a TLS handshake fails: rustls's reason as it says it, a hint
/// for the commonest mistake (plain HTTP on the port), or what the connection did.
#[test]
fn tls_handshake_details() {
    let tls = |e: rustls::Error| handshake_detail(&io::Error::new(io::ErrorKind::InvalidData, e));
    assert_eq!(
        tls(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer
        )),
        "TLS handshake failed: invalid peer certificate: UnknownIssuer"
    );
    assert_eq!(
        tls(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
        )),
        "TLS handshake failed: received corrupt message of type InvalidContentType (the answer \
         is not TLS: plain HTTP on this port?)"
    );
    assert_eq!(
        tls(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure
        )),
        "TLS handshake failed: received fatal alert: HandshakeFailure"
    );
    assert_eq!(
        handshake_detail(&io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "tls handshake eof"
        )),
        "TLS handshake failed: the server closed the connection"
    );
    assert_eq!(
        handshake_detail(&io::ErrorKind::ConnectionReset.into()),
        "TLS handshake failed: the server reset the connection"
    );
}
