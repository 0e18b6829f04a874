//! Failover outage, restart and reload losses (to be written).

use std::path::Path;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Profile {
    pub name: String,
    pub interval_ms: u32,
    pub fall: u32,
    pub budget_ms: f64,
    pub outage_ms: f64,
    pub lost: u64,
    pub decision_to_write_us: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Outage {
    pub profiles: Vec<Profile>,
    pub restart_lost: u64,
    pub reload_lost: u64,
}

pub fn run(_quick: bool, _svg: &Path) -> anyhow::Result<Outage> {
    anyhow::bail!("not written yet")
}
