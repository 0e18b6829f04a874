//! Hashes shared by the datapath and the control plane: the flow hash that indexes a target's
//! consistent-hash table, and the slot of the address pre-filter.

use crate::maps::{ADDR_FILTER_BITS, Addr4, Addr6, FlowKey, RING_SIZE, addr6_words};

/// The murmur3 32-bit finaliser: cheap (two multiplies) and well mixed.
#[inline(always)]
pub const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

const FLOW_SEED: u32 = 0x6c62_5f31; // "lb_1"

/// An address the hashes take: IPv4 or IPv6, in network byte order.
pub trait HashAddr: Copy {
    /// Chains the address into hash state `h`: one [`mix32`] round per 32-bit word.
    fn mix_into(&self, h: u32) -> u32;
    /// The [`crate::maps::ADDR_FILTER`] index of the address.
    fn filter_slot(&self) -> u32;
}

impl HashAddr for Addr4 {
    #[inline(always)]
    fn mix_into(&self, h: u32) -> u32 {
        mix32(h ^ u32::from_be_bytes(*self))
    }
    #[inline(always)]
    fn filter_slot(&self) -> u32 {
        addr_slot(*self)
    }
}

impl HashAddr for Addr6 {
    #[inline(always)]
    fn mix_into(&self, h: u32) -> u32 {
        let [w0, w1, w2, w3] = addr6_words(self, u32::from_be_bytes);
        let mut h = mix32(h ^ w0);
        h = mix32(h ^ w1);
        h = mix32(h ^ w2);
        mix32(h ^ w3)
    }
    #[inline(always)]
    fn filter_slot(&self) -> u32 {
        addr_slot6(*self)
    }
}

/// The hash of a flow's 5-tuple: [`mix32`] chained over the seed, each address word (one for
/// IPv4, four for IPv6), the ports as one big-endian word, and the protocol.
#[inline(always)]
pub fn flow_hash<A: HashAddr>(key: &FlowKey<A>) -> u32 {
    let [s0, s1] = key.sport;
    let [d0, d1] = key.dport;
    let ports = u32::from_be_bytes([s0, s1, d0, d1]);
    let mut h = key.src.mix_into(FLOW_SEED);
    h = key.dst.mix_into(h);
    h = mix32(h ^ ports);
    mix32(h ^ u32::from(key.proto))
}

/// The slot of a target's consistent-hash table a flow lands in.
#[inline(always)]
pub fn ring_slot<A: HashAddr>(key: &FlowKey<A>) -> u32 {
    flow_hash(key) % RING_SIZE
}

/// The [`crate::maps::ADDR_FILTER`] index of an address (Fibonacci hashing).
#[inline(always)]
pub const fn addr_slot(addr: [u8; 4]) -> u32 {
    u32::from_be_bytes(addr).wrapping_mul(0x9e37_79b1) >> (32 - ADDR_FILTER_BITS)
}

