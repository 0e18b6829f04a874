//! A model to the tables the maps must hold, and back (a restarted daemon adopts them).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, UNIX_EPOCH},
};

use lb_common::{
    maps::{
        ALL_DOWN_DROP, ALL_DOWN_LAST_KNOWN, CONFIG_MODE_ACTIVE_ACTIVE, CONFIG_MODE_FAILOVER,
        EndpointKey, EndpointKey6, HEALTH_DOWN, HEALTH_UNKNOWN, HEALTH_UP, PATH_DISABLED,
        PATH_DOWN, PATH_UP, PathMeta, PathValue, REV_F_SHADOWS_WHOLE, RevValue, TARGET_MODE_RING,
        TARGET_MODE_SINGLE, TargetMeta, TargetValue, VipInfo, decode_name, encode_name,
    },
    net::IPPROTO_UDP,
};

use crate::{
    config::{AllDown, Family, Mode, Protocol, Target, Vip},
    control::{
        health::Health,
        model::{Model, Transition, ids::Ids, path_state_from, proto, unix_ns, vip_key},
        policy::Decision,
    },
    datapath::tables::Tables,
};

impl Model {
    /// What pinned maps say: ids, path states (health as last seen, operator drains), the
    /// decisions in force, and the configuration as far as the maps record it (targets, paths
    /// and VIPs; not the probes, nor the interfaces): enough for `lb status` and for `lb path`
    /// to decide while no daemon runs. The target ids that share a name (a target with paths
    /// of both families, one id per family) are one target again.
    pub fn from_tables(t: &Tables, admin: impl Fn(u32) -> crate::datapath::maps::Admin) -> Model {
        let mut m = Model::empty();
        m.ids = Ids::from_tables(t);
        if t.settings.too_big_per_sec != 0 {
            m.config.icmp_too_big_per_sec = t.settings.too_big_per_sec;
            m.config.icmp_too_big_burst = t.settings.too_big_burst;
        }
        if t.settings.pin_per_sec != 0 {
            m.config.flows.pins_per_sec = t.settings.pin_per_sec;
            m.config.flows.pins_burst = t.settings.pin_burst;
        }
        let placeholder_probe = crate::config::Probe {
            kind: crate::config::ProbeKind::Icmp,
            interval: Duration::from_secs(1),
            timeout: None,
            rise: 2,
            fall: 3,
            passive: crate::config::Passive::Auto,
        };
        // By name, in the order of their first id: the meta and the ids.
        let mut targets: Vec<(&TargetMeta, Vec<u32>)> = Vec::new();
        for (tid, meta) in &t.target_meta {
            match targets.iter_mut().find(|(m, _)| m.name == meta.name) {
                Some((_, tids)) => tids.push(*tid),
                None => targets.push((meta, vec![*tid])),
            }
        }
        for (meta, tids) in targets {
            let paths = t
                .paths
                .iter()
                .filter(|(_, p)| tids.contains(&p.target))
                .filter_map(|(pid, p)| {
                    let pm = t.path_meta.get(pid)?;
                    Some(crate::config::Path {
                        name: decode_name(&pm.name).to_string(),
                        address: p.ip(),
                        priority: pm.priority,
                        weight: pm.weight,
                        // The threshold as written, so the tables come out the same.
                        probe: crate::config::Probe {
                            passive: match p.passive_us {
                                0 => crate::config::Passive::Off,
                                us => crate::config::Passive::After(Duration::from_micros(
                                    u64::from(us),
                                )),
                            },
                            ..placeholder_probe.clone()
                        },
                        source: None,
                        interface: None,
                    })
                })
                .collect::<Vec<crate::config::Path>>();
            let expose_paths = paths.iter().any(|p| {
                let kind = match p.address {
                    IpAddr::V4(a) => t.addrs.get(&a.octets()),
                    IpAddr::V6(a) => t.addrs6.get(&a.octets()),
                };
                kind.is_some_and(|k| k & lb_common::maps::ADDR_EXPOSED != 0)
            });
            m.config.targets.push(Target {
                expose_paths,
                name: decode_name(&meta.name).to_string(),
                mode: if meta.mode == CONFIG_MODE_ACTIVE_ACTIVE {
                    Mode::ActiveActive
                } else {
                    Mode::Failover
                },
                preempt: meta.preempt != 0,
                all_down: if meta.all_down == ALL_DOWN_LAST_KNOWN {
                    AllDown::LastKnown
                } else {
                    AllDown::Drop
                },
                paths,
                // The maps do not record it: a hook is the daemon's, from its file.
                notify: None,
            });
        }
        for info in t.vips.values() {
            let Some(target) = t.target_meta.get(&info.target) else {
                continue;
            };
            let service = (info.key.proto != 0).then(|| {
                let port = info.key.port();
                let tp = u16::from_be_bytes(info.target_port);
                crate::config::Service {
                    protocol: if info.key.proto == IPPROTO_UDP {
                        Protocol::Udp
                    } else {
                        Protocol::Tcp
                    },
                    port,
                    target_port: (tp != 0).then_some(tp),
                }
            });
            m.config.vips.push(Vip {
                address: info.key.ip(),
                service,
                target: decode_name(&target.name).to_string(),
                announce: info.flags & lb_common::maps::VIP_INFO_F_NO_ANNOUNCE == 0,
            });
        }
        for (id, meta) in &t.path_meta {
            m.paths.insert(*id, path_state_from(meta, admin(*id)));
        }
        for (id, value) in &t.targets {
            let decision = |mode: u8, active: u32, half: u8| match mode {
                TARGET_MODE_SINGLE => Decision::Single(active),
                TARGET_MODE_RING => t
                    .rings
                    .get(&(*id, half))
                    .cloned()
                    .map_or(Decision::None, Decision::Ring),
                _ => Decision::None,
            };
            m.decisions
                .insert(*id, decision(value.mode, value.active, value.ring_half));
            m.ring_half.insert(*id, value.ring_half);
            m.exc_clear.insert(*id, value.exc_clear);
            if value.in_transition() {
                let since = t.target_meta.get(id).map_or(0, |m| m.transition_ns);
                m.transitions.insert(
                    *id,
                    Transition {
                        previous: decision(value.prev_mode, value.prev_active, value.ring_half ^ 1),
                        since: UNIX_EPOCH + Duration::from_nanos(since),
                    },
                );
            }
        }
        m.pinned_addresses = t.paths.iter().map(|(id, p)| (*id, p.ip())).collect();
        m
    }

