//! The BPF_PROG_TEST_RUN fixture environment.
//!
//! [`Env::create`] moves the process's main thread into a private network namespace (test
//! threads inherit it) with fixed interfaces, routes and permanent neighbours, so that
//! `bpf_fib_lookup` answers the same on every machine:
//!
//! ```text
//!   cli0  198.51.100.1/25   clients 198.51.100.10/.11/.12/.77 (permanent neighbours; .12 has
//!                           MTU 1000),
//!                           default via 198.51.100.126 (clients beyond it: .150)
//!   path0 192.0.2.1/24      VM path addresses .70 .100 .71 .101 .90 (permanent neighbours);
//!                           .77 has no neighbour; .66 is a blackhole; .90 has MTU 1000
//!   other0 192.0.2.129/25   .130 (neighbour), not in the devmap
//!   nofwd0 203.0.113.254/32 forwarding disabled
//! ```
//!
//! and the same for IPv6 (see [`addr6`]):
//!
//! ```text
//!   cli0  2001:db8:51::1/64 clients 2001:db8:51::10/::11 (permanent neighbours),
//!                           default via 2001:db8:51::7e
//!   path0 2001:db8:2::1/64  VM path addresses ::70 ::a0 (permanent neighbours); ::5a has
//!                           MTU 1280
//! ```
//!
//! [`Fx`] is one loaded datapath (fresh maps and counters) with the standard configuration.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, bail};
use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::{
    Counter,
    maps::{
        EndpointKey, EndpointKey6, PATH_UP, PathValue, REV_F_SHADOWS_WHOLE, RING_SIZE, RevValue,
        RevValue6, TargetValue, TrafficStats, VipInfo,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
};
use lb_user::datapath::{Dataplane, LoadOptions};

use crate::sys::{ifindex, ip, sysctl, unshare_netns};

pub const fn mac(last: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0x0c, last]
}

/// Addresses of the standard configuration.
pub mod addr {
    use std::net::Ipv4Addr;
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
    /// An internet host the VM talks to on its own.
    pub const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
    /// A client behind a route with MTU 1000.
    pub const CLIENT_SMALL_MTU: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
    /// A client beyond the default gateway.
    pub const FAR_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 150);
    /// A router on a path (sends ICMP errors).
    pub const ROUTER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
    /// A router on the internet side.
    pub const INET_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 126);

    /// Whole-address VIP → target 0 (failover: NN1 active, NN2 standby).
    pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    /// Service VIP tcp/443 → target 0, port 8443.
    pub const VIP_SVC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
    /// Service VIP udp/53 → target 0, no port translation.
    pub const VIP_DNS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
    /// Whole-address VIP → target 1 (active/active over SPREAD_A and SPREAD_B).
    pub const VIP_SPREAD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
    /// No VIP.
    pub const NOT_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);

    pub const NN1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 70);
    pub const NN2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    pub const SPREAD_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 71);
    pub const SPREAD_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
    /// Path address with no neighbour entry.
    pub const NO_NEIGH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
    /// Path address behind a blackhole route.
    pub const BLACKHOLE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);
    /// Path address behind a route with MTU 1000.
    pub const SMALL_MTU: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 90);
    /// Path address behind an interface that is not in the devmap.
    pub const OTHER_PORT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 130);
}

/// MACs of the neighbours.
pub mod macs {
    use super::mac;
    pub const CLIENT: [u8; 6] = mac(0x10);
    pub const CLIENT2: [u8; 6] = mac(0x11);
    pub const CLIENT_SMALL_MTU: [u8; 6] = mac(0x12);
    pub const REMOTE: [u8; 6] = mac(0x77);
    pub const GATEWAY: [u8; 6] = mac(0xfe);
    pub const NN1: [u8; 6] = mac(0x70);
    pub const NN2: [u8; 6] = mac(0xa0);
    pub const SPREAD_A: [u8; 6] = mac(0x71);
    pub const SPREAD_B: [u8; 6] = mac(0xa1);
    pub const SMALL_MTU: [u8; 6] = mac(0x90);
    pub const OTHER_PORT: [u8; 6] = mac(0x82);
    pub const CLI0: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
    pub const PATH0: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
    pub const OTHER0: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x01];
    pub const NOFWD0: [u8; 6] = [0x02, 0, 0, 0, 0x04, 0x01];
}

