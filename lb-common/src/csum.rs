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
