//! Property tests of lb-common's packet arithmetic: incremental checksum updates, NAT rewrites,
//! TTL decrements, ICMP-quote translation and the "fragmentation needed" reply against full
//! recomputations (an independent checksum in `common` and etherparse), and the ranges of the
//! map-slot hashes.
//!
//! The expected packets are always built by etherparse from a description of the translated
//! datagram, never by lb-common's own code, and compared byte for byte: that checks the
//! checksums and that nothing but the intended bytes changed.
//!
//! One's-complement zero has two forms, 0x0000 and 0xffff. A full recomputation (etherparse's
//! or `common::internet_checksum`) never produces 0xffff unless every covered word is zero, and
//! RFC 1624 eqn. 3, `~(~HC + ~m + m')`, never produces 0xffff unless `~HC + ~m + m'` is zero.
//! Every checksum lb rewrites covers a non-zero word (the IPv4 version nibble, the pseudo-header
//! protocol, the ICMP error type), so the tests below demand exact equality with the
//! recomputation; where they feed a non-canonical 0xffff in on purpose, they say what they
//! accept instead.

mod common;

use common::{
    Cursor, Datagram, L4Params, Translation, bytes_eq, bytes_of, datagram, datagram_with,
    icmp_frag_needed_frame, internet_checksum, ipv4_params, ones_sum, tcp_params, translation,
    udp_params, udp_params_with, verifies,
};
use etherparse::{
    Icmpv4Header, Icmpv4Type, IpDscp, IpHeaders, IpNumber, Ipv4Header, PacketBuilder, TcpHeader,
    UdpHeader, icmpv4::DestUnreachableHeader,
};
use lb_common::{
    csum, hash, icmp,
    maps::{ADDR_FILTER_SIZE, FlowKey, RING_SIZE},
    nat::{self, L4, Side},
    net::{ETH_HDR_LEN, IPPROTO_TCP, IPPROTO_UDP, IPV4_HDR_LEN, IcmpHdr, Ipv4Hdr, L4Quote},
};
use proptest::{collection::vec, prelude::*, sample::Index};

// ---- Datapath-shaped drivers: header views over the frame, as the XDP code holds them. ----

/// Runs `nat::rewrite` on a frame built by `Datagram::frame`.
fn rewrite_frame(frame: &mut [u8], t: &Translation) {
    let mut c = Cursor::new(frame);
    c.skip(ETH_HDR_LEN);
    let ip: &mut Ipv4Hdr = c.take();
    c.skip(usize::from(ip.ihl()) * 4 - IPV4_HDR_LEN);
    let l4 = match ip.proto {
        IPPROTO_TCP => L4::Tcp(c.take()),
        IPPROTO_UDP => L4::Udp(c.take()),
        other => panic!("not TCP or UDP: {other}"),
    };
    nat::rewrite(ip, l4, t.side, t.addr, t.port);
}

/// Runs `nat::decrement_ttl` on a frame built by `Datagram::frame`.
fn decrement_ttl_frame(frame: &mut [u8]) {
    let mut c = Cursor::new(frame);
    c.skip(ETH_HDR_LEN);
    nat::decrement_ttl(c.take());
}

/// Runs `nat::rewrite_icmp_quote` on a frame built by `icmp_frag_needed_frame`, passing the
/// quoted TCP checksum when `tcp_check_quoted`.
fn rewrite_icmp_frame(frame: &mut [u8], t: &Translation, tcp_check_quoted: bool) {
    let mut c = Cursor::new(frame);
    c.skip(ETH_HDR_LEN);
    let outer: &mut Ipv4Hdr = c.take();
    c.skip(usize::from(outer.ihl()) * 4 - IPV4_HDR_LEN);
    let icmp: &mut IcmpHdr = c.take();
    let inner: &mut Ipv4Hdr = c.take();
    c.skip(usize::from(inner.ihl()) * 4 - IPV4_HDR_LEN);
    let quote: &mut L4Quote = c.take();
    let tcp_check = tcp_check_quoted.then(|| {
        // The TCP checksum sits at bytes 16..18, 8 past the end of the quote view.
        c.skip(8);
        c.take::<[u8; 2]>()
    });
    nat::rewrite_icmp_quote(icmp, inner, quote, tcp_check, t.side, t.addr, t.port);
}