/// The IPv6 addresses of the fixture namespace (2001:db8::/32).
pub mod addr6 {
    use std::net::Ipv6Addr;

    const fn a(net: u16, host: u16) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, host)
    }
    pub const CLIENT: Ipv6Addr = a(0x51, 0x10);
    pub const CLIENT2: Ipv6Addr = a(0x51, 0x11);
    pub const INET_ROUTER: Ipv6Addr = a(0x51, 0x7e);
    /// A client beyond the default router.
    pub const FAR_CLIENT: Ipv6Addr = a(0x52, 0x10);
    pub const VIP: Ipv6Addr = a(0x71, 0x10);
    /// A TCP service VIP (443 → 8443).
    pub const VIP_SVC: Ipv6Addr = a(0x71, 0x11);
    pub const NOT_VIP: Ipv6Addr = a(0x71, 0x99);
    pub const NN1: Ipv6Addr = a(2, 0x70);
    pub const NN2: Ipv6Addr = a(2, 0xa0);
    /// A path whose route has MTU 1280.
    pub const SMALL_MTU: Ipv6Addr = a(2, 0x5a);
}

/// An interface of the fixture namespace.
#[derive(Clone, Copy, Debug)]
pub struct Iface {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The fixture namespace's interfaces.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    pub cli0: Iface,
    pub path0: Iface,
    pub other0: Iface,
    pub nofwd0: Iface,
}

impl Env {
    /// Builds the namespace described in the module docs. Call once, from the main thread,
    /// before any test thread starts.
    pub fn create() -> anyhow::Result<Self> {
        unshare_netns()?;
        ip("link set lo up")?;
        for (dev, peer, m) in [
            ("cli0", "cli0p", macs::CLI0),
            ("path0", "path0p", macs::PATH0),
            ("other0", "other0p", macs::OTHER0),
            ("nofwd0", "nofwd0p", macs::NOFWD0),
        ] {
            ip(&format!("link add {dev} type veth peer name {peer}"))?;
            ip(&format!("link set {dev} address {}", fmt_mac(m)))?;
            ip(&format!("link set {dev} up"))?;
            ip(&format!("link set {peer} up"))?;
        }
        ip("addr add 198.51.100.1/25 dev cli0")?;
        ip("addr add 192.0.2.1/24 dev path0")?;
        ip("addr add 192.0.2.129/25 dev other0")?;
        ip("addr add 203.0.113.254/32 dev nofwd0")?;
        ip("route add default via 198.51.100.126 dev cli0")?;
        ip("route add blackhole 192.0.2.66/32")?;
        ip("route add 192.0.2.90/32 dev path0 mtu lock 1000")?;
        ip("route add 198.51.100.12/32 dev cli0 mtu lock 1000")?;
        for (addr, dev, m) in [
            (addr::CLIENT, "cli0", macs::CLIENT),
            (addr::CLIENT2, "cli0", macs::CLIENT2),
            (addr::CLIENT_SMALL_MTU, "cli0", macs::CLIENT_SMALL_MTU),
            (addr::REMOTE, "cli0", macs::REMOTE),
            (addr::INET_ROUTER, "cli0", macs::GATEWAY),
            (addr::NN1, "path0", macs::NN1),
            (addr::NN2, "path0", macs::NN2),
            (addr::SPREAD_A, "path0", macs::SPREAD_A),
            (addr::SPREAD_B, "path0", macs::SPREAD_B),
            (addr::SMALL_MTU, "path0", macs::SMALL_MTU),
            (addr::OTHER_PORT, "other0", macs::OTHER_PORT),
        ] {
            ip(&format!(
                "neigh replace {addr} lladdr {} dev {dev} nud permanent",
                fmt_mac(m)
            ))?;
        }
        ip("-6 addr add 2001:db8:51::1/64 dev cli0 nodad")?;
        ip("-6 addr add 2001:db8:2::1/64 dev path0 nodad")?;
        ip("-6 route add default via 2001:db8:51::7e dev cli0")?;
        ip("-6 route add 2001:db8:2::5a/128 dev path0 mtu lock 1280")?;
        for (addr, dev, m) in [
            (addr6::CLIENT, "cli0", macs::CLIENT),
            (addr6::CLIENT2, "cli0", macs::CLIENT2),
            (addr6::INET_ROUTER, "cli0", macs::GATEWAY),
            (addr6::NN1, "path0", macs::NN1),
            (addr6::NN2, "path0", macs::NN2),
            (addr6::SMALL_MTU, "path0", macs::SMALL_MTU),
        ] {
            ip(&format!(
                "-6 neigh replace {addr} lladdr {} dev {dev} nud permanent",
                fmt_mac(m)
            ))?;
        }
        sysctl("net.ipv6.conf.all.forwarding", "1")?;
        sysctl("net.ipv4.conf.all.forwarding", "1")?;
        sysctl("net.ipv4.conf.nofwd0.forwarding", "0")?;
        let iface = |name: &str, mac: [u8; 6]| -> anyhow::Result<Iface> {
            Ok(Iface {
                ifindex: ifindex(name)?,
                mac,
            })
        };
        Ok(Self {
            cli0: iface("cli0", macs::CLI0)?,
            path0: iface("path0", macs::PATH0)?,
            other0: iface("other0", macs::OTHER0)?,
            nofwd0: iface("nofwd0", macs::NOFWD0)?,
        })
    }
}

