//! The control plane's view of the world: the configuration, the ids it is given in the maps,
//! what the probes and the operator said of each path, and the decision in force for each
//! target. [`Model::tables`] turns it into what the maps must hold; pure, no I/O.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::{
    maps::{
        ALL_DOWN_DROP, ALL_DOWN_LAST_KNOWN, CONFIG_MODE_ACTIVE_ACTIVE, CONFIG_MODE_FAILOVER,
        EndpointKey, HEALTH_DOWN, HEALTH_UNKNOWN, HEALTH_UP, MAX_PATHS, MAX_TARGETS, MAX_VIPS,
        MAX_VIPS_PER_TARGET, PATH_DISABLED, PATH_DOWN, PATH_UP, PathMeta, PathValue,
        REV_F_SHADOWS_WHOLE, RevValue, TARGET_MODE_RING, TARGET_MODE_SINGLE, TargetMeta,
        TargetValue, VipInfo, decode_name, encode_name,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    config::{AllDown, Config, Mode, Protocol, Target, Vip},
    health::Health,
    policy::{self, Decision, PathView},
    tables::Tables,
};

/// Ids of targets (by name), paths (by target and path name) and VIPs (by key) in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    pub targets: BTreeMap<String, u32>,
    pub paths: BTreeMap<(String, String), u32>,
    pub vips: BTreeMap<EndpointKey, u32>,
    /// Each VIP's rank among its target's VIPs: its column in `LB_PAIR_STATS`.
    pub vip_ranks: BTreeMap<EndpointKey, u8>,
}

/// Ids for `keys`: what `previous` gave a key it keeps; new keys get the lowest id neither a
/// kept key holds nor a dropped one held: an id freed by this change is quarantined for one
/// generation, so that packets and state of what it named (a removed target's VIP in flight, a
/// flow pinned to a removed path) never meet what replaces it within one apply. Only when the
/// table would otherwise be full does a new key take a quarantined id. `None` when more than
/// `max` are needed.
fn assign_ids<K: Ord + Clone>(
    keys: &[K],
    previous: &BTreeMap<K, u32>,
    max: u32,
) -> Option<BTreeMap<K, u32>> {
    let mut used: BTreeSet<u32> = keys
        .iter()
        .filter_map(|k| previous.get(k).copied())
        .collect();
    let freed: BTreeSet<u32> = previous
        .values()
        .copied()
        .filter(|id| !used.contains(id))
        .collect();
    let mut out = BTreeMap::new();
    for k in keys {
        let id = match previous.get(k) {
            Some(id) => *id,
            None => {
                let id = (0..max)
                    .find(|i| !used.contains(i) && !freed.contains(i))
                    .or_else(|| (0..max).find(|i| !used.contains(i)))?;
                used.insert(id);
                id
            }
        };
        out.insert(k.clone(), id);
    }
    Some(out)
}

impl Ids {
    /// Ids for `config`: what `previous` gave each name keeps its id (so a reload does not move
    /// flows), new names get the lowest free id. `None` when a table is full (the configuration
    /// validation keeps within the capacities, so this does not happen for a valid file).
    pub fn assign(config: &Config, previous: &Ids) -> Option<Ids> {
        let targets: Vec<String> = config.targets.iter().map(|t| t.name.clone()).collect();
        let paths: Vec<(String, String)> = config
            .targets
            .iter()
            .flat_map(|t| t.paths.iter().map(|p| (t.name.clone(), p.name.clone())))
            .collect();
        let vips: Vec<EndpointKey> = config.vips.iter().map(vip_key).collect();
        let mut vip_ranks = BTreeMap::new();
        for t in &config.targets {
            let keys: Vec<EndpointKey> = config
                .vips
                .iter()
                .filter(|v| v.target == t.name)
                .map(vip_key)
                .collect();
            // What each kept VIP had, unless another of this target's VIPs (one that moved
            // here from another target) holds it already.
            let mut kept = BTreeMap::new();
            let mut taken = BTreeSet::new();
            for k in &keys {
                if let Some(&r) = previous.vip_ranks.get(k)
                    && taken.insert(r)
                {
                    kept.insert(*k, u32::from(r));
                }
            }
            for (k, r) in assign_ids(&keys, &kept, MAX_VIPS_PER_TARGET)? {
                vip_ranks.insert(k, u8::try_from(r).ok()?);
            }
        }
        Some(Ids {
            targets: assign_ids(&targets, &previous.targets, MAX_TARGETS)?,
            paths: assign_ids(&paths, &previous.paths, MAX_PATHS)?,
            vips: assign_ids(&vips, &previous.vips, MAX_VIPS)?,
            vip_ranks,
        })
    }

