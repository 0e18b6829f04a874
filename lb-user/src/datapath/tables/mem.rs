//! An in-memory [`Store`] for tests: records every write and fails the ones it is told to.

use std::collections::BTreeSet;

use lb_common::maps::{
    Addr6, EndpointKey, EndpointKey6, PathMeta, PathValue, RevValue, RevValue6, Settings,
    TARGET_MODE_RING, TargetMeta, TargetValue, VipInfo,
};

use crate::datapath::{
    Error,
    tables::{Store, Tables},
};

/// An in-memory [`Store`]: what a sequence of writes leaves, for tests of [`apply`] and of the
/// daemon's decisions.
#[derive(Debug, Default)]
pub struct MemStore {
    pub tables: Tables,
    /// Every write, in order, as a short description ("path 3", "vip 1", "filter", ...).
    pub log: Vec<String>,
    /// VIP keys as the hash map holds them.
    pub vip_keys: BTreeSet<EndpointKey6>,
    /// Writes made or tried so far.
    pub calls: usize,
    /// The writes (by their number in `calls`, from 0) that fail, leaving nothing written.
    pub fail: BTreeSet<usize>,
}

impl MemStore {
    fn call(&mut self) -> Result<(), Error> {
        let n = self.calls;
        self.calls += 1;
        if self.fail.contains(&n) {
            return Err(Error::MapOp {
                map: "MemStore",
                op: "write",
                source: aya::maps::MapError::KeyNotFound,
            });
        }
        Ok(())
    }

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
            rev_nat6: t.rev_nat6.clone(),
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
            addrs6: t.addrs6.clone(),
            settings: t.settings,
        }
    }
}

impl Store for MemStore {
    fn set_vip(&mut self, id: u32, info: VipInfo) -> Result<(), Error> {
        self.call()?;
        self.vip_keys.insert(info.key);
        self.tables.vips.insert(id, info);
        self.log.push(format!("vip {id}"));
        Ok(())
    }
    fn remove_vip(&mut self, id: u32) -> Result<(), Error> {
        self.call()?;
        if let Some(info) = self.tables.vips.remove(&id) {
            self.vip_keys.remove(&info.key);
        }
        self.log.push(format!("-vip {id}"));
        Ok(())
    }
    fn set_rev_nat(&mut self, key: EndpointKey, value: RevValue) -> Result<(), Error> {
        self.call()?;
        self.tables.rev_nat.insert(key, value);
        self.log.push(format!("rev {}", key.ip()));
        Ok(())
    }
    fn remove_rev_nat(&mut self, key: &EndpointKey) -> Result<(), Error> {
        self.call()?;
        self.tables.rev_nat.remove(key);
        self.log.push(format!("-rev {}", key.ip()));
        Ok(())
    }
    fn set_rev_nat6(&mut self, key: EndpointKey6, value: RevValue6) -> Result<(), Error> {
        self.call()?;
        self.tables.rev_nat6.insert(key, value);
        self.log.push(format!("rev {}", key.ip()));
        Ok(())
    }
    fn remove_rev_nat6(&mut self, key: &EndpointKey6) -> Result<(), Error> {
        self.call()?;
        self.tables.rev_nat6.remove(key);
        self.log.push(format!("-rev {}", key.ip()));
        Ok(())
    }
    fn set_target(&mut self, id: u32, value: TargetValue) -> Result<(), Error> {
        self.call()?;
        self.tables.targets.insert(id, value);
        self.log.push(format!("target {id}"));
        Ok(())
    }
    fn set_ring(&mut self, target: u32, half: u8, slots: &[u32]) -> Result<(), Error> {
        self.call()?;
        self.tables.rings.insert((target, half), slots.into());
        self.log.push(format!("ring {target}/{half}"));
        Ok(())
    }
    fn set_path(&mut self, id: u32, value: PathValue) -> Result<(), Error> {
        self.call()?;
        self.tables.paths.insert(id, value);
        self.log.push(format!("path {id}"));
        Ok(())
    }
    fn set_target_meta(&mut self, id: u32, value: TargetMeta) -> Result<(), Error> {
        self.call()?;
        self.tables.target_meta.insert(id, value);
        self.log.push(format!("target-meta {id}"));
        Ok(())
    }
    fn set_path_meta(&mut self, id: u32, value: PathMeta) -> Result<(), Error> {
        self.call()?;
        self.tables.path_meta.insert(id, value);
        self.log.push(format!("path-meta {id}"));
        Ok(())
    }
    fn set_addr(&mut self, addr: [u8; 4], kind: u32) -> Result<(), Error> {
        self.call()?;
        self.tables.addrs.insert(addr, kind);
        self.log
            .push(format!("addr {}", std::net::Ipv4Addr::from(addr)));
        Ok(())
    }
    fn remove_addr(&mut self, addr: [u8; 4]) -> Result<(), Error> {
        self.call()?;
        self.tables.addrs.remove(&addr);
        self.log
            .push(format!("-addr {}", std::net::Ipv4Addr::from(addr)));
        Ok(())
    }
    fn set_addr6(&mut self, addr: Addr6, kind: u32) -> Result<(), Error> {
        self.call()?;
        self.tables.addrs6.insert(addr, kind);
        self.log
            .push(format!("addr {}", std::net::Ipv6Addr::from(addr)));
        Ok(())
    }
    fn remove_addr6(&mut self, addr: Addr6) -> Result<(), Error> {
        self.call()?;
        self.tables.addrs6.remove(&addr);
        self.log
            .push(format!("-addr {}", std::net::Ipv6Addr::from(addr)));
        Ok(())
    }
    fn set_settings(&mut self, value: Settings) -> Result<(), Error> {
        self.call()?;
        self.tables.settings = value;
        self.log.push("settings".into());
        Ok(())
    }
    fn refresh_filter(&mut self) -> Result<(), Error> {
        self.call()?;
        self.log.push("filter".into());
        Ok(())
    }
    fn read(&self) -> Result<Tables, Error> {
        Ok(MemStore::read(self))
    }
}