fn fmt_mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Which program a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    Ingress,
    Return,
}

/// Which hook's build of the programs a fixture runs: the same datapath at XDP or at TC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
}

/// `sizeof(struct __sk_buff)` and the offsets of the fields a test run may set.
pub const SKB_CTX_LEN: usize = 192;
pub const SKB_INGRESS_IFINDEX: usize = 36;
pub const SKB_IFINDEX: usize = 40;
const SKB_GSO_SEGS: usize = 164;
const SKB_GSO_SIZE: usize = 176;
/// TC's verdicts (uapi/linux/pkt_cls.h).
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// Ids of the standard configuration.
pub mod ids {
    pub const TARGET_WEB: u32 = 0;
    pub const TARGET_SPREAD: u32 = 1;
    pub const TARGET_SPARE: u32 = 2;
    pub const PATH_NN1: u32 = 0;
    pub const PATH_NN2: u32 = 1;
    pub const PATH_SPREAD_A: u32 = 2;
    pub const PATH_SPREAD_B: u32 = 3;
    pub const PATH_SPARE: u32 = 4;
    pub const VIP: u32 = 0;
    pub const VIP_SVC: u32 = 1;
    pub const VIP_DNS: u32 = 2;
    pub const VIP_SPREAD: u32 = 3;
    pub const VIP_SPARE: u32 = 4;
    /// [`super::Fx::standard6`]: an IPv6 target with two paths and two VIPs.
    pub const TARGET_WEB6: u32 = 3;
    pub const PATH6_NN1: u32 = 5;
    pub const PATH6_NN2: u32 = 6;
    pub const VIP6: u32 = 5;
    pub const VIP6_SVC: u32 = 6;
}

/// The result of one program run.
#[derive(Debug)]
pub struct Run {
    pub action: u32,
    pub frame: Vec<u8>,
    /// XDP only: the metadata the program left in front of the frame.
    pub meta: Vec<u8>,
}

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(a: u32) -> &'static str {
    [
        "XDP_ABORTED",
        "XDP_DROP",
        "XDP_PASS",
        "XDP_TX",
        "XDP_REDIRECT",
    ]
    .get(a as usize)
    .copied()
    .unwrap_or("?")
}

/// One loaded datapath with the standard configuration.
pub struct Fx {
    pub env: Env,
    pub dp: Dataplane,
    /// The hook whose programs [`Fx::run`] runs.
    pub hook: Hook,
    /// TC only: the skb is a GSO packet of segments this large (0: not GSO).
    pub gso_size: u32,
}

/// A small exception table: fixtures never need many, and loading stays fast.
const FIXTURE_FLOWS: u32 = 4096;

impl Fx {
    pub fn new(env: Env) -> anyhow::Result<Self> {
        Self::with_flow_table(env, FIXTURE_FLOWS)
    }

