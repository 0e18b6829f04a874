//! Exceptions (flows that must not follow their target's current decision, pinned by the
//! datapath in `LB_FLOWS` and `LB_OUTBOUND`, and for IPv6 flows in `LB_FLOWS6` and
//! `LB_OUTBOUND6`): their expiry, and the per-target bound that lets the datapath stop
//! consulting the tables once a target has none left (`docs/DATAPATH.md`, "Stateless by
//! default"). [`expired`] is the pure rule; [`sweep_all`] applies it to the maps.

use std::collections::BTreeMap;

use lb_common::{
    maps::{FLOW_F_CLOSING, FLOW_F_REPLIED, FlowKey, FlowKey6, FlowValue},
    net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    config::Flows,
    datapath::{Error, maps::Maps},
};

/// Whether exception `v` of flow `key` has expired at `now_ns` (the datapath's clock,
/// `CLOCK_MONOTONIC_COARSE`): closing TCP after `tcp_closing`, unanswered TCP after
/// `unreplied`, other TCP after `tcp_idle`, UDP after `udp_idle`, ICMP (and ICMPv6) after
/// `icmp_idle`, all counted from the last packet seen (refreshed at most once a second). The
/// same rule for flows of both families.
pub fn expired<A>(key: &FlowKey<A>, v: &FlowValue, now_ns: u64, t: &Flows) -> bool {
    let idle = match key.proto {
        IPPROTO_TCP if v.flags & FLOW_F_CLOSING != 0 => t.tcp_closing,
        IPPROTO_TCP if v.flags & FLOW_F_REPLIED == 0 => t.unreplied,
        IPPROTO_TCP => t.tcp_idle,
        IPPROTO_UDP => t.udp_idle,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => t.icmp_idle,
        _ => t.udp_idle,
    };
    now_ns.saturating_sub(v.seen_ns) >= idle.as_nanos() as u64
}

/// What a sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Exceptions removed: expired, redundant, or of a VIP that no longer exists.
    pub removed: usize,
    /// Exceptions left, by target id.
    pub left: BTreeMap<u32, usize>,
    /// For each target with none left: the `exc_clear` that stops the datapath consulting the
    /// tables for it (its pin count before the sweep began: a pin made during the sweep raises
    /// the count above it).
    pub clear: BTreeMap<u32, u64>,
}

/// [`sweep_all`] with no IPv6 exception taken for redundant (they still go when expired or of a
/// VIP that is gone): for callers that judge IPv4 flows only.
pub fn sweep(
    maps: &mut Maps,
    targets: impl IntoIterator<Item = u32>,
    vip_target: impl Fn(u32) -> Option<u32>,
    redundant: impl Fn(u32, &FlowKey, &FlowValue) -> bool,
    now_ns: u64,
    timeouts: &Flows,
) -> Result<Swept, Error> {
    sweep_all(
        maps,
        targets,
        vip_target,
        redundant,
        |_, _, _| false,
        now_ns,
        timeouts,
    )
}

