//! Everything the control plane writes into the maps, as plain data ([`Tables`]), and the one
//! place that writes it: [`apply`] compares what the maps hold with what is wanted and writes
//! only the difference, in an order that never shows the datapath a half-made entry, through
//! the [`Store`] trait (the real maps, or an in-memory fake in tests).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use lb_common::maps::{
    EndpointKey, NO_ID, PathMeta, PathValue, RING_SIZE, RevValue, Settings, TARGET_MODE_NONE,
    TARGET_MODE_RING, TargetMeta, TargetValue, VipInfo,
};

use crate::{dataplane::Error, maps::Maps};

/// The control plane's part of the maps, by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub vips: BTreeMap<u32, VipInfo>,
    pub rev_nat: BTreeMap<EndpointKey, RevValue>,
    pub targets: BTreeMap<u32, TargetValue>,
    /// Consistent-hash tables by (target, half): the current ring of the targets in
    /// `TARGET_MODE_RING`, and the previous one of those in a transition from a ring.
    pub rings: BTreeMap<(u32, u8), Arc<[u32]>>,
    pub paths: BTreeMap<u32, PathValue>,
    pub target_meta: BTreeMap<u32, TargetMeta>,
    pub path_meta: BTreeMap<u32, PathMeta>,
    /// Every VIP and path address → `ADDR_*` bits.
    pub addrs: BTreeMap<[u8; 4], u32>,
    pub settings: Settings,
}

/// Where [`apply`] writes. Removing an entry means writing its zero value for arrays.
pub trait Store {
    fn set_vip(&mut self, id: u32, info: VipInfo) -> Result<(), Error>;
    fn remove_vip(&mut self, id: u32) -> Result<(), Error>;
    fn set_rev_nat(&mut self, key: EndpointKey, value: RevValue) -> Result<(), Error>;
    fn remove_rev_nat(&mut self, key: &EndpointKey) -> Result<(), Error>;
    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<(), Error>;
    fn set_ring(&mut self, target: u32, half: u8, slots: &[u32]) -> Result<(), Error>;
    fn set_path(&mut self, id: u32, value: PathValue) -> Result<(), Error>;
    fn set_target_meta(&mut self, id: u32, value: TargetMeta) -> Result<(), Error>;
    fn set_path_meta(&mut self, id: u32, value: PathMeta) -> Result<(), Error>;
    fn set_addr(&mut self, addr: [u8; 4], kind: u32) -> Result<(), Error>;
    fn remove_addr(&mut self, addr: [u8; 4]) -> Result<(), Error>;
    fn set_settings(&mut self, value: Settings) -> Result<(), Error>;
    fn refresh_filter(&mut self) -> Result<(), Error>;
}