    /// [`Fx::new`] with an exception table of `flows` entries (benchmarks).
    pub fn with_flow_table(env: Env, flows: u32) -> anyhow::Result<Self> {
        let dp = Dataplane::load(&LoadOptions {
            flow_table_size: Some(flows),
        })
        .context("loading the datapath")?;
        let mut fx = Self {
            env,
            dp,
            hook: Hook::Xdp,
            gso_size: 0,
        };
        fx.standard()?;
        Ok(fx)
    }

    /// The standard configuration (see [`addr`] and [`ids`]).
    fn standard(&mut self) -> anyhow::Result<()> {
        use ids::*;
        self.path(PATH_NN1, addr::NN1, TARGET_WEB, PATH_UP)?;
        self.path(PATH_NN2, addr::NN2, TARGET_WEB, PATH_UP)?;
        self.target_single(TARGET_WEB, PATH_NN1)?;
        self.path(PATH_SPREAD_A, addr::SPREAD_A, TARGET_SPREAD, PATH_UP)?;
        self.path(PATH_SPREAD_B, addr::SPREAD_B, TARGET_SPREAD, PATH_UP)?;
        // Alternate slots, so that both paths get flows.
        let ring: Vec<u32> = (0..RING_SIZE)
            .map(|i| {
                if i.is_multiple_of(2) {
                    PATH_SPREAD_A
                } else {
                    PATH_SPREAD_B
                }
            })
            .collect();
        self.dp.maps.set_ring(TARGET_SPREAD, 0, &ring)?;
        self.dp
            .maps
            .set_target(TARGET_SPREAD, TargetValue::ring(0))?;

        let web = [(PATH_NN1, addr::NN1), (PATH_NN2, addr::NN2)];
        self.expose(VIP, addr::VIP, None, TARGET_WEB, None, &web)?;
        self.expose(
            VIP_SVC,
            addr::VIP_SVC,
            Some((IPPROTO_TCP, 443)),
            TARGET_WEB,
            Some(8443),
            &web,
        )?;
        self.expose(
            VIP_DNS,
            addr::VIP_DNS,
            Some((IPPROTO_UDP, 53)),
            TARGET_WEB,
            None,
            &web,
        )?;
        let spread = [
            (PATH_SPREAD_A, addr::SPREAD_A),
            (PATH_SPREAD_B, addr::SPREAD_B),
        ];
        self.expose(
            VIP_SPREAD,
            addr::VIP_SPREAD,
            None,
            TARGET_SPREAD,
            None,
            &spread,
        )?;
        self.dp.maps.add_tx_port(self.env.cli0.ifindex)?;
        self.dp.maps.add_tx_port(self.env.path0.ifindex)?;
        Ok(())
    }

    /// The IPv6 configuration, beside the standard one: target `TARGET_WEB6` (failover, on
    /// `PATH6_NN1`) with paths [`addr6::NN1`] and [`addr6::NN2`], whole-address VIP
    /// [`addr6::VIP`] and TCP service [`addr6::VIP_SVC`] 443 → 8443.
    pub fn standard6(&mut self) -> anyhow::Result<()> {
        use ids::*;
        self.path6(PATH6_NN1, addr6::NN1, TARGET_WEB6, PATH_UP)?;
        self.path6(PATH6_NN2, addr6::NN2, TARGET_WEB6, PATH_UP)?;
        self.target_single(TARGET_WEB6, PATH6_NN1)?;
        let web = [(PATH6_NN1, addr6::NN1), (PATH6_NN2, addr6::NN2)];
        self.expose6(VIP6, addr6::VIP, None, TARGET_WEB6, None, &web)?;
        self.expose6(
            VIP6_SVC,
            addr6::VIP_SVC,
            Some((IPPROTO_TCP, 443)),
            TARGET_WEB6,
            Some(8443),
            &web,
        )
    }

    pub fn path6(&mut self, id: u32, a: Ipv6Addr, target: u32, state: u8) -> anyhow::Result<()> {
        self.dp.maps.set_path(
            id,
            PathValue {
                addr: a.octets(),
                state,
                _pad: [0; 3],
                target,
                passive_us: 0,
            },
        )?;
        self.add_addr6(a, lb_common::maps::ADDR_PATH)
    }

