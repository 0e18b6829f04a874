//! Helpers shared by lb-common's host tests: an independent Internet checksum, typed views of
//! header bytes, and a random IPv4 TCP/UDP datagram model that etherparse serialises.
//!
//! Nothing here calls lb-common's arithmetic: the expected bytes of every test come from
//! etherparse or from the checksum below, never from the code under test.

use etherparse::{
    EtherType, Ethernet2Header, Icmpv4Type, IpDscp, IpEcn, IpHeaders, Ipv4Header, Ipv4Options,
    PacketBuilder, TcpHeader, icmpv4::DestUnreachableHeader,
};
use lb_common::{
    nat::Side,
    net::{IcmpHdr, Ipv4Hdr, L4Quote, TcpHdr, UdpHdr},
};
use proptest::{collection::vec, prelude::*, test_runner::TestCaseError};

// ---- An independent Internet checksum. ----

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd last byte padded with
/// zero), added word by word with an end-around carry (RFC 1071, section 2(A)) rather than
/// accumulated wide and folded as `lb_common::csum` does. 0 only when every word is 0.
pub fn ones_sum(data: &[u8]) -> u16 {
    data.chunks(2).fold(0u16, |acc, w| {
        let word = u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]);
        let (sum, carry) = acc.overflowing_add(word);
        sum + u16::from(carry)
    })
}

/// The checksum to store in a zeroed checksum field of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !ones_sum(data)
}

/// A receiver's check: the sum over the data including its checksum is one's-complement -0.
pub fn verifies(data: &[u8]) -> bool {
    ones_sum(data) == 0xffff
}

/// The one's-complement sum of an IPv4 datagram's TCP/UDP pseudo-header and transport segment,
/// with the transport checksum field read as zero. Parsed by hand from `datagram` (IPv4 header
/// first), so it depends on neither etherparse nor lb-common.
pub fn l4_sum(datagram: &[u8]) -> u16 {
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    let tot_len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    let proto = datagram[9];
    let mut segment = datagram[ihl..tot_len].to_vec();
    let check_at = match proto {
        6 => 16,
        17 => 6,
        other => panic!("no pseudo-header checksum for protocol {other}"),
    };
    segment[check_at..check_at + 2].fill(0);
    let seg_len = u16::try_from(segment.len()).expect("segment fits a u16");
    let mut covered = Vec::with_capacity(12 + segment.len());
    covered.extend_from_slice(&datagram[12..20]);
    covered.extend_from_slice(&[0, proto]);
    covered.extend_from_slice(&seg_len.to_be_bytes());
    covered.extend_from_slice(&segment);
    ones_sum(&covered)
}

// ---- Typed views of header bytes. ----

/// Header layouts that may be overlaid on any bytes.
///
/// # Safety
/// Implementors are `#[repr(C)]` structs (or arrays) made only of `u8` and `[u8; N]` fields:
/// alignment 1, no padding, and every bit pattern valid.
pub unsafe trait Plain {}
// SAFETY: all of these are `#[repr(C)]` structs of `u8`/`[u8; N]` fields (lb_common::net,
// which asserts their sizes and alignment at compile time), or byte arrays.
unsafe impl Plain for Ipv4Hdr {}
// SAFETY: as above.
unsafe impl Plain for TcpHdr {}
// SAFETY: as above.
unsafe impl Plain for UdpHdr {}
// SAFETY: as above.
unsafe impl Plain for IcmpHdr {}
// SAFETY: as above.
unsafe impl Plain for L4Quote {}
// SAFETY: as above.
unsafe impl Plain for [u8; 2] {}

/// The bytes of a header value, as they would sit in a packet.
pub fn bytes_of<T: Plain>(v: &T) -> &[u8] {
    // SAFETY: `T: Plain` has no padding and only byte fields, so all `size_of::<T>()` bytes
    // behind `v` are initialised `u8`s, borrowed for as long as `v`.
    unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>()) }
}