/// [`addr_slot`] of an IPv6 address: its four words folded by exclusive or, then the same
/// Fibonacci hash. Both families share the filter: a slot's bits are a superset for both.
#[inline(always)]
pub fn addr_slot6(addr: Addr6) -> u32 {
    let [w0, w1, w2, w3] = addr6_words(&addr, u32::from_be_bytes);
    addr_slot((w0 ^ w1 ^ w2 ^ w3).to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::ADDR_FILTER_SIZE;

    #[test]
    fn addr_slot_is_in_range_and_spreads_neighbours() {
        let mut seen = [false; 256];
        for i in 0..=255u8 {
            let s = addr_slot([203, 0, 113, i]);
            assert!(s < ADDR_FILTER_SIZE);
            seen[(s >> 8) as usize] = true;
        }
        // 256 consecutive addresses land in many distinct coarse buckets, not a handful.
        assert!(seen.iter().filter(|s| **s).count() > 128);
    }

    /// Fixed vectors, computed once outside this code from the definition (the murmur3
    /// finaliser chained over seed ^ src, dst, sport:dport as one big-endian word, proto): the
    /// hash decides which path a flow of an active/active target takes, on every edge and
    /// across upgrades, so a change must be deliberate. The fixtures check the datapath
    /// against the same definition (`tests/tests/fixtures.rs`, `SPREAD_SLOTS`).
    #[test]
    fn flow_hash_and_ring_slot_vectors() {
        for (src, dst, sport, dport, proto, hash, slot) in [
            (
                [198, 51, 100, 1],
                [203, 0, 113, 10],
                12345u16,
                80u16,
                6u8,
                0x093b_6aca,
                4092,
            ),
            (
                [198, 51, 100, 7],
                [203, 0, 113, 10],
                53,
                53,
                17,
                0x8207_9a1a,
                3393,
            ),
            ([0, 0, 0, 0], [0, 0, 0, 0], 0, 0, 0, 0x9fe1_ca18, 1377),
            ([255; 4], [255; 4], 65535, 65535, 255, 0x72b2_adf5, 124),
            (
                [198, 51, 100, 10],
                [203, 0, 113, 20],
                41000,
                80,
                6,
                1_681_345_317,
                1101,
            ),
        ] {
            let key = FlowKey::new(src, dst, sport.to_be_bytes(), dport.to_be_bytes(), proto);
            assert_eq!(flow_hash(&key), hash, "{key:?}");
            assert_eq!(ring_slot(&key), slot, "{key:?}");
        }
    }

    /// IPv6 vectors, computed outside this code from the same definition (four address words
    /// each, chained): several edges must agree on an IPv6 flow's slot too.
    #[test]
    fn flow_hash6_and_addr_slot6_vectors() {
        let a = |s: &str| {
            s.parse::<core::net::Ipv6Addr>()
                .expect("an address")
                .octets()
        };
        for (src, dst, sport, dport, proto, hash, slot) in [
            (
                "2001:db8:51::1",
                "2001:db8:71::10",
                12345u16,
                80u16,
                6u8,
                0xc7ec_022d,
                3317,
            ),
            (
                "2001:db8:51::7",
                "2001:db8:71::10",
                53,
                53,
                17,
                0xc9e2_2a5d,
                1806,
            ),
            ("::", "::", 0, 0, 0, 0xd290_73ec, 60),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                65535,
                65535,
                255,
                0xeff6_3032,
                2681,
            ),
        ] {
            let key = crate::maps::FlowKey6::new(
                a(src),
                a(dst),
                sport.to_be_bytes(),
                dport.to_be_bytes(),
                proto,
            );
            assert_eq!(flow_hash(&key), hash, "{key:?}");
            assert_eq!(ring_slot(&key), slot, "{key:?}");
        }
        assert_eq!(addr_slot6(a("2001:db8:71::10")), 773);
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let base = FlowKey::new(
            [198, 51, 100, 1],
            [203, 0, 113, 10],
            [0x30, 0x39],
            [0, 80],
            6,
        );
        let h = flow_hash(&base);
        let variants = [
            FlowKey {
                src: [198, 51, 100, 2],
                ..base
            },
            FlowKey {
                dst: [203, 0, 113, 11],
                ..base
            },
            FlowKey {
                sport: [0x30, 0x3a],
                ..base
            },
            FlowKey {
                dport: [0, 81],
                ..base
            },
            FlowKey { proto: 17, ..base },
        ];
        for v in variants {
            assert_ne!(flow_hash(&v), h, "{v:?}");
        }
    }

    #[test]
    fn ring_slots_spread_evenly_over_source_ports() {
        let mut buckets = [0u32; 8];
        for port in 0..8192u16 {
            let k = FlowKey::new(
                [198, 51, 100, 7],
                [203, 0, 113, 10],
                port.to_be_bytes(),
                [0, 80],
                6,
            );
            let slot = ring_slot(&k);
            assert!(slot < RING_SIZE);
            buckets[(slot * 8 / RING_SIZE) as usize] += 1;
        }
        for b in buckets {
            assert!((900..1150).contains(&b), "{buckets:?}");
        }
    }
}
