//! Fragment tracking (`LB_FRAGS`), as Cilium does it: a datagram's first fragment carries the
//! ports, goes through the datapath like any packet, and records where it went under the
//! datagram's (source, destination, protocol, identification); later fragments carry no ports
//! and follow that record. One LRU shared by all CPUs, since receive hashing may put a
//! datagram's fragments on different CPUs.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    Counter,
    maps::{FRAG_F_PASS, FragKey, FragValue},
    net::Ipv4Hdr,
};

use crate::{maps::LB_FRAGS, stats::count};

/// The tracking key of `ip`'s datagram in direction `dir` (`FRAG_DIR_*`).
#[inline(always)]
pub fn key(ip: &Ipv4Hdr, dir: u8) -> FragKey {
    FragKey {
        src: ip.src,
        dst: ip.dst,
        id: ip.id,
        proto: ip.proto,
        dir,
    }
}

/// Records where the datagram of first fragment `ip` went: `addr` for later fragments to
/// write, `path` and the VIP's rank `vip_rank` to count them under.
#[inline(always)]
pub fn track(ip: &Ipv4Hdr, dir: u8, addr: [u8; 4], vip_rank: u8, path: u32) {
    insert(
        ip,
        dir,
        FragValue {
            addr,
            path,
            vip_rank,
            ..FragValue::default()
        },
    );
}

/// Records that the datagram of first fragment `ip` is not ours: its later fragments pass
/// untouched too.
#[inline(always)]
pub fn pass(ip: &Ipv4Hdr, dir: u8) {
    insert(
        ip,
        dir,
        FragValue {
            flags: FRAG_F_PASS,
            ..FragValue::default()
        },
    );
}

#[inline(always)]
fn insert(ip: &Ipv4Hdr, dir: u8, value: FragValue) {
    if LB_FRAGS
        .insert(key(ip, dir), value, u64::from(BPF_ANY))
        .is_ok()
    {
        count(Counter::FragTracked);
    } else {
        count(Counter::FragInsertFailed);
    }
}

/// Where a later fragment goes: `Ok(None)` when its datagram was not tracked (its first
/// fragment not seen, or evicted); `Err(PassNotForUs)` when the datagram is not ours.
#[inline(always)]
pub fn follow(ip: &Ipv4Hdr, dir: u8) -> Result<Option<FragValue>, Counter> {
    let Some(v) = LB_FRAGS.get_ptr(key(ip, dir)) else {
        return Ok(None);
    };
    // SAFETY: an LRU hash map value, read once while the program runs.
    let v = unsafe { *v };
    if v.flags & FRAG_F_PASS != 0 {
        return Err(Counter::PassNotForUs);
    }
    Ok(Some(v))
}