/// Walks a packet front to back, handing out disjoint mutable views of its headers (so an IPv4
/// header and the transport header behind it can be borrowed at once, as the datapath does).
pub struct Cursor<'a>(&'a mut [u8]);

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a mut [u8]) -> Self {
        Self(bytes)
    }

    /// Steps over `n` bytes.
    pub fn skip(&mut self, n: usize) {
        let (_, tail) = core::mem::take(&mut self.0).split_at_mut(n);
        self.0 = tail;
    }

    /// Views the next `size_of::<T>()` bytes as a `T` and steps over them. Panics when the
    /// packet is shorter.
    pub fn take<T: Plain>(&mut self) -> &'a mut T {
        assert_eq!(core::mem::align_of::<T>(), 1);
        let (head, tail) = core::mem::take(&mut self.0).split_at_mut(core::mem::size_of::<T>());
        self.0 = tail;
        // SAFETY: `head` is exactly `size_of::<T>()` bytes, exclusively borrowed for 'a and
        // never handed out again (the cursor moved past it); `T: Plain` has alignment 1 (checked
        // above) and accepts any bit pattern, so the cast yields a valid, aligned, unaliased
        // `&mut T`.
        unsafe { &mut *head.as_mut_ptr().cast::<T>() }
    }
}

// ---- A random IPv4 datagram, serialised by etherparse. ----

#[derive(Clone, Debug)]
pub struct Ipv4Params {
    pub dscp: u8,
    pub ecn: u8,
    pub id: u16,
    pub df: bool,
    pub ttl: u8,
    /// Raw option bytes, a multiple of 4 long (at most 40): `ihl = 5 + len / 4`.
    pub options: Vec<u8>,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Params {
    /// The header; etherparse's builder fills in total length, protocol and checksum.
    pub fn header(&self) -> Ipv4Header {
        Ipv4Header {
            dscp: IpDscp::try_new(self.dscp).expect("dscp < 64"),
            ecn: IpEcn::try_new(self.ecn).expect("ecn < 4"),
            identification: self.id,
            dont_fragment: self.df,
            time_to_live: self.ttl,
            source: self.src,
            destination: self.dst,
            options: Ipv4Options::try_from(self.options.as_slice()).expect("options length"),
            ..Default::default()
        }
    }

    pub fn header_len(&self) -> usize {
        20 + self.options.len()
    }
}

#[derive(Clone, Debug)]
pub enum L4Params {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        window: u16,
        urgent: u16,
        /// fin, syn, rst, psh, ack, urg, ece, cwr from bit 0 up.
        flags: u8,
        /// Raw option bytes, a multiple of 4 long (at most 40).
        options: Vec<u8>,
    },
    Udp {
        sport: u16,
        dport: u16,
        /// Sent with checksum 0, "none" (RFC 768).
        unchecked: bool,
    },
}

#[derive(Clone, Debug)]
pub struct Datagram {
    pub ip: Ipv4Params,
    pub l4: L4Params,
    pub payload: Vec<u8>,
}

/// The Ethernet header in front of every frame the tests build.
pub const ETH: Ethernet2Header = Ethernet2Header {
    source: [0x02, 0, 0, 0, 0, 1],
    destination: [0x02, 0, 0, 0, 0, 2],
    ether_type: EtherType::IPV4,
};

impl Datagram {
    /// The IPv4 datagram, every length and checksum computed by etherparse (a UDP datagram
    /// marked `unchecked` then has its checksum zeroed).
    pub fn to_bytes(&self) -> Vec<u8> {
        let ip = PacketBuilder::ip(IpHeaders::Ipv4(self.ip.header(), Default::default()));
        let mut out = Vec::new();
        match &self.l4 {
            L4Params::Tcp {
                sport,
                dport,
                seq,
                ack,
                window,
                urgent,
                flags,
                options,
            } => {
                let bit = |n: u8| flags & (1 << n) != 0;
                let mut tcp = TcpHeader::new(*sport, *dport, *seq, *window);
                tcp.acknowledgment_number = *ack;
                tcp.urgent_pointer = *urgent;
                (tcp.fin, tcp.syn, tcp.rst, tcp.psh) = (bit(0), bit(1), bit(2), bit(3));
                (tcp.ack, tcp.urg, tcp.ece, tcp.cwr) = (bit(4), bit(5), bit(6), bit(7));
                tcp.set_options_raw(options).expect("tcp options length");
                ip.tcp_header(tcp)
                    .write(&mut out, &self.payload)
                    .expect("tcp datagram");
            }
            L4Params::Udp {
                sport,
                dport,
                unchecked,
            } => {
                ip.udp(*sport, *dport)
                    .write(&mut out, &self.payload)
                    .expect("udp datagram");
                if *unchecked {
                    let at = self.ip.header_len() + 6;
                    out[at..at + 2].fill(0);
                }
            }
        }
        out
    }

