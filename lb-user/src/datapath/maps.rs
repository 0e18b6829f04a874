//! Typed access to the datapath's maps: one wrapper per map of `lb_common::maps`, writes that
//! keep the address pre-filter in step with the VIP and reverse-NAT tables, and per-CPU sums.
//! The same wrappers serve a freshly loaded object and maps opened from their pins (the CLI).

use std::{collections::BTreeMap, path::Path};

use aya::{
    Ebpf,
    maps::{Array, DevMapHash, HashMap, IterableMap as _, Map, MapData, MapError, PerCpuArray},
};
use lb_common::{
    Counter,
    hash::{addr_slot, addr_slot6},
    maps::{
        self as m, ADDR_FILTER_SIZE, Addr6, ControlMeta, EndpointKey, EndpointKey6, FILTER_ADDR,
        FILTER_PATH_ADDR, FILTER_PATH_SERVICE, FILTER_VIP_ADDR, FILTER_VIP_SERVICE, FlowKey,
        FlowKey6, FlowValue, IfaceKey, IfaceMeta, PathMeta, PathSeen, PathValue, RING_SIZE,
        RevValue, RevValue6, Settings, TargetMeta, TargetValue, TrafficStats, VipInfo, VipValue,
    },
};

use crate::datapath::Error;

fn op<T>(map: &'static str, op: &'static str, r: Result<T, MapError>) -> Result<T, Error> {
    r.map_err(|source| Error::MapOp { map, op, source })
}

/// [`op`] for a lookup or removal where an absent key is an answer, not an error.
fn op_absent<T>(
    map: &'static str,
    op: &'static str,
    r: Result<T, MapError>,
) -> Result<Option<T>, Error> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(source) => Err(Error::MapOp { map, op, source }),
    }
}

/// Where the maps come from: a loaded object, or a pin directory.
enum Source<'a> {
    Object(&'a mut Ebpf),
    Pins(&'a Path),
}

impl Source<'_> {
    fn get<T>(&mut self, name: &'static str) -> Result<T, Error>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        let map = match self {
            Source::Object(ebpf) => ebpf.take_map(name).ok_or(Error::MissingMap { name })?,
            Source::Pins(dir) => {
                let path = dir.join(name);
                let data = MapData::from_pin(&path).map_err(|source| Error::OpenPin {
                    path: path.clone(),
                    source,
                })?;
                Map::from_map_data(data).map_err(|source| Error::MapType { name, source })?
            }
        };
        T::try_from(map).map_err(|source| Error::MapType { name, source })
    }
}

/// Every map of the datapath, typed.
pub struct Maps {
    vips: HashMap<MapData, EndpointKey, VipValue>,
    vip_info: Array<MapData, VipInfo>,
    rev_nat: HashMap<MapData, EndpointKey, RevValue>,
    targets: Array<MapData, TargetValue>,
    paths: Array<MapData, PathValue>,
    ring: Array<MapData, u32>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    addr_filter: Array<MapData, u32>,
    tx_ports: DevMapHash<MapData>,
    counters: PerCpuArray<MapData, u64>,
    pair_stats: PerCpuArray<MapData, TrafficStats>,
    meta: Array<MapData, ControlMeta>,
    target_meta: Array<MapData, TargetMeta>,
    path_meta: Array<MapData, PathMeta>,
    admin: Array<MapData, u32>,
    path_seen: Array<MapData, PathSeen>,
    ifaces: HashMap<MapData, IfaceKey, IfaceMeta>,
    addrs: HashMap<MapData, [u8; 4], u32>,
    path_ifaces: Array<MapData, u32>,
    settings: Array<MapData, Settings>,
    outbound: HashMap<MapData, FlowKey, FlowValue>,
    exc_seq: Array<MapData, u64>,
    vips6: HashMap<MapData, EndpointKey6, VipValue>,
    rev_nat6: HashMap<MapData, EndpointKey6, RevValue6>,
    addrs6: HashMap<MapData, Addr6, u32>,
    flows6: HashMap<MapData, FlowKey6, FlowValue>,
    outbound6: HashMap<MapData, FlowKey6, FlowValue>,
    /// What `addr_filter` holds, so a refresh writes only the slots that change.
    filter_shadow: Vec<u32>,
    /// Whether `filter_shadow` was read (maps opened from pins skip its 65,536 reads until a
    /// refresh needs them: readers such as the CLI and the metrics never do).
    filter_known: bool,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Maps")
    }
}