/// Offset of the TCP/UDP checksum in a frame built by `Datagram::frame`.
fn l4_check_at(dg: &Datagram) -> usize {
    ETH_HDR_LEN + dg.ip.header_len() + if dg.is_tcp() { 16 } else { 6 }
}

fn l4_check(dg: &Datagram, frame: &[u8]) -> [u8; 2] {
    let at = l4_check_at(dg);
    [frame[at], frame[at + 1]]
}

/// Checks every checksum of a frame built by `Datagram::frame` against etherparse's full
/// recomputation (a UDP checksum of 0 means "none" and is not checked here).
fn etherparse_agrees(frame: &[u8]) -> Result<(), TestCaseError> {
    let (ip, rest) = Ipv4Header::from_slice(&frame[ETH_HDR_LEN..]).expect("ipv4 header");
    prop_assert_eq!(
        ip.header_checksum,
        ip.calc_header_checksum(),
        "ipv4 header checksum"
    );
    let segment = &rest[..usize::from(ip.payload_len().expect("ipv4 payload length"))];
    match ip.protocol {
        IpNumber::TCP => {
            let (tcp, payload) = TcpHeader::from_slice(segment).expect("tcp header");
            let want = tcp.calc_checksum_ipv4(&ip, payload).expect("tcp checksum");
            prop_assert_eq!(tcp.checksum, want, "tcp checksum");
        }
        IpNumber::UDP => {
            let (udp, payload) = UdpHeader::from_slice(segment).expect("udp header");
            if udp.checksum != 0 {
                let want = udp.calc_checksum_ipv4(&ip, payload).expect("udp checksum");
                prop_assert_eq!(udp.checksum, want, "udp checksum");
            }
        }
        other => panic!("not TCP or UDP: {other:?}"),
    }
    Ok(())
}

// ---- 1. csum::replace16 / replace32 against a full recomputation. ----

/// 0x00 and 0xff more often than chance, so all-zero and all-one words (the edges of
/// one's-complement arithmetic) come up.
fn edgy_byte() -> impl Strategy<Value = u8> {
    prop_oneof![6 => any::<u8>(), 1 => Just(0u8), 1 => Just(0xffu8)]
}

/// An even-length buffer of 20..200 bytes with a correct checksum (by the independent
/// implementation) stored at an even offset; returns the buffer and that offset.
fn checksummed() -> impl Strategy<Value = (Vec<u8>, usize)> {
    (10..100usize)
        .prop_flat_map(|words| (vec(edgy_byte(), 2 * words), 0..words))
        .prop_map(|(mut buf, word)| {
            let at = 2 * word;
            buf[at..at + 2].fill(0);
            let check = internet_checksum(&buf);
            buf[at..at + 2].copy_from_slice(&check.to_be_bytes());
            (buf, at)
        })
}

/// The checksum at `at` after incremental updates must be what a full recomputation gives,
/// and the buffer must verify. Exception: when every other word is zero, a recomputation gives
/// 0xffff but RFC 1624 eqn. 3 gives 0x0000 (both one's-complement zero; no real header lb
/// patches is all zeros), and an all-zero buffer does not verify.
fn checksum_is_recomputed(buf: &[u8], at: usize) -> Result<(), TestCaseError> {
    let got = u16::from_be_bytes([buf[at], buf[at + 1]]);
    let mut data = buf.to_vec();
    data[at..at + 2].fill(0);
    if data.iter().all(|b| *b == 0) {
        prop_assert_eq!(got, 0x0000);
    } else {
        prop_assert_eq!(
            got,
            internet_checksum(&data),
            "checksum vs full recomputation"
        );
        prop_assert!(verifies(buf), "buffer does not verify");
    }
    Ok(())
}

