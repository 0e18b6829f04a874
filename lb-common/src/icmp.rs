//! The ICMP "fragmentation needed" (RFC 1191) and ICMPv6 "packet too big" (RFC 8201) the
//! datapath sends when a packet does not fit the egress MTU and may not be fragmented (IPv6:
//! never). It quotes the packet untranslated, as the sender sent it, so the sender's stack
//! finds its socket: PMTU discovery works through the NAT.

use crate::{
    csum,
    net::{
        ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMP_HDR_LEN, ICMP6_PACKET_TOO_BIG, IPPROTO_ICMP,
        IPPROTO_ICMPV6, IPV4_HDR_LEN, IPV6_HDR_LEN, IcmpHdr, Ipv4Hdr, Ipv6Hdr,
    },
};

/// Bytes of the offending datagram's payload quoted after its header (RFC 792's minimum).
pub const QUOTE_PAYLOAD: usize = 8;
/// Bytes the reply adds in front of the quoted datagram.
pub const TOO_BIG_OVERHEAD: usize = IPV4_HDR_LEN + ICMP_HDR_LEN;
/// TTL of the replies lb originates.
pub const REPLY_TTL: u8 = 64;

/// The IPv4 and ICMP headers of a "fragmentation needed" answering a datagram from `src` to
/// `dst` (sent from `dst` back to `src`) that quotes `quote_len` bytes of it, announcing `mtu`.
///
/// The IPv4 checksum is complete. The ICMP checksum covers only the ICMP header: the caller
/// adds the quoted bytes with [`icmp_checksum_add`].
pub fn too_big_headers(src: [u8; 4], dst: [u8; 4], quote_len: u16, mtu: u16) -> (Ipv4Hdr, IcmpHdr) {
    let [m0, m1] = mtu.to_be_bytes();
    let icmp = IcmpHdr {
        ty: ICMP_DEST_UNREACH,
        code: ICMP_FRAG_NEEDED,
        check: [0; 2],
        rest: [0, 0, m0, m1],
    };
    let tot_len = (TOO_BIG_OVERHEAD as u16).wrapping_add(quote_len);
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        // Internetwork control, as routers send their ICMP errors.
        tos: 0xc0,
        tot_len: tot_len.to_be_bytes(),
        id: [0; 2],
        frag: [0; 2],
        ttl: REPLY_TTL,
        proto: IPPROTO_ICMP,
        check: [0; 2],
        src: dst,
        dst: src,
    };
    ip.check = ipv4_header_checksum(&ip);
    let mut icmp = icmp;
    icmp.check = (!csum::fold(icmp_words(&icmp))).to_be_bytes();
    (ip, icmp)
}

fn icmp_words(h: &IcmpHdr) -> u32 {
    let [r0, r1, r2, r3] = h.rest;
    u32::from(u16::from_be_bytes([h.ty, h.code]))
        + u32::from(u16::from_be_bytes(h.check))
        + u32::from(u16::from_be_bytes([r0, r1]))
        + u32::from(u16::from_be_bytes([r2, r3]))
}

/// The checksum of an option-less IPv4 header (its `check` field is ignored).
pub fn ipv4_header_checksum(ip: &Ipv4Hdr) -> [u8; 2] {
    let [t0, t1] = ip.tot_len;
    let [s0, s1, s2, s3] = ip.src;
    let [d0, d1, d2, d3] = ip.dst;
    let sum = u32::from(u16::from_be_bytes([ip.version_ihl, ip.tos]))
        + u32::from(u16::from_be_bytes([t0, t1]))
        + u32::from(u16::from_be_bytes(ip.id))
        + u32::from(u16::from_be_bytes(ip.frag))
        + u32::from(u16::from_be_bytes([ip.ttl, ip.proto]))
        + u32::from(u16::from_be_bytes([s0, s1]))
        + u32::from(u16::from_be_bytes([s2, s3]))
        + u32::from(u16::from_be_bytes([d0, d1]))
        + u32::from(u16::from_be_bytes([d2, d3]));
    (!csum::fold(sum)).to_be_bytes()
}

/// Bytes of the invoking packet a Packet Too Big quotes: as much as keeps the message within the
/// minimum IPv6 MTU (RFC 4443 §3.2), 1280 − 40 − 8. A packet too big for an IPv6 link is
/// longer than that, so the quote is always this long.
pub const PTB6_QUOTE: usize = 1232;
/// Bytes the Packet Too Big adds in front of the quote.
pub const PTB6_OVERHEAD: usize = IPV6_HDR_LEN + ICMP_HDR_LEN;