    /// The ids pinned maps use, read back from their meta entries.
    pub fn from_tables(t: &Tables) -> Ids {
        let mut ids = Ids::default();
        let mut target_names = BTreeMap::new();
        for (id, meta) in &t.target_meta {
            let name = decode_name(&meta.name).to_string();
            target_names.insert(*id, name.clone());
            ids.targets.insert(name, *id);
        }
        for (id, meta) in &t.path_meta {
            if let Some(target) = t.paths.get(id).and_then(|p| target_names.get(&p.target)) {
                ids.paths
                    .insert((target.clone(), decode_name(&meta.name).to_string()), *id);
            }
        }
        for (id, info) in &t.vips {
            ids.vips.insert(info.key, *id);
            ids.vip_ranks.insert(info.key, info.rank);
        }
        ids
    }
}

/// The key of a configured VIP in `LB_VIPS`.
pub fn vip_key(v: &Vip) -> EndpointKey {
    EndpointKey::new(v.address, v.service.map(|s| (proto(s.protocol), s.port)))
}

fn proto(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => IPPROTO_TCP,
        Protocol::Udp => IPPROTO_UDP,
    }
}

/// What is known of one path at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathState {
    /// `None`: no probe result yet (and none inherited from pinned state).
    pub health: Option<Health>,
    /// Disabled (drained) by an operator.
    pub disabled: bool,
    /// Round-trip time of the last successful probe.
    pub rtt: Option<Duration>,
    /// When `health` or `disabled` last changed.
    pub changed: SystemTime,
    /// Probes succeed, but client TCP handshakes to the path go unanswered (the daemon's
    /// datapath check).
    pub suspect: bool,
}

impl Default for PathState {
    fn default() -> Self {
        Self {
            health: None,
            disabled: false,
            rtt: None,
            changed: UNIX_EPOCH,
            suspect: false,
        }
    }
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Decode a path's state from pinned meta (restart: never "unknown means down").
pub fn path_state_from(meta: &PathMeta, admin_disabled: bool) -> PathState {
    PathState {
        health: match meta.health {
            HEALTH_UP => Some(Health::Up),
            HEALTH_DOWN => Some(Health::Down),
            _ => None,
        },
        disabled: admin_disabled,
        rtt: (meta.rtt_us != 0).then(|| Duration::from_micros(u64::from(meta.rtt_us))),
        changed: UNIX_EPOCH + Duration::from_nanos(meta.changed_ns),
        suspect: meta.suspect != 0,
    }
}

/// A previous decision kept beside the current one: established TCP connections without an
/// exception follow it while its path is up (`docs/DATAPATH.md`, "Stateless by default").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub previous: Decision,
    /// When the decision changed.
    pub since: SystemTime,
}

