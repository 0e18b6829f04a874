//! What the read commands show (`lb status`, `lb stats`, `lb flows`), built from the pinned
//! maps alone, so they work while the daemon is down. Serializable: `--json` prints these.
//!
//! Addresses are `IpAddr`s: an IPv4 address shows as IPv4 (never in the IPv4-mapped form the
//! maps hold it in), an IPv6 one in its canonical text (RFC 5952, Rust's `Display`), both in
//! the text and in the JSON.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::{
    Counter,
    maps::{FLOW_F_FROM_PATH, FlowKey, FlowValue, TrafficStats},
    net::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Serialize;

use crate::{
    config::{AllDown, Mode, Vip},
    control::{
        model::{Model, vip_key},
        policy::Decision,
    },
    datapath::{Error, maps::Maps, tables::Tables},
};

/// The daemon of a pin directory.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Daemon {
    /// The running daemon's pid; when none runs, the last one's as the maps recorded it.
    pub pid: Option<u32>,
    /// A daemon holds the pin directory's lock ([`crate::datapath::lock`]).
    pub running: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Status {
    pub daemon: Daemon,
    pub targets: Vec<TargetStatus>,
    pub vips: Vec<VipStatus>,
    /// Filled by [`interfaces`] (it needs the pin directory, not only the maps).
    pub interfaces: Vec<Interface>,
    /// The VIP addresses' host routes for the routing daemon (`null`: announcements are off).
    pub announce: Option<Announcements>,
    /// Whether the paths' `health` is current: `live` when the running daemon answered (its
    /// probes run, and each path's `probe` says what they last found), `stale` when no
    /// daemon runs or it did not answer (no probe runs: `health` is what the last daemon
    /// decided, at `changed`).
    pub health_is: &'static str,
}

/// Where the daemon keeps the servable VIPs' host routes, and each address's state.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Announcements {
    pub table: u32,
    pub protocol: u8,
    /// Every address with a VIP whose state counts (`announce` not `false`).
    pub addresses: Vec<AddressAnnouncement>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AddressAnnouncement {
    pub address: IpAddr,
    /// The table holds its route: the routing daemon announces it.
    pub announced: bool,
    /// Every target of its VIPs has a path for new flows (the rule the daemon follows).
    pub servable: bool,
    /// Why it is not announced, or why its state is not what the rule says.
    pub why: Option<String>,
}

/// An interface the datapath is attached to, from the pinned links.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// `ingress` (client-facing) or `return` (path-facing).
    pub role: &'static str,
    /// `xdp` or `tc`.
    pub hook: &'static str,
    /// The attach mode: `native` (XDP in the driver) or `tcx` (TC); `null` when the daemon
    /// that attached it recorded none.
    pub mode: Option<String>,
    /// Why the daemon chose this hook, as it logged it (`null` when it recorded none).
    pub why: Option<String>,
    /// Whether XDP redirects may go into it (it is in the redirect map); when not, XDP
    /// traffic toward it goes through the kernel.
    pub takes_redirects: bool,
    /// What `--hook auto` chooses for it now, and why.
    pub auto: String,
}

