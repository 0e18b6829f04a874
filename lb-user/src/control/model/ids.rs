//! The ids targets, paths and VIPs are given in the maps: kept across reloads, freed ids
//! quarantined for one generation.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::maps::{
    EndpointKey6, MAX_PATHS, MAX_TARGETS, MAX_VIPS, MAX_VIPS_PER_TARGET, decode_name,
};

use crate::{
    config::{Config, Family, Target},
    control::model::vip_key,
    datapath::tables::Tables,
};

/// Ids of targets (by name, and by family for a target with paths of both), paths (by target
/// and path name) and VIPs (by key) in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    pub targets: TargetIds,
    pub paths: BTreeMap<(String, String), u32>,
    pub vips: BTreeMap<EndpointKey6, u32>,
    /// Each VIP's rank among its target's VIPs: its column in `LB_PAIR_STATS`.
    pub vip_ranks: BTreeMap<EndpointKey6, u8>,
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

/// What a datapath target id stands for: a target's name, and the family it serves when the
/// target has paths of both families (`None`: the target's only family, whichever it is).
pub type TargetKey = (String, Option<Family>);

/// The datapath's target ids. A target whose paths are all of one family has one id (key
/// `(name, None)`), as it always had; a target with paths of both families has one per family
/// (keys `(name, Some(family))`): the datapath's decision for a packet to a VIP may only choose
/// paths of the VIP's family, so each family is decided, and looked up, under its own id (its own
/// decision, transition, ring and exception count).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetIds(BTreeMap<TargetKey, u32>);

impl TargetIds {
    /// The keys a target has: one, or one per family when its paths are of both.
    pub fn keys_for(target: &Target) -> Vec<TargetKey> {
        match target.families()[..] {
            [v4, v6] => vec![
                (target.name.clone(), Some(v4)),
                (target.name.clone(), Some(v6)),
            ],
            _ => vec![(target.name.clone(), None)],
        }
    }

    /// The ids of target `name` with the family each serves (`None`: the target's only one).
    pub fn of<'a>(&'a self, name: &str) -> impl Iterator<Item = (Option<Family>, u32)> + 'a {
        let name = name.to_owned();
        self.0
            .range((name.clone(), None)..=(name, Some(Family::V6)))
            .map(|((_, f), id)| (*f, *id))
    }

    /// The id that serves target `name`'s VIPs and paths of `family`.
    pub fn serving(&self, name: &str, family: Family) -> Option<u32> {
        let key = |f| (name.to_owned(), f);
        self.0
            .get(&key(Some(family)))
            .or_else(|| self.0.get(&key(None)))
            .copied()
    }

    /// The target (name, and family for one of a target's two ids) of id `id`.
    pub fn key_of(&self, id: u32) -> Option<(&str, Option<Family>)> {
        self.0
            .iter()
            .find(|(_, v)| **v == id)
            .map(|((n, f), _)| (n.as_str(), *f))
    }

    pub fn get(&self, key: &TargetKey) -> Option<u32> {
        self.0.get(key).copied()
    }

    pub fn insert(&mut self, key: TargetKey, id: u32) {
        self.0.insert(key, id);
    }

    /// Whether target `name` has an id.
    pub fn contains_key(&self, name: &str) -> bool {
        self.of(name).next().is_some()
    }

    /// How many ids are given (a target with paths of both families has two).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&TargetKey, &u32)> {
        self.0.iter()
    }

    pub fn values(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.values().copied()
    }
}

/// The id of a target that has one (its paths are of one family). Panics for a name without
/// one id, as a map's index panics for a missing key.
impl std::ops::Index<&str> for TargetIds {
    type Output = u32;
    fn index(&self, name: &str) -> &u32 {
        match self.0.get(&(name.to_owned(), None)) {
            Some(id) => id,
            None => panic!("target {name:?} has no single id"),
        }
    }
}

/// Targets with one id each (paths of one family), by name.
impl<const N: usize> From<[(String, u32); N]> for TargetIds {
    fn from(ids: [(String, u32); N]) -> Self {
        Self(ids.into_iter().map(|(n, id)| ((n, None), id)).collect())
    }
}

