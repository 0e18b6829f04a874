//! Exceptions (flows that must not follow their target's current decision, pinned by the
//! datapath in `LB_FLOWS` and `LB_OUTBOUND`): their expiry, and the per-target bound that lets
//! the datapath stop consulting the tables once a target has none left (`docs/DATAPATH.md`,
//! "Stateless by default"). [`expired`] is the pure rule; [`sweep`] applies it to the maps.

use std::collections::BTreeMap;

use lb_common::{
    maps::{FLOW_F_CLOSING, FLOW_F_REPLIED, FlowKey, FlowValue},
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    config::Flows,
    datapath::{Error, maps::Maps},
};

/// Whether exception `v` of flow `key` has expired at `now_ns` (the datapath's clock,
/// `CLOCK_MONOTONIC_COARSE`): closing TCP after `tcp_closing`, unanswered TCP after
/// `unreplied`, other TCP after `tcp_idle`, UDP after `udp_idle`, ICMP after `icmp_idle`, all
/// counted from the last packet seen (refreshed at most once a second).
pub fn expired(key: &FlowKey, v: &FlowValue, now_ns: u64, t: &Flows) -> bool {
    let idle = match key.proto {
        IPPROTO_TCP if v.flags & FLOW_F_CLOSING != 0 => t.tcp_closing,
        IPPROTO_TCP if v.flags & FLOW_F_REPLIED == 0 => t.unreplied,
        IPPROTO_TCP => t.tcp_idle,
        IPPROTO_UDP => t.udp_idle,
        IPPROTO_ICMP => t.icmp_idle,
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

/// Sweeps both exception tables: removes what [`expired`] says, exceptions that
/// `redundant(target, key, value)` says the decision rules give anyway, and those whose VIP
/// (`vip_target`: VIP id → target id) is gone. `targets` are the targets in use.
pub fn sweep(
    maps: &mut Maps,
    targets: impl IntoIterator<Item = u32>,
    vip_target: impl Fn(u32) -> Option<u32>,
    redundant: impl Fn(u32, &FlowKey, &FlowValue) -> bool,
    now_ns: u64,
    timeouts: &Flows,
) -> Result<Swept, Error> {
    let mut before = BTreeMap::new();
    for id in targets {
        before.insert(id, maps.exc_seq(id)?);
    }
    let mut out = Swept::default();
    for outbound in [false, true] {
        let entries = if outbound {
            maps.outbound(usize::MAX)?
        } else {
            maps.flows(usize::MAX)?
        };
        for (key, value) in entries {
            let keep = vip_target(value.vip).filter(|t| {
                !expired(&key, &value, now_ns, timeouts) && !redundant(*t, &key, &value)
            });
            match keep {
                Some(t) => *out.left.entry(t).or_default() += 1,
                None => {
                    maps.remove_exception(outbound, &key)?;
                    out.removed += 1;
                }
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
