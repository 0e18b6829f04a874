//! Everything the control plane writes into the maps, as plain data ([`Tables`]), and the one
//! place that writes it: [`apply`] compares what the maps hold with what is wanted, plans the
//! difference as exact writes ([`Plan`]) in an order that never shows the datapath a half-made
//! entry, then commits them through the [`Store`] trait (the real maps, or an in-memory fake in
//! tests), undoing what was written when a write fails.

use std::{collections::BTreeMap, sync::Arc};

use lb_common::maps::{
    Addr6, EndpointKey, EndpointKey6, NO_ID, PathMeta, PathValue, RevValue, RevValue6, Settings,
    TARGET_MODE_NONE, TARGET_MODE_RING, TARGET_MODE_SINGLE, TargetMeta, TargetValue, VipInfo,
};

use crate::datapath::Error;

/// The control plane's part of the maps, by id. The tables keyed by an address come in twins,
/// one per family, as the maps do (`LB_REV_NAT` and `LB_REV_NAT6`, `LB_ADDRS` and `LB_ADDRS6`);
/// a VIP's key says its family (`LB_VIPS` or `LB_VIPS6`, `Maps::set_vip`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tables {
    pub vips: BTreeMap<u32, VipInfo>,
    /// Reverse NAT of IPv4 path addresses (to IPv4 VIPs).
    pub rev_nat: BTreeMap<EndpointKey, RevValue>,
    /// Reverse NAT of IPv6 path addresses (to IPv6 VIPs).
    pub rev_nat6: BTreeMap<EndpointKey6, RevValue6>,
    pub targets: BTreeMap<u32, TargetValue>,
    /// Consistent-hash tables by (target, half): the current ring of the targets in
    /// `TARGET_MODE_RING`, and the previous one of those in a transition from a ring.
    pub rings: BTreeMap<(u32, u8), Arc<[u32]>>,
    pub paths: BTreeMap<u32, PathValue>,
    pub target_meta: BTreeMap<u32, TargetMeta>,
    pub path_meta: BTreeMap<u32, PathMeta>,
    /// Every IPv4 VIP and path address → `ADDR_*` bits.
    pub addrs: BTreeMap<[u8; 4], u32>,
    /// Every IPv6 VIP and path address → `ADDR_*` bits.
    pub addrs6: BTreeMap<Addr6, u32>,
    pub settings: Settings,
}

impl Tables {
    /// Whether the current decision of `value`, target `id`'s (its ring as these tables hold
    /// it), may send a flow to path `path`. Not the previous decision: the datapath follows
    /// that only to a path that is up and still the target's.
    fn target_uses(&self, id: u32, value: &TargetValue, path: u32) -> bool {
        match value.mode {
            TARGET_MODE_SINGLE => value.active == path,
            TARGET_MODE_RING => self
                .rings
                .get(&(id, value.ring_half))
                .is_some_and(|r| r.contains(&path)),
            _ => false,
        }
    }
}

/// Where [`apply`] writes. Removing an entry means writing its zero value for arrays.
pub trait Store {
    fn set_vip(&mut self, id: u32, info: VipInfo) -> Result<(), Error>;
    fn remove_vip(&mut self, id: u32) -> Result<(), Error>;
    fn set_rev_nat(&mut self, key: EndpointKey, value: RevValue) -> Result<(), Error>;
    fn remove_rev_nat(&mut self, key: &EndpointKey) -> Result<(), Error>;
    fn set_rev_nat6(&mut self, key: EndpointKey6, value: RevValue6) -> Result<(), Error>;
    fn remove_rev_nat6(&mut self, key: &EndpointKey6) -> Result<(), Error>;
    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<(), Error>;
    fn set_ring(&mut self, target: u32, half: u8, slots: &[u32]) -> Result<(), Error>;
    fn set_path(&mut self, id: u32, value: PathValue) -> Result<(), Error>;
    fn set_target_meta(&mut self, id: u32, value: TargetMeta) -> Result<(), Error>;
    fn set_path_meta(&mut self, id: u32, value: PathMeta) -> Result<(), Error>;
    fn set_addr(&mut self, addr: [u8; 4], kind: u32) -> Result<(), Error>;
    fn remove_addr(&mut self, addr: [u8; 4]) -> Result<(), Error>;
    fn set_addr6(&mut self, addr: Addr6, kind: u32) -> Result<(), Error>;
    fn remove_addr6(&mut self, addr: Addr6) -> Result<(), Error>;
    fn set_settings(&mut self, value: Settings) -> Result<(), Error>;
    fn refresh_filter(&mut self) -> Result<(), Error>;
    /// What the store holds, read back (after a failed undo).
    fn read(&self) -> Result<Tables, Error>;
}