/// Configuration, ids, path states and decisions: everything [`Model::tables`] needs.
#[derive(Clone, Debug)]
pub struct Model {
    pub config: Config,
    pub ids: Ids,
    /// By path id.
    pub paths: BTreeMap<u32, PathState>,
    /// By target id.
    pub decisions: BTreeMap<u32, Decision>,
    /// By target id: the transition in force, if any.
    pub transitions: BTreeMap<u32, Transition>,
    /// By target id: the half of its ring tables the current ring is in.
    pub ring_half: BTreeMap<u32, u8>,
    /// By target id: [`TargetValue::exc_clear`], as the last exception sweep left it.
    pub exc_clear: BTreeMap<u32, u64>,
    /// Path addresses as pinned state had them (restart: a path whose address changed in the
    /// new configuration starts unknown).
    pub pinned_addresses: BTreeMap<u32, Ipv4Addr>,
}

impl Model {
    /// A model for `config`, keeping the ids, path states and decisions `previous` has for the
    /// same names (a path whose address changed starts unknown). Decisions are then recomputed.
    pub fn new(config: Config, previous: &Model) -> Option<Model> {
        let ids = Ids::assign(&config, &previous.ids)?;
        let mut paths = BTreeMap::new();
        for t in &config.targets {
            for p in &t.paths {
                let Some(id) = ids.paths.get(&(t.name.clone(), p.name.clone())) else {
                    continue;
                };
                // Only the same path (by name) inherits: a freed id given to a new path must not
                // pass on the old path's health or drain.
                let same_path =
                    previous.ids.paths.get(&(t.name.clone(), p.name.clone())) == Some(id);
                let old_addr = previous.address_of(*id);
                let state = match previous.paths.get(id).filter(|_| same_path) {
                    Some(s) if old_addr == Some(p.address) => s.clone(),
                    // An operator's drain survives an address change.
                    Some(s) => PathState {
                        disabled: s.disabled,
                        ..PathState::default()
                    },
                    None => PathState::default(),
                };
                paths.insert(*id, state);
            }
        }
        // A target keeps its decision, transition and ring half only under the same name: an id
        // freed and given to another target starts afresh.
        let kept: BTreeSet<u32> = config
            .targets
            .iter()
            .filter_map(|t| {
                let id = *ids.targets.get(&t.name)?;
                (previous.ids.targets.get(&t.name) == Some(&id)).then_some(id)
            })
            .collect();
        let decisions = ids
            .targets
            .values()
            .map(|id| {
                let d = kept
                    .contains(id)
                    .then(|| previous.decisions.get(id).cloned())
                    .flatten();
                (*id, d.unwrap_or(Decision::None))
            })
            .collect();
        fn keep<T: Clone>(m: &BTreeMap<u32, T>, kept: &BTreeSet<u32>) -> BTreeMap<u32, T> {
            m.iter()
                .filter(|(id, _)| kept.contains(id))
                .map(|(k, v)| (*k, v.clone()))
                .collect()
        }
        let mut model = Model {
            config,
            ids,
            paths,
            decisions,
            transitions: keep(&previous.transitions, &kept),
            ring_half: keep(&previous.ring_half, &kept),
            exc_clear: keep(&previous.exc_clear, &kept),
            pinned_addresses: BTreeMap::new(),
        };
        model.decide_all();
        Some(model)
    }

    /// An empty model (no configuration applied).
    pub fn empty() -> Model {
        Model {
            config: Config {
                interfaces: crate::config::Interfaces {
                    clients: Vec::new(),
                    paths: Vec::new(),
                    hooks: BTreeMap::new(),
                },
                targets: Vec::new(),
                vips: Vec::new(),
                flow_table_size: None,
                datapath_suspect: crate::config::DEFAULT_DATAPATH_SUSPECT,
                icmp_too_big_per_sec: lb_common::maps::DEFAULT_TOO_BIG_PER_SEC,
                icmp_too_big_burst: lb_common::maps::DEFAULT_TOO_BIG_BURST,
                flows: crate::config::Flows::default(),
            },
            ids: Ids::default(),
            paths: BTreeMap::new(),
            decisions: BTreeMap::new(),
            transitions: BTreeMap::new(),
            ring_half: BTreeMap::new(),
            exc_clear: BTreeMap::new(),
            pinned_addresses: BTreeMap::new(),
        }
    }