/// A new 16-bit value: random, one of the edge words, or (`None`) the old value again.
fn new_word() -> impl Strategy<Value = Option<[u8; 2]>> {
    proptest::option::weighted(
        0.9,
        prop_oneof![any::<[u8; 2]>(), Just([0, 0]), Just([0xff, 0xff])],
    )
}

/// A new 32-bit value: random, one of the edge values, or (`None`) the old value again.
fn new_field() -> impl Strategy<Value = Option<[u8; 4]>> {
    proptest::option::weighted(
        0.9,
        prop_oneof![
            any::<[u8; 4]>(),
            Just([0; 4]),
            Just([0xff; 4]),
            Just([0, 0, 0xff, 0xff])
        ],
    )
}

/// One change to the covered data, at an even offset that `Index` picks among those not
/// overlapping the checksum. 32-bit fields need only 16-bit alignment for the arithmetic, so
/// any even offset is allowed (a stronger claim than 4-byte-aligned addresses).
#[derive(Clone, Debug)]
enum Update {
    Word(Index, Option<[u8; 2]>),
    Field(Index, Option<[u8; 4]>),
}

fn update() -> impl Strategy<Value = Update> {
    prop_oneof![
        (any::<Index>(), new_word()).prop_map(|(i, v)| Update::Word(i, v)),
        (any::<Index>(), new_field()).prop_map(|(i, v)| Update::Field(i, v)),
    ]
}

/// Applies `u` to `buf` and patches the checksum at `at` with `replace16`/`replace32`.
fn apply(buf: &mut [u8], at: usize, u: &Update) {
    let check = [buf[at], buf[at + 1]];
    let patched = match u {
        Update::Word(i, new) => {
            let offsets: Vec<usize> = (0..buf.len()).step_by(2).filter(|o| *o != at).collect();
            let o = *i.get(&offsets);
            let old = [buf[o], buf[o + 1]];
            let new = new.unwrap_or(old);
            buf[o..o + 2].copy_from_slice(&new);
            csum::replace16(check, old, new)
        }
        Update::Field(i, new) => {
            let offsets: Vec<usize> = (0..buf.len() - 2)
                .step_by(2)
                .filter(|o| *o != at && o + 2 != at)
                .collect();
            let o = *i.get(&offsets);
            let old = [buf[o], buf[o + 1], buf[o + 2], buf[o + 3]];
            let new = new.unwrap_or(old);
            buf[o..o + 4].copy_from_slice(&new);
            csum::replace32(check, old, new)
        }
    };
    buf[at..at + 2].copy_from_slice(&patched);
}

proptest! {
    /// `replace16` after one 16-bit word changed equals a full recomputation.
    #[test]
    fn replace16_matches_recompute((mut buf, at) in checksummed(), i in any::<Index>(), new in new_word()) {
        apply(&mut buf, at, &Update::Word(i, new));
        checksum_is_recomputed(&buf, at)?;
    }

    /// `replace32` after one 32-bit field changed equals a full recomputation.
    #[test]
    fn replace32_matches_recompute((mut buf, at) in checksummed(), i in any::<Index>(), new in new_field()) {
        apply(&mut buf, at, &Update::Field(i, new));
        checksum_is_recomputed(&buf, at)?;
    }

    /// A chain of updates (as a NAT does: address, then port) never drifts from a full
    /// recomputation.
    #[test]
    fn chained_updates_match_recompute((mut buf, at) in checksummed(), updates in vec(update(), 1..12)) {
        for u in &updates {
            apply(&mut buf, at, u);
            checksum_is_recomputed(&buf, at)?;
        }
    }

    /// `csum::sum_words`/`checksum` (the host-side full computation, odd lengths and a
    /// pseudo-header accumulator included) agree with the independent implementation.
    #[test]
    fn checksum_matches_independent_sum(initial in any::<u32>(), data in vec(edgy_byte(), 0..200)) {
        let mut all = initial.to_be_bytes().to_vec();
        all.extend_from_slice(&data);
        prop_assert_eq!(csum::fold(csum::sum_words(initial, &data)), ones_sum(&all));
        prop_assert_eq!(csum::checksum(initial, &data), internet_checksum(&all).to_be_bytes());
    }
}