impl Maps {
    /// Takes the maps out of a loaded object. `fresh`: they were just created, all zero; else
    /// (pinned maps reused) the filter's contents are read back.
    pub fn take(ebpf: &mut Ebpf, fresh: bool) -> Result<Self, Error> {
        Self::from_source(Source::Object(ebpf), fresh)
    }

    /// Opens the maps pinned in `dir` (one file per map, named as in `lb_common::maps`).
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::from_source(Source::Pins(dir), false)
    }

    fn from_source(mut src: Source<'_>, fresh: bool) -> Result<Self, Error> {
        let read_filter = !fresh && matches!(src, Source::Object(_));
        let mut maps = Self {
            vips: src.get(m::VIPS)?,
            vip_info: src.get(m::VIP_INFO)?,
            rev_nat: src.get(m::REV_NAT)?,
            targets: src.get(m::TARGETS)?,
            paths: src.get(m::PATHS)?,
            ring: src.get(m::RING)?,
            flows: src.get(m::FLOWS)?,
            addr_filter: src.get(m::ADDR_FILTER)?,
            tx_ports: src.get(m::TX_PORTS)?,
            counters: src.get(m::COUNTERS)?,
            pair_stats: src.get(m::PAIR_STATS)?,
            meta: src.get(m::META)?,
            target_meta: src.get(m::TARGET_META)?,
            path_meta: src.get(m::PATH_META)?,
            admin: src.get(m::ADMIN)?,
            path_seen: src.get(m::PATH_SEEN)?,
            ifaces: src.get(m::IFACES)?,
            addrs: src.get(m::ADDRS)?,
            path_ifaces: src.get(m::PATH_IFACES)?,
            settings: src.get(m::SETTINGS)?,
            outbound: src.get(m::OUTBOUND)?,
            exc_seq: src.get(m::EXC_SEQ)?,
            vips6: src.get(m::VIPS6)?,
            rev_nat6: src.get(m::REV_NAT6)?,
            addrs6: src.get(m::ADDRS6)?,
            flows6: src.get(m::FLOWS6)?,
            outbound6: src.get(m::OUTBOUND6)?,
            filter_shadow: vec![0; ADDR_FILTER_SIZE as usize],
            filter_known: fresh,
        };
        if read_filter {
            maps.read_filter()?;
        }
        Ok(maps)
    }

    fn read_filter(&mut self) -> Result<(), Error> {
        for (slot, bits) in self.addr_filter.iter().enumerate() {
            if let Some(shadow) = self.filter_shadow.get_mut(slot) {
                *shadow = op(m::ADDR_FILTER, "read", bits)?;
            }
        }
        self.filter_known = true;
        Ok(())
    }

    // ---- Control-plane state. ----

    pub fn meta(&self) -> Result<ControlMeta, Error> {
        op(m::META, "get", self.meta.get(&0, 0))
    }

    pub fn set_meta(&mut self, value: ControlMeta) -> Result<(), Error> {
        op(m::META, "set", self.meta.set(0, value, 0))
    }

    pub fn target_meta(&self, id: u32) -> Result<TargetMeta, Error> {
        op(m::TARGET_META, "get", self.target_meta.get(&id, 0))
    }

    pub fn set_target_meta(&mut self, id: u32, value: TargetMeta) -> Result<(), Error> {
        op(m::TARGET_META, "set", self.target_meta.set(id, value, 0))
    }

    /// What the datapath saw of path `id`'s TCP handshakes.
    pub fn path_seen(&self, id: u32) -> Result<PathSeen, Error> {
        op(m::PATH_SEEN, "get", self.path_seen.get(&id, 0))
    }

    /// Forgets what the datapath saw of path `id` (a freed id must not pass it on).
    pub fn clear_path_seen(&mut self, id: u32) -> Result<(), Error> {
        self.set_path_seen(id, PathSeen::default())
    }

    /// Overwrites what the datapath saw of path `id` (tests set up a past).
    pub fn set_path_seen(&mut self, id: u32, seen: PathSeen) -> Result<(), Error> {
        op(m::PATH_SEEN, "set", self.path_seen.set(id, seen, 0))
    }

    pub fn path_meta(&self, id: u32) -> Result<PathMeta, Error> {
        op(m::PATH_META, "get", self.path_meta.get(&id, 0))
    }

    pub fn set_path_meta(&mut self, id: u32, value: PathMeta) -> Result<(), Error> {
        op(m::PATH_META, "set", self.path_meta.set(id, value, 0))
    }

    /// What an operator said of path `id`.
    pub fn admin(&self, id: u32) -> Result<Admin, Error> {
        Ok(Admin::from_raw(op(
            m::ADMIN,
            "get",
            self.admin.get(&id, 0),
        )?))
    }

    pub fn set_admin(&mut self, id: u32, admin: Admin) -> Result<(), Error> {
        op(m::ADMIN, "set", self.admin.set(id, admin.raw(), 0))
    }

    // ---- Addresses, settings, arrival interfaces. ----

    pub fn set_addr(&mut self, addr: [u8; 4], kind: u32) -> Result<(), Error> {
        op(m::ADDRS, "set", self.addrs.insert(addr, kind, 0))
    }

    pub fn remove_addr(&mut self, addr: [u8; 4]) -> Result<(), Error> {
        op_absent(m::ADDRS, "remove", self.addrs.remove(&addr)).map(drop)
    }

    /// Every VIP and path address with its `ADDR_*` bits.
    pub fn addrs(&self) -> Result<Vec<([u8; 4], u32)>, Error> {
        self.addrs
            .iter()
            .map(|r| op(m::ADDRS, "iterate", r))
            .collect()
    }

    pub fn set_addr6(&mut self, addr: Addr6, kind: u32) -> Result<(), Error> {
        op(m::ADDRS6, "set", self.addrs6.insert(addr, kind, 0))
    }

    pub fn remove_addr6(&mut self, addr: Addr6) -> Result<(), Error> {
        op_absent(m::ADDRS6, "remove", self.addrs6.remove(&addr)).map(drop)
    }

    /// Every IPv6 VIP and path address with its `ADDR_*` bits.
    pub fn addrs6(&self) -> Result<Vec<(Addr6, u32)>, Error> {
        self.addrs6
            .iter()
            .map(|r| op(m::ADDRS6, "iterate", r))
            .collect()
    }

    pub fn settings(&self) -> Result<Settings, Error> {
        op(m::SETTINGS, "get", self.settings.get(&0, 0))
    }

    pub fn set_settings(&mut self, value: Settings) -> Result<(), Error> {
        op(m::SETTINGS, "set", self.settings.set(0, value, 0))
    }

    /// The interface path `id`'s replies must arrive on (0: any).
    pub fn path_iface(&self, id: u32) -> Result<u32, Error> {
        op(m::PATH_IFACES, "get", self.path_ifaces.get(&id, 0))
    }

    pub fn set_path_iface(&mut self, id: u32, ifindex: u32) -> Result<(), Error> {
        op(m::PATH_IFACES, "set", self.path_ifaces.set(id, ifindex, 0))
    }

    /// Exceptions the VM's packets pinned (`LB_OUTBOUND`), at most `limit` of them.
    pub fn outbound(&self, limit: usize) -> Result<Vec<(FlowKey, FlowValue)>, Error> {
        self.outbound
            .iter()
            .take(limit)
            .map(|r| op(m::OUTBOUND, "iterate", r))
            .collect()
    }

    /// How the daemon attached `iface`, if it recorded that.
    pub fn iface(&self, iface: &str) -> Result<Option<IfaceMeta>, Error> {
        op_absent(m::IFACES, "get", self.ifaces.get(&m::encode_str(iface), 0))
    }

    pub fn set_iface(&mut self, iface: &str, meta: IfaceMeta) -> Result<(), Error> {
        op(
            m::IFACES,
            "set",
            self.ifaces.insert(m::encode_str(iface), meta, 0),
        )
    }

    pub fn remove_iface(&mut self, iface: &str) -> Result<(), Error> {
        op_absent(
            m::IFACES,
            "remove",
            self.ifaces.remove(&m::encode_str(iface)),
        )
        .map(drop)
    }

    /// The exception table's capacity (`LB_FLOWS`, `flow_table_size`).
    pub fn flow_capacity(&self) -> Result<u32, Error> {
        let info = op(m::FLOWS, "info", self.flows.map().info())?;
        Ok(info.max_entries())
    }

    // ---- Configuration tables. ----

    /// Adds or replaces VIP `id`: its description first, then its key (in `LB_VIPS` or
    /// `LB_VIPS6` by its family), so the datapath never finds an id without one. Call
    /// [`Maps::refresh_filter`] once a batch of changes is in.
    pub fn set_vip(&mut self, id: u32, info: VipInfo) -> Result<(), Error> {
        op(m::VIP_INFO, "set", self.vip_info.set(id, info, 0))?;
        let value = VipValue::of(id, &info);
        match info.key.narrowed() {
            Some(key) => op(m::VIPS, "insert", self.vips.insert(key, value, 0)),
            None => op(m::VIPS6, "insert", self.vips6.insert(info.key, value, 0)),
        }
    }

    /// Removes VIP `id`: its key first, then its description (its flows stop matching it).
    pub fn remove_vip(&mut self, id: u32) -> Result<(), Error> {
        let info = self.vip(id)?;
        match info.key.narrowed() {
            Some(key) => op_absent(m::VIPS, "remove", self.vips.remove(&key))?,
            None => op_absent(m::VIPS6, "remove", self.vips6.remove(&info.key))?,
        };
        op(
            m::VIP_INFO,
            "set",
            self.vip_info.set(id, VipInfo::default(), 0),
        )
    }

    pub fn vip(&self, id: u32) -> Result<VipInfo, Error> {
        op(m::VIP_INFO, "get", self.vip_info.get(&id, 0))
    }

    /// Every VIP key and its id.
    pub fn vips(&self) -> Result<Vec<(EndpointKey6, u32)>, Error> {
        let v4 = self
            .vips
            .iter()
            .map(|r| op(m::VIPS, "iterate", r).map(|(k, v)| (k.widened(), v.id)));
        let v6 = self
            .vips6
            .iter()
            .map(|r| op(m::VIPS6, "iterate", r).map(|(k, v)| (k, v.id)));
        v4.chain(v6).collect()
    }

    /// Adds or replaces a reverse-NAT entry. Call [`Maps::refresh_filter`] afterwards.
    pub fn set_rev_nat(&mut self, key: EndpointKey, value: RevValue) -> Result<(), Error> {
        op(m::REV_NAT, "insert", self.rev_nat.insert(key, value, 0))
    }

    pub fn remove_rev_nat(&mut self, key: &EndpointKey) -> Result<(), Error> {
        op_absent(m::REV_NAT, "remove", self.rev_nat.remove(key)).map(drop)
    }

    pub fn rev_nat(&self) -> Result<Vec<(EndpointKey, RevValue)>, Error> {
        op(m::REV_NAT, "iterate", self.rev_nat.iter().collect())
    }

    /// Adds or replaces an IPv6 reverse-NAT entry. Call [`Maps::refresh_filter`] afterwards.
    pub fn set_rev_nat6(&mut self, key: EndpointKey6, value: RevValue6) -> Result<(), Error> {
        op(m::REV_NAT6, "insert", self.rev_nat6.insert(key, value, 0))
    }

    pub fn remove_rev_nat6(&mut self, key: &EndpointKey6) -> Result<(), Error> {
        op_absent(m::REV_NAT6, "remove", self.rev_nat6.remove(key)).map(drop)
    }

    pub fn rev_nat6(&self) -> Result<Vec<(EndpointKey6, RevValue6)>, Error> {
        op(m::REV_NAT6, "iterate", self.rev_nat6.iter().collect())
    }

    pub fn set_target(&mut self, id: u32, value: TargetValue) -> Result<(), Error> {
        op(m::TARGETS, "set", self.targets.set(id, value, 0))
    }

    pub fn target(&self, id: u32) -> Result<TargetValue, Error> {
        op(m::TARGETS, "get", self.targets.get(&id, 0))
    }

    pub fn set_path(&mut self, id: u32, value: PathValue) -> Result<(), Error> {
        op(m::PATHS, "set", self.paths.set(id, value, 0))
    }

    pub fn path(&self, id: u32) -> Result<PathValue, Error> {
        op(m::PATHS, "get", self.paths.get(&id, 0))
    }

    /// Writes target `target`'s consistent-hash table in half `half` (`RING_SIZE` path ids),
    /// only the slots that change. The datapath switches halves with the target's decision, so
    /// it never follows a half-written current ring.
    pub fn set_ring(&mut self, target: u32, half: u8, slots: &[u32]) -> Result<(), Error> {
        assert_eq!(
            slots.len(),
            RING_SIZE as usize,
            "a ring has RING_SIZE slots"
        );
        for (i, id) in slots.iter().enumerate() {
            let index = m::ring_index(target, half, i as u32);
            if op(m::RING, "get", self.ring.get(&index, 0))? != *id {
                op(m::RING, "set", self.ring.set(index, id, 0))?;
            }
        }
        Ok(())
    }

    pub fn ring_slot(&self, target: u32, half: u8, slot: u32) -> Result<u32, Error> {
        op(
            m::RING,
            "get",
            self.ring.get(&m::ring_index(target, half, slot), 0),
        )
    }

    /// Lets the programs redirect to `ifindex`.
    pub fn add_tx_port(&mut self, ifindex: u32) -> Result<(), Error> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|source| Error::TxPort { ifindex, source })
    }

    /// Whether `ifindex` is in the redirect map.
    pub fn has_tx_port(&self, ifindex: u32) -> bool {
        self.tx_ports.get(ifindex, 0).is_ok()
    }

    pub fn remove_tx_port(&mut self, ifindex: u32) -> Result<(), Error> {
        op(m::TX_PORTS, "remove", self.tx_ports.remove(ifindex))
    }

    /// Recomputes the address pre-filter from the VIP and reverse-NAT tables and writes the
    /// slots that change. Call it after adding entries (they take effect when their bit is
    /// set) and after removing them (a stale bit only costs the datapath one lookup).
    pub fn refresh_filter(&mut self) -> Result<(), Error> {
        if !self.filter_known {
            self.read_filter()?;
        }
        let mut want = vec![0u32; ADDR_FILTER_SIZE as usize];
        for key in self.vips.keys() {
            let key = op(m::VIPS, "iterate", key)?;
            let bit = if key.is_whole_address() {
                FILTER_VIP_ADDR
            } else {
                FILTER_VIP_SERVICE
            };
            want[addr_slot(key.addr) as usize] |= bit;
        }
        for key in self.rev_nat.keys() {
            let key = op(m::REV_NAT, "iterate", key)?;
            let bit = if key.is_whole_address() {
                FILTER_PATH_ADDR
            } else {
                FILTER_PATH_SERVICE
            };
            want[addr_slot(key.addr) as usize] |= bit;
        }
        for key in self.addrs.keys() {
            let addr = op(m::ADDRS, "iterate", key)?;
            want[addr_slot(addr) as usize] |= FILTER_ADDR;
        }
        for key in self.vips6.keys() {
            let key = op(m::VIPS6, "iterate", key)?;
            let bit = if key.is_whole_address() {
                FILTER_VIP_ADDR
            } else {
                FILTER_VIP_SERVICE
            };
            want[addr_slot6(key.addr) as usize] |= bit;
        }
        for key in self.rev_nat6.keys() {
            let key = op(m::REV_NAT6, "iterate", key)?;
            let bit = if key.is_whole_address() {
                FILTER_PATH_ADDR
            } else {
                FILTER_PATH_SERVICE
            };
            want[addr_slot6(key.addr) as usize] |= bit;
        }
        for key in self.addrs6.keys() {
            let addr = op(m::ADDRS6, "iterate", key)?;
            want[addr_slot6(addr) as usize] |= FILTER_ADDR;
        }
        for (slot, (bits, old)) in want.iter().zip(self.filter_shadow.iter_mut()).enumerate() {
            if bits != old {
                op(
                    m::ADDR_FILTER,
                    "set",
                    self.addr_filter.set(slot as u32, bits, 0),
                )?;
                *old = *bits;
            }
        }
        Ok(())
    }

    // ---- The exception tables. ----

    pub fn flow(&self, key: &FlowKey) -> Result<Option<FlowValue>, Error> {
        op_absent(m::FLOWS, "get", self.flows.get(key, 0))
    }

    pub fn set_flow(&mut self, key: FlowKey, value: FlowValue) -> Result<(), Error> {
        op(m::FLOWS, "insert", self.flows.insert(key, value, 0))
    }

    /// Every exception client packets pinned (`LB_FLOWS`), up to `limit`.
    pub fn flows(&self, limit: usize) -> Result<Vec<(FlowKey, FlowValue)>, Error> {
        op(m::FLOWS, "iterate", self.flows.iter().take(limit).collect())
    }

    pub fn flow6(&self, key: &FlowKey6) -> Result<Option<FlowValue>, Error> {
        op_absent(m::FLOWS6, "get", self.flows6.get(key, 0))
    }

    pub fn set_flow6(&mut self, key: FlowKey6, value: FlowValue) -> Result<(), Error> {
        op(m::FLOWS6, "insert", self.flows6.insert(key, value, 0))
    }

    /// Every IPv6 exception client packets pinned (`LB_FLOWS6`), up to `limit`.
    pub fn flows6(&self, limit: usize) -> Result<Vec<(FlowKey6, FlowValue)>, Error> {
        op(
            m::FLOWS6,
            "iterate",
            self.flows6.iter().take(limit).collect(),
        )
    }

    /// IPv6 exceptions the VM's packets pinned (`LB_OUTBOUND6`), at most `limit` of them.
    pub fn outbound6(&self, limit: usize) -> Result<Vec<(FlowKey6, FlowValue)>, Error> {
        self.outbound6
            .iter()
            .take(limit)
            .map(|r| op(m::OUTBOUND6, "iterate", r))
            .collect()
    }

    /// Removes an exception from `LB_FLOWS` (`outbound`: from `LB_OUTBOUND`); absent is fine.
    pub fn remove_exception(&mut self, outbound: bool, key: &FlowKey) -> Result<(), Error> {
        if outbound {
            op_absent(m::OUTBOUND, "remove", self.outbound.remove(key)).map(drop)
        } else {
            op_absent(m::FLOWS, "remove", self.flows.remove(key)).map(drop)
        }
    }

    /// Removes an exception from `LB_FLOWS6` (`outbound`: from `LB_OUTBOUND6`); absent is fine.
    pub fn remove_exception6(&mut self, outbound: bool, key: &FlowKey6) -> Result<(), Error> {
        if outbound {
            op_absent(m::OUTBOUND6, "remove", self.outbound6.remove(key)).map(drop)
        } else {
            op_absent(m::FLOWS6, "remove", self.flows6.remove(key)).map(drop)
        }
    }

    /// Sets target `id`'s pin count (`LB_EXC_SEQ`, the datapath's): for tests that place
    /// exceptions by hand.
    pub fn set_exc_seq(&mut self, id: u32, seq: u64) -> Result<(), Error> {
        op(m::EXC_SEQ, "set", self.exc_seq.set(id, seq, 0))
    }

    /// How many exceptions the datapath has pinned for target `id` (`LB_EXC_SEQ`).
    pub fn exc_seq(&self, id: u32) -> Result<u64, Error> {
        op(m::EXC_SEQ, "get", self.exc_seq.get(&id, 0))
    }

    // ---- Counters, summed over CPUs. ----

    pub fn counter(&self, c: Counter) -> Result<u64, Error> {
        let values = op(m::COUNTERS, "get", self.counters.get(&(c as u32), 0))?;
        Ok(values.iter().sum())
    }

    /// Every counter, by name order of declaration.
    pub fn counters(&self) -> Result<BTreeMap<Counter, u64>, Error> {
        Counter::ALL
            .iter()
            .map(|c| Ok((*c, self.counter(*c)?)))
            .collect()
    }

    /// The traffic of VIP rank `rank` over path `path`, all CPUs.
    pub fn pair_stats(&self, path: u32, rank: u8) -> Result<TrafficStats, Error> {
        let slot = m::pair_slot(path, rank);
        sum(op(m::PAIR_STATS, "get", self.pair_stats.get(&slot, 0))?.iter())
    }

    /// A VIP's traffic (rank `rank`): over the paths of its target (`paths`).
    pub fn vip_stats(
        &self,
        rank: u8,
        paths: impl IntoIterator<Item = u32>,
    ) -> Result<TrafficStats, Error> {
        let mut total = TrafficStats::default();
        for path in paths {
            total.add(&self.pair_stats(path, rank)?);
        }
        Ok(total)
    }

    /// A path's traffic: over every VIP rank.
    pub fn path_stats(&self, path: u32) -> Result<TrafficStats, Error> {
        let mut total = TrafficStats::default();
        for rank in 0..m::MAX_VIPS_PER_TARGET as u8 {
            total.add(&self.pair_stats(path, rank)?);
        }
        Ok(total)
    }
}

