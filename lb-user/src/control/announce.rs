//! Which VIP addresses this edge may announce: the rule, pure. The daemon keeps a host route per
//! announced address (the `announce` module); `lb status` shows the same rule's answer beside the
//! routes it finds.
//!
//! An address is **servable** when the datapath is attached on every client-facing interface
//! and every VIP on it whose state counts (`announce` not `false`) has a target with a decision
//! to send new flows somewhere: at least one path up, or `all_down: last-known` keeping the last
//! one. Of a target with paths of both families, the decision of the VIP's family counts. A route covers an address, not a service: an address whose services belong to several
//! targets is withdrawn when any of them cannot be served (the upstream then sends it to an
//! edge that serves them all). An address none of whose VIPs count is never announced.

use std::{collections::BTreeMap, net::IpAddr};

use crate::control::{model::Model, policy::Decision};

/// Why an address with counting VIPs is not announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Withdrawn {
    /// A client-facing interface has no program attached (gone, or not yet attached).
    NotAttached,
    /// These targets (of VIPs on the address) have no path to send new flows to.
    NoUsablePath(Vec<String>),
    /// These targets have just come back from having no usable path and settle first
    /// (`Model::settle`).
    Settling(Vec<String>),
}

impl std::fmt::Display for Withdrawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |f: &mut std::fmt::Formatter<'_>, what: &str, targets: &[String]| {
            let s = if targets.len() == 1 { "" } else { "s" };
            write!(f, "{what} target{s} {}", targets.join(", "))
        };
        match self {
            Withdrawn::NotAttached => {
                f.write_str("the datapath is not attached on every client interface")
            }
            Withdrawn::NoUsablePath(targets) => list(f, "no usable path for", targets),
            Withdrawn::Settling(targets) => list(f, "settling after coming back:", targets),
        }
    }
}