/// Writes what differs between `current` (what the maps hold) and `desired`; returns how many
/// entries were written.
///
/// Order, so the datapath never follows a reference to something not yet there, nor keeps
/// using something already gone:
/// 1. paths (and their meta), then target decisions (rings before the targets that use them),
///    then reverse NAT, then VIPs, then the address pre-filter: everything a new or changed
///    VIP leads to exists before the VIP does;
/// 2. then removals, the other way round: VIPs, reverse NAT, pre-filter, targets, paths.
///
/// A removed path's slot is written down (state 0), so exceptions still naming it go stale.
pub fn apply(store: &mut impl Store, current: &Tables, desired: &Tables) -> Result<usize, Error> {
    fn changed<T: PartialEq>(current: Option<&T>, desired: &T) -> bool {
        current != Some(desired)
    }
    let mut n = 0;

    if current.settings != desired.settings {
        store.set_settings(desired.settings)?;
        n += 1;
    }
    for (id, meta) in &desired.path_meta {
        if changed(current.path_meta.get(id), meta) {
            store.set_path_meta(*id, *meta)?;
            n += 1;
        }
    }
    for (id, path) in &desired.paths {
        if changed(current.paths.get(id), path) {
            store.set_path(*id, *path)?;
            n += 1;
        }
    }
    for (id, meta) in &desired.target_meta {
        if changed(current.target_meta.get(id), meta) {
            store.set_target_meta(*id, *meta)?;
            n += 1;
        }
    }
    for ((id, half), ring) in &desired.rings {
        if changed(current.rings.get(&(*id, *half)), ring) {
            // The datapath may be reading this half as the target's previous ring: end that
            // transition first, so no old connection sees a half-written table.
            if let Some(t) = current.targets.get(id)
                && t.prev_mode == TARGET_MODE_RING
                && t.ring_half ^ 1 == *half
            {
                let mut interim = *t;
                interim.prev_mode = TARGET_MODE_NONE;
                interim.prev_active = NO_ID;
                store.set_target(*id, interim)?;
                n += 1;
            }
            store.set_ring(*id, *half, ring)?;
            n += 1;
        }
    }
    for (id, target) in &desired.targets {
        if changed(current.targets.get(id), target) {
            store.set_target(*id, *target)?;
            n += 1;
        }
    }
    let mut filter = false;
    for (addr, kind) in &desired.addrs {
        if changed(current.addrs.get(addr), kind) {
            store.set_addr(*addr, *kind)?;
            filter = true;
            n += 1;
        }
    }
    for (key, rev) in &desired.rev_nat {
        if changed(current.rev_nat.get(key), rev) {
            store.set_rev_nat(*key, *rev)?;
            filter = true;
            n += 1;
        }
    }
    for (id, vip) in &desired.vips {
        if changed(current.vips.get(id), vip) {
            // A VIP id moving to another key: drop the old key first (set_vip writes the new).
            if let Some(old) = current.vips.get(id)
                && old.key != vip.key
            {
                store.remove_vip(*id)?;
            }
            store.set_vip(*id, *vip)?;
            filter = true;
            n += 1;
        }
    }
    if filter {
        store.refresh_filter()?;
    }

    let mut removed = false;
    for id in current
        .vips
        .keys()
        .filter(|id| !desired.vips.contains_key(id))
    {
        store.remove_vip(*id)?;
        removed = true;
        n += 1;
    }
    for key in current
        .rev_nat
        .keys()
        .filter(|k| !desired.rev_nat.contains_key(k))
    {
        store.remove_rev_nat(key)?;
        removed = true;
        n += 1;
    }
    for addr in current
        .addrs
        .keys()
        .filter(|a| !desired.addrs.contains_key(*a))
    {
        store.remove_addr(*addr)?;
        removed = true;
        n += 1;
    }
    if removed {
        store.refresh_filter()?;
    }
    for id in current
        .targets
        .keys()
        .filter(|id| !desired.targets.contains_key(id))
    {
        store.set_target(*id, TargetValue::none())?;
        n += 1;
    }
    for id in current
        .target_meta
        .keys()
        .filter(|id| !desired.target_meta.contains_key(id))
    {
        store.set_target_meta(*id, TargetMeta::default())?;
        n += 1;
    }
    for id in current
        .paths
        .keys()
        .filter(|id| !desired.paths.contains_key(id))
    {
        store.set_path(*id, PathValue::default())?;
        n += 1;
    }
    for id in current
        .path_meta
        .keys()
        .filter(|id| !desired.path_meta.contains_key(id))
    {
        store.set_path_meta(*id, PathMeta::default())?;
        n += 1;
    }
    Ok(n)
}