fn sum<'a>(values: impl Iterator<Item = &'a TrafficStats>) -> Result<TrafficStats, Error> {
    Ok(values.fold(TrafficStats::default(), |mut acc, v| {
        acc.add(v);
        acc
    }))
}

/// What an operator said of a path (`lb path`), as `LB_ADMIN` keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admin {
    /// Nothing, or enabled again.
    Enabled,
    /// No new flows, and its flows move (as if down).
    Disabled,
    /// No new flows; established TCP connections keep the path until `until` (whole
    /// seconds), when it is disabled.
    Draining { until: std::time::SystemTime },
}

impl Admin {
    pub fn from_raw(raw: u32) -> Self {
        match raw {
            lb_common::maps::ADMIN_ENABLED => Admin::Enabled,
            lb_common::maps::ADMIN_DISABLED => Admin::Disabled,
            s => Admin::Draining {
                until: std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(s)),
            },
        }
    }

    /// The `LB_ADMIN` value: a drain's end in Unix seconds, rounded up (at least 2, which is
    /// 1970: such a drain has ended).
    pub fn raw(self) -> u32 {
        match self {
            Admin::Enabled => lb_common::maps::ADMIN_ENABLED,
            Admin::Disabled => lb_common::maps::ADMIN_DISABLED,
            Admin::Draining { until } => {
                let d = until
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                u32::try_from(s).unwrap_or(u32::MAX).max(2)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::Admin;

    #[test]
    fn admin_values_round_trip_and_drains_round_up() {
        for a in [Admin::Enabled, Admin::Disabled] {
            assert_eq!(Admin::from_raw(a.raw()), a);
        }
        let until = UNIX_EPOCH + Duration::from_millis(1_800_000_000_250);
        assert_eq!(Admin::Draining { until }.raw(), 1_800_000_001);
        assert_eq!(
            Admin::from_raw(1_800_000_001),
            Admin::Draining {
                until: UNIX_EPOCH + Duration::from_secs(1_800_000_001)
            }
        );
        // A drain that ended before the values it could be confused with is still a drain.
        assert_eq!(
            Admin::Draining { until: UNIX_EPOCH }.raw(),
            2,
            "never read back as enabled or disabled"
        );
    }
}
