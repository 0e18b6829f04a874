//! The lab: the dual-path topology with a router per path, in network namespaces, and the
//! failures it can inject on a path. Used by `cargo xtask lab` (through the `lb-lab` binary)
//! and by the end-to-end tests; documentation ranges only.
//!
//! ```text
//!                    198.51.100.64/30           192.0.2.64/26
//!                 ┌─ e1 .65 ──── .66 nn1 .65 ───────── .70 eth0 ─┐
//!  client ── edge ┤                                              ├─ vm (policy routing:
//!  .10    e0 .1   └─ e2 .69 ──── .70 nn2 .97 ───────── .100 eth1 ─┘   from .70 → nn1,
//!  198.51.100.0/26   198.51.100.68/30           192.0.2.96/27          from .100 → nn2)
//! ```
//!
//! VIPs live in 203.0.113.0/24, routed by the client to the edge. The routers' default route
//! points back to the edge, and on the way to the VM the nn1 router can be given a smaller MTU
//! (for PMTU discovery through the NAT).
//!
//! The lab is dual-stack: the same links carry IPv6 (2001:db8::/32, no duplicate address
//! detection, so addresses are usable at once):
//!
//! ```text
//!                    2001:db8:e1::/64            2001:db8:1::/64
//!                 ┌─ e1 ::1 ───── ::2 nn1 ::1 ───────── ::70 eth0 ─┐
//!  client ── edge ┤                                                ├─ vm (policy routing per
//!  ::10   e0 ::1  └─ e2 ::1 ───── ::2 nn2 ::1 ───────── ::100 eth1 ┘   source address)
//!  2001:db8:51::/64  2001:db8:e2::/64            2001:db8:2::/64
//! ```
//!
//! IPv6 VIPs live in 2001:db8:71::/64.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::netns::{Netns, unique, veth};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const NN1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 70);
pub const NN2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP_SVC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const VIP_SPREAD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x51, 0, 0, 0, 0, 0x10);
pub const NN1_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x70);
pub const NN2_6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x100);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x71, 0, 0, 0, 0, 0x10);
pub const VIP6_SVC: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x71, 0, 0, 0, 0, 0x11);

pub const EDGE_CLIENTS: &str = "e0";
pub const EDGE_NN1: &str = "e1";
pub const EDGE_NN2: &str = "e2";

/// Ports the VM's servers listen on (both addresses).
pub const HTTP_PORT: u16 = 8080;
pub const ECHO_PORT: u16 = 7;
pub const UDP_PORT: u16 = 9000;
/// `lb run` arguments for the tuned lab, whose veths are set up for XDP: the XDP hook on every
/// interface (`--hook auto` would take TC on veths).
pub const XDP_HOOK: &[&str] = &["--hook", "xdp"];

/// The VM's servers (`servers::start`) on the lab's ports.
pub const PORTS: crate::servers::Ports = crate::servers::Ports {
    http: HTTP_PORT,
    echo: ECHO_PORT,
    udp: UDP_PORT,
};

/// Ways a path can fail, and be healed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The router's link toward the edge goes down.
    LinkDown,
    /// Link up, every packet silently dropped in the router (nftables): the realistic failure.
    Blackhole,
    /// A share of the packets dropped in the router (nftables `numgen`; netem is not needed).
    Loss(u8),
    /// The VM's own interface on the path goes down.
    VmInterfaceDown,
    /// The router drops what the clients send but passes the edge's own packets (its
    /// probes): the path looks healthy while its client traffic is lost.
    ClientsDropped,
}

pub struct Lab {
    pub client: Netns,
    pub edge: Netns,
    pub nn1: Netns,
    pub nn2: Netns,
    pub vm: Netns,
    veths: Veths,
}

/// How the lab's veths are set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Veths {
    /// As a user builds them: no ethtool settings anywhere. Local senders hand on partial
    /// checksums, and no receiver has GRO, so nothing can be XDP-redirected into the edge's
    /// veths.
    Plain,
    /// Senders compute full checksums (`tx off`) and every receiver has GRO on, so the edge
    /// XDP-redirects between its veths.
    Tuned,
}

impl Lab {
    /// Namespaces with unique names (tests, which run side by side), tuned veths.
    pub fn new() -> anyhow::Result<Self> {
        Self::named(|role| unique(&role[..1]), Veths::Tuned)
    }

    /// [`Lab::new`] with the veths set up as `veths` says.
    pub fn with_veths(veths: Veths) -> anyhow::Result<Self> {
        Self::named(|role| unique(&role[..1]), veths)
    }