/// Every address with a VIP whose state counts: `Ok` when it is to be announced, else why not.
/// `attached`: the datapath is attached on every client-facing interface.
/// Addresses of both families: an IPv6 VIP's address gets its `/128` as an IPv4 one its `/32`.
pub fn addresses(model: &Model, attached: bool) -> BTreeMap<IpAddr, Result<(), Withdrawn>> {
    let mut out: BTreeMap<IpAddr, Result<(), Withdrawn>> = BTreeMap::new();
    for vip in model.config.vips.iter().filter(|v| v.announce) {
        let entry = out.entry(vip.address).or_insert(Ok(()));
        if !attached {
            *entry = Err(Withdrawn::NotAttached);
            continue;
        }
        // The target's decision for the VIP's family: of a target with paths of both, each
        // family is servable on its own paths.
        let tid = model.target_of(vip);
        let usable = tid
            .and_then(|id| model.decisions.get(&id))
            .is_some_and(|d| *d != Decision::None);
        let settling = tid.is_some_and(|id| model.settling.contains_key(&id));
        let target = vip.target.clone();
        if usable && !settling {
            continue;
        }
        match entry {
            Err(Withdrawn::NotAttached) => {}
            Err(Withdrawn::NoUsablePath(ts)) => {
                if !usable && !ts.contains(&target) {
                    ts.push(target);
                }
            }
            Err(Withdrawn::Settling(ts)) if usable => {
                if !ts.contains(&target) {
                    ts.push(target);
                }
            }
            Err(Withdrawn::Settling(_)) | Ok(()) if !usable => {
                *entry = Err(Withdrawn::NoUsablePath(vec![target]));
            }
            Err(Withdrawn::Settling(_)) | Ok(()) => {
                *entry = Err(Withdrawn::Settling(vec![target]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        net::Ipv4Addr,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{config::Config, control::health::Health};

    /// The addresses [`addresses`] says to announce.
    fn announced(model: &Model, attached: bool) -> std::collections::BTreeSet<IpAddr> {
        addresses(model, attached)
            .into_iter()
            .filter_map(|(a, r)| r.is_ok().then_some(a))
            .collect()
    }

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 11));
    const C: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 12));

    /// Targets `web` (failover, drop), `db` (active/active, last-known); VIPs: A whole → web,
    /// B tcp/80 → web and udp/53 → db, C → db with `announce: false`.
    fn model() -> Model {
        let config = Config::from_json(
            r#"{
              "interfaces": { "clients": ["c0"], "paths": ["p0"] },
              "announce": {},
              "targets": [
                { "name": "web", "paths": [
                    { "name": "n1", "address": "192.0.2.1" },
                    { "name": "n2", "address": "192.0.2.2" } ] },
                { "name": "db", "mode": "active-active", "all_down": "last-known", "paths": [
                    { "name": "n1", "address": "192.0.2.11" },
                    { "name": "n2", "address": "192.0.2.12" } ] }
              ],
              "vips": [
                { "address": "203.0.113.10", "target": "web" },
                { "address": "203.0.113.11", "protocol": "tcp", "port": 80, "target": "web" },
                { "address": "203.0.113.11", "protocol": "udp", "port": 53, "target": "db" },
                { "address": "203.0.113.12", "target": "db", "announce": false }
              ]
            }"#,
        )
        .unwrap();
        Model::new(config, &Model::empty()).unwrap()
    }

    /// Path `target`/`path` goes `health`, and whatever settles has settled.
    fn set(m: &mut Model, target: &str, path: &str, health: Health) {
        set_only(m, target, path, health);
        m.settle(SystemTime::now() + Duration::from_secs(3600));
    }

    fn set_only(m: &mut Model, target: &str, path: &str, health: Health) {
        let id = m.ids.paths[&(target.to_string(), path.to_string())];
        m.paths.get_mut(&id).unwrap().health = Some(health);
        m.decide(target);
    }

    /// An edge whose paths come back one after the other (its links up again) announces only
    /// once its decision has settled, and then without the transition the order of their rise
    /// made: a connection moving here from another edge follows the decision every edge makes.
    #[test]
    fn a_target_coming_back_settles_before_it_is_announced() {
        let mut m = model();
        let web = m.ids.targets["web"];
        // Probes every second, rise 2 (the defaults): (rise + 1) × interval.
        assert_eq!(m.settle_time(web), Duration::from_secs(3));
        let t0 = SystemTime::now();
        set_only(&mut m, "web", "n2", Health::Up);
        assert!(m.settling.contains_key(&web));
        assert_eq!(
            addresses(&m, true)[&A],
            Err(Withdrawn::Settling(vec!["web".into()]))
        );
        // n1, preferred, rises next: a failback, with n2 as the previous decision.
        set_only(&mut m, "web", "n1", Health::Up);
        assert!(m.transitions.contains_key(&web));
        assert_eq!(
            m.settle(t0 + Duration::from_millis(2900)),
            Vec::<u32>::new()
        );
        assert!(!announced(&m, true).contains(&A));
        assert_eq!(m.settle(t0 + Duration::from_secs(4)), vec![web]);
        assert!(!m.transitions.contains_key(&web), "dropped when settled");
        assert_eq!(announced(&m, true), [A].into());
        // B waits for db too; a settling target never hides one with no path.
        assert_eq!(
            addresses(&m, true)[&B],
            Err(Withdrawn::NoUsablePath(vec!["db".into()]))
        );
        set_only(&mut m, "db", "n1", Health::Up);
        assert_eq!(
            addresses(&m, true)[&B],
            Err(Withdrawn::Settling(vec!["db".into()]))
        );
        // A change between usable paths of an announced target settles nothing.
        set_only(&mut m, "web", "n1", Health::Down);
        assert!(!m.settling.contains_key(&web));
        assert!(announced(&m, true).contains(&A));
    }

    /// Paths that come back together rise with skew (each path's route relearned on its own
    /// schedule): a target waits for every enabled path, at most `announce.settle_max_s`.
    /// Announced with one missing, this edge would send the connections another edge keeps on
    /// it to the other path, where the VM resets them.
    #[test]
    fn a_target_coming_back_waits_for_every_enabled_path_within_settle_max() {
        let mut m = model();
        let web = m.ids.targets["web"];
        assert_eq!(m.config.settle_max, Duration::from_secs(10), "the default");
        let settling_at = |m: &mut Model, t: SystemTime| {
            m.settle(t);
            m.settling.contains_key(&web)
        };
        // n1 rises; n2 is still down well past the settle time: withdrawn.
        let t0 = SystemTime::now();
        set_only(&mut m, "web", "n2", Health::Down);
        set_only(&mut m, "web", "n1", Health::Up);
        assert!(settling_at(&mut m, t0 + Duration::from_secs(4)));
        assert_eq!(
            addresses(&m, true)[&A],
            Err(Withdrawn::Settling(vec!["web".into()]))
        );
        // n2 rises: settled at the next check.
        set_only(&mut m, "web", "n2", Health::Up);
        assert!(!settling_at(&mut m, t0 + Duration::from_secs(5)));
        assert!(announced(&m, true).contains(&A));

        // n2 never rises: announced once settle_max has passed since the target came back.
        set_only(&mut m, "web", "n1", Health::Down);
        set_only(&mut m, "web", "n2", Health::Down);
        let t1 = SystemTime::now();
        set_only(&mut m, "web", "n1", Health::Up);
        assert!(settling_at(&mut m, t1 + Duration::from_secs(9)));
        assert!(!settling_at(&mut m, t1 + Duration::from_secs(11)));

        // A disabled path is not waited for.
        set_only(&mut m, "web", "n1", Health::Down);
        let t2 = SystemTime::now();
        set_only(&mut m, "web", "n1", Health::Up);
        let n2 = m.ids.paths[&("web".to_string(), "n2".to_string())];
        m.paths.get_mut(&n2).unwrap().disabled = true;
        assert!(settling_at(&mut m, t2 + Duration::from_millis(2900)));
        assert!(!settling_at(&mut m, t2 + Duration::from_secs(4)));

        // `settle_max_s: 0`: only the settle time.
        m.paths.get_mut(&n2).unwrap().disabled = false;
        m.config.settle_max = Duration::ZERO;
        set_only(&mut m, "web", "n1", Health::Down);
        let t3 = SystemTime::now();
        set_only(&mut m, "web", "n1", Health::Up);
        assert!(!settling_at(&mut m, t3 + Duration::from_secs(4)));
    }

    #[test]
    fn without_announcements_nothing_settles() {
        let mut m = model();
        m.config.announce = None;
        set_only(&mut m, "web", "n2", Health::Up);
        set_only(&mut m, "web", "n1", Health::Up);
        assert!(m.settling.is_empty());
        let web = m.ids.targets["web"];
        assert!(m.transitions.contains_key(&web), "the transition stays");
    }

    #[test]
    fn nothing_is_announced_before_a_path_has_risen() {
        let m = model();
        assert!(announced(&m, true).is_empty());
        assert_eq!(
            addresses(&m, true)[&B],
            Err(Withdrawn::NoUsablePath(vec!["web".into(), "db".into()]))
        );
    }

    #[test]
    fn an_address_is_announced_when_every_target_on_it_is_servable() {
        let mut m = model();
        set(&mut m, "web", "n2", Health::Up);
        assert_eq!(announced(&m, true), [A].into());
        assert_eq!(
            addresses(&m, true)[&B],
            Err(Withdrawn::NoUsablePath(vec!["db".into()]))
        );
        set(&mut m, "db", "n1", Health::Up);
        assert_eq!(announced(&m, true), [A, B].into());
    }

    #[test]
    fn all_down_withdraws_unless_last_known_keeps_sending() {
        let mut m = model();
        set(&mut m, "web", "n1", Health::Up);
        set(&mut m, "db", "n1", Health::Up);
        set(&mut m, "web", "n1", Health::Down);
        set(&mut m, "db", "n1", Health::Down);
        // web drops (withdrawn, and B with it); db keeps its last ring (last-known).
        assert!(announced(&m, true).is_empty());
        assert_eq!(
            addresses(&m, true)[&A],
            Err(Withdrawn::NoUsablePath(vec!["web".into()]))
        );
        set(&mut m, "web", "n2", Health::Up);
        assert_eq!(announced(&m, true), [A, B].into());
    }

    #[test]
    fn an_opted_out_vip_neither_announces_nor_withdraws() {
        let mut m = model();
        set(&mut m, "web", "n1", Health::Up);
        set(&mut m, "db", "n1", Health::Up);
        assert!(!addresses(&m, true).contains_key(&C));
        assert!(!announced(&m, true).contains(&C));
    }

    #[test]
    fn nothing_is_announced_while_a_client_interface_lacks_the_datapath() {
        let mut m = model();
        set(&mut m, "web", "n1", Health::Up);
        set(&mut m, "db", "n1", Health::Up);
        assert!(announced(&m, false).is_empty());
        assert_eq!(addresses(&m, false)[&A], Err(Withdrawn::NotAttached));
    }

    #[test]
    fn a_disabled_path_is_not_servable() {
        let mut m = model();
        set(&mut m, "web", "n1", Health::Up);
        let id = m.ids.paths[&("web".to_string(), "n1".to_string())];
        m.paths.get_mut(&id).unwrap().disabled = true;
        m.decide("web");
        assert!(!announced(&m, true).contains(&A));
    }

    /// An IPv6 VIP follows the same rule as an IPv4 one: its target (of IPv6 paths) decides,
    /// and each address of a dual-stack service is announced on its own.
    #[test]
    fn ipv6_addresses_follow_the_same_rule() {
        let config = Config::from_json(
            r#"{
              "interfaces": { "clients": ["c0"], "paths": ["p0"] },
              "announce": {},
              "targets": [
                { "name": "web", "paths": [ { "name": "n1", "address": "192.0.2.1" } ] },
                { "name": "web6", "paths": [
                    { "name": "n1", "address": "2001:db8:1::1" },
                    { "name": "n2", "address": "2001:db8:2::1" } ] }
              ],
              "vips": [
                { "address": "203.0.113.10", "target": "web" },
                { "address": "2001:db8:ff::10", "target": "web6" }
              ]
            }"#,
        )
        .unwrap();
        let mut m = Model::new(config, &Model::empty()).unwrap();
        let v6: IpAddr = "2001:db8:ff::10".parse().unwrap();
        assert_eq!(
            addresses(&m, true)[&v6],
            Err(Withdrawn::NoUsablePath(vec!["web6".into()]))
        );
        set(&mut m, "web6", "n2", Health::Up);
        assert_eq!(announced(&m, true), [v6].into());
        set(&mut m, "web", "n1", Health::Up);
        assert_eq!(announced(&m, true), [A, v6].into());
        set(&mut m, "web6", "n2", Health::Down);
        assert_eq!(announced(&m, true), [A].into());
    }

    /// A target with paths of both families: each family's address is servable, and settles,
    /// on that family's paths alone (the other family's paths down are neither waited for nor
    /// a reason to withdraw).
    #[test]
    fn a_dual_stack_target_is_servable_per_family() {
        let config = Config::from_json(
            r#"{
              "interfaces": { "clients": ["c0"], "paths": ["p0"] },
              "announce": {},
              "targets": [
                { "name": "web", "paths": [
                    { "name": "n1", "address": "192.0.2.1" },
                    { "name": "n2", "address": "192.0.2.2" },
                    { "name": "v1", "address": "2001:db8:1::1" },
                    { "name": "v2", "address": "2001:db8:2::1" } ] }
              ],
              "vips": [
                { "address": "203.0.113.10", "target": "web" },
                { "address": "2001:db8:ff::10", "target": "web" }
              ]
            }"#,
        )
        .unwrap();
        let mut m = Model::new(config, &Model::empty()).unwrap();
        let v6: IpAddr = "2001:db8:ff::10".parse().unwrap();
        let web4 = m
            .ids
            .targets
            .serving("web", crate::config::Family::V4)
            .unwrap();
        let web6 = m
            .ids
            .targets
            .serving("web", crate::config::Family::V6)
            .unwrap();
        assert_ne!(web4, web6);
        let t0 = SystemTime::now();
        set_only(&mut m, "web", "v1", Health::Up);
        assert!(m.settling.contains_key(&web6) && !m.settling.contains_key(&web4));
        assert_eq!(
            addresses(&m, true)[&A],
            Err(Withdrawn::NoUsablePath(vec!["web".into()]))
        );
        assert_eq!(
            addresses(&m, true)[&v6],
            Err(Withdrawn::Settling(vec!["web".into()]))
        );
        // v2 rises: every IPv6 path is up, whatever the IPv4 ones do.
        assert!(!m.all_paths_up(web6));
        set_only(&mut m, "web", "v2", Health::Up);
        assert!(m.all_paths_up(web6) && !m.all_paths_up(web4));
        assert_eq!(m.settle(t0 + Duration::from_secs(4)), Vec::<u32>::new());
        assert_eq!(announced(&m, true), [v6].into());
        // IPv4 comes back: it settles on its own; IPv6 stays announced.
        set_only(&mut m, "web", "n1", Health::Up);
        assert!(m.settling.contains_key(&web4) && !m.settling.contains_key(&web6));
        assert_eq!(announced(&m, true), [v6].into());
        set_only(&mut m, "web", "n2", Health::Up);
        m.settle(SystemTime::now() + Duration::from_secs(4));
        assert_eq!(announced(&m, true), [A, v6].into());
    }
}