/// The attached interfaces, as the pins say.
pub fn interfaces(pin: &crate::datapath::PinDir, maps: &Maps) -> Result<Vec<Interface>, Error> {
    use crate::datapath::{HookChoice, Role, choose_hook};
    let mut out = Vec::new();
    for (role, hook, name) in pin.attachments()? {
        let (auto, why) = choose_hook(HookChoice::Auto, &name);
        let meta = maps.iface(&name)?;
        let wanted = match hook {
            crate::datapath::Hook::Xdp => lb_common::maps::IFACE_HOOK_XDP,
            crate::datapath::Hook::Tc => lb_common::maps::IFACE_HOOK_TC,
        };
        // A record of another hook is stale (a link left behind by another daemon).
        let meta = meta.filter(|m| m.hook == wanted);
        out.push(Interface {
            mode: meta.map(|m| lb_common::maps::decode_str(&m.mode).to_owned()),
            why: meta.map(|m| lb_common::maps::decode_str(&m.why).to_owned()),
            role: match role {
                Role::Ingress => "ingress",
                Role::Return => "return",
            },
            hook: hook.name(),
            takes_redirects: crate::ifindex(&name).is_some_and(|i| maps.has_tx_port(i)),
            auto: format!("{auto}: {why}"),
            name,
        });
    }
    Ok(out)
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TargetStatus {
    pub name: String,
    /// `failover` or `active-active`.
    pub mode: &'static str,
    pub preempt: bool,
    /// `drop` or `last-known`.
    pub all_down: &'static str,
    /// Failover: the path new flows go to; `null` when none (or active/active, or a target
    /// with paths of both families: see `families`).
    pub active: Option<String>,
    /// Active/active: each path's share of new flows, in percent.
    pub shares: BTreeMap<String, f64>,
    /// The transition in force: the previous decision, which established TCP connections older
    /// than the last change keep following while its paths are up (docs/DATAPATH.md).
    pub transition: Option<TransitionStatus>,
    /// Only for a target with paths of both families, which has a decision per family (each
    /// over that family's paths, for that family's VIPs): `ipv4` and `ipv6`, each with the
    /// three fields above, which are then empty. Absent for a target of one family.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub families: BTreeMap<&'static str, DecisionStatus>,
    pub paths: Vec<PathStatus>,
}

/// One decision of a target: [`TargetStatus`]'s `active`, `shares` and `transition`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DecisionStatus {
    pub active: Option<String>,
    pub shares: BTreeMap<String, f64>,
    pub transition: Option<TransitionStatus>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TransitionStatus {
    /// Failover: the previous decision's path; active/active: `ring`.
    pub previous: String,
    /// When the decision changed (RFC 3339).
    pub since: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PathStatus {
    pub name: String,
    pub address: IpAddr,
    /// `up`, `down` or `disabled`: what the datapath does with the path, as its path table
    /// says.
    pub state: &'static str,
    /// An operator's disable (`lb path disable`, or a drain that ended) is recorded. It
    /// differs from `state == "disabled"` while no daemon has applied it yet (a daemon that is
    /// stuck, or busy).
    pub drain_requested: bool,
    /// An operator's drain runs until then (RFC 3339): the path takes no new flows, its state
    /// stays `up` so that established TCP connections keep it; then it is disabled.
    pub draining_until: Option<String>,
    /// What the probes last said: `up`, `down` or `unknown`.
    pub health: &'static str,
    pub priority: u32,
    pub weight: u32,
    /// When the state last changed (RFC 3339), if it ever did.
    pub changed: Option<String>,
    /// Round-trip time of the last successful probe, milliseconds.
    pub rtt_ms: Option<f64>,
    /// Probes succeed, but clients' TCP handshakes to the path go unanswered.
    pub datapath_suspect: bool,
    /// The interface the path's replies are accepted on (`null`: any, while its address has
    /// no route; replies arriving elsewhere are dropped, `drop_wrong_interface`).
    pub replies_on: Option<String>,
    /// What the running daemon's probes last found, and the settings in force (`null` unless
    /// `health_is` is `live`).
    pub probe: Option<crate::rpc::ProbeState>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VipStatus {
    pub address: IpAddr,
    /// `tcp`, `udp`, or `null` for a whole-address VIP.
    pub protocol: Option<&'static str>,
    pub port: Option<u16>,
    pub target: String,
    /// The port on the VM, when the service translates it.
    pub target_port: Option<u16>,
    /// The VIP's state decides its address's announcement (`announce` in the configuration).
    pub announce: bool,
    /// Its address's host route is in the table (`null`: announcements are off, or the VIP
    /// does not count).
    pub announced: Option<bool>,
}

fn rfc3339(t: SystemTime) -> Option<String> {
    (t > UNIX_EPOCH).then(|| humantime::format_rfc3339_seconds(t).to_string())
}

/// Whether a daemon runs on pin directory `pin` (it holds its lock), and its pid.
pub fn daemon(pin: &std::path::Path, maps: &Maps) -> anyhow::Result<Daemon> {
    use crate::datapath::lock::{PinLock, Role};
    match PinLock::holder(pin)? {
        Some(h) if h.role == Role::Daemon => Ok(Daemon {
            pid: Some(h.pid),
            running: true,
        }),
        _ => {
            let pid = maps.meta()?.daemon_pid;
            Ok(Daemon {
                pid: (pid != 0).then_some(pid),
                running: false,
            })
        }
    }
}

/// The pinned state as a [`Model`] (configuration as recorded in the maps) and its tables.
pub fn model(maps: &Maps) -> Result<(Model, Tables), Error> {
    let tables = maps.read_tables()?;
    let model = Model::from_tables(&tables, |id| {
        maps.admin(id)
            .unwrap_or(crate::datapath::maps::Admin::Enabled)
    });
    Ok((model, tables))
}

/// Target id `tid`'s decision as `lb status` shows it.
fn decision_status(model: &Model, tid: u32) -> DecisionStatus {
    let name_of = |id: u32| model.path_name(id).map(|(_, p)| p.to_string());
    let decision = model.decisions.get(&tid).cloned().unwrap_or(Decision::None);
    let (active, shares) = match &decision {
        Decision::Single(p) => (name_of(*p), BTreeMap::new()),
        Decision::Ring(ring) => {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for p in ring.iter() {
                *counts
                    .entry(name_of(*p).unwrap_or_else(|| p.to_string()))
                    .or_default() += 1;
            }
            let total = ring.len().max(1) as f64;
            (
                None,
                counts
                    .into_iter()
                    .map(|(k, n)| (k, (n as f64 * 1000.0 / total).round() / 10.0))
                    .collect(),
            )
        }
        Decision::None => (None, BTreeMap::new()),
    };
    let transition = model.transitions.get(&tid).map(|tr| TransitionStatus {
        previous: match &tr.previous {
            Decision::Single(p) => name_of(*p).unwrap_or_else(|| p.to_string()),
            Decision::Ring(_) => "ring".into(),
            Decision::None => "none".into(),
        },
        since: rfc3339(tr.since),
    });
    DecisionStatus {
        active,
        shares,
        transition,
    }
}

/// Every target of `model` as `lb status` shows it, `tables` being what the maps hold and
/// `replies_on` naming the interface a path's replies are accepted on. A target with paths of
/// both families shows once, with each family's decision.
pub fn targets(
    model: &Model,
    tables: &Tables,
    replies_on: impl Fn(u32) -> Option<String>,
) -> Vec<TargetStatus> {
    let mut targets = Vec::new();
    for t in &model.config.targets {
        let tids: Vec<(Option<crate::config::Family>, u32)> =
            model.ids.targets.of(&t.name).collect();
        let (decision, families) = match tids[..] {
            [] => continue,
            [(None, tid)] => (decision_status(model, tid), BTreeMap::new()),
            _ => (
                DecisionStatus {
                    active: None,
                    shares: BTreeMap::new(),
                    transition: None,
                },
                tids.iter()
                    .filter_map(|(f, tid)| Some((f.as_ref()?.key(), decision_status(model, *tid))))
                    .collect(),
            ),
        };
        let paths = t
            .paths
            .iter()
            .filter_map(|p| {
                let pid = model.ids.paths.get(&(t.name.clone(), p.name.clone()))?;
                let s = model.paths.get(pid).cloned().unwrap_or_default();
                Some(PathStatus {
                    name: p.name.clone(),
                    address: p.address,
                    state: match tables.paths.get(pid).map(|v| v.state) {
                        Some(lb_common::maps::PATH_UP) => "up",
                        Some(lb_common::maps::PATH_DISABLED) => "disabled",
                        _ => "down",
                    },
                    drain_requested: s.disabled,
                    draining_until: s.draining.and_then(rfc3339),
                    health: crate::control::health::health_name(s.health),
                    priority: p.priority,
                    weight: p.weight,
                    changed: rfc3339(s.changed),
                    rtt_ms: s.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    datapath_suspect: s.suspect,
                    replies_on: replies_on(*pid),
                    probe: None,
                })
            })
            .collect();
        let DecisionStatus {
            active,
            shares,
            transition,
        } = decision;
        targets.push(TargetStatus {
            name: t.name.clone(),
            mode: match t.mode {
                Mode::Failover => "failover",
                Mode::ActiveActive => "active-active",
            },
            preempt: t.preempt,
            all_down: match t.all_down {
                AllDown::Drop => "drop",
                AllDown::LastKnown => "last-known",
            },
            active,
            shares,
            transition,
            families,
            paths,
        });
    }
    targets
}

pub fn status(pin: &std::path::Path, maps: &Maps) -> anyhow::Result<Status> {
    let (model, tables) = model(maps)?;
    let targets = targets(&model, &tables, |pid| {
        maps.path_iface(pid)
            .ok()
            .filter(|i| *i != 0)
            .map(|i| crate::ifname(i).unwrap_or_else(|| format!("ifindex {i}")))
    });
    let vips = model
        .config
        .vips
        .iter()
        .map(|v| VipStatus {
            address: v.address,
            protocol: v.service.map(|s| s.protocol.name()),
            port: v.service.map(|s| s.port),
            target: v.target.clone(),
            target_port: v.service.and_then(|s| s.target_port),
            announce: v.announce,
            announced: None,
        })
        .collect::<Vec<_>>();
    let daemon = daemon(pin, maps)?;
    let meta = maps.meta()?;
    let announce = match (meta.announce_protocol, meta.announce_table) {
        (0, _) => None,
        (protocol, table) => Some(announcements(
            &model,
            crate::config::Announce { table, protocol },
            daemon.running,
        )?),
    };
    let mut vips = vips;
    if let Some(a) = &announce {
        for v in vips.iter_mut().filter(|v| v.announce) {
            v.announced = a
                .addresses
                .iter()
                .find(|x| x.address == v.address)
                .map(|x| x.announced);
        }
    }
    Ok(Status {
        daemon,
        interfaces: Vec::new(),
        targets,
        vips,
        announce,
        health_is: "stale",
    })
}

/// The announcement of every counting address: the routes `announce`'s table holds, beside
/// what the daemon's rule says of each (`crate::control::announce`).
pub fn announcements(
    model: &Model,
    announce: crate::config::Announce,
    daemon_running: bool,
) -> anyhow::Result<Announcements> {
    use anyhow::Context as _;
    let routes =
        crate::announce::list_blocking(announce).context("reading the VIPs' host routes")?;
    let addresses = crate::control::announce::addresses(model, true)
        .into_iter()
        .map(|(address, rule)| {
            let announced = routes.contains(&address);
            let why = match (&rule, announced) {
                (Err(w), false) => Some(w.to_string()),
                (Ok(()), false) if daemon_running => Some(
                    "servable, but not announced: a client interface lacks the datapath, or a \
                     target came back and settles ((rise + 1) × interval, then until \
                     every path is up, at most announce.settle_max_s)"
                        .into(),
                ),
                (Ok(()), false) => Some("servable, but no daemon runs to announce it".into()),
                (Err(w), true) => Some(format!(
                    "announced although not servable ({w}): {}",
                    if daemon_running {
                        "the daemon withdraws it within moments"
                    } else {
                        "no daemon runs to withdraw it"
                    }
                )),
                (Ok(()), true) => None,
            };
            AddressAnnouncement {
                address,
                announced,
                servable: rule.is_ok(),
                why,
            }
        })
        .collect();
    Ok(Announcements {
        table: announce.table,
        protocol: announce.protocol,
        addresses,
    })
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Traffic {
    pub in_packets: u64,
    pub in_bytes: u64,
    pub out_packets: u64,
    pub out_bytes: u64,
}

impl From<TrafficStats> for Traffic {
    fn from(s: TrafficStats) -> Self {
        Self {
            in_packets: s.in_packets,
            in_bytes: s.in_bytes,
            out_packets: s.out_packets,
            out_bytes: s.out_bytes,
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Stats {
    /// Every counter by name (see docs/DATAPATH.md), zeros included.
    pub counters: BTreeMap<&'static str, u64>,
    pub vips: Vec<VipTraffic>,
    pub paths: Vec<PathTraffic>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VipTraffic {
    pub address: IpAddr,
    pub protocol: Option<&'static str>,
    pub port: Option<u16>,
    pub target: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PathTraffic {
    pub target: String,
    pub path: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// VIP `v`'s traffic: its column of `LB_PAIR_STATS` over its target's paths.
pub fn vip_traffic(maps: &Maps, model: &Model, v: &Vip) -> Result<TrafficStats, Error> {
    let key = vip_key(v);
    let rank = model.ids.vip_ranks.get(&key).copied().unwrap_or(0);
    let paths = model
        .ids
        .paths
        .iter()
        .filter(|((target, _), _)| *target == v.target)
        .map(|(_, id)| *id);
    maps.vip_stats(rank, paths)
}

pub fn stats(maps: &Maps) -> Result<Stats, Error> {
    let (model, _) = model(maps)?;
    let counters = maps
        .counters()?
        .into_iter()
        .map(|(c, v)| (Counter::name(c), v))
        .collect();
    let mut vips = Vec::new();
    for v in &model.config.vips {
        if !model.ids.vips.contains_key(&vip_key(v)) {
            continue;
        }
        vips.push(VipTraffic {
            address: v.address,
            protocol: v.service.map(|s| s.protocol.name()),
            port: v.service.map(|s| s.port),
            target: v.target.clone(),
            traffic: vip_traffic(maps, &model, v)?.into(),
        });
    }
    let mut paths = Vec::new();
    for ((target, path), id) in &model.ids.paths {
        paths.push(PathTraffic {
            target: target.clone(),
            path: path.clone(),
            traffic: maps.path_stats(*id)?.into(),
        });
    }
    Ok(Stats {
        counters,
        vips,
        paths,
    })
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Flow {
    /// `tcp`, `udp`, `icmp` or `icmpv6`.
    pub protocol: &'static str,
    pub client: IpAddr,
    /// Client port (ICMP echo: the identifier).
    pub client_port: u16,
    pub vip: IpAddr,
    pub vip_port: u16,
    pub target: Option<String>,
    pub path: Option<String>,
    /// Pinned by a packet of the VM's (a connection it opened, or a SYN-ACK during a
    /// transition); otherwise by the client: its first packet after a decision change, or
    /// (`from_syn`) the SYN of a connection opened during a transition.
    pub from_vm: bool,
    /// Pinned by the client's SYN during a transition (its flow's previous path differs).
    pub from_syn: bool,
    /// The other side has answered since the pin.
    pub replied: bool,
    /// A FIN or RST went by: the exception expires soon.
    pub closing: bool,
}

/// Up to `limit` exceptions (flows pinned away from their target's decision): those client
/// packets pinned (IPv4, then IPv6), then those the VM's packets pinned (likewise), in the
/// order the kernel lists them. Every other flow follows its target's decision and is stored
/// nowhere.
pub fn flows(maps: &Maps, limit: usize) -> Result<Vec<Flow>, Error> {
    let (model, _) = model(maps)?;
    let v4 = |k: FlowKey, v| flow(&model, &k, &v, |a| IpAddr::V4(Ipv4Addr::from(a)));
    let v6 =
        |k: lb_common::maps::FlowKey6, v| flow(&model, &k, &v, |a| IpAddr::V6(Ipv6Addr::from(a)));
    let mut all: Vec<Flow> = maps
        .flows(limit)?
        .into_iter()
        .map(|(k, v)| v4(k, v))
        .collect();
    let rest = limit.saturating_sub(all.len());
    all.extend(maps.flows6(rest)?.into_iter().map(|(k, v)| v6(k, v)));
    let rest = limit.saturating_sub(all.len());
    all.extend(maps.outbound(rest)?.into_iter().map(|(k, v)| v4(k, v)));
    let rest = limit.saturating_sub(all.len());
    all.extend(maps.outbound6(rest)?.into_iter().map(|(k, v)| v6(k, v)));
    Ok(all)
}

/// One exception of either family (`ip`: its addresses as `IpAddr`s).
fn flow<A: Copy>(
    model: &Model,
    k: &lb_common::maps::FlowKey<A>,
    v: &FlowValue,
    ip: impl Fn(A) -> IpAddr,
) -> Flow {
    let names = model.path_name(v.path);
    Flow {
        protocol: match k.proto {
            IPPROTO_TCP => "tcp",
            IPPROTO_UDP => "udp",
            IPPROTO_ICMP => "icmp",
            IPPROTO_ICMPV6 => "icmpv6",
            _ => "?",
        },
        client: ip(k.src),
        client_port: u16::from_be_bytes(k.sport),
        vip: ip(k.dst),
        vip_port: u16::from_be_bytes(k.dport),
        target: names.map(|(t, _)| t.to_string()),
        path: names.map(|(_, p)| p.to_string()),
        from_vm: v.flags & FLOW_F_FROM_PATH != 0,
        from_syn: v.flags & lb_common::maps::FLOW_F_FROM_SYN != 0,
        replied: v.flags & lb_common::maps::FLOW_F_REPLIED != 0,
        closing: v.flags & lb_common::maps::FLOW_F_CLOSING != 0,
    }
}

/// An address and port as text: `192.0.2.1:443`, `[2001:db8::1]:443` (RFC 5952 §6).
pub fn endpoint(address: IpAddr, port: u16) -> String {
    SocketAddr::new(address, port).to_string()
}

/// How a VIP's service reads: `tcp/443`, or `all` for a whole-address VIP.
pub fn service_label(protocol: Option<&str>, port: Option<u16>) -> String {
    match (protocol, port) {
        (Some(proto), Some(port)) => format!("{proto}/{port}"),
        _ => "all".into(),
    }
}

/// `a - b` per second over `dt` (for `lb stats --watch`).
pub fn rate(a: u64, b: u64, dt: Duration) -> f64 {
    a.saturating_sub(b) as f64 / dt.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use lb_common::maps::{EndpointKey6, FLOW_F_REPLIED, FlowKey6, PathValue, mapped};

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    /// IPv4 shows as IPv4 although the maps hold it IPv4-mapped; IPv6 in its canonical text
    /// (RFC 5952: lower case, the longest run of zeros as `::`), whatever the configuration's
    /// spelling; with a port, IPv6 in brackets.
    #[test]
    fn addresses_show_in_their_own_family_and_canonical_form() {
        let v4 = ip("203.0.113.10");
        let v6 = ip("2001:0DB8:0000:0000:0000:0000:0000:0010");
        assert_eq!(EndpointKey6::of(v4, None).ip().to_string(), "203.0.113.10");
        let path = PathValue {
            addr: mapped([192, 0, 2, 70]),
            ..PathValue::default()
        };
        assert_eq!(path.ip().to_string(), "192.0.2.70");
        assert_eq!(v6.to_string(), "2001:db8::10");
        assert_eq!(endpoint(v4, 443), "203.0.113.10:443");
        assert_eq!(endpoint(v6, 443), "[2001:db8::10]:443");

        // `--json`: strings, the same text.
        let vip = |address| VipStatus {
            address,
            protocol: Some("tcp"),
            port: Some(443),
            target: "web".into(),
            target_port: None,
            announce: true,
            announced: None,
        };
        let json = |v: &VipStatus| serde_json::to_value(v).expect("serializes")["address"].clone();
        assert_eq!(json(&vip(v4)), "203.0.113.10");
        assert_eq!(json(&vip(v6)), "2001:db8::10");
    }

    /// An IPv6 exception (`LB_FLOWS6`, `LB_OUTBOUND6`) reads as one of IPv4, its addresses in
    /// their family and ICMPv6 named.
    #[test]
    fn an_ipv6_exception_reads_like_an_ipv4_one() {
        let client: std::net::Ipv6Addr = "2001:db8:c::1".parse().expect("an address");
        let vip: std::net::Ipv6Addr = "2001:db8:ff::10".parse().expect("an address");
        let key = FlowKey6::new(
            client.octets(),
            vip.octets(),
            [0x12, 0x34],
            [0, 0],
            IPPROTO_ICMPV6,
        );
        let value = FlowValue::new(3, 1, FLOW_F_REPLIED, 0);
        let f = flow(&Model::empty(), &key, &value, |a| {
            IpAddr::V6(Ipv6Addr::from(a))
        });
        assert_eq!(f.protocol, "icmpv6");
        assert_eq!((f.client, f.client_port), (IpAddr::V6(client), 0x1234));
        assert_eq!((f.vip, f.vip_port), (IpAddr::V6(vip), 0));
        assert!(f.replied && !f.from_vm && !f.closing);
        assert_eq!(f.path, None, "no such path in an empty model");
    }
}
