//! Fragment tracking (`LB_FRAGS`, `LB_FRAGS6`), as Cilium does it: a datagram's first fragment
//! carries the ports, goes through the datapath like any packet, and records where it went
//! under the datagram's (source, destination, protocol, identification); later fragments carry
//! no ports and follow that record. One LRU per family shared by all CPUs, since receive
//! hashing may put a datagram's fragments on different CPUs.

use aya_ebpf::bindings::BPF_ANY;
use lb_common::{
    Counter,
    maps::{FRAG_F_PASS, FragValue},
};

use crate::{family::Family, parse::Datagram, stats::count};

/// Records where datagram `d` (header `ip`, a first fragment) went: `addr` for later
/// fragments to write, `path` and the VIP's rank `vip_rank` to count them under.
#[inline(always)]
pub fn track<F: Family>(
    ip: &F::Hdr,
    d: &Datagram,
    dir: u8,
    addr: F::Addr,
    vip_rank: u8,
    path: u32,
) {
    insert::<F>(
        ip,
        d,
        dir,
        FragValue {
            addr,
            path,
            flags: 0,
            vip_rank,
            _pad: [0; 2],
        },
    );
}

/// Records that datagram `d` (a first fragment) is not ours: its later fragments pass
/// untouched too.
#[inline(always)]
pub fn pass<F: Family>(ip: &F::Hdr, d: &Datagram, dir: u8) {
    let value = FragValue {
        flags: FRAG_F_PASS,
        ..FragValue::default()
    };
    insert::<F>(ip, d, dir, value);
}

#[inline(always)]
fn insert<F: Family>(ip: &F::Hdr, d: &Datagram, dir: u8, value: FragValue<F::Addr>) {
    insert_inline::<F>(ip, d, dir, &value);
}

#[inline(always)]
fn insert_inline<F: Family>(ip: &F::Hdr, d: &Datagram, dir: u8, value: &FragValue<F::Addr>) {
    if F::frags()
        .insert(F::frag_key(ip, d, dir), value, u64::from(BPF_ANY))
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
pub fn follow<F: Family>(
    ip: &F::Hdr,
    d: &Datagram,
    dir: u8,
) -> Result<Option<FragValue<F::Addr>>, Counter> {
    let Some(v) = F::frags().get_ptr(F::frag_key(ip, d, dir)) else {
        return Ok(None);
    };
    // SAFETY: an LRU hash map value, read once while the program runs.
    let v = unsafe { *v };
    if v.flags & FRAG_F_PASS != 0 {
        return Err(Counter::PassNotForUs);
    }
    Ok(Some(v))
}