/// The IPv6 and ICMPv6 headers of a Packet Too Big answering a packet from `src` to `dst` (sent
/// from `dst` back to `src`), quoting [`PTB6_QUOTE`] bytes of it, announcing `mtu`.
///
/// The ICMPv6 checksum covers the pseudo-header and the ICMPv6 header: the caller adds the
/// quoted bytes with [`icmp_checksum_add`].
pub fn ptb6_headers(src: [u8; 16], dst: [u8; 16], mtu: u32) -> (Ipv6Hdr, IcmpHdr) {
    let len = (ICMP_HDR_LEN + PTB6_QUOTE) as u16;
    let ip = Ipv6Hdr {
        // Version 6, traffic class 0, flow label 0.
        vtc_flow: [0x60, 0, 0, 0],
        payload_len: len.to_be_bytes(),
        next_hdr: IPPROTO_ICMPV6,
        hop_limit: REPLY_TTL,
        src: dst,
        dst: src,
    };
    let mut icmp = IcmpHdr {
        ty: ICMP6_PACKET_TOO_BIG,
        code: 0,
        check: [0; 2],
        rest: mtu.to_be_bytes(),
    };
    // Pseudo-header (RFC 8200 §8.1): source, destination, upper-layer length, next header.
    let pseudo =
        csum::sum128(&ip.src) + csum::sum128(&ip.dst) + u32::from(len) + u32::from(IPPROTO_ICMPV6);
    icmp.check = (!csum::fold(pseudo + icmp_words(&icmp))).to_be_bytes();
    (ip, icmp)
}

/// Adds one 32-bit word of covered data to an ICMP checksum.
#[inline(always)]
pub fn icmp_checksum_add(check: [u8; 2], word: [u8; 4]) -> [u8; 2] {
    let [w0, w1, w2, w3] = word;
    let sum = u32::from(!u16::from_be_bytes(check))
        + u32::from(u16::from_be_bytes([w0, w1]))
        + u32::from(u16::from_be_bytes([w2, w3]));
    (!csum::fold(sum)).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_checksum_with_the_quote() {
        let quote = [
            0x45u8, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 198, 51, 100, 10, 203, 0, 113, 10, 1, 2,
            3, 4, 5, 6, 7, 8,
        ];
        let (ip, mut icmp) = too_big_headers(
            [198, 51, 100, 10],
            [203, 0, 113, 10],
            quote.len() as u16,
            1400,
        );
        assert_eq!(ip.src, [203, 0, 113, 10]);
        assert_eq!(ip.dst, [198, 51, 100, 10]);
        assert_eq!(u16::from_be_bytes(ip.tot_len), 20 + 8 + 28);
        // The header verifies: its words, checksum included, sum to 0xffff.
        let mut hdr = [0u8; 20];
        // SAFETY: Ipv4Hdr is 20 bytes of plain byte fields.
        hdr.copy_from_slice(unsafe {
            core::slice::from_raw_parts((&ip as *const Ipv4Hdr).cast::<u8>(), 20)
        });
        assert_eq!(csum::fold(csum::sum_words(0, &hdr)), 0xffff);
        for w in quote.chunks_exact(4) {
            icmp.check = icmp_checksum_add(icmp.check, [w[0], w[1], w[2], w[3]]);
        }
        let mut msg = [0u8; 36];
        msg[..4].copy_from_slice(&[icmp.ty, icmp.code, icmp.check[0], icmp.check[1]]);
        msg[4..8].copy_from_slice(&icmp.rest);
        msg[8..].copy_from_slice(&quote);
        assert_eq!(csum::fold(csum::sum_words(0, &msg)), 0xffff);
        assert_eq!(icmp.rest, [0, 0, 0x05, 0x78]);
    }

    #[test]
    fn packet_too_big_checksums_with_the_quote() {
        let client = [
            0x20, 1, 0x0d, 0xb8, 0, 0x51, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let vip = [
            0x20, 1, 0x0d, 0xb8, 0, 0x71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut quote = [0u8; PTB6_QUOTE];
        for (i, b) in quote.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        let (ip, mut icmp) = ptb6_headers(client, vip, 1280);
        assert_eq!((ip.src, ip.dst), (vip, client));
        assert_eq!(u16::from_be_bytes(ip.payload_len), 1240);
        assert_eq!((ip.next_hdr, ip.version()), (IPPROTO_ICMPV6, 6));
        for w in quote.chunks_exact(4) {
            icmp.check = icmp_checksum_add(icmp.check, [w[0], w[1], w[2], w[3]]);
        }
        // An independent sum: pseudo-header, then the whole message.
        let mut pseudo = [0u8; 40];
        pseudo[..16].copy_from_slice(&ip.src);
        pseudo[16..32].copy_from_slice(&ip.dst);
        pseudo[32..36].copy_from_slice(&1240u32.to_be_bytes());
        pseudo[39] = IPPROTO_ICMPV6;
        let mut msg = [0u8; 8 + PTB6_QUOTE];
        msg[..4].copy_from_slice(&[icmp.ty, icmp.code, icmp.check[0], icmp.check[1]]);
        msg[4..8].copy_from_slice(&icmp.rest);
        msg[8..].copy_from_slice(&quote);
        let sum = csum::sum_words(csum::sum_words(0, &pseudo), &msg);
        assert_eq!(csum::fold(sum), 0xffff);
        assert_eq!(icmp.rest, 1280u32.to_be_bytes());
    }
}