    pub fn add_addr6(&mut self, a: Ipv6Addr, kind: u32) -> anyhow::Result<()> {
        let had = self
            .dp
            .maps
            .addrs6()?
            .into_iter()
            .find(|(k, _)| *k == a.octets())
            .map_or(0, |(_, v)| v);
        self.dp.maps.set_addr6(a.octets(), had | kind)?;
        self.dp.maps.refresh_filter()?;
        Ok(())
    }

    /// [`Fx::expose`] for an IPv6 VIP and paths.
    pub fn expose6(
        &mut self,
        id: u32,
        vip: Ipv6Addr,
        service: Option<(u8, u16)>,
        target: u32,
        target_port: Option<u16>,
        paths: &[(u32, Ipv6Addr)],
    ) -> anyhow::Result<()> {
        let maps = &mut self.dp.maps;
        let whole: Vec<EndpointKey6> = maps
            .rev_nat6()?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.is_whole_address())
            .collect();
        for (path, a) in paths {
            let rev_service = service.map(|(proto, port)| (proto, target_port.unwrap_or(port)));
            let vip_port = service.map_or([0; 2], |(_, port)| port.to_be_bytes());
            let shadows =
                service.is_some() && whole.contains(&EndpointKey6::with(a.octets(), None));
            maps.set_rev_nat6(
                EndpointKey6::with(a.octets(), rev_service),
                RevValue6 {
                    vip_addr: vip.octets(),
                    vip_port,
                    flags: if shadows { REV_F_SHADOWS_WHOLE } else { 0 },
                    vip_rank: Self::rank(id),
                    vip_id: id,
                    path: *path,
                },
            )?;
        }
        maps.set_vip(
            id,
            VipInfo {
                key: EndpointKey6::with(vip.octets(), service),
                target,
                target_port: target_port.unwrap_or(0).to_be_bytes(),
                rank: Self::rank(id),
                flags: 0,
            },
        )?;
        self.add_addr6(vip, lb_common::maps::ADDR_VIP)
    }

    pub fn path(&mut self, id: u32, a: Ipv4Addr, target: u32, state: u8) -> anyhow::Result<()> {
        self.dp.maps.set_path(
            id,
            PathValue {
                addr: lb_common::maps::mapped(a.octets()),
                state,
                _pad: [0; 3],
                target,
                passive_us: 0,
            },
        )?;
        self.add_addr(a, lb_common::maps::ADDR_PATH)
    }

    /// Marks `a` in `LB_ADDRS` (as the control plane does for every VIP and path address).
    /// Gives path `id` a passive-trigger threshold of `us` microseconds.
    pub fn set_passive(&mut self, id: u32, us: u32) -> anyhow::Result<()> {
        let mut value = self.dp.maps.path(id)?;
        value.passive_us = us;
        self.dp.maps.set_path(id, value)?;
        Ok(())
    }

    pub fn add_addr(&mut self, a: Ipv4Addr, kind: u32) -> anyhow::Result<()> {
        let had = self
            .dp
            .maps
            .addrs()?
            .into_iter()
            .find(|(k, _)| *k == a.octets())
            .map_or(0, |(_, v)| v);
        self.dp.maps.set_addr(a.octets(), had | kind)?;
        self.dp.maps.refresh_filter()?;
        Ok(())
    }

    pub fn set_state(&mut self, id: u32, state: u8) -> anyhow::Result<()> {
        let mut p = self.dp.maps.path(id)?;
        p.state = state;
        self.dp.maps.set_path(id, p)?;
        Ok(())
    }

    /// Places exception `value` for flow `key` of target `target` in `LB_FLOWS` by hand, and
    /// counts it as the datapath counts a pin, so the datapath consults the table.
    pub fn pin(
        &mut self,
        target: u32,
        key: lb_common::maps::FlowKey,
        value: lb_common::maps::FlowValue,
    ) -> anyhow::Result<()> {
        self.dp.maps.set_flow(key, value)?;
        let seq = self.dp.maps.exc_seq(target)?;
        self.dp.maps.set_exc_seq(target, seq + 1)?;
        Ok(())
    }

    /// Target `id` sends every flow to `active`, with no transition.
    pub fn target_single(&mut self, id: u32, active: u32) -> anyhow::Result<()> {
        self.dp.maps.set_target(id, TargetValue::single(active))?;
        Ok(())
    }

    /// Target `id`'s decision changes to `active`, keeping the decision in force as the
    /// previous one (what the control plane does when that decision's path is still up).
    pub fn change_single(&mut self, id: u32, active: u32) -> anyhow::Result<()> {
        let now = self.dp.maps.target(id)?;
        self.dp
            .maps
            .set_target(id, TargetValue::single(active).with_previous(&now))?;
        Ok(())
    }

    /// Publishes a VIP (whole address, or `service` = (proto, port)) for `target`, with reverse
    /// NAT entries for each of the target's `paths`.
    pub fn expose(
        &mut self,
        id: u32,
        vip: Ipv4Addr,
        service: Option<(u8, u16)>,
        target: u32,
        target_port: Option<u16>,
        paths: &[(u32, Ipv4Addr)],
    ) -> anyhow::Result<()> {
        let maps = &mut self.dp.maps;
        let whole: Vec<EndpointKey> = maps
            .rev_nat()?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| k.is_whole_address())
            .collect();
        for (path, a) in paths {
            let rev_service = service.map(|(proto, port)| (proto, target_port.unwrap_or(port)));
            let vip_port = service.map_or([0; 2], |(_, port)| port.to_be_bytes());
            // As the control plane does: a service on an address with a whole-address VIP.
            let shadows = service.is_some() && whole.contains(&EndpointKey::new(*a, None));
            maps.set_rev_nat(
                EndpointKey::new(*a, rev_service),
                RevValue {
                    vip_addr: vip.octets(),
                    vip_port,
                    flags: if shadows { REV_F_SHADOWS_WHOLE } else { 0 },
                    vip_rank: Self::rank(id),
                    vip_id: id,
                    path: *path,
                },
            )?;
        }
        maps.set_vip(
            id,
            VipInfo {
                key: EndpointKey::new(vip, service).widened(),
                target,
                target_port: target_port.unwrap_or(0).to_be_bytes(),
                rank: Self::rank(id),
                flags: 0,
            },
        )?;
        self.add_addr(vip, lb_common::maps::ADDR_VIP)
    }

    /// A spare target with one path at `path_addr`, exposed as whole-address `vip`.
    pub fn spare(&mut self, vip: Ipv4Addr, path_addr: Ipv4Addr) -> anyhow::Result<()> {
        use ids::*;
        self.path(PATH_SPARE, path_addr, TARGET_SPARE, PATH_UP)?;
        self.target_single(TARGET_SPARE, PATH_SPARE)?;
        self.expose(
            VIP_SPARE,
            vip,
            None,
            TARGET_SPARE,
            None,
            &[(PATH_SPARE, path_addr)],
        )
    }

    /// Runs `prog` on `frame` as if it arrived on `on`, at [`Fx::hook`]. A TC verdict comes
    /// back as the XDP action of the same meaning (`TC_ACT_REDIRECT` as `XDP_REDIRECT`: the
    /// test run does not say where to; a redirect back out of `on` is told apart only by the
    /// counters).
    pub fn run(&self, prog: Prog, on: Iface, frame: &[u8]) -> anyhow::Result<Run> {
        if self.hook == Hook::Tc {
            return self.run_tc(prog, on, frame);
        }
        let p = match prog {
            Prog::Ingress => self.dp.ingress()?,
            Prog::Return => self.dp.reverse()?,
        };
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex }: data_end must equal the frame length.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&on.ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 512];
        let mut ctx_out = [0u8; 24];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        opts.ctx_out = Some(&mut ctx_out);
        let r = p.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        out.truncate(r.data_size_out as usize);
        // The output starts at the metadata; the context says where the frame begins.
        let meta_len = u32::from_ne_bytes([ctx_out[0], ctx_out[1], ctx_out[2], ctx_out[3]]);
        let frame = out.split_off((meta_len as usize).min(out.len()));
        Ok(Run {
            action: r.return_value,
            frame,
            meta: out,
        })
    }

    fn run_tc(&self, prog: Prog, on: Iface, frame: &[u8]) -> anyhow::Result<Run> {
        let p = match prog {
            Prog::Ingress => self.dp.ingress_tc()?,
            Prog::Return => self.dp.reverse_tc()?,
        };
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_INGRESS_IFINDEX..SKB_INGRESS_IFINDEX + 4]
            .copy_from_slice(&on.ifindex.to_ne_bytes());
        ctx[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&on.ifindex.to_ne_bytes());
        if self.gso_size != 0 {
            ctx[SKB_GSO_SIZE..SKB_GSO_SIZE + 4].copy_from_slice(&self.gso_size.to_ne_bytes());
            ctx[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&2u32.to_ne_bytes());
        }
        let mut out = vec![0u8; frame.len() + 512];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let r = p.test_run(opts).context("BPF_PROG_TEST_RUN (sched_cls)")?;
        out.truncate(r.data_size_out as usize);
        let action = match r.return_value {
            TC_ACT_OK => XDP_PASS,
            TC_ACT_SHOT => XDP_DROP,
            TC_ACT_REDIRECT => XDP_REDIRECT,
            other => bail!("{prog:?} at TC returned {other}, no verdict lb uses"),
        };
        Ok(Run {
            action,
            frame: out,
            meta: Vec::new(),
        })
    }

    /// Runs and checks the action and the output frame (`None`: the input, unchanged).
    pub fn expect(
        &self,
        prog: Prog,
        on: Iface,
        input: &[u8],
        action: u32,
        output: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let r = self.run(prog, on, input)?;
        let want = output.unwrap_or(input);
        // TC sends a packet back out of its interface with a redirect too (see `run`).
        let same = r.action == action
            || (self.hook == Hook::Tc && action == XDP_TX && r.action == XDP_REDIRECT);
        if !same {
            bail!(
                "{prog:?}: action {} (expected {}); counters: {}",
                action_name(r.action),
                action_name(action),
                self.nonzero_counters()?
            );
        }
        if let Some(d) = lb_testkit::hexdiff::diff(want, &r.frame) {
            bail!("{prog:?}: output frame differs from the expected one:\n{d}");
        }
        // A translated packet XDP hands to the kernel carries the mark a TC program of ours
        // on the same interface lets pass (lb_common::maps::HANDED_OFF); no other does.
        let handed_off = self.hook == Hook::Xdp && action == XDP_PASS && output.is_some();
        let want_meta = if handed_off {
            lb_common::maps::HANDED_OFF.to_ne_bytes().to_vec()
        } else {
            Vec::new()
        };
        if r.meta != want_meta {
            bail!(
                "{prog:?}: metadata {:02x?} in front of the frame (expected {want_meta:02x?})",
                r.meta
            );
        }
        Ok(())
    }

    fn nonzero_counters(&self) -> anyhow::Result<String> {
        Ok(self
            .dp
            .maps
            .counters()?
            .into_iter()
            .filter(|(_, v)| *v != 0)
            .map(|(c, v)| format!("{}={v}", c.name()))
            .collect::<Vec<_>>()
            .join(" "))
    }

    /// Checks that the non-zero counters are exactly `want`.
    pub fn counters(&self, want: &[(Counter, u64)]) -> anyhow::Result<()> {
        let got = self.dp.maps.counters()?;
        let mut bad = Vec::new();
        for (c, v) in &got {
            let expected = want.iter().find(|(w, _)| w == c).map_or(0, |(_, n)| *n);
            if *v != expected {
                bad.push(format!("{}: {v} (expected {expected})", c.name()));
            }
        }
        if !bad.is_empty() {
            bail!(
                "counters differ: {}\nall non-zero: {}",
                bad.join(", "),
                self.nonzero_counters()?
            );
        }
        Ok(())
    }

    /// The rank the fixture gives VIP `id` among its target's VIPs (fixture ids are small).
    pub fn rank(id: u32) -> u8 {
        (id % lb_common::maps::MAX_VIPS_PER_TARGET) as u8
    }

    /// VIP `id`'s traffic, over every path of its target.
    pub fn vip_stats(&self, id: u32) -> anyhow::Result<TrafficStats> {
        let maps = &self.dp.maps;
        let info = maps.vip(id)?;
        let mut paths = Vec::new();
        for p in 0..lb_common::maps::MAX_PATHS {
            if maps.path(p)?.target == info.target {
                paths.push(p);
            }
        }
        Ok(maps.vip_stats(info.rank, paths)?)
    }

    pub fn path_stats(&self, id: u32) -> anyhow::Result<TrafficStats> {
        Ok(self.dp.maps.path_stats(id)?)
    }
}