/// Pins the one case where an incremental update and a recomputation pick different forms of
/// zero: covered data that becomes all zeros. Eqn. 3 gives 0x0000, a recomputation 0xffff.
#[test]
fn all_zero_data_gets_positive_zero() {
    let x = [0x12, 0x34];
    let check = (!u16::from_be_bytes(x)).to_be_bytes();
    assert_eq!(csum::replace16(check, x, [0, 0]), [0, 0]);
    assert_eq!(csum::checksum(0, &[0, 0]), [0xff, 0xff]);
    // From there on, any real change gives the recomputed value again.
    assert_eq!(csum::replace16([0, 0], [0, 0], x), check);
}

// ---- 2. nat::rewrite against etherparse. ----

proptest! {
    /// A rewrite on either side, with or without a port, yields exactly the frame etherparse
    /// builds for the translated datagram (so every checksum equals etherparse's full
    /// recomputation, and only address, port and checksum bytes changed).
    #[test]
    fn rewrite_matches_etherparse(dg in datagram(), t in translation()) {
        let original = dg.frame();
        let mut frame = original.clone();
        rewrite_frame(&mut frame, &t);
        etherparse_agrees(&frame)?;

        // Only these bytes may differ from the original.
        let ip = ETH_HDR_LEN;
        let l4 = ip + dg.ip.header_len();
        let addr_at = ip + if t.side == Side::Src { 12 } else { 16 };
        let port_at = l4 + if t.side == Side::Src { 0 } else { 2 };
        let check_at = l4_check_at(&dg);
        for (i, (a, b)) in original.iter().zip(&frame).enumerate() {
            let allowed = (addr_at..addr_at + 4).contains(&i)
                || (ip + 10..ip + 12).contains(&i)
                || (t.port.is_some() && (port_at..port_at + 2).contains(&i))
                || (check_at..check_at + 2).contains(&i);
            prop_assert!(a == b || allowed, "byte {} changed: {:02x} -> {:02x}", i, a, b);
        }

        bytes_eq("rewritten vs etherparse's translated frame", &frame, &dg.translated(&t).frame())?;
    }
}

// ---- 3. UDP's "no checksum" and its 0xffff rule. ----

proptest! {
    /// A UDP checksum of 0 ("none") stays 0 whatever the rewrite.
    #[test]
    fn udp_without_checksum_stays_unchecked(
        dg in datagram_with(any::<u8>(), udp_params_with(Just(true))),
        t in translation(),
    ) {
        let mut frame = dg.frame();
        prop_assert_eq!(l4_check(&dg, &frame), [0, 0]);
        rewrite_frame(&mut frame, &t);
        prop_assert_eq!(l4_check(&dg, &frame), [0, 0]);
        bytes_eq("rewritten vs translated", &frame, &dg.translated(&t).frame())?;
    }

    /// A UDP rewrite whose correct checksum is 0 writes 0xffff. The new address is computed
    /// (not searched for): its low word makes the translated datagram's sum exactly 0xffff.
    #[test]
    fn udp_zero_result_is_sent_as_ffff(
        dg in datagram_with(any::<u8>(), udp_params_with(Just(false))),
        t in translation(),
        hi in any::<[u8; 2]>(),
    ) {
        let want = dg.translated(&t).with_zero_l4_checksum(t.side, hi);
        let t = Translation { addr: want.addr(t.side), ..t };
        let want_frame = want.frame();
        // The case really is the zero one: etherparse sends it as 0xffff too.
        prop_assert_eq!(l4_check(&want, &want_frame), [0xff, 0xff]);

        let mut frame = dg.frame();
        rewrite_frame(&mut frame, &t);
        prop_assert_eq!(l4_check(&dg, &frame), [0xff, 0xff]);
        bytes_eq("rewritten vs translated", &frame, &want_frame)?;
    }

    /// TCP has no "none" value: a rewrite whose correct checksum is 0 writes 0x0000, as a full
    /// recomputation does.
    #[test]
    fn tcp_zero_result_is_sent_as_zero(
        dg in datagram_with(any::<u8>(), tcp_params()),
        t in translation(),
        hi in any::<[u8; 2]>(),
    ) {
        let want = dg.translated(&t).with_zero_l4_checksum(t.side, hi);
        let t = Translation { addr: want.addr(t.side), ..t };
        let want_frame = want.frame();
        prop_assert_eq!(l4_check(&want, &want_frame), [0, 0]);

        let mut frame = dg.frame();
        rewrite_frame(&mut frame, &t);
        prop_assert_eq!(l4_check(&dg, &frame), [0, 0]);
        bytes_eq("rewritten vs translated", &frame, &want_frame)?;
    }
}