    /// Namespaces `<prefix>-client`, `<prefix>-edge`, ... (`cargo xtask lab up`).
    pub fn with_prefix(prefix: &str) -> anyhow::Result<Self> {
        Self::named(|role| format!("{prefix}-{role}"), Veths::Tuned)
    }

    fn named(name: impl Fn(&str) -> String, veths: Veths) -> anyhow::Result<Self> {
        let lab = Self {
            client: Netns::new(&name("client"))?,
            edge: Netns::new(&name("edge"))?,
            nn1: Netns::new(&name("nn1"))?,
            nn2: Netns::new(&name("nn2"))?,
            vm: Netns::new(&name("vm"))?,
            veths,
        };
        lab.wire(veths)?;
        Ok(lab)
    }

    fn wire(&self, veths: Veths) -> anyhow::Result<()> {
        let Self {
            client,
            edge,
            nn1,
            nn2,
            vm,
            ..
        } = self;
        veth(edge, EDGE_CLIENTS, client, "c0")?;
        veth(edge, EDGE_NN1, nn1, "up0")?;
        veth(edge, EDGE_NN2, nn2, "up0")?;
        veth(nn1, "down0", vm, "eth0")?;
        veth(nn2, "down0", vm, "eth1")?;

        client.ip("addr add 198.51.100.10/26 dev c0")?;
        client.ip("route add 203.0.113.0/24 via 198.51.100.1")?;
        edge.ip("addr add 198.51.100.1/26 dev e0")?;
        edge.ip("addr add 198.51.100.65/30 dev e1")?;
        edge.ip("addr add 198.51.100.69/30 dev e2")?;
        edge.ip("route add 192.0.2.64/26 via 198.51.100.66")?;
        edge.ip("route add 192.0.2.96/27 via 198.51.100.70")?;
        nn1.ip("addr add 198.51.100.66/30 dev up0")?;
        nn1.ip("addr add 192.0.2.65/26 dev down0")?;
        nn1.ip("route add default via 198.51.100.65")?;
        nn2.ip("addr add 198.51.100.70/30 dev up0")?;
        nn2.ip("addr add 192.0.2.97/27 dev down0")?;
        nn2.ip("route add default via 198.51.100.69")?;
        vm.ip("addr add 192.0.2.70/26 dev eth0")?;
        vm.ip("addr add 192.0.2.100/27 dev eth1")?;

        // Static IPv6 addresses survive a link going down (as IPv4's do): the failures take
        // links down and up again.
        for ns in [client, edge, nn1, nn2, vm] {
            ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.keep_addr_on_down=1"])?;
        }
        client.ip("-6 addr add 2001:db8:51::10/64 dev c0 nodad")?;
        client.ip("-6 route add 2001:db8:71::/64 via 2001:db8:51::1")?;
        edge.ip("-6 addr add 2001:db8:51::1/64 dev e0 nodad")?;
        edge.ip("-6 addr add 2001:db8:e1::1/64 dev e1 nodad")?;
        edge.ip("-6 addr add 2001:db8:e2::1/64 dev e2 nodad")?;
        edge.ip("-6 route add 2001:db8:1::/64 via 2001:db8:e1::2")?;
        edge.ip("-6 route add 2001:db8:2::/64 via 2001:db8:e2::2")?;
        nn1.ip("-6 addr add 2001:db8:e1::2/64 dev up0 nodad")?;
        nn1.ip("-6 addr add 2001:db8:1::1/64 dev down0 nodad")?;
        nn1.ip("-6 route add default via 2001:db8:e1::1")?;
        nn2.ip("-6 addr add 2001:db8:e2::2/64 dev up0 nodad")?;
        nn2.ip("-6 addr add 2001:db8:2::1/64 dev down0 nodad")?;
        nn2.ip("-6 route add default via 2001:db8:e2::1")?;
        vm.ip("-6 addr add 2001:db8:1::70/64 dev eth0 nodad")?;
        vm.ip("-6 addr add 2001:db8:2::100/64 dev eth1 nodad")?;
        // A reply leaves by the interface its request came in on: the VM's policy routing (and
        // its loose rp_filter) is what `lb guest plan` prints, run as a user would run it.
        vm.exec("sh", &["-c", vm_plan()?])?;

        for ns in [edge, nn1, nn2] {
            ns.exec("sysctl", &["-qw", "net.ipv4.conf.all.forwarding=1"])?;
            ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.forwarding=1"])?;
        }
        if veths == Veths::Plain {
            return Ok(());
        }
        // Senders compute full checksums (a veth otherwise hands on partial ones, which XDP
        // cannot finish); receivers of XDP-redirected frames need GRO on their veth.
        for (ns, dev) in [
            (client, "c0"),
            (vm, "eth0"),
            (vm, "eth1"),
            (nn1, "up0"),
            (nn2, "up0"),
        ] {
            ns.exec("ethtool", &["-K", dev, "tx", "off", "gro", "on"])?;
        }
        for dev in [EDGE_CLIENTS, EDGE_NN1, EDGE_NN2] {
            edge.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        Ok(())
    }

    /// Keeps the namespaces after the guard drops (`lab up`).
    pub fn keep(&mut self) {
        for ns in [
            &mut self.client,
            &mut self.edge,
            &mut self.nn1,
            &mut self.nn2,
            &mut self.vm,
        ] {
            ns.keep();
        }
    }

    fn router(&self, nn: u8) -> &Netns {
        if nn == 1 { &self.nn1 } else { &self.nn2 }
    }

    /// Deletes the edge's interface toward path `nn` (1 or 2) and makes it again, with the
    /// same name, addresses and routes, as the lab first did: a new device with a new index, as
    /// after a VF reset or a recreated veth. Whatever was attached to the old one is gone.
    pub fn replug(&self, nn: u8) -> anyhow::Result<()> {
        let (dev, edge_addr, router_addr, vm_net) = if nn == 1 {
            (EDGE_NN1, "198.51.100.65", "198.51.100.66", "192.0.2.64/26")
        } else {
            (EDGE_NN2, "198.51.100.69", "198.51.100.70", "192.0.2.96/27")
        };
        let (edge6, router6, vm_net6) = if nn == 1 {
            ("2001:db8:e1::1", "2001:db8:e1::2", "2001:db8:1::/64")
        } else {
            ("2001:db8:e2::1", "2001:db8:e2::2", "2001:db8:2::/64")
        };
        let r = self.router(nn);
        self.edge.ip(&format!("link del {dev}"))?;
        veth(&self.edge, dev, r, "up0")?;
        self.edge
            .ip(&format!("addr add {edge_addr}/30 dev {dev}"))?;
        self.edge
            .ip(&format!("route add {vm_net} via {router_addr}"))?;
        r.ip(&format!("addr add {router_addr}/30 dev up0"))?;
        r.ip(&format!("route add default via {edge_addr}"))?;
        self.edge
            .ip(&format!("-6 addr add {edge6}/64 dev {dev} nodad"))?;
        self.edge
            .ip(&format!("-6 route add {vm_net6} via {router6}"))?;
        r.ip(&format!("-6 addr add {router6}/64 dev up0 nodad"))?;
        r.ip(&format!("-6 route add default via {edge6}"))?;
        if self.veths == Veths::Tuned {
            r.exec("ethtool", &["-K", "up0", "tx", "off", "gro", "on"])?;
            self.edge.exec("ethtool", &["-K", dev, "tx", "off"])?;
        }
        Ok(())
    }

    /// Injects `failure` on path `nn` (1 or 2).
    pub fn fail(&self, nn: u8, failure: Failure) -> anyhow::Result<()> {
        let r = self.router(nn);
        match failure {
            Failure::LinkDown => r.ip("link set up0 down"),
            Failure::Blackhole => nft(r, "lab_fail", "drop"),
            Failure::Loss(pct) => nft(
                r,
                "lab_fail",
                &format!("numgen random mod 100 < {pct} drop"),
            ),
            Failure::VmInterfaceDown => self.vm.ip(&format!("link set eth{} down", nn - 1)),
            // The clients live in 198.51.100.0/26 and 2001:db8:51::/64; the edge probes from
            // its link addresses.
            Failure::ClientsDropped => nft(
                r,
                "lab_fail",
                "ip saddr 198.51.100.0/26 drop; ip6 saddr 2001:db8:51::/64 drop",
            ),
        }
    }

    /// Undoes `failure` on path `nn`.
    pub fn heal(&self, nn: u8, failure: Failure) -> anyhow::Result<()> {
        let r = self.router(nn);
        match failure {
            Failure::LinkDown => {
                r.ip("link set up0 up")?;
                // The router's default route (toward the edge) went with the link.
                let (edge, edge6) = if nn == 1 {
                    ("198.51.100.65", "2001:db8:e1::1")
                } else {
                    ("198.51.100.69", "2001:db8:e2::1")
                };
                r.ip(&format!("route replace default via {edge}"))?;
                r.ip(&format!("-6 route replace default via {edge6}"))
            }
            Failure::Blackhole | Failure::Loss(_) | Failure::ClientsDropped => r
                .exec("nft", &["delete", "table", "inet", "lab_fail"])
                .map(drop),
            Failure::VmInterfaceDown => {
                self.vm.ip(&format!("link set eth{} up", nn - 1))?;
                // The default routes of the path's tables went with the link: the plan, run
                // again (it is idempotent), puts them back.
                self.vm.exec("sh", &["-c", vm_plan()?]).map(drop)
            }
        }
    }

    /// Gives path `nn`'s router an MTU of `mtu` toward the VM and toward the edge (route MTUs,
    /// so the router answers too-big packets with ICMP "fragmentation needed", and for IPv6,
    /// when `mtu` is at least IPv6's minimum of 1280, "packet too big").
    pub fn small_mtu(&self, nn: u8, mtu: u16) -> anyhow::Result<()> {
        let r = self.router(nn);
        let (vm_net, edge_gw, vm_net6, edge_gw6) = if nn == 1 {
            (
                "192.0.2.64/26",
                "198.51.100.65",
                "2001:db8:1::/64",
                "2001:db8:e1::1",
            )
        } else {
            (
                "192.0.2.96/27",
                "198.51.100.69",
                "2001:db8:2::/64",
                "2001:db8:e2::1",
            )
        };
        r.ip(&format!("route replace {vm_net} dev down0 mtu lock {mtu}"))?;
        r.ip(&format!(
            "route replace default via {edge_gw} mtu lock {mtu}"
        ))?;
        if mtu >= 1280 {
            // The connected route's metric (256), or a second route would sit beside it.
            r.ip(&format!(
                "-6 route replace {vm_net6} dev down0 metric 256 mtu lock {mtu}"
            ))?;
            r.ip(&format!(
                "-6 route replace default via {edge_gw6} mtu lock {mtu}"
            ))?;
        }
        Ok(())
    }
}

/// A filter table `table` in `ns` that applies `rule` to everything forwarded.
fn nft(ns: &Netns, table: &str, rule: &str) -> anyhow::Result<()> {
    ns.nft(&format!(
        "table inet {table} {{\n chain lab {{ type filter hook forward priority -300; {rule}; }}\n}}\n"
    ))
}

/// [`config`] and, beside it, the IPv6 twin: failover target `web-vm6` over the VM's IPv6
/// addresses (nn1 preferred), whole-address VIP [`VIP6`] and the same services on [`VIP6_SVC`].
pub fn config_dual(
    interval_ms: u32,
    timeout_ms: u32,
    rise: u32,
    fall: u32,
    preempt: bool,
) -> String {
    let v4 = config(interval_ms, timeout_ms, rise, fall, preempt);
    let target6 = format!(
        r#",
    {{
      "name": "web-vm6", "mode": "failover", "preempt": {preempt}, "all_down": "drop",
      "paths": [
        {{ "name": "nn1", "address": "{NN1_6}", "priority": 10 }},
        {{ "name": "nn2", "address": "{NN2_6}", "priority": 20 }}
      ],
      "probe": {{ "type": "tcp", "port": {HTTP_PORT}, "interval_ms": {interval_ms}, "timeout_ms": {timeout_ms}, "rise": {rise}, "fall": {fall} }}
    }}
  ],
  "vips": ["#
    );
    let vips6 = format!(
        r#",
    {{ "address": "{VIP6}", "target": "web-vm6" }},
    {{ "address": "{VIP6_SVC}", "protocol": "tcp", "port": 80, "target": "web-vm6", "target_port": {HTTP_PORT} }},
    {{ "address": "{VIP6_SVC}", "protocol": "udp", "port": 53, "target": "web-vm6", "target_port": {UDP_PORT} }}
  ]
}}"#
    );
    let v4 = v4.replacen("\n  ],\n  \"vips\": [", &target6, 1);
    let end = v4
        .rfind("\n  ]\n}")
        .expect("the VIP list ends the configuration");
    format!("{}{vips6}", &v4[..end])
}

