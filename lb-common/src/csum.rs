//! Internet checksum arithmetic (RFC 1071) with incremental updates (RFC 1624).
//!
//! XDP has no `l3_csum_replace`/`l4_csum_replace`, so every rewrite patches the checksums with
//! `HC' = ~(~HC + ~m + m')` (RFC 1624, eqn. 3). The same functions run in the datapath and in
//! the host tests, which check them against a full recomputation.

/// Folds a 32-bit one's-complement accumulator into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Updates checksum `check` for one 16-bit word of the covered data changing from `old` to `new`.
#[inline(always)]
pub fn replace16(check: [u8; 2], old: [u8; 2], new: [u8; 2]) -> [u8; 2] {
    let sum = u32::from(!u16::from_be_bytes(check))
        + u32::from(!u16::from_be_bytes(old))
        + u32::from(u16::from_be_bytes(new));
    (!fold(sum)).to_be_bytes()
}

/// Updates checksum `check` for a 32-bit field (an IPv4 address) changing from `old` to `new`.
#[inline(always)]
pub fn replace32(check: [u8; 2], old: [u8; 4], new: [u8; 4]) -> [u8; 2] {
    let [o0, o1, o2, o3] = old;
    let [n0, n1, n2, n3] = new;
    let sum = u32::from(!u16::from_be_bytes(check))
        + u32::from(!u16::from_be_bytes([o0, o1]))
        + u32::from(!u16::from_be_bytes([o2, o3]))
        + u32::from(u16::from_be_bytes([n0, n1]))
        + u32::from(u16::from_be_bytes([n2, n3]));
    (!fold(sum)).to_be_bytes()
}

/// Updates checksum `check` for a 128-bit field (an IPv6 address in a pseudo-header) changing
/// from `old` to `new`: eqn. 3 over its eight words (17 terms below 2^21: two folds).
#[inline(always)]
pub fn replace128(check: [u8; 2], old: [u8; 16], new: [u8; 16]) -> [u8; 2] {
    let sum = u32::from(!u16::from_be_bytes(check)) + diff128(&old, &new, u16::from_be_bytes);
    (!fold(sum)).to_be_bytes()
}

/// `Σ ~old_i + Σ new_i` over the eight 16-bit words of two 16-byte fields, each word read by
/// `word` (big-endian for [`replace128`]; native for a diff handed to the kernel's checksum
/// helpers, which sum the bytes as they lie in memory). Below 2^20.
#[inline(always)]
pub fn diff128(old: &[u8; 16], new: &[u8; 16], word: fn([u8; 2]) -> u16) -> u32 {
    let [
        o0,
        o1,
        o2,
        o3,
        o4,
        o5,
        o6,
        o7,
        o8,
        o9,
        o10,
        o11,
        o12,
        o13,
        o14,
        o15,
    ] = *old;
    let [
        n0,
        n1,
        n2,
        n3,
        n4,
        n5,
        n6,
        n7,
        n8,
        n9,
        n10,
        n11,
        n12,
        n13,
        n14,
        n15,
    ] = *new;
    let pairs = [
        ([o0, o1], [n0, n1]),
        ([o2, o3], [n2, n3]),
        ([o4, o5], [n4, n5]),
        ([o6, o7], [n6, n7]),
        ([o8, o9], [n8, n9]),
        ([o10, o11], [n10, n11]),
        ([o12, o13], [n12, n13]),
        ([o14, o15], [n14, n15]),
    ];
    let mut sum = 0u32;
    for (o, n) in pairs {
        sum += u32::from(!word(o)) + u32::from(word(n));
    }
    sum
}

/// The sum of the eight big-endian 16-bit words of a 16-byte field (an IPv6 address in a
/// pseudo-header). Below 2^19.
#[inline(always)]
pub fn sum128(a: &[u8; 16]) -> u32 {
    // `!0xffff` is 0: the old words add nothing.
    diff128(&[0xff; 16], a, u16::from_be_bytes)
}

/// The one's-complement sum of `data` as 16-bit big-endian words (an odd last byte is padded
/// with zero), added to `initial`. Host side only: the datapath never walks a payload.
pub fn sum_words(initial: u32, data: &[u8]) -> u32 {
    let mut sum = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for w in &mut chunks {
        if let [a, b] = w {
            sum += u64::from(u16::from_be_bytes([*a, *b]));
        }
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff_ffff {
        sum = (sum & 0xffff_ffff) + (sum >> 32);
    }
    sum as u32
}

/// The Internet checksum of `data` with `initial` already accumulated (for a pseudo-header).
pub fn checksum(initial: u32, data: &[u8]) -> [u8; 2] {
    (!fold(sum_words(initial, data))).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(0, &data)), 0xddf2);
        assert_eq!(checksum(0, &data), (!0xddf2u16).to_be_bytes());
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum_words(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn replace128_matches_recompute() {
        // An IPv6 pseudo-header sum and a TCP header, then the destination changed.
        let src = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let dst = [
            0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0xab, 0xcd,
        ];
        let new = [
            0x20, 0x01, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0, 0x70,
        ];
        let l4 = [
            0x9c, 0x40, 0, 80, 1, 2, 3, 4, 5, 6, 7, 8, 0x50, 0x10, 0xff, 0xff,
        ];
        let sum = |dst: &[u8; 16]| {
            let mut pseudo = [0u8; 40];
            pseudo[..16].copy_from_slice(&src);
            pseudo[16..32].copy_from_slice(dst);
            pseudo[35] = l4.len() as u8;
            pseudo[39] = 6;
            checksum(sum_words(0, &pseudo), &l4)
        };
        assert_eq!(replace128(sum(&dst), dst, new), sum(&new));
        // The native-order diff folds to the byte-swapped big-endian one.
        let be = fold(diff128(&dst, &new, u16::from_be_bytes));
        let ne = fold(diff128(&dst, &new, u16::from_ne_bytes));
        assert_eq!(ne, u16::from_ne_bytes(be.to_be_bytes()));
    }

    #[test]
    fn replace_matches_recompute_on_a_fixed_header() {
        // A real IPv4 header (checksum 0xb861), then its destination changed.
        let mut hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        let mut zeroed = hdr;
        zeroed[10] = 0;
        zeroed[11] = 0;
        assert_eq!(checksum(0, &zeroed), [0xb8, 0x61]);

        let new = [203, 0, 113, 10];
        let updated = replace32([hdr[10], hdr[11]], [0xc0, 0xa8, 0x00, 0xc7], new);
        hdr[16..20].copy_from_slice(&new);
        hdr[10] = 0;
        hdr[11] = 0;
        assert_eq!(updated, checksum(0, &hdr));
    }
}