// ---- 4. Rewrite, then the inverse rewrite. ----

/// Which checksum edge a round trip starts from or passes through.
#[derive(Clone, Copy, Debug)]
enum Edge {
    Random,
    /// The original's TCP/UDP checksum is one's-complement zero (TCP 0x0000, UDP 0xffff).
    OriginalZero,
    /// The translated datagram's checksum is one's-complement zero.
    TranslatedZero,
}

impl Edge {
    /// Adjusts the original's address on the translated side (`OriginalZero`, which also turns
    /// a UDP checksum on) or the translation's address (`TranslatedZero`), `hi` being the
    /// address's free high word.
    fn apply(self, dg: Datagram, t: Translation, hi: [u8; 2]) -> (Datagram, Translation) {
        match self {
            Edge::Random => (dg, t),
            Edge::OriginalZero => (dg.with_zero_l4_checksum(t.side, hi), t),
            Edge::TranslatedZero => {
                let addr = dg
                    .translated(&t)
                    .with_zero_l4_checksum(t.side, hi)
                    .addr(t.side);
                (dg, Translation { addr, ..t })
            }
        }
    }
}

fn edge() -> impl Strategy<Value = Edge> {
    prop_oneof![2 => Just(Edge::Random), 1 => Just(Edge::OriginalZero), 1 => Just(Edge::TranslatedZero)]
}