    /// What the maps must hold.
    pub fn tables(&self) -> Tables {
        let mut out = Tables {
            settings: lb_common::maps::Settings {
                too_big_per_sec: self.config.icmp_too_big_per_sec,
                too_big_burst: self.config.icmp_too_big_burst,
                pin_per_sec: self.config.flows.pins_per_sec,
                pin_burst: self.config.flows.pins_burst,
            },
            ..Tables::default()
        };
        let mut mark = |address: IpAddr, kind: u32| match address {
            IpAddr::V4(a) => *out.addrs.entry(a.octets()).or_default() |= kind,
            IpAddr::V6(a) => *out.addrs6.entry(a.octets()).or_default() |= kind,
        };
        for v in &self.config.vips {
            mark(v.address, lb_common::maps::ADDR_VIP);
        }
        for t in &self.config.targets {
            let kind = if t.expose_paths {
                lb_common::maps::ADDR_PATH | lb_common::maps::ADDR_EXPOSED
            } else {
                lb_common::maps::ADDR_PATH
            };
            for p in &t.paths {
                mark(p.address, kind);
            }
        }
        for t in &self.config.targets {
            for (_, tid) in self.ids.targets.of(&t.name) {
                self.target_tables(t, tid, &mut out);
            }
            for p in &t.paths {
                let (Some(&pid), Some(tid)) = (
                    self.ids.paths.get(&(t.name.clone(), p.name.clone())),
                    self.ids.targets.serving(&t.name, Family::of(p.address)),
                ) else {
                    continue;
                };
                let s = self.paths.get(&pid).cloned().unwrap_or_default();
                let state = if s.disabled {
                    PATH_DISABLED
                } else if s.health == Some(Health::Up) {
                    PATH_UP
                } else {
                    PATH_DOWN
                };
                out.paths.insert(
                    pid,
                    PathValue {
                        addr: EndpointKey6::of(p.address, None).addr,
                        state,
                        _pad: [0; 3],
                        target: tid,
                        passive_us: p
                            .probe
                            .passive
                            .threshold(p.probe.interval, s.rtt)
                            .as_micros()
                            .min(u128::from(u32::MAX)) as u32,
                    },
                );
                out.path_meta.insert(
                    pid,
                    PathMeta {
                        name: encode_name(&p.name),
                        priority: p.priority,
                        weight: p.weight,
                        changed_ns: unix_ns(s.changed),
                        rtt_us: s
                            .rtt
                            .map_or(0, |r| r.as_micros().clamp(1, u128::from(u32::MAX)) as u32),
                        health: match s.health {
                            Some(Health::Up) => HEALTH_UP,
                            Some(Health::Down) => HEALTH_DOWN,
                            None => HEALTH_UNKNOWN,
                        },
                        used: 1,
                        suspect: u8::from(s.suspect),
                        _pad: 0,
                    },
                );
            }
        }
        for v in &self.config.vips {
            let key = vip_key(v);
            let (Some(&vid), Some(tid), Some(t)) = (
                self.ids.vips.get(&key),
                self.target_of(v),
                self.config.target(&v.target),
            ) else {
                continue;
            };
            let target_port = v
                .service
                .and_then(|s| s.target_port.filter(|tp| *tp != s.port));
            let rank = self.ids.vip_ranks.get(&key).copied().unwrap_or(0);
            out.vips.insert(
                vid,
                VipInfo {
                    key,
                    target: tid,
                    target_port: target_port.unwrap_or(0).to_be_bytes(),
                    rank,
                    flags: if v.announce {
                        0
                    } else {
                        lb_common::maps::VIP_INFO_F_NO_ANNOUNCE
                    },
                },
            );
            let service = v
                .service
                .map(|s| (proto(s.protocol), s.target_port.unwrap_or(s.port)));
            let vip_port = v.service.map_or(0, |s| s.port).to_be_bytes();
            for p in &t.paths {
                let Some(&pid) = self.ids.paths.get(&(t.name.clone(), p.name.clone())) else {
                    continue;
                };
                // Each family in its own table: a VIP is served by its target's paths of its
                // family only (its target id's), and replies from those are its to translate.
                match (p.address, v.address) {
                    (IpAddr::V4(path), IpAddr::V4(vip)) => {
                        out.rev_nat.insert(
                            EndpointKey::new(path, service),
                            rev_value(vip.octets(), vip_port, rank, vid, pid),
                        );
                    }
                    (IpAddr::V6(path), IpAddr::V6(vip)) => {
                        out.rev_nat6.insert(
                            EndpointKey6::with(path.octets(), service),
                            rev_value(vip.octets(), vip_port, rank, vid, pid),
                        );
                    }
                    _ => {}
                }
            }
        }
        shadow(&mut out.rev_nat);
        shadow(&mut out.rev_nat6);
        out
    }

