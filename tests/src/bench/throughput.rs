//! Forwarding throughput on the veth lab (to be written).

/// Packets per second where they leave the edge.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Throughput {
    pub packets: u64,
    pub flows: u32,
    pub xdp_pps: f64,
    pub nft_pps: f64,
    pub redirect_pps: f64,
}

pub fn run(_quick: bool) -> anyhow::Result<Throughput> {
    anyhow::bail!("not written yet")
}