proptest! {
    /// Rewriting and then rewriting back (same side, old address, and old port if one was
    /// changed) restores the original bytes exactly, TCP and UDP, including UDP without a
    /// checksum and checksums that are zero before or after. Exact, because the original is
    /// in canonical form (as etherparse writes it: TCP 0x0000, UDP 0xffff for zero) and both
    /// directions produce canonical forms; see the next test for a non-canonical original.
    #[test]
    fn rewrite_round_trip_restores_original(
        dg in datagram(),
        t in translation(),
        edge in edge(),
        hi in any::<[u8; 2]>(),
    ) {
        let (dg, t) = edge.apply(dg, t, hi);
        let original = dg.frame();
        let mut frame = original.clone();
        rewrite_frame(&mut frame, &t);
        bytes_eq("forward rewrite vs translated", &frame, &dg.translated(&t).frame())?;

        let back = Translation {
            side: t.side,
            addr: dg.addr(t.side),
            port: t.port.map(|_| dg.port(t.side)),
        };
        rewrite_frame(&mut frame, &back);
        bytes_eq("after the round trip vs original", &frame, &original)?;
    }

    /// A TCP checksum a sender wrote as 0xffff (-0; it verifies) is not restored by a round
    /// trip: the incremental update returns the canonical 0x0000. Every other byte is restored,
    /// and the translated frame's checksum is right in either form of zero. Accepted: both
    /// forms verify at the receiver, and a full recomputation would write 0x0000 as well.
    #[test]
    fn tcp_negative_zero_round_trips_to_positive_zero(
        dg in datagram_with(any::<u8>(), tcp_params()),
        t in translation(),
        hi in any::<[u8; 2]>(),
    ) {
        let dg = dg.with_zero_l4_checksum(t.side, hi);
        let canonical = dg.frame();
        let at = l4_check_at(&dg);
        prop_assert_eq!(l4_check(&dg, &canonical), [0, 0]);
        // The rest sums to 0xffff (checked by the construction), so 0xffff verifies as well.
        let mut frame = canonical.clone();
        frame[at..at + 2].copy_from_slice(&[0xff, 0xff]);

        rewrite_frame(&mut frame, &t);
        let mut want = dg.translated(&t).frame();
        let (got_check, want_check) = (l4_check(&dg, &frame), l4_check(&dg, &want));
        prop_assert!(
            got_check == want_check
                || ([got_check, want_check].iter().all(|c| *c == [0, 0] || *c == [0xff, 0xff])),
            "forward checksum {:02x?}, recomputed {:02x?}", got_check, want_check
        );
        want[at..at + 2].copy_from_slice(&got_check);
        bytes_eq("forward rewrite vs translated", &frame, &want)?;

        let back = Translation {
            side: t.side,
            addr: dg.addr(t.side),
            port: t.port.map(|_| dg.port(t.side)),
        };
        rewrite_frame(&mut frame, &back);
        bytes_eq("after the round trip vs canonical original", &frame, &canonical)?;
    }
}

// ---- 5. nat::decrement_ttl. ----

proptest! {
    /// Each decrement lowers the TTL by one and leaves exactly the header etherparse builds
    /// with that TTL (so the checksum equals a full recomputation), all the way down to 1.
    #[test]
    fn decrement_ttl_keeps_checksum(
        dg in datagram_with(2..=255u8, prop_oneof![tcp_params(), udp_params()]),
    ) {
        let mut frame = dg.frame();
        let mut want = dg.clone();
        while want.ip.ttl > 1 {
            decrement_ttl_frame(&mut frame);
            want.ip.ttl -= 1;
            let (ip, _) = Ipv4Header::from_slice(&frame[ETH_HDR_LEN..]).expect("ipv4 header");
            prop_assert_eq!(ip.time_to_live, want.ip.ttl);
            prop_assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            bytes_eq("decremented vs etherparse", &frame, &want.frame())?;
        }
    }
}

// ---- 6. nat::rewrite_icmp_quote. ----

/// How much of the offending datagram an ICMP error quotes.
#[derive(Clone, Copy, Debug)]
enum QuoteLen {
    /// The IPv4 header and 8 bytes (RFC 792's minimum).
    Minimum,
    /// The IPv4 header and the whole transport header.
    L4Header,
    /// All of it.
    Full,
    /// Anything from the minimum to all of it (odd lengths included).
    Between(Index),
    /// Up to byte 16, 17 or 18 of the transport header: a TCP checksum absent, half quoted
    /// (unpatchable: it keeps its old byte) or just quoted.
    AroundTcpCheck(usize),
}

fn quote_len() -> impl Strategy<Value = QuoteLen> {
    prop_oneof![
        Just(QuoteLen::Minimum),
        Just(QuoteLen::L4Header),
        Just(QuoteLen::Full),
        any::<Index>().prop_map(QuoteLen::Between),
        (16..=18usize).prop_map(QuoteLen::AroundTcpCheck),
    ]
}

