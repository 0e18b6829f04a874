//! The real maps as a [`Store`].

use lb_common::maps::{
    Addr6, EndpointKey, EndpointKey6, PathMeta, PathValue, RING_SIZE, RevValue, RevValue6,
    Settings, TARGET_MODE_RING, TargetMeta, TargetValue, VipInfo,
};

use crate::datapath::{
    Error,
    maps::Maps,
    tables::{Store, Tables},
};

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
    fn set_rev_nat6(&mut self, key: EndpointKey6, value: RevValue6) -> Result<(), Error> {
        Maps::set_rev_nat6(self, key, value)
    }
    fn remove_rev_nat6(&mut self, key: &EndpointKey6) -> Result<(), Error> {
        Maps::remove_rev_nat6(self, key)
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
    fn set_addr6(&mut self, addr: Addr6, kind: u32) -> Result<(), Error> {
        Maps::set_addr6(self, addr, kind)
    }
    fn remove_addr6(&mut self, addr: Addr6) -> Result<(), Error> {
        Maps::remove_addr6(self, addr)
    }
    fn set_settings(&mut self, value: Settings) -> Result<(), Error> {
        Maps::set_settings(self, value)
    }
    fn refresh_filter(&mut self) -> Result<(), Error> {
        Maps::refresh_filter(self)
    }
    fn read(&self) -> Result<Tables, Error> {
        self.read_tables()
    }
}

impl Maps {
    /// Reads the control plane's part of the maps back: targets and paths whose meta says they
    /// are in use, every VIP id with a description, every reverse-NAT entry and address of both
    /// families, and the rings of ring-mode targets.
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
        t.rev_nat6 = self.rev_nat6()?.into_iter().collect();
        t.addrs = self.addrs()?.into_iter().collect();
        t.addrs6 = self.addrs6()?.into_iter().collect();
        t.settings = self.settings()?;
        Ok(t)
    }
}