    /// The datagram behind an Ethernet header.
    pub fn frame(&self) -> Vec<u8> {
        let mut out = ETH.to_bytes().to_vec();
        out.extend_from_slice(&self.to_bytes());
        out
    }

    pub fn is_tcp(&self) -> bool {
        matches!(self.l4, L4Params::Tcp { .. })
    }

    /// Length of the transport header (TCP options included).
    pub fn l4_header_len(&self) -> usize {
        match &self.l4 {
            L4Params::Tcp { options, .. } => 20 + options.len(),
            L4Params::Udp { .. } => 8,
        }
    }

    pub fn addr(&self, side: Side) -> [u8; 4] {
        match side {
            Side::Src => self.ip.src,
            Side::Dst => self.ip.dst,
        }
    }

    pub fn port(&self, side: Side) -> [u8; 2] {
        let (L4Params::Tcp { sport, dport, .. } | L4Params::Udp { sport, dport, .. }) = &self.l4;
        match side {
            Side::Src => sport.to_be_bytes(),
            Side::Dst => dport.to_be_bytes(),
        }
    }

    /// The same datagram with the address on `side` replaced.
    pub fn with_addr(&self, side: Side, addr: [u8; 4]) -> Self {
        let mut out = self.clone();
        match side {
            Side::Src => out.ip.src = addr,
            Side::Dst => out.ip.dst = addr,
        }
        out
    }

    /// The same datagram with the port on `side` replaced (if `port` is given).
    pub fn with_port(&self, side: Side, port: Option<[u8; 2]>) -> Self {
        let mut out = self.clone();
        if let Some(port) = port {
            let (L4Params::Tcp { sport, dport, .. } | L4Params::Udp { sport, dport, .. }) =
                &mut out.l4;
            match side {
                Side::Src => *sport = u16::from_be_bytes(port),
                Side::Dst => *dport = u16::from_be_bytes(port),
            }
        }
        out
    }

    /// What a NAT translation of this datagram must produce.
    pub fn translated(&self, t: &Translation) -> Self {
        self.with_addr(t.side, t.addr).with_port(t.side, t.port)
    }

    /// The same datagram with the address on `side` chosen as `[hi, hi, x, x]` such that the
    /// full transport checksum is one's-complement zero (a raw sum of `0xffff`): TCP then
    /// sends `0x0000` and UDP `0xffff`. A UDP datagram becomes a checked one.
    pub fn with_zero_l4_checksum(&self, side: Side, hi: [u8; 2]) -> Self {
        let mut out = self.with_addr(side, [hi[0], hi[1], 0, 0]);
        if let L4Params::Udp { unchecked, .. } = &mut out.l4 {
            *unchecked = false;
        }
        // The sum without the low word is in 1..=0xffff (the pseudo-header's protocol is not
        // 0), so the low word `0xffff - sum` brings it to exactly 0xffff without a carry.
        let lo = (0xffff - l4_sum(&out.to_bytes())).to_be_bytes();
        let out = out.with_addr(side, [hi[0], hi[1], lo[0], lo[1]]);
        assert_eq!(
            l4_sum(&out.to_bytes()),
            0xffff,
            "zero-checksum construction"
        );
        out
    }
}

/// One NAT translation: the address (and optionally the port) on one side.
#[derive(Clone, Copy, Debug)]
pub struct Translation {
    pub side: Side,
    pub addr: [u8; 4],
    pub port: Option<[u8; 2]>,
}