proptest! {
    /// Translating the datagram an ICMP "fragmentation needed" quotes yields exactly the
    /// frame etherparse builds around the translated datagram's quote: the ICMP checksum
    /// equals a recomputation over the message, the quoted IPv4 checksum is valid, a quoted
    /// UDP checksum (non-zero) and a quoted TCP checksum (both bytes quoted) are those of the
    /// whole translated datagram, and the outer header is untouched.
    #[test]
    fn icmp_quote_rewrite_matches_etherparse(
        dg in datagram(),
        outer in ipv4_params(any::<u8>()),
        mtu in any::<u16>(),
        len in quote_len(),
        t in translation(),
        edge in edge(),
        hi in any::<[u8; 2]>(),
    ) {
        let (dg, t) = edge.apply(dg, t, hi);
        let inner = dg.to_bytes();
        let ihl = dg.ip.header_len();
        let min = ihl + 8;
        let n = match len {
            QuoteLen::Minimum => min,
            QuoteLen::L4Header => ihl + dg.l4_header_len(),
            QuoteLen::Full => inner.len(),
            QuoteLen::Between(i) => min + i.index(inner.len() - min + 1),
            QuoteLen::AroundTcpCheck(k) => (ihl + k).min(inner.len()),
        };
        let tcp_check_quoted = dg.is_tcp() && n >= ihl + 18;
        let mut want_quote = dg.translated(&t).to_bytes()[..n].to_vec();
        if dg.is_tcp() && n == ihl + 17 {
            // Half a TCP checksum quoted: nobody can patch it, so it keeps its old byte.
            want_quote[ihl + 16] = inner[ihl + 16];
        }
        let mut frame = icmp_frag_needed_frame(&outer, mtu, &inner[..n]);
        let want = icmp_frag_needed_frame(&outer, mtu, &want_quote);

        rewrite_icmp_frame(&mut frame, &t, tcp_check_quoted);

        let (_, icmp_bytes) = Ipv4Header::from_slice(&frame[ETH_HDR_LEN..]).expect("outer ipv4");
        let (icmp, quote) = Icmpv4Header::from_slice(icmp_bytes).expect("icmp header");
        prop_assert_eq!(icmp.checksum, icmp.icmp_type.calc_checksum(quote), "icmp checksum");
        let (qip, ql4) = Ipv4Header::from_slice(quote).expect("quoted ipv4");
        prop_assert_eq!(qip.header_checksum, qip.calc_header_checksum(), "quoted ipv4 checksum");
        let full = n == inner.len();
        match &dg.l4 {
            L4Params::Udp { unchecked, .. } => {
                let (udp, payload) = UdpHeader::from_slice(ql4).expect("quoted udp");
                if *unchecked {
                    prop_assert_eq!(udp.checksum, 0);
                } else if full {
                    let recomputed = udp.calc_checksum_ipv4(&qip, payload).expect("udp checksum");
                    prop_assert_eq!(udp.checksum, recomputed, "quoted udp checksum");
                }
            }
            L4Params::Tcp { .. } => {
                if full {
                    let (tcp, payload) = TcpHeader::from_slice(ql4).expect("quoted tcp");
                    let recomputed = tcp.calc_checksum_ipv4(&qip, payload).expect("tcp checksum");
                    prop_assert_eq!(tcp.checksum, recomputed, "quoted tcp checksum");
                }
            }
        }
        // Truncated quotes: the quoted L4 checksum is the whole translated datagram's, which
        // etherparse computed for `want`.
        bytes_eq("rewritten vs etherparse's translated quote", &frame, &want)?;
    }
}

// ---- 7. Hash ranges. ----

proptest! {
    #[test]
    fn addr_slot_is_in_range(addr in any::<[u8; 4]>()) {
        prop_assert!(hash::addr_slot(addr) < ADDR_FILTER_SIZE);
    }

    #[test]
    fn ring_slot_is_in_range(
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        sport in any::<[u8; 2]>(),
        dport in any::<[u8; 2]>(),
        proto in any::<u8>(),
    ) {
        prop_assert!(hash::ring_slot(&FlowKey::new(src, dst, sport, dport, proto)) < RING_SIZE);
    }
}

