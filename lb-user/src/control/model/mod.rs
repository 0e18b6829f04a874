//! The control plane's view of the world: the configuration, the ids it is given in the maps,
//! what the probes and the operator said of each path, and the decision in force for each
//! target id. [`Model::tables`] turns it into what the maps must hold; pure, no I/O.
//!
//! A target whose paths are of one family has one target id; a target with paths of both
//! families has one per family ([`TargetIds`]), each decided on that family's paths alone, with
//! the target's policy, and serving the target's VIPs of that family.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::{
    maps::{EndpointKey6, HEALTH_DOWN, HEALTH_UP, PathMeta},
    net::{IPPROTO_TCP, IPPROTO_UDP},
};

use crate::{
    config::{Config, Family, Path, Protocol, Vip},
    control::{
        health::Health,
        policy::{self, Decision, PathView},
    },
    datapath::maps::Admin,
};

/// The key of a configured VIP, in the form both families share (`VipInfo::key`).
pub fn vip_key(v: &Vip) -> EndpointKey6 {
    EndpointKey6::of(v.address, v.service.map(|s| (proto(s.protocol), s.port)))
}

pub(crate) fn proto(p: Protocol) -> u8 {
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
    /// Disabled by an operator: no new flows, and its flows move.
    pub disabled: bool,
    /// Drained by an operator until then: no new flows, but the path stays up in the datapath,
    /// so established TCP connections keep it (the transition the drain makes); disabled at
    /// that time. Never set beside `disabled`.
    pub draining: Option<SystemTime>,
    /// Round-trip time of the last successful probe.
    pub rtt: Option<Duration>,
    /// When `health` or `disabled` last changed.
    pub changed: SystemTime,
    /// Probes succeed, but client TCP handshakes to the path go unanswered (the daemon's
    /// datapath check).
    pub suspect: bool,
}

impl PathState {
    /// Takes what an operator said of the path.
    pub fn apply_admin(&mut self, admin: Admin) {
        self.disabled = admin == Admin::Disabled;
        self.draining = match admin {
            Admin::Draining { until } => Some(until),
            _ => None,
        };
    }

    /// What an operator said of the path, as `LB_ADMIN` keeps it.
    pub fn admin(&self) -> Admin {
        match (self.disabled, self.draining) {
            (true, _) => Admin::Disabled,
            (false, Some(until)) => Admin::Draining { until },
            (false, None) => Admin::Enabled,
        }
    }
}

impl Default for PathState {
    fn default() -> Self {
        Self {
            health: None,
            disabled: false,
            draining: None,
            rtt: None,
            changed: UNIX_EPOCH,
            suspect: false,
        }
    }
}