/// An ICMP "fragmentation needed" carrying `quote` (IPv4 header first), behind an Ethernet
/// header; etherparse computes every length and checksum.
pub fn icmp_frag_needed_frame(outer: &Ipv4Params, mtu: u16, quote: &[u8]) -> Vec<u8> {
    let mut out = ETH.to_bytes().to_vec();
    PacketBuilder::ip(IpHeaders::Ipv4(outer.header(), Default::default()))
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ))
        .write(&mut out, quote)
        .expect("icmp frame");
    out
}

/// Fails the test case, showing the differing bytes, unless `got == want`.
pub fn bytes_eq(what: &str, got: &[u8], want: &[u8]) -> Result<(), TestCaseError> {
    match lb_testkit::hexdiff::diff(want, got) {
        None => Ok(()),
        Some(diff) => Err(TestCaseError::fail(format!("{what}: bytes differ\n{diff}"))),
    }
}

// ---- Strategies. ----

pub fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Src), Just(Side::Dst)]
}

/// Option bytes, a multiple of 4 long; none half the time.
fn options() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        (1..=10usize).prop_flat_map(|w| vec(any::<u8>(), 4 * w))
    ]
}

pub fn ipv4_params(ttl: impl Strategy<Value = u8>) -> impl Strategy<Value = Ipv4Params> {
    (
        0..64u8,
        0..4u8,
        any::<u16>(),
        any::<bool>(),
        ttl,
        options(),
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
    )
        .prop_map(|(dscp, ecn, id, df, ttl, options, src, dst)| Ipv4Params {
            dscp,
            ecn,
            id,
            df,
            ttl,
            options,
            src,
            dst,
        })
}

pub fn tcp_params() -> impl Strategy<Value = L4Params> {
    (
        (any::<u16>(), any::<u16>(), any::<u32>(), any::<u32>()),
        (any::<u16>(), any::<u16>(), any::<u8>(), options()),
    )
        .prop_map(
            |((sport, dport, seq, ack), (window, urgent, flags, options))| L4Params::Tcp {
                sport,
                dport,
                seq,
                ack,
                window,
                urgent,
                flags,
                options,
            },
        )
}

/// UDP whose checksum is left out ("none") when `unchecked` says so.
pub fn udp_params_with(unchecked: impl Strategy<Value = bool>) -> impl Strategy<Value = L4Params> {
    (any::<u16>(), any::<u16>(), unchecked).prop_map(|(sport, dport, unchecked)| L4Params::Udp {
        sport,
        dport,
        unchecked,
    })
}

/// UDP, without a checksum a quarter of the time.
pub fn udp_params() -> impl Strategy<Value = L4Params> {
    udp_params_with(prop::bool::weighted(0.25))
}

pub fn datagram_with(
    ttl: impl Strategy<Value = u8>,
    l4: impl Strategy<Value = L4Params>,
) -> impl Strategy<Value = Datagram> {
    (ipv4_params(ttl), l4, vec(any::<u8>(), 0..100)).prop_map(|(ip, l4, payload)| Datagram {
        ip,
        l4,
        payload,
    })
}

/// A TCP or UDP datagram with any TTL.
pub fn datagram() -> impl Strategy<Value = Datagram> {
    datagram_with(any::<u8>(), prop_oneof![tcp_params(), udp_params()])
}

/// A translation to a random address and port, now and then to all-zero or all-one ones (the
/// words whose complements are the one's-complement edge cases).
pub fn translation() -> impl Strategy<Value = Translation> {
    let addr = prop_oneof![6 => any::<[u8; 4]>(), 1 => Just([0; 4]), 1 => Just([0xff; 4])];
    let port = prop_oneof![6 => any::<[u8; 2]>(), 1 => Just([0; 2]), 1 => Just([0xff; 2])];
    (side(), addr, proptest::option::of(port)).prop_map(|(side, addr, port)| Translation {
        side,
        addr,
        port,
    })
}