/// The target ids of `previous` (given for `previous_config`) under the keys `config` gives
/// them: a target that gains a family keeps its id for the family it had, one that loses a
/// family keeps the id of the family it keeps (so a reload that adds or removes a target's
/// IPv6 paths moves none of its IPv4 flows). A target of one family keeps its one id whatever
/// its family, as before there were two.
fn carried_targets(
    previous: &TargetIds,
    config: &Config,
    previous_config: &Config,
) -> BTreeMap<TargetKey, u32> {
    let only_family = |name: &str| match previous_config.target(name)?.families()[..] {
        [only] => Some(only),
        _ => None,
    };
    previous
        .0
        .iter()
        .map(|((name, family), id)| {
            let now = config.target(name).map(Target::families);
            let was = family.or_else(|| only_family(name));
            let key = match (now.as_deref(), was) {
                (Some([_, _, ..]), Some(f)) => (name.clone(), Some(f)),
                (Some([only]), Some(f)) if family.is_some() && *only == f => (name.clone(), None),
                _ => (name.clone(), *family),
            };
            (key, *id)
        })
        .collect()
}

impl Ids {
    /// Ids for `config`: what `previous` gave each name keeps its id (so a reload does not move
    /// flows), new names get the lowest free id. A target's ids follow its families (see
    /// [`TargetIds`]): `previous_config` is the configuration `previous` was given for, which
    /// tells the family of a target that had one id. `None` when a table is full (the
    /// configuration validation keeps within the capacities, so this does not happen for a
    /// valid file).
    pub fn assign(config: &Config, previous: &Ids, previous_config: &Config) -> Option<Ids> {
        let carried = carried_targets(&previous.targets, config, previous_config);
        let targets: Vec<TargetKey> = config
            .targets
            .iter()
            .flat_map(TargetIds::keys_for)
            .collect();
        let paths: Vec<(String, String)> = config
            .targets
            .iter()
            .flat_map(|t| t.paths.iter().map(|p| (t.name.clone(), p.name.clone())))
            .collect();
        let vips: Vec<EndpointKey6> = config.vips.iter().map(vip_key).collect();
        let mut vip_ranks = BTreeMap::new();
        for t in &config.targets {
            let keys: Vec<EndpointKey6> = config
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
            targets: TargetIds(assign_ids(&targets, &carried, MAX_TARGETS)?),
            paths: assign_ids(&paths, &previous.paths, MAX_PATHS)?,
            vips: assign_ids(&vips, &previous.vips, MAX_VIPS)?,
            vip_ranks,
        })
    }

    /// The target ids of `self` that stand for what they stood for in `previous` (the same
    /// target, and the same family of one with paths of both), as [`Ids::assign`] carried
    /// them over: the ids whose decision, transition and exception count may be kept.
    pub(crate) fn kept_targets(
        &self,
        previous: &Ids,
        config: &Config,
        previous_config: &Config,
    ) -> BTreeSet<u32> {
        let carried = carried_targets(&previous.targets, config, previous_config);
        self.targets
            .iter()
            .filter(|(key, id)| carried.get(*key) == Some(*id))
            .map(|(_, id)| *id)
            .collect()
    }

    /// The ids pinned maps use, read back from their meta entries. A name two target ids carry
    /// is a target with paths of both families: each id's family is that of its paths.
    pub fn from_tables(t: &Tables) -> Ids {
        let mut ids = Ids::default();
        let mut target_names = BTreeMap::new();
        let mut by_name: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (id, meta) in &t.target_meta {
            let name = decode_name(&meta.name).to_string();
            target_names.insert(*id, name.clone());
            by_name.entry(name).or_default().push(*id);
        }
        for (name, tids) in by_name {
            if let [id] = tids[..] {
                ids.targets.insert((name, None), id);
                continue;
            }
            for id in tids {
                let family = t
                    .paths
                    .values()
                    .find(|p| p.target == id)
                    .map_or(Family::V4, |p| Family::of(p.ip()));
                ids.targets.insert((name.clone(), Some(family)), id);
            }
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