    /// What pinned maps say: ids, path states (health as last seen, operator drains), the
    /// decisions in force, and the configuration as far as the maps record it (targets, paths
    /// and VIPs; not the probes, nor the interfaces): enough for `lb status` and for `lb path`
    /// to decide while no daemon runs.
    pub fn from_tables(t: &Tables, admin_disabled: impl Fn(u32) -> bool) -> Model {
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
        for (tid, meta) in &t.target_meta {
            let paths = t
                .paths
                .iter()
                .filter(|(_, p)| p.target == *tid)
                .filter_map(|(pid, p)| {
                    let pm = t.path_meta.get(pid)?;
                    Some(crate::config::Path {
                        name: decode_name(&pm.name).to_string(),
                        address: Ipv4Addr::from(p.addr),
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
                t.addrs
                    .get(&p.address.octets())
                    .is_some_and(|k| k & lb_common::maps::ADDR_EXPOSED != 0)
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
            });
        }
        for (id, meta) in &t.path_meta {
            m.paths
                .insert(*id, path_state_from(meta, admin_disabled(*id)));
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
        m.pinned_addresses = t
            .paths
            .iter()
            .map(|(id, p)| (*id, Ipv4Addr::from(p.addr)))
            .collect();
        m
    }

    fn address_of(&self, path: u32) -> Option<Ipv4Addr> {
        self.config
            .targets
            .iter()
            .flat_map(|t| t.paths.iter().map(move |p| (t, p)))
            .find(|(t, p)| self.ids.paths.get(&(t.name.clone(), p.name.clone())) == Some(&path))
            .map(|(_, p)| p.address)
            .or_else(|| self.pinned_addresses.get(&path).copied())
    }

    /// Recomputes every target's decision; returns the ids of the targets whose decision
    /// changed.
    pub fn decide_all(&mut self) -> Vec<u32> {
        let names: Vec<String> = self.config.targets.iter().map(|t| t.name.clone()).collect();
        names.iter().filter_map(|n| self.decide(n)).collect()
    }

    /// Recomputes the decision of target `name`; `Some(id)` when it changed.
    pub fn decide(&mut self, name: &str) -> Option<u32> {
        let t = self.config.targets.iter().find(|t| t.name == name)?;
        let id = *self.ids.targets.get(name)?;
        let views: Vec<PathView> = t
            .paths
            .iter()
            .filter_map(|p| {
                let pid = *self.ids.paths.get(&(t.name.clone(), p.name.clone()))?;
                let s = self.paths.get(&pid).cloned().unwrap_or_default();
                Some(PathView {
                    id: pid,
                    name: p.name.clone(),
                    priority: p.priority,
                    weight: p.weight,
                    health: s.health,
                    disabled: s.disabled,
                })
            })
            .collect();
        let previous = self.decisions.get(&id).cloned().unwrap_or(Decision::None);
        let next = policy::decide(t.mode, t.preempt, t.all_down, &views, &previous);
        if next == previous {
            return None;
        }
        // The decision in force becomes the previous one when some of its flows may still be
        // on a usable path: a ring (the datapath checks each path), or a single path that is up
        // and not disabled. Otherwise no connection could be kept: no transition.
        let keeps_flows = match &previous {
            Decision::Ring(_) => true,
            Decision::Single(p) => views
                .iter()
                .any(|v| v.id == *p && v.health == Some(Health::Up) && !v.disabled),
            Decision::None => false,
        };
        let half = self.ring_half.get(&id).copied().unwrap_or(0);
        if let Decision::Ring(_) = previous {
            // The new ring goes to the other half; the previous one stays where it is.
            self.ring_half.insert(id, half ^ 1);
        }
        if keeps_flows {
            self.transitions.insert(
                id,
                Transition {
                    previous,
                    since: SystemTime::now(),
                },
            );
        } else {
            self.transitions.remove(&id);
        }
        self.decisions.insert(id, next);
        Some(id)
    }

    /// Ends the transitions that began more than `hold` before `now`: a connection idle since
    /// its target's decision changed that long ago is forgotten, as its exception would be.
    /// Returns the targets whose transition ended.
    pub fn end_transitions(&mut self, now: SystemTime, hold: Duration) -> Vec<u32> {
        let ended: Vec<u32> = self
            .transitions
            .iter()
            .filter(|(_, t)| now.duration_since(t.since).is_ok_and(|d| d >= hold))
            .map(|(id, _)| *id)
            .collect();
        for id in &ended {
            self.transitions.remove(id);
        }
        ended
    }

    /// The path the decision rules give flow `key` of target `tid` when no transition is in
    /// force (an exception to it is redundant); `None` during a transition or without a path.
    pub fn rule_path(&self, tid: u32, key: &lb_common::maps::FlowKey) -> Option<u32> {
        if self.transitions.contains_key(&tid) {
            return None;
        }
        match self.decisions.get(&tid)? {
            Decision::Single(p) => Some(*p),
            Decision::Ring(r) => r.get(lb_common::hash::ring_slot(key) as usize).copied(),
            Decision::None => None,
        }
    }

    /// The name of target `id`.
    pub fn target_name(&self, id: u32) -> Option<&str> {
        self.ids
            .targets
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(n, _)| n.as_str())
    }

    /// The (target name, path name) of path `id`.
    pub fn path_name(&self, id: u32) -> Option<(&str, &str)> {
        self.ids
            .paths
            .iter()
            .find(|(_, v)| **v == id)
            .map(|((t, p), _)| (t.as_str(), p.as_str()))
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
        for v in &self.config.vips {
            *out.addrs.entry(v.address.octets()).or_default() |= lb_common::maps::ADDR_VIP;
        }
        for t in &self.config.targets {
            let kind = if t.expose_paths {
                lb_common::maps::ADDR_PATH | lb_common::maps::ADDR_EXPOSED
            } else {
                lb_common::maps::ADDR_PATH
            };
            for p in &t.paths {
                *out.addrs.entry(p.address.octets()).or_default() |= kind;
            }
        }
        for t in &self.config.targets {
            let Some(&tid) = self.ids.targets.get(&t.name) else {
                continue;
            };
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
            for p in &t.paths {
                let Some(&pid) = self.ids.paths.get(&(t.name.clone(), p.name.clone())) else {
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
                        addr: p.address.octets(),
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
            let (Some(&vid), Some(&tid), Some(t)) = (
                self.ids.vips.get(&key),
                self.ids.targets.get(&v.target),
                self.config.targets.iter().find(|t| t.name == v.target),
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
                    _pad: 0,
                },
            );
            for p in &t.paths {
                let Some(&pid) = self.ids.paths.get(&(t.name.clone(), p.name.clone())) else {
                    continue;
                };
                let rev_key = EndpointKey::new(
                    p.address,
                    v.service
                        .map(|s| (proto(s.protocol), s.target_port.unwrap_or(s.port))),
                );
                out.rev_nat.insert(
                    rev_key,
                    RevValue {
                        vip_addr: v.address.octets(),
                        vip_port: v.service.map_or(0, |s| s.port).to_be_bytes(),
                        flags: 0,
                        vip_rank: rank,
                        vip_id: vid,
                        path: pid,
                    },
                );
            }
        }
        // A service answered from an address that also has a whole-address VIP: replies from
        // its port need `LB_SHADOWED` to tell the two apart.
        let whole: BTreeSet<[u8; 4]> = out
            .rev_nat
            .keys()
            .filter(|k| k.is_whole_address())
            .map(|k| k.addr)
            .collect();
        for (key, rev) in out.rev_nat.iter_mut() {
            if !key.is_whole_address() && whole.contains(&key.addr) {
                rev.flags |= REV_F_SHADOWS_WHOLE;
            }
        }
        out
    }
}