/// The lab's `lb` configuration: failover target `web-vm` (nn1 preferred) behind the
/// whole-address VIP and, on 203.0.113.11, port-translated services (tcp/80 → 8080, udp/53 →
/// 9000). TCP probes on the HTTP port.
pub fn config(interval_ms: u32, timeout_ms: u32, rise: u32, fall: u32, preempt: bool) -> String {
    format!(
        r#"{{
  "interfaces": {{ "clients": ["{EDGE_CLIENTS}"], "paths": ["{EDGE_NN1}", "{EDGE_NN2}"] }},
  "flow_table_size": 65536,
  "flows": {{ "tcp_closing_s": 1, "unreplied_s": 5 }},
  "targets": [
    {{
      "name": "web-vm", "mode": "failover", "preempt": {preempt}, "all_down": "drop",
      "paths": [
        {{ "name": "nn1", "address": "{NN1}", "priority": 10 }},
        {{ "name": "nn2", "address": "{NN2}", "priority": 20 }}
      ],
      "probe": {{ "type": "tcp", "port": {HTTP_PORT}, "interval_ms": {interval_ms}, "timeout_ms": {timeout_ms}, "rise": {rise}, "fall": {fall} }}
    }}
  ],
  "vips": [
    {{ "address": "{VIP}", "target": "web-vm" }},
    {{ "address": "{VIP_SVC}", "protocol": "tcp", "port": 80, "target": "web-vm", "target_port": {HTTP_PORT} }},
    {{ "address": "{VIP_SVC}", "protocol": "udp", "port": 53, "target": "web-vm", "target_port": {UDP_PORT} }}
  ]
}}"#
    )
}

