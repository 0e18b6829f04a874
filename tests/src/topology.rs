//! The dual-path topology for end-to-end tests, all in namespaces the test creates:
//!
//! ```text
//!  client ns            edge ns (lb)                     vm ns
//!  c0 198.51.100.10 ─── e0 198.51.100.1
//!                       e1 192.0.2.65/26  ──────────── v1 192.0.2.70/26   (path nn1)
//!                       e2 192.0.2.97/27  ──────────── v2 192.0.2.100/27  (path nn2)
//! ```
//!
//! The VM answers over the interface a packet came in on (policy routing: `from A lookup 101`,
//! `from B lookup 102`), as a dual-homed VM must. Offloads that XDP cannot honour are off on
//! the senders (a veth hands XDP packets with partial checksums otherwise), GRO is on where
//! redirected frames arrive (a veth only takes XDP_REDIRECT frames then), rp_filter is off in
//! the VM.

use std::net::Ipv4Addr;

use crate::netns::{Netns, unique, veth};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const EDGE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const NN1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 70);
pub const NN2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const VIP3: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);

/// Interface names in the edge namespace.
pub const EDGE_CLIENTS: &str = "e0";
pub const EDGE_NN1: &str = "e1";
pub const EDGE_NN2: &str = "e2";

pub struct DualPath {
    pub client: Netns,
    pub edge: Netns,
    pub vm: Netns,
}

impl DualPath {
    pub fn new() -> anyhow::Result<Self> {
        let t = Self {
            client: Netns::new(&unique("c"))?,
            edge: Netns::new(&unique("e"))?,
            vm: Netns::new(&unique("v"))?,
        };
        veth(&t.edge, EDGE_CLIENTS, &t.client, "c0")?;
        veth(&t.edge, EDGE_NN1, &t.vm, "v1")?;
        veth(&t.edge, EDGE_NN2, &t.vm, "v2")?;
        t.edge.ip("addr add 198.51.100.1/24 dev e0")?;
        t.edge.ip("addr add 192.0.2.65/26 dev e1")?;
        t.edge.ip("addr add 192.0.2.97/27 dev e2")?;
        t.client.ip("addr add 198.51.100.10/24 dev c0")?;
        t.client.ip("route add 203.0.113.0/24 via 198.51.100.1")?;
        t.vm.ip("addr add 192.0.2.70/26 dev v1")?;
        t.vm.ip("addr add 192.0.2.100/27 dev v2")?;
        t.vm.ip("rule add from 192.0.2.70 lookup 101")?;
        t.vm.ip("route add default via 192.0.2.65 dev v1 table 101")?;
        t.vm.ip("rule add from 192.0.2.100 lookup 102")?;
        t.vm.ip("route add default via 192.0.2.97 dev v2 table 102")?;
        t.edge
            .exec("sysctl", &["-qw", "net.ipv4.conf.all.forwarding=1"])?;
        for key in ["all", "default", "v1", "v2"] {
            t.vm.exec(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")],
            )?;
        }
        for (ns, dev) in [(&t.client, "c0"), (&t.vm, "v1"), (&t.vm, "v2")] {
            ns.exec("ethtool", &["-K", dev, "tx", "off", "gro", "on"])?;
        }
        for dev in [EDGE_CLIENTS, EDGE_NN1, EDGE_NN2] {
            t.edge.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        Ok(t)
    }

    /// Silently drops everything on the VM's interface of path `nn` (1 or 2), both ways: the
    /// realistic failure (link up, nothing gets through).
    pub fn blackhole(&self, nn: u8) -> anyhow::Result<()> {
        let dev = format!("v{nn}");
        let table = format!("lbt_bh{nn}");
        let rules = format!(
            "table inet {table} {{\n chain in {{ type filter hook prerouting priority -300; iifname \"{dev}\" drop; }}\n chain out {{ type filter hook output priority -300; oifname \"{dev}\" drop; }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{}-{table}.nft", self.vm.name()));
        std::fs::write(&file, rules)?;
        let r = self
            .vm
            .exec("nft", &["-f", &file.to_string_lossy()])
            .map(drop);
        let _ = std::fs::remove_file(&file);
        r
    }

    /// Undoes [`DualPath::blackhole`].
    pub fn heal(&self, nn: u8) -> anyhow::Result<()> {
        self.vm
            .exec("nft", &["delete", "table", "inet", &format!("lbt_bh{nn}")])
            .map(drop)
    }
}
