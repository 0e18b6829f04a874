//! Bulk TCP through the VIP (iperf3, both directions) on the lab with plain veths, the way a
//! user builds them: lb with `--hook auto` (TC on veths), lb with `--hook xdp`, kernel
//! forwarding with nftables DNAT (conntrack), and plain kernel forwarding to the path address
//! (no NAT at all, the ceiling of the kernel path), each in a fresh lab, one after the other.
//!
//! A real TCP stack sends GSO super-packets over veths: what is measured is how well each edge
//! carries them (XDP sees every 1,500-byte frame; TC and the kernel see the super-packets).
//! Figures are printed, never asserted; one run, these machines are noisy.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    lab::{self, Lab, NN1, NN2, PORTS, VIP, Veths},
    lb::Daemon,
    servers,
    traffic::iperf3,
};

/// One edge configuration's figures, Gbit/s.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub edge: &'static str,
    /// Client → VM.
    pub forward_gbps: f64,
    /// VM → client (`iperf3 -R`).
    pub reverse_gbps: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Bulk {
    pub seconds: u32,
    pub rows: Vec<Row>,
}

impl Bulk {
    pub fn row(&self, edge: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.edge == edge)
    }
}

#[derive(Clone, Copy)]
enum Edge {
    LbAuto,
    LbXdp,
    Nft,
    Forward,
}

pub fn run(quick: bool) -> anyhow::Result<Bulk> {
    let seconds = if quick { 1 } else { 5 };
    let mut rows = Vec::new();
    for (edge, name) in [
        (Edge::LbAuto, "lb --hook auto (tc on veths)"),
        (Edge::LbXdp, "lb --hook xdp"),
        (Edge::Nft, "kernel forwarding + nftables DNAT"),
        (Edge::Forward, "kernel forwarding, no NAT"),
    ] {
        let lab = Lab::with_veths(Veths::Plain)?;
        let _srv = servers::start(&lab.vm, PORTS, [NN1, NN2])?;
        let config = lab::config(1000, 500, 1, 100, true);
        let (_daemon, to) = match edge {
            Edge::LbAuto => (Some(Daemon::start(&lab.edge, &config, &[])?), VIP),
            Edge::LbXdp => (Some(Daemon::start(&lab.edge, &config, lab::XDP_HOOK)?), VIP),
            Edge::Nft => {
                lab.edge.nft(
                    "table ip lbbulk {\n chain pre { type nat hook prerouting priority -100; \
                     ip daddr 203.0.113.10 dnat to 192.0.2.70; }\n}\n",
                )?;
                (None, VIP)
            }
            Edge::Forward => {
                lab.client.ip("route add 192.0.2.64/26 via 198.51.100.1")?;
                (None, NN1)
            }
        };
        if let Some(d) = &_daemon {
            d.wait_status(Duration::from_secs(10), |s| {
                crate::lb::active(s, "web-vm").as_deref() == Some("nn1")
            })?;
        }
        let mut gbps = [0.0; 2];
        for (i, reverse) in [false, true].into_iter().enumerate() {
            let r = iperf3(&lab.client, &lab.vm, to, 5201, reverse, seconds)
                .with_context(|| format!("{name}, reverse {reverse}"))?;
            gbps[i] = r.bits_per_second / 1e9;
        }
        rows.push(Row {
            edge: name,
            forward_gbps: gbps[0],
            reverse_gbps: gbps[1],
        });
    }
    Ok(Bulk { seconds, rows })
}