/// One map write of a [`Plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Settings(Settings),
    PathMeta(u32, PathMeta),
    Path(u32, PathValue),
    TargetMeta(u32, TargetMeta),
    Ring(u32, u8, Arc<[u32]>),
    Target(u32, TargetValue),
    Addr([u8; 4], u32),
    RemoveAddr([u8; 4]),
    Addr6(Addr6, u32),
    RemoveAddr6(Addr6),
    RevNat(EndpointKey, RevValue),
    RemoveRevNat(EndpointKey),
    RevNat6(EndpointKey6, RevValue6),
    RemoveRevNat6(EndpointKey6),
    Vip(u32, VipInfo),
    RemoveVip(u32),
    /// Rebuild the address pre-filter from what the maps hold.
    RefreshFilter,
}

impl Write {
    fn write(&self, store: &mut impl Store) -> Result<(), Error> {
        match self {
            Write::Settings(v) => store.set_settings(*v),
            Write::PathMeta(id, v) => store.set_path_meta(*id, *v),
            Write::Path(id, v) => store.set_path(*id, *v),
            Write::TargetMeta(id, v) => store.set_target_meta(*id, *v),
            Write::Ring(id, half, slots) => store.set_ring(*id, *half, slots),
            Write::Target(id, v) => store.set_target(*id, *v),
            Write::Addr(addr, kind) => store.set_addr(*addr, *kind),
            Write::RemoveAddr(addr) => store.remove_addr(*addr),
            Write::Addr6(addr, kind) => store.set_addr6(*addr, *kind),
            Write::RemoveAddr6(addr) => store.remove_addr6(*addr),
            Write::RevNat(key, v) => store.set_rev_nat(*key, *v),
            Write::RemoveRevNat(key) => store.remove_rev_nat(key),
            Write::RevNat6(key, v) => store.set_rev_nat6(*key, *v),
            Write::RemoveRevNat6(key) => store.remove_rev_nat6(key),
            Write::Vip(id, v) => store.set_vip(*id, *v),
            Write::RemoveVip(id) => store.remove_vip(*id),
            Write::RefreshFilter => store.refresh_filter(),
        }
    }

