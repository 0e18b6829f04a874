//! The ids targets, paths and VIPs are given in the maps: kept across reloads, freed ids
//! quarantined for one generation.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::maps::{
    EndpointKey6, MAX_PATHS, MAX_TARGETS, MAX_VIPS, MAX_VIPS_PER_TARGET, decode_name,
};

use crate::{config::Config, control::model::vip_key, datapath::tables::Tables};

/// Ids of targets (by name), paths (by target and path name) and VIPs (by key) in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ids {
    pub targets: BTreeMap<String, u32>,
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