    /// Target id `tid` of target `t` into `out`: its meta (the target's name and policy; the
    /// two ids of a target with paths of both families carry the same) and its decision, with
    /// the rings it uses.
    fn target_tables(&self, t: &Target, tid: u32, out: &mut Tables) {
        out.target_meta.insert(
            tid,
            TargetMeta {
                name: encode_name(&t.name),
                mode: match t.mode {
                    Mode::Failover => CONFIG_MODE_FAILOVER,
                    Mode::ActiveActive => CONFIG_MODE_ACTIVE_ACTIVE,
                },
                preempt: u8::from(t.preempt),
                all_down: match t.all_down {
                    AllDown::Drop => ALL_DOWN_DROP,
                    AllDown::LastKnown => ALL_DOWN_LAST_KNOWN,
                },
                used: 1,
                _pad: [0; 4],
                transition_ns: self
                    .transitions
                    .get(&tid)
                    .map_or(0, |t| unix_ns(t.since).max(1)),
            },
        );
        let half = self.ring_half.get(&tid).copied().unwrap_or(0);
        let mut encode = |d: Option<&Decision>, half: u8| match d {
            Some(Decision::Single(p)) => TargetValue::single(*p),
            Some(Decision::Ring(ring)) => {
                out.rings.insert((tid, half), ring.clone());
                TargetValue::ring(half)
            }
            Some(Decision::None) | None => TargetValue::none(),
        };
        let mut value = encode(self.decisions.get(&tid), half);
        if let Some(t) = self.transitions.get(&tid) {
            value = value.with_previous(&encode(Some(&t.previous), half ^ 1));
        }
        value.ring_half = half;
        value.exc_clear = self.exc_clear.get(&tid).copied().unwrap_or(0);
        out.targets.insert(tid, value);
    }
}

/// What a reply from path `path` is translated back with: VIP `vip_id`'s address (of either
/// family) and port (`[0, 0]`: the VM's port is kept), its rank.
fn rev_value<A>(
    vip_addr: A,
    vip_port: [u8; 2],
    vip_rank: u8,
    vip_id: u32,
    path: u32,
) -> RevValue<A> {
    RevValue {
        vip_addr,
        vip_port,
        flags: 0,
        vip_rank,
        vip_id,
        path,
    }
}

/// A service answered from an address that also has a whole-address VIP: replies from its port
/// need `LB_SHADOWED` (`LB_SHADOWED6`) to tell the two apart.
fn shadow<A: Copy + Ord, V>(rev_nat: &mut BTreeMap<EndpointKey<A>, RevValue<V>>) {
    let whole: BTreeSet<A> = rev_nat
        .keys()
        .filter(|k| k.is_whole_address())
        .map(|k| k.addr)
        .collect();
    for (key, rev) in rev_nat.iter_mut() {
        if !key.is_whole_address() && whole.contains(&key.addr) {
            rev.flags |= REV_F_SHADOWS_WHOLE;
        }
    }
}