    /// What the write does to tables holding what the maps hold (the zero values that stand
    /// for "removed" in the arrays remove the entry, as [`Maps::read_tables`] would not see it).
    fn land(&self, t: &mut Tables) {
        match self {
            Write::Settings(v) => t.settings = *v,
            Write::PathMeta(id, v) if *v == PathMeta::default() => {
                t.path_meta.remove(id);
            }
            Write::PathMeta(id, v) => {
                t.path_meta.insert(*id, *v);
            }
            Write::Path(id, v) if *v == PathValue::default() => {
                t.paths.remove(id);
            }
            Write::Path(id, v) => {
                t.paths.insert(*id, *v);
            }
            Write::TargetMeta(id, v) if *v == TargetMeta::default() => {
                t.target_meta.remove(id);
            }
            Write::TargetMeta(id, v) => {
                t.target_meta.insert(*id, *v);
            }
            Write::Ring(id, half, slots) => {
                t.rings.insert((*id, *half), slots.clone());
            }
            Write::Target(id, v) if *v == TargetValue::none() => {
                t.targets.remove(id);
            }
            Write::Target(id, v) => {
                t.targets.insert(*id, *v);
            }
            Write::Addr(addr, kind) => {
                t.addrs.insert(*addr, *kind);
            }
            Write::RemoveAddr(addr) => {
                t.addrs.remove(addr);
            }
            Write::Addr6(addr, kind) => {
                t.addrs6.insert(*addr, *kind);
            }
            Write::RemoveAddr6(addr) => {
                t.addrs6.remove(addr);
            }
            Write::RevNat(key, v) => {
                t.rev_nat.insert(*key, *v);
            }
            Write::RemoveRevNat(key) => {
                t.rev_nat.remove(key);
            }
            Write::RevNat6(key, v) => {
                t.rev_nat6.insert(*key, *v);
            }
            Write::RemoveRevNat6(key) => {
                t.rev_nat6.remove(key);
            }
            Write::Vip(id, v) => {
                t.vips.insert(*id, *v);
            }
            Write::RemoveVip(id) => {
                t.vips.remove(id);
            }
            Write::RefreshFilter => {}
        }
    }
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::net::{Ipv4Addr, Ipv6Addr};
        match self {
            Write::Settings(_) => write!(f, "settings"),
            Write::PathMeta(id, _) => write!(f, "path {id}'s description"),
            Write::Path(id, v) if *v == PathValue::default() => write!(f, "path {id} (removal)"),
            Write::Path(id, _) => write!(f, "path {id}"),
            Write::TargetMeta(id, _) => write!(f, "target {id}'s description"),
            Write::Ring(id, half, _) => write!(f, "target {id}'s ring {half}"),
            Write::Target(id, v) if *v == TargetValue::none() => {
                write!(f, "target {id} (removal)")
            }
            Write::Target(id, _) => write!(f, "target {id}'s decision"),
            Write::Addr(addr, _) => write!(f, "address {}", Ipv4Addr::from(*addr)),
            Write::RemoveAddr(addr) => write!(f, "address {} (removal)", Ipv4Addr::from(*addr)),
            Write::Addr6(addr, _) => write!(f, "address {}", Ipv6Addr::from(*addr)),
            Write::RemoveAddr6(addr) => write!(f, "address {} (removal)", Ipv6Addr::from(*addr)),
            Write::RevNat(key, _) => write!(f, "reverse NAT of {}", key.ip()),
            Write::RemoveRevNat(key) => write!(f, "reverse NAT of {} (removal)", key.ip()),
            Write::RevNat6(key, _) => write!(f, "reverse NAT of {}", key.ip()),
            Write::RemoveRevNat6(key) => write!(f, "reverse NAT of {} (removal)", key.ip()),
            Write::Vip(id, v) => write!(f, "VIP {id} ({})", v.key.ip()),
            Write::RemoveVip(id) => write!(f, "VIP {id} (removal)"),
            Write::RefreshFilter => write!(f, "the address pre-filter"),
        }
    }
}

/// The exact map writes that take maps holding `current` to `desired`, computed from the
/// tables alone before anything is written ([`Plan::new`]), then made ([`Plan::commit`]).
///
/// Order, so the datapath never follows a reference to something not yet there, nor keeps
/// using something already gone:
/// 1. paths (and their meta), then target decisions (rings before the targets that use them),
///    then reverse NAT, then VIPs, then the address pre-filter: everything a new or changed
///    VIP leads to exists before the VIP does;
/// 2. then removals, the other way round: VIPs, reverse NAT, pre-filter, targets, paths.
///
/// Each table keyed by an address is written beside its twin of the other family, in the same
/// place of that order (IPv4 first).
///
/// A path that moves to another target id (a path of a target with both families whose address
/// changed family: each family has its own id) is written after the other decisions and before
/// those that choose it: its old id's current decision (the datapath follows that without
/// checking the path's target) stops naming it before it takes an address of the other family.
/// A previous decision may still name it: the datapath follows one only to a path that is up
/// and still the target's.
///
/// A removed path's slot is written down (state 0), so exceptions still naming it go stale.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub writes: Vec<Write>,
}