impl Store for Maps {
    fn set_vip(&mut self, id: u32, info: VipInfo) -> Result<(), Error> {
        Maps::set_vip(self, id, info)
    }
    fn remove_vip(&mut self, id: u32) -> Result<(), Error> {
        Maps::remove_vip(self, id)
    }
    fn set_rev_nat(&mut self, key: EndpointKey, value: RevValue) -> Result<(), Error> {
        Maps::set_rev_nat(self, key, value)
    }
    fn remove_rev_nat(&mut self, key: &EndpointKey) -> Result<(), Error> {
        Maps::remove_rev_nat(self, key)
    }
    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<(), Error> {
        Maps::set_target(self, id, value)
    }
    fn set_ring(&mut self, target: u32, half: u8, slots: &[u32]) -> Result<(), Error> {
        Maps::set_ring(self, target, half, slots)
    }
    fn set_path(&mut self, id: u32, value: PathValue) -> Result<(), Error> {
        Maps::set_path(self, id, value)
    }
    fn set_target_meta(&mut self, id: u32, value: TargetMeta) -> Result<(), Error> {
        Maps::set_target_meta(self, id, value)
    }
    fn set_path_meta(&mut self, id: u32, value: PathMeta) -> Result<(), Error> {
        Maps::set_path_meta(self, id, value)
    }
    fn set_addr(&mut self, addr: [u8; 4], kind: u32) -> Result<(), Error> {
        Maps::set_addr(self, addr, kind)
    }
    fn remove_addr(&mut self, addr: [u8; 4]) -> Result<(), Error> {
        Maps::remove_addr(self, addr)
    }
    fn set_settings(&mut self, value: Settings) -> Result<(), Error> {
        Maps::set_settings(self, value)
    }
    fn refresh_filter(&mut self) -> Result<(), Error> {
        Maps::refresh_filter(self)
    }
}

impl Maps {
    /// Reads the control plane's part of the maps back: targets and paths whose meta says they
    /// are in use, every VIP id with a description, every reverse-NAT entry, and the rings of
    /// ring-mode targets.
    pub fn read_tables(&self) -> Result<Tables, Error> {
        let mut t = Tables::default();
        for id in 0..lb_common::maps::MAX_TARGETS {
            let meta = self.target_meta(id)?;
            if meta.used == 0 {
                continue;
            }
            let value = self.target(id)?;
            for (mode, half) in [
                (value.mode, value.ring_half),
                (value.prev_mode, value.ring_half ^ 1),
            ] {
                if mode == TARGET_MODE_RING {
                    let ring: Result<Vec<u32>, Error> = (0..RING_SIZE)
                        .map(|slot| self.ring_slot(id, half, slot))
                        .collect();
                    t.rings.insert((id, half & 1), ring?.into());
                }
            }
            t.targets.insert(id, value);
            t.target_meta.insert(id, meta);
        }
        for id in 0..lb_common::maps::MAX_PATHS {
            let meta = self.path_meta(id)?;
            if meta.used == 0 {
                continue;
            }
            t.paths.insert(id, self.path(id)?);
            t.path_meta.insert(id, meta);
        }
        // VIP ids through the hash map: a few entries, not MAX_VIPS array reads.
        for (_, id) in self.vips()? {
            let info = self.vip(id)?;
            if info != VipInfo::default() {
                t.vips.insert(id, info);
            }
        }
        t.rev_nat = self.rev_nat()?.into_iter().collect();
        t.addrs = self.addrs()?.into_iter().collect();
        t.settings = self.settings()?;
        Ok(t)
    }
}

/// An in-memory [`Store`]: what a sequence of writes leaves, for tests of [`apply`] and of the
/// daemon's decisions.
#[derive(Debug, Default)]
pub struct MemStore {
    pub tables: Tables,
    /// Every write, in order, as a short description ("path 3", "vip 1", "filter", ...).
    pub log: Vec<String>,
    /// VIP keys as the hash map holds them.
    pub vip_keys: BTreeSet<EndpointKey>,
}