pub(crate) fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Decode a path's state from pinned meta (restart: never "unknown means down").
pub fn path_state_from(meta: &PathMeta, admin: Admin) -> PathState {
    PathState {
        health: match meta.health {
            HEALTH_UP => Some(Health::Up),
            HEALTH_DOWN => Some(Health::Down),
            _ => None,
        },
        disabled: admin == Admin::Disabled,
        draining: match admin {
            Admin::Draining { until } => Some(until),
            Admin::Enabled | Admin::Disabled => None,
        },
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
    /// By target id (one per family of a target with paths of both, see [`TargetIds`]).
    pub decisions: BTreeMap<u32, Decision>,
    /// By target id: the transition in force, if any.
    pub transitions: BTreeMap<u32, Transition>,
    /// By target id: when a target with announcements on went from no usable path to one; its
    /// addresses wait [`Model::settle_time`] before they are announced (see [`Model::settle`]).
    pub settling: BTreeMap<u32, SystemTime>,
    /// By target id: the half of its ring tables the current ring is in.
    pub ring_half: BTreeMap<u32, u8>,
    /// By target id: [`TargetValue::exc_clear`], as the last exception sweep left it.
    pub exc_clear: BTreeMap<u32, u64>,
    /// Path addresses as pinned state had them (restart: a path whose address changed in the
    /// new configuration starts unknown).
    pub pinned_addresses: BTreeMap<u32, IpAddr>,
}

impl Model {
    /// A model for `config`, keeping the ids, path states and decisions `previous` has for the
    /// same names (a path whose address changed starts unknown). Decisions are then recomputed.
    pub fn new(config: Config, previous: &Model) -> Option<Model> {
        let ids = Ids::assign(&config, &previous.ids, &previous.config)?;
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
                        draining: s.draining,
                        ..PathState::default()
                    },
                    None => PathState::default(),
                };
                paths.insert(*id, state);
            }
        }
        // A target keeps its decision, transition and ring half only under the same name (and
        // the same family, for one with paths of both): an id freed and given to another
        // target, or to another family, starts afresh.
        let kept: BTreeSet<u32> = ids.kept_targets(&previous.ids, &config, &previous.config);
        let decisions = ids
            .targets
            .values()
            .map(|id| {
                let d = kept
                    .contains(&id)
                    .then(|| previous.decisions.get(&id).cloned())
                    .flatten();
                (id, d.unwrap_or(Decision::None))
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
            settling: keep(&previous.settling, &kept),
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
                announce: None,
                settle_max: crate::config::DEFAULT_SETTLE_MAX,
            },
            ids: Ids::default(),
            paths: BTreeMap::new(),
            decisions: BTreeMap::new(),
            transitions: BTreeMap::new(),
            settling: BTreeMap::new(),
            ring_half: BTreeMap::new(),
            exc_clear: BTreeMap::new(),
            pinned_addresses: BTreeMap::new(),
        }
    }

    pub fn address_of(&self, path: u32) -> Option<IpAddr> {
        self.config
            .targets
            .iter()
            .flat_map(|t| t.paths.iter().map(move |p| (t, p)))
            .find(|(t, p)| self.ids.paths.get(&(t.name.clone(), p.name.clone())) == Some(&path))
            .map(|(_, p)| p.address)
            .or_else(|| self.pinned_addresses.get(&path).copied())
    }

    /// Recomputes every target's decision; returns the target ids whose decision changed.
    pub fn decide_all(&mut self) -> Vec<u32> {
        let names: Vec<String> = self.config.targets.iter().map(|t| t.name.clone()).collect();
        names.iter().flat_map(|n| self.decide(n)).collect()
    }

    /// Recomputes the decisions of target `name` (one, or one per family); returns the target
    /// ids whose decision changed.
    pub fn decide(&mut self, name: &str) -> Vec<u32> {
        let ids: Vec<u32> = self.ids.targets.of(name).map(|(_, id)| id).collect();
        ids.into_iter().filter(|id| self.decide_id(*id)).collect()
    }

    /// Recomputes the decision of target id `id` from its paths ([`Model::paths_of`]) with its
    /// target's policy; whether it changed.
    fn decide_id(&mut self, id: u32) -> bool {
        let Some((name, _)) = self.ids.targets.key_of(id) else {
            return false;
        };
        let Some(t) = self.config.target(name) else {
            return false;
        };
        let views: Vec<PathView> = self
            .paths_of(id)
            .into_iter()
            .filter_map(|p| {
                let pid = *self.ids.paths.get(&(t.name.clone(), p.name.clone()))?;
                let s = self.paths.get(&pid).cloned().unwrap_or_default();
                Some(PathView {
                    id: pid,
                    name: p.name.clone(),
                    priority: p.priority,
                    weight: p.weight,
                    health: s.health,
                    // A draining path takes no new flows: to the policy, it is disabled.
                    disabled: s.disabled || s.draining.is_some(),
                })
            })
            .collect();
        let previous = self.decisions.get(&id).cloned().unwrap_or(Decision::None);
        let next = policy::decide(t.mode, t.preempt, t.all_down, &views, &previous);
        if next == previous {
            return false;
        }
        // Announced, a target that comes back from no usable path settles first (`settle`).
        match (&previous, &next) {
            (Decision::None, _) if self.config.announce.is_some() => {
                self.settling.insert(id, SystemTime::now());
            }
            (_, Decision::None) => {
                self.settling.remove(&id);
            }
            _ => {}
        }
        // The decision in force becomes the previous one when some of its flows may still be
        // on a usable path: a ring (the datapath checks each path), or a single path that is up
        // and not disabled (a draining one is: that is what keeps its connections). Otherwise
        // no connection could be kept: no transition.
        let keeps_flows = match &previous {
            Decision::Ring(_) => true,
            Decision::Single(p) => self
                .paths
                .get(p)
                .is_some_and(|s| s.health == Some(Health::Up) && !s.disabled),
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
        true
    }

    /// The configured paths target id `tid` chooses from: all of its target's, or those of its
    /// family for a target with paths of both.
    pub fn paths_of(&self, tid: u32) -> Vec<&Path> {
        let Some((name, family)) = self.ids.targets.key_of(tid) else {
            return Vec::new();
        };
        let Some(t) = self.config.target(name) else {
            return Vec::new();
        };
        t.paths
            .iter()
            .filter(|p| family.is_none_or(|f| Family::of(p.address) == f))
            .collect()
    }

    /// The target id that serves VIP `vip`: its target's id for the VIP's family.
    pub fn target_of(&self, vip: &Vip) -> Option<u32> {
        self.ids
            .targets
            .serving(&vip.target, Family::of(vip.address))
    }

    /// How long a target that came back from no usable path settles before its addresses are
    /// announced: `(rise + 1) × interval` of its slowest path, so that paths recovering
    /// together (an edge's links coming back) have all risen and its decision is the one
    /// every edge makes.
    pub fn settle_time(&self, tid: u32) -> Duration {
        self.paths_of(tid)
            .iter()
            .map(|p| p.probe.interval * (p.probe.rise + 1))
            .max()
            .unwrap_or_default()
    }

    /// Whether every enabled path of target `tid` is up (what a target coming back waits for,
    /// within `announce.settle_max_s`); of a target with paths of both families, every one of
    /// the id's family: each family settles on its own.
    pub fn all_paths_up(&self, tid: u32) -> bool {
        let Some(name) = self.target_name(tid) else {
            return true;
        };
        self.paths_of(tid).iter().all(|p| {
            self.ids
                .paths
                .get(&(name.to_owned(), p.name.clone()))
                .and_then(|pid| self.paths.get(pid))
                .is_some_and(|s| s.disabled || s.draining.is_some() || s.health == Some(Health::Up))
        })
    }

    /// Whether target `tid`, settling since `since`, has settled by `now`: its decision has
    /// held [`Model::settle_time`], and every enabled path has risen or `announce.settle_max_s`
    /// has passed. Paths that come back together (an edge's links) rise with skew: each
    /// path's route may be relearned over BGP on its own schedule, and a probe may fail once
    /// more. Announced with a path missing, this edge would send the connections that another
    /// edge keeps on that path elsewhere, and the VM would reset them.
    fn settled(&self, tid: u32, since: SystemTime, now: SystemTime) -> bool {
        let Ok(d) = now.duration_since(since) else {
            return false;
        };
        d >= self.settle_time(tid) && (d >= self.config.settle_max || self.all_paths_up(tid))
    }

    /// Ends the settling of the targets that have settled by `now` ([`Model::settled`]): their
    /// addresses may be announced. A transition that began while a target settled is dropped: no client
    /// reached this edge under its previous decision (the address was not announced), and a
    /// connection that moves here from another edge must follow the decision every edge
    /// makes, not this edge's history. Returns the targets whose transition was dropped (their
    /// entries change).
    pub fn settle(&mut self, now: SystemTime) -> Vec<u32> {
        let settled: Vec<u32> = self
            .settling
            .iter()
            .filter(|(tid, since)| self.settled(**tid, **since, now))
            .map(|(tid, _)| *tid)
            .collect();
        let mut changed = Vec::new();
        for tid in settled {
            self.settling.remove(&tid);
            if self.transitions.remove(&tid).is_some() {
                changed.push(tid);
            }
        }
        changed
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
    pub fn rule_path<A: lb_common::hash::HashAddr>(
        &self,
        tid: u32,
        key: &lb_common::maps::FlowKey<A>,
    ) -> Option<u32> {
        if self.transitions.contains_key(&tid) {
            return None;
        }
        match self.decisions.get(&tid)? {
            Decision::Single(p) => Some(*p),
            Decision::Ring(r) => r.get(lb_common::hash::ring_slot(key) as usize).copied(),
            Decision::None => None,
        }
    }

    /// The name of target id `id`.
    pub fn target_name(&self, id: u32) -> Option<&str> {
        self.ids.targets.key_of(id).map(|(n, _)| n)
    }

    /// Target id `id` as the log names it: the target's name, and the family for one of the
    /// two ids of a target with paths of both (`web (IPv6)`).
    pub fn target_label(&self, id: u32) -> String {
        match self.ids.targets.key_of(id) {
            Some((name, None)) => name.to_owned(),
            Some((name, Some(family))) => format!("{name} ({family})"),
            None => format!("target {id}"),
        }
    }

    /// The (target name, path name) of path `id`.
    pub fn path_name(&self, id: u32) -> Option<(&str, &str)> {
        self.ids
            .paths
            .iter()
            .find(|(_, v)| **v == id)
            .map(|((t, p), _)| (t.as_str(), p.as_str()))
    }
}

mod ids;
mod tables;

pub use ids::{Ids, TargetIds, TargetKey};