impl Plan {
    pub fn new(current: &Tables, desired: &Tables) -> Plan {
        fn changed<T: PartialEq>(current: Option<&T>, desired: &T) -> bool {
            current != Some(desired)
        }
        let mut w = Vec::new();

        if current.settings != desired.settings {
            w.push(Write::Settings(desired.settings));
        }
        for (id, meta) in &desired.path_meta {
            if changed(current.path_meta.get(id), meta) {
                w.push(Write::PathMeta(*id, *meta));
            }
        }
        // Paths that change target id: written after the decisions that stop using them.
        let moving: Vec<u32> = desired
            .paths
            .iter()
            .filter(|(id, p)| current.paths.get(id).is_some_and(|c| c.target != p.target))
            .map(|(id, _)| *id)
            .collect();
        for (id, path) in &desired.paths {
            if changed(current.paths.get(id), path) && !moving.contains(id) {
                w.push(Write::Path(*id, *path));
            }
        }
        for (id, meta) in &desired.target_meta {
            if changed(current.target_meta.get(id), meta) {
                w.push(Write::TargetMeta(*id, *meta));
            }
        }
        for ((id, half), ring) in &desired.rings {
            if changed(current.rings.get(&(*id, *half)), ring) {
                // The datapath may be reading this half as the target's previous ring: end
                // that transition first, so no old connection sees a half-written table.
                if let Some(t) = current.targets.get(id)
                    && t.prev_mode == TARGET_MODE_RING
                    && t.ring_half ^ 1 == *half
                {
                    let mut interim = *t;
                    interim.prev_mode = TARGET_MODE_NONE;
                    interim.prev_active = NO_ID;
                    w.push(Write::Target(*id, interim));
                }
                w.push(Write::Ring(*id, *half, ring.clone()));
            }
        }
        let (mut early, mut late) = (Vec::new(), Vec::new());
        for (id, target) in &desired.targets {
            if changed(current.targets.get(id), target) {
                let uses_moving = moving.iter().any(|p| desired.target_uses(*id, target, *p));
                let to = if uses_moving { &mut late } else { &mut early };
                to.push(Write::Target(*id, *target));
            }
        }
        w.extend(early);
        for id in &moving {
            w.push(Write::Path(*id, desired.paths[id]));
        }
        w.extend(late);
        let mut filter = false;
        for (addr, kind) in &desired.addrs {
            if changed(current.addrs.get(addr), kind) {
                w.push(Write::Addr(*addr, *kind));
                filter = true;
            }
        }
        for (addr, kind) in &desired.addrs6 {
            if changed(current.addrs6.get(addr), kind) {
                w.push(Write::Addr6(*addr, *kind));
                filter = true;
            }
        }
        for (key, rev) in &desired.rev_nat {
            if changed(current.rev_nat.get(key), rev) {
                w.push(Write::RevNat(*key, *rev));
                filter = true;
            }
        }
        for (key, rev) in &desired.rev_nat6 {
            if changed(current.rev_nat6.get(key), rev) {
                w.push(Write::RevNat6(*key, *rev));
                filter = true;
            }
        }
        for (id, vip) in &desired.vips {
            if changed(current.vips.get(id), vip) {
                // A VIP id moving to another key: drop the old key first (a VIP write adds the
                // new one).
                if let Some(old) = current.vips.get(id)
                    && old.key != vip.key
                {
                    w.push(Write::RemoveVip(*id));
                }
                w.push(Write::Vip(*id, *vip));
                filter = true;
            }
        }
        if filter {
            w.push(Write::RefreshFilter);
        }

        let mut removed = false;
        for id in current
            .vips
            .keys()
            .filter(|id| !desired.vips.contains_key(id))
        {
            w.push(Write::RemoveVip(*id));
            removed = true;
        }
        for key in current
            .rev_nat
            .keys()
            .filter(|k| !desired.rev_nat.contains_key(k))
        {
            w.push(Write::RemoveRevNat(*key));
            removed = true;
        }
        for key in current
            .rev_nat6
            .keys()
            .filter(|k| !desired.rev_nat6.contains_key(k))
        {
            w.push(Write::RemoveRevNat6(*key));
            removed = true;
        }
        for addr in current
            .addrs
            .keys()
            .filter(|a| !desired.addrs.contains_key(*a))
        {
            w.push(Write::RemoveAddr(*addr));
            removed = true;
        }
        for addr in current
            .addrs6
            .keys()
            .filter(|a| !desired.addrs6.contains_key(*a))
        {
            w.push(Write::RemoveAddr6(*addr));
            removed = true;
        }
        if removed {
            w.push(Write::RefreshFilter);
        }
        for id in current
            .targets
            .keys()
            .filter(|id| !desired.targets.contains_key(id))
        {
            w.push(Write::Target(*id, TargetValue::none()));
        }
        for id in current
            .target_meta
            .keys()
            .filter(|id| !desired.target_meta.contains_key(id))
        {
            w.push(Write::TargetMeta(*id, TargetMeta::default()));
        }
        for id in current
            .paths
            .keys()
            .filter(|id| !desired.paths.contains_key(id))
        {
            w.push(Write::Path(*id, PathValue::default()));
        }
        for id in current
            .path_meta
            .keys()
            .filter(|id| !desired.path_meta.contains_key(id))
        {
            w.push(Write::PathMeta(*id, PathMeta::default()));
        }
        Plan { writes: w }
    }