/// Every slot of both tables is reachable, and none past the end is: a sweep over many keys
/// (random sampling would rarely land on the last slot, where an off-by-one shows).
#[test]
fn hash_slots_cover_exactly_their_range() {
    let mut addr_seen = vec![false; ADDR_FILTER_SIZE as usize];
    for i in 0..(ADDR_FILTER_SIZE * 4) {
        let slot = hash::addr_slot(i.to_be_bytes());
        assert!(slot < ADDR_FILTER_SIZE, "addr_slot({i:#x}) = {slot}");
        addr_seen[slot as usize] = true;
    }
    assert!(
        addr_seen.iter().all(|s| *s),
        "some address-filter slot is never used"
    );

    let mut ring_seen = vec![false; RING_SIZE as usize];
    for dst in [[203, 0, 113, 10], [198, 51, 100, 1]] {
        for sport in 0..=u16::MAX {
            let key = FlowKey::new([192, 0, 2, 7], dst, sport.to_be_bytes(), [0, 80], 6);
            let slot = hash::ring_slot(&key);
            assert!(slot < RING_SIZE, "ring_slot({key:?}) = {slot}");
            ring_seen[slot as usize] = true;
        }
    }
    assert!(ring_seen.iter().all(|s| *s), "some ring slot is never used");
}

#[test]
fn hash_slots_in_range_at_the_edges() {
    for addr in [[0; 4], [0xff; 4], [0x80, 0, 0, 0], [0x7f, 0xff, 0xff, 0xff]] {
        assert!(hash::addr_slot(addr) < ADDR_FILTER_SIZE, "{addr:?}");
    }
    for b in [0, 0xff] {
        let key = FlowKey::new([b; 4], [b; 4], [b; 2], [b; 2], b);
        assert!(hash::ring_slot(&key) < RING_SIZE, "{key:?}");
    }
}

// ---- 8. The "fragmentation needed" lb originates (lb_common::icmp). ----

proptest! {
    /// `too_big_headers` plus `icmp_checksum_add` over the quote, word by word, yield exactly
    /// the IPv4 + ICMP message etherparse builds with the same fields (so both checksums equal
    /// full recomputations over header and message).
    #[test]
    fn too_big_reply_matches_etherparse(
        src in any::<[u8; 4]>(),
        dst in any::<[u8; 4]>(),
        mtu in any::<u16>(),
        // What the datapath quotes: a header of 5..=15 words and 8 bytes behind it.
        quote in (5..=15usize).prop_flat_map(|ihl| vec(any::<u8>(), ihl * 4 + icmp::QUOTE_PAYLOAD)),
    ) {
        let quote_len = u16::try_from(quote.len()).expect("short quote");
        let (ip, mut icmp_hdr) = icmp::too_big_headers(src, dst, quote_len, mtu);
        for w in quote.chunks_exact(4) {
            icmp_hdr.check = icmp::icmp_checksum_add(icmp_hdr.check, [w[0], w[1], w[2], w[3]]);
        }
        let got = [bytes_of(&ip), bytes_of(&icmp_hdr), &quote].concat();

        let header = Ipv4Header {
            dscp: IpDscp::try_new(0xc0 >> 2).expect("dscp"),
            identification: 0,
            dont_fragment: false,
            time_to_live: icmp::REPLY_TTL,
            source: dst,
            destination: src,
            ..Default::default()
        };
        let mut want = Vec::new();
        PacketBuilder::ip(IpHeaders::Ipv4(header, Default::default()))
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
            ))
            .write(&mut want, &quote)
            .expect("icmp reply");
        bytes_eq("too-big reply vs etherparse", &got, &want)?;
    }

    /// `ipv4_header_checksum` of any option-less header equals a full recomputation, whatever
    /// its `check` field holds.
    #[test]
    fn ipv4_header_checksum_matches_recompute(mut hdr in any::<[u8; 20]>()) {
        hdr[0] = 0x45;
        let mut c = Cursor::new(&mut hdr);
        let got = icmp::ipv4_header_checksum(c.take::<Ipv4Hdr>());
        hdr[10..12].fill(0);
        prop_assert_eq!(got, internet_checksum(&hdr).to_be_bytes());
    }
}