/// The VM's paths as `lb guest plan` knows them: one target with the lab's four path
/// addresses (`VM_PATHS`: name, address, the VM's interface, the router on that path).
pub const VM_PATHS: [(&str, &str, &str, &str); 4] = [
    ("nn1", "192.0.2.70", "eth0", "192.0.2.65"),
    ("nn2", "192.0.2.100", "eth1", "192.0.2.97"),
    ("nn1-v6", "2001:db8:1::70", "eth0", "2001:db8:1::1"),
    ("nn2-v6", "2001:db8:2::100", "eth1", "2001:db8:2::1"),
];

/// The first routing table of the VM's plan: the paths' tables are 101 to 104, in
/// [`VM_PATHS`]' order.
pub const VM_TABLE_BASE: u32 = 101;

/// The shell script `lb guest plan --format ip` prints for the lab's VM (made once per
/// process, with the `lb` binary the tests use).
pub fn vm_plan() -> anyhow::Result<&'static str> {
    static PLAN: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    PLAN.get_or_init(|| make_vm_plan().map_err(|e| format!("{e:#}")))
        .as_deref()
        .map_err(|e| anyhow::anyhow!("lb guest plan for the lab's VM: {e}"))
}

fn make_vm_plan() -> anyhow::Result<String> {
    use anyhow::Context as _;
    let paths: Vec<String> = VM_PATHS
        .iter()
        .map(|(name, address, _, _)| format!(r#"{{ "name": "{name}", "address": "{address}" }}"#))
        .collect();
    let config = format!(
        r#"{{ "interfaces": {{ "clients": ["e0"], "paths": ["e1", "e2"] }},
  "targets": [ {{ "name": "vm", "paths": [ {} ] }} ], "vips": [] }}"#,
        paths.join(", ")
    );
    let file = std::env::temp_dir().join(format!("lb-lab-vm-{}.json", std::process::id()));
    std::fs::write(&file, config)?;
    let mut cmd = std::process::Command::new(crate::lb::lb_bin()?);
    cmd.args(["guest", "plan", "--config"])
        .arg(&file)
        .args(["--target", "vm", "--format", "ip", "--table-base"])
        .arg(VM_TABLE_BASE.to_string());
    for (name, _, iface, via) in VM_PATHS {
        cmd.arg("--path").arg(format!("{name}={iface},{via}"));
    }
    let out = cmd.output().context("running lb guest plan")?;
    let _ = std::fs::remove_file(&file);
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configurations_are_valid() {
        for text in [config(50, 40, 2, 3, true), config_dual(50, 40, 2, 3, true)] {
            lb_user::config::Config::from_json(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        }
        let dual =
            lb_user::config::Config::from_json(&config_dual(50, 40, 2, 3, false)).expect("valid");
        assert_eq!(dual.targets.len(), 2);
        assert_eq!(dual.vips.len(), 6);
        assert!(
            dual.vips
                .iter()
                .any(|v| v.address == std::net::IpAddr::V6(VIP6))
        );
    }
}