    /// Makes the writes in order, on maps holding `current`. When one fails, what was written
    /// is undone (a plan from where the maps got back to `current`, the failed write counted
    /// as made since it may be half made): the error says whether that worked and what the
    /// maps hold.
    pub fn commit(
        &self,
        store: &mut impl Store,
        current: &Tables,
    ) -> Result<usize, Box<ApplyError>> {
        let mut reached = current.clone();
        for (i, w) in self.writes.iter().enumerate() {
            if let Err(source) = w.write(store) {
                w.land(&mut reached);
                let undo = Plan::new(&reached, current);
                let (undone, holds) = match undo.commit_once(store) {
                    Ok(()) => (Ok(()), current.clone()),
                    // What the maps hold is no longer known from here: read it.
                    Err(e) => (Err(e), store.read().unwrap_or(reached)),
                };
                return Err(Box::new(ApplyError {
                    failed: w.to_string(),
                    index: i,
                    total: self.writes.len(),
                    source,
                    undone,
                    holds,
                }));
            }
            w.land(&mut reached);
        }
        Ok(self.entries())
    }

    /// How many entries the plan writes (a pre-filter refresh is not one).
    pub fn entries(&self) -> usize {
        self.writes
            .iter()
            .filter(|w| **w != Write::RefreshFilter)
            .count()
    }

    /// The writes in order, stopping at the first failure (an undo is not undone).
    fn commit_once(&self, store: &mut impl Store) -> Result<(), Error> {
        self.writes.iter().try_for_each(|w| w.write(store))
    }
}

/// A [`Plan`] that failed partway.
#[derive(Debug)]
pub struct ApplyError {
    /// The write that failed, as the log shows it.
    pub failed: String,
    pub index: usize,
    pub total: usize,
    pub source: Error,
    /// Whether the writes before it were undone; if not, why.
    pub undone: Result<(), Error>,
    /// What the maps hold now: the tables before the plan when undone, else as read back.
    pub holds: Tables,
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "map write {} of {} ({}) failed: {}; ",
            self.index + 1,
            self.total,
            self.failed,
            self.source
        )?;
        match &self.undone {
            Ok(()) if self.index == 0 => {
                write!(f, "nothing was written: the previous state is in force")
            }
            Ok(()) => write!(
                f,
                "the {} writes before it were undone: the previous state is in force",
                self.index
            ),
            Err(e) => write!(
                f,
                "undoing the {} writes before it failed too ({e}): the maps hold a mix of the previous and the new state, read back for the next attempt",
                self.index
            ),
        }
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Writes what differs between `current` (what the maps hold) and `desired` ([`Plan`]: planned
/// first, then committed, undone on a failure); returns how many entries were written.
pub fn apply(
    store: &mut impl Store,
    current: &Tables,
    desired: &Tables,
) -> Result<usize, Box<ApplyError>> {
    Plan::new(current, desired).commit(store, current)
}

mod maps;
mod mem;

pub use mem::MemStore;