impl MemStore {
    /// What [`Maps::read_tables`] would read back from maps holding these writes.
    pub fn read(&self) -> Tables {
        let t = &self.tables;
        let used_targets: BTreeSet<u32> = t
            .target_meta
            .iter()
            .filter(|(_, m)| m.used != 0)
            .map(|(id, _)| *id)
            .collect();
        let used_paths: BTreeSet<u32> = t
            .path_meta
            .iter()
            .filter(|(_, m)| m.used != 0)
            .map(|(id, _)| *id)
            .collect();
        Tables {
            vips: t
                .vips
                .iter()
                .filter(|(_, v)| **v != VipInfo::default())
                .map(|(k, v)| (*k, *v))
                .collect(),
            rev_nat: t.rev_nat.clone(),
            targets: t
                .targets
                .iter()
                .filter(|(id, _)| used_targets.contains(id))
                .map(|(k, v)| (*k, *v))
                .collect(),
            rings: t
                .rings
                .iter()
                .filter(|((id, half), _)| {
                    used_targets.contains(id)
                        && t.targets.get(id).is_some_and(|v| {
                            (v.mode == TARGET_MODE_RING && v.ring_half == *half)
                                || (v.prev_mode == TARGET_MODE_RING && v.ring_half ^ 1 == *half)
                        })
                })
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            paths: t
                .paths
                .iter()
                .filter(|(id, _)| used_paths.contains(id))
                .map(|(k, v)| (*k, *v))
                .collect(),
            target_meta: t
                .target_meta
                .iter()
                .filter(|(_, m)| m.used != 0)
                .map(|(k, v)| (*k, *v))
                .collect(),
            path_meta: t
                .path_meta
                .iter()
                .filter(|(_, m)| m.used != 0)
                .map(|(k, v)| (*k, *v))
                .collect(),
            addrs: t.addrs.clone(),
            settings: t.settings,
        }
    }
}

impl Store for MemStore {
    fn set_vip(&mut self, id: u32, info: VipInfo) -> Result<(), Error> {
        self.vip_keys.insert(info.key);
        self.tables.vips.insert(id, info);
        self.log.push(format!("vip {id}"));
        Ok(())
    }
    fn remove_vip(&mut self, id: u32) -> Result<(), Error> {
        if let Some(info) = self.tables.vips.remove(&id) {
            self.vip_keys.remove(&info.key);
        }
        self.log.push(format!("-vip {id}"));
        Ok(())
    }
    fn set_rev_nat(&mut self, key: EndpointKey, value: RevValue) -> Result<(), Error> {
        self.tables.rev_nat.insert(key, value);
        self.log.push(format!("rev {}", key.ip()));
        Ok(())
    }
    fn remove_rev_nat(&mut self, key: &EndpointKey) -> Result<(), Error> {
        self.tables.rev_nat.remove(key);
        self.log.push(format!("-rev {}", key.ip()));
        Ok(())
    }
    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<(), Error> {
        self.tables.targets.insert(id, value);
        self.log.push(format!("target {id}"));
        Ok(())
    }
    fn set_ring(&mut self, target: u32, half: u8, slots: &[u32]) -> Result<(), Error> {
        self.tables.rings.insert((target, half), slots.into());
        self.log.push(format!("ring {target}/{half}"));
        Ok(())
    }
    fn set_path(&mut self, id: u32, value: PathValue) -> Result<(), Error> {
        self.tables.paths.insert(id, value);
        self.log.push(format!("path {id}"));
        Ok(())
    }
    fn set_target_meta(&mut self, id: u32, value: TargetMeta) -> Result<(), Error> {
        self.tables.target_meta.insert(id, value);
        self.log.push(format!("target-meta {id}"));
        Ok(())
    }
    fn set_path_meta(&mut self, id: u32, value: PathMeta) -> Result<(), Error> {
        self.tables.path_meta.insert(id, value);
        self.log.push(format!("path-meta {id}"));
        Ok(())
    }
    fn set_addr(&mut self, addr: [u8; 4], kind: u32) -> Result<(), Error> {
        self.tables.addrs.insert(addr, kind);
        self.log
            .push(format!("addr {}", std::net::Ipv4Addr::from(addr)));
        Ok(())
    }
    fn remove_addr(&mut self, addr: [u8; 4]) -> Result<(), Error> {
        self.tables.addrs.remove(&addr);
        self.log
            .push(format!("-addr {}", std::net::Ipv4Addr::from(addr)));
        Ok(())
    }
    fn set_settings(&mut self, value: Settings) -> Result<(), Error> {
        self.tables.settings = value;
        self.log.push("settings".into());
        Ok(())
    }
    fn refresh_filter(&mut self) -> Result<(), Error> {
        self.log.push("filter".into());
        Ok(())
    }
}