/// Sweeps the four exception tables (client and VM pins, each family): removes what
/// [`expired`] says, exceptions that `redundant(target, key, value)` (`redundant6` for IPv6
/// flows) says the decision rules give anyway, and those whose VIP (`vip_target`: VIP id →
/// target id) is gone. `targets` are the targets in use. A target's exceptions of both
/// families count in [`Swept::left`]: the datapath's pin count (`LB_EXC_SEQ`) counts both, so
/// a target is stateless again only with none of either left.
pub fn sweep_all(
    maps: &mut Maps,
    targets: impl IntoIterator<Item = u32>,
    vip_target: impl Fn(u32) -> Option<u32>,
    redundant: impl Fn(u32, &FlowKey, &FlowValue) -> bool,
    redundant6: impl Fn(u32, &FlowKey6, &FlowValue) -> bool,
    now_ns: u64,
    timeouts: &Flows,
) -> Result<Swept, Error> {
    let mut before = BTreeMap::new();
    for id in targets {
        before.insert(id, maps.exc_seq(id)?);
    }
    let mut out = Swept::default();
    let mut judge = |key_expired: bool, vip: u32, redundant: &dyn Fn(u32) -> bool| {
        let keep = vip_target(vip).filter(|t| !key_expired && !redundant(*t));
        match keep {
            Some(t) => {
                *out.left.entry(t).or_default() += 1;
                false
            }
            None => {
                out.removed += 1;
                true
            }
        }
    };
    for outbound in [false, true] {
        let entries = if outbound {
            maps.outbound(usize::MAX)?
        } else {
            maps.flows(usize::MAX)?
        };
        for (key, value) in entries {
            let gone = judge(expired(&key, &value, now_ns, timeouts), value.vip, &|t| {
                redundant(t, &key, &value)
            });
            if gone {
                maps.remove_exception(outbound, &key)?;
            }
        }
        let entries = if outbound {
            maps.outbound6(usize::MAX)?
        } else {
            maps.flows6(usize::MAX)?
        };
        for (key, value) in entries {
            let gone = judge(expired(&key, &value, now_ns, timeouts), value.vip, &|t| {
                redundant6(t, &key, &value)
            });
            if gone {
                maps.remove_exception6(outbound, &key)?;
            }
        }
    }
    out.clear = before
        .into_iter()
        .filter(|(id, _)| !out.left.contains_key(id))
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use lb_common::maps::FLOW_F_FROM_PATH;

    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(proto: u8) -> FlowKey {
        FlowKey::new([198, 51, 100, 1], [203, 0, 113, 10], [0, 1], [0, 2], proto)
    }

    #[test]
    fn each_kind_expires_after_its_own_timeout() {
        let t = Flows::default();
        let seen = 1_000 * S;
        let replied = FlowValue::new(1, 1, FLOW_F_REPLIED, seen);
        let cases = [
            (IPPROTO_TCP, replied, t.tcp_idle),
            (
                IPPROTO_TCP,
                FlowValue::new(1, 1, FLOW_F_REPLIED | FLOW_F_CLOSING, seen),
                t.tcp_closing,
            ),
            // Closing wins over unreplied (an RST to a bogus pin).
            (
                IPPROTO_TCP,
                FlowValue::new(1, 1, FLOW_F_CLOSING, seen),
                t.tcp_closing,
            ),
            (
                IPPROTO_TCP,
                FlowValue::new(1, 1, FLOW_F_FROM_PATH, seen),
                t.unreplied,
            ),
            (IPPROTO_UDP, FlowValue::new(1, 1, 0, seen), t.udp_idle),
            (IPPROTO_ICMP, FlowValue::new(1, 1, 0, seen), t.icmp_idle),
        ];
        for (proto, v, timeout) in cases {
            let ns = timeout.as_nanos() as u64;
            assert!(
                !expired(&key(proto), &v, seen + ns - 1, &t),
                "{proto} {v:?}"
            );
            assert!(expired(&key(proto), &v, seen + ns, &t), "{proto} {v:?}");
        }
    }

    #[test]
    fn ipv6_exceptions_expire_by_the_same_rule() {
        let t = Flows::default();
        let seen = 1_000 * S;
        let key6 = |proto| {
            FlowKey6::new(
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10],
                [0, 1],
                [0, 2],
                proto,
            )
        };
        for (proto, timeout) in [
            (IPPROTO_UDP, t.udp_idle),
            (IPPROTO_ICMPV6, t.icmp_idle),
            (IPPROTO_TCP, t.tcp_idle),
        ] {
            let v = FlowValue::new(1, 1, FLOW_F_REPLIED, seen);
            let ns = timeout.as_nanos() as u64;
            assert!(!expired(&key6(proto), &v, seen + ns - 1, &t), "{proto}");
            assert!(expired(&key6(proto), &v, seen + ns, &t), "{proto}");
        }
    }

    #[test]
    fn a_clock_behind_the_entry_never_expires_it() {
        let t = Flows::default();
        let v = FlowValue::new(1, 1, 0, 5 * S);
        assert!(!expired(&key(IPPROTO_UDP), &v, S, &t));
    }

    #[test]
    fn timeouts_follow_the_configuration() {
        let t = Flows {
            udp_idle: std::time::Duration::from_secs(3),
            ..Flows::default()
        };
        let v = FlowValue::new(1, 1, 0, 0);
        assert!(!expired(&key(IPPROTO_UDP), &v, 2 * S, &t));
        assert!(expired(&key(IPPROTO_UDP), &v, 3 * S, &t));
    }
}
