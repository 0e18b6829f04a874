//! Validation: walking the raw shape in file order, the location of each value in hand.

use std::{
    collections::{HashMap, hash_map::Entry},
    net::IpAddr,
    time::Duration,
};

use lb_common::maps::{MAX_PATHS, MAX_TARGETS, MAX_VIPS, MAX_VIPS_PER_TARGET};

use crate::config::{
    AllDown, Announce, Config, ConfigError, DEFAULT_DATAPATH_SUSPECT, DEFAULT_NOTIFY_TIMEOUT,
    DEFAULT_SETTLE_MAX, Family, Flows, HookSetting, Interfaces, MAX_FLOW_TABLE_SIZE, MAX_IFNAME,
    MAX_NOTIFY_TIMEOUT_MS, MAX_SETTLE_MAX, MAX_WEIGHT, Mode, Notify, Path, Probe, Protocol,
    Service, Target, Vip, check_name,
    probe::check_probe,
    raw::{RawAnnounce, RawConfig, RawFlows, RawInterfaces, RawPath, RawTarget, RawVip},
};

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Walks a [`RawConfig`] in file order, building the model; the first problem is the error.
/// Remembers what later sections are checked against.
#[derive(Default)]
pub(crate) struct Validator {
    /// Every path address so far, with the path's location.
    path_addresses: HashMap<IpAddr, String>,
    /// Paths so far, over all targets (the datapath's capacity).
    paths: usize,
}

impl Validator {
    pub(crate) fn config(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let RawConfig {
            // For editors only.
            schema: _,
            interfaces,
            flow_table_size,
            datapath_suspect_ms,
            icmp_too_big_per_sec,
            icmp_too_big_burst,
            flows,
            announce,
            targets: raw_targets,
            vips: raw_vips,
        } = raw;
        let flows = check_flows(flows)?;
        let (announce, settle_max) = match announce.map(check_announce).transpose()? {
            Some((a, max)) => (Some(a), max),
            None => (None, DEFAULT_SETTLE_MAX),
        };
        let icmp_too_big_per_sec = in_range(
            "icmp_too_big_per_sec",
            icmp_too_big_per_sec,
            1..=1_000_000,
            lb_common::maps::DEFAULT_TOO_BIG_PER_SEC,
        )?;
        let icmp_too_big_burst = in_range(
            "icmp_too_big_burst",
            icmp_too_big_burst,
            1..=1_000_000,
            lb_common::maps::DEFAULT_TOO_BIG_BURST,
        )?;
        let datapath_suspect = match datapath_suspect_ms {
            None => DEFAULT_DATAPATH_SUSPECT,
            Some(ms) if (100..=3_600_000).contains(&ms) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(invalid(
                    "datapath_suspect_ms",
                    format!("{ms} is not between 100 and 3600000"),
                ));
            }
        };
        let interfaces = check_interfaces_section(interfaces, !raw_targets.is_empty())?;
        let flow_table_size = flow_table_size.map(check_flow_table_size).transpose()?;
        at_most("targets", "targets", raw_targets.len(), MAX_TARGETS)?;
        at_most("vips", "VIPs", raw_vips.len(), MAX_VIPS)?;

        let mut targets: Vec<Target> = Vec::with_capacity(raw_targets.len());
        // The datapath's target ids: one per family of a target (`control::model::Ids`).
        let mut target_ids = 0;
        for (i, raw) in raw_targets.into_iter().enumerate() {
            let at = format!("targets[{i}]");
            let target = self.target(&at, raw, &targets)?;
            target_ids += target.families().len();
            if target_ids > MAX_TARGETS as usize {
                return Err(invalid(
                    at,
                    format!(
                        "more than {MAX_TARGETS} target ids in all (the datapath's capacity): a \
                         target with paths of both families takes one per family"
                    ),
                ));
            }
            targets.push(target);
        }
        let vips = self.vips(raw_vips, &targets)?;
        Ok(Config {
            interfaces,
            targets,
            vips,
            flow_table_size,
            datapath_suspect,
            icmp_too_big_per_sec,
            icmp_too_big_burst,
            flows,
            announce,
            settle_max,
        })
    }

    fn target(
        &mut self,
        at: &str,
        raw: RawTarget,
        earlier: &[Target],
    ) -> Result<Target, ConfigError> {
        let RawTarget {
            name,
            mode,
            preempt,
            all_down,
            expose_paths,
            paths: raw_paths,
            probe,
            notify,
        } = raw;
        if name.is_empty() {
            return Err(invalid(format!("{at}.name"), "a target needs a name"));
        }
        check_name(&format!("{at}.name"), &name)?;
        if let Some(j) = earlier.iter().position(|t| t.name == name) {
            return Err(invalid(
                format!("{at}.name"),
                format!("{name:?} is already the name of targets[{j}]"),
            ));
        }
        let mode = mode.map_or(Mode::Failover, Mode::from);
        let probe = check_probe(&format!("{at}.probe"), probe, None)?;
        if raw_paths.is_empty() {
            return Err(invalid(
                format!("{at}.paths"),
                "a target needs at least one path",
            ));
        }
        let mut paths: Vec<Path> = Vec::with_capacity(raw_paths.len());
        for (j, raw) in raw_paths.into_iter().enumerate() {
            let path = self.path(at, j, raw, mode, &probe, &paths)?;
            paths.push(path);
        }
        Ok(Target {
            name,
            mode,
            preempt: preempt.unwrap_or(true),
            all_down: all_down.map_or(AllDown::Drop, AllDown::from),
            expose_paths: expose_paths.unwrap_or(false),
            paths,
            notify: notify
                .map(|n| check_notify(&format!("{at}.notify"), n))
                .transpose()?,
        })
    }

    /// Path `index` of the target at `target_at`, after `earlier` ones.
    fn path(
        &mut self,
        target_at: &str,
        index: usize,
        raw: RawPath,
        mode: Mode,
        target_probe: &Probe,
        earlier: &[Path],
    ) -> Result<Path, ConfigError> {
        let RawPath {
            name,
            address,
            priority,
            weight,
            source,
            interface,
            probe,
        } = raw;
        let at = format!("{target_at}.paths[{index}]");
        self.paths += 1;
        if self.paths > MAX_PATHS as usize {
            return Err(invalid(
                at,
                format!("more than {MAX_PATHS} paths in all (the datapath's capacity)"),
            ));
        }
        if name.is_empty() {
            return Err(invalid(format!("{at}.name"), "a path needs a name"));
        }
        check_name(&format!("{at}.name"), &name)?;
        if let Some(j) = earlier.iter().position(|p| p.name == name) {
            return Err(invalid(
                format!("{at}.name"),
                format!("{name:?} is already the name of {target_at}.paths[{j}]"),
            ));
        }
        let address = unicast(&format!("{at}.address"), &address)?;
        match self.path_addresses.entry(address) {
            Entry::Occupied(first) => {
                return Err(invalid(
                    format!("{at}.address"),
                    format!("{address} is already the address of {}", first.get()),
                ));
            }
            Entry::Vacant(slot) => {
                slot.insert(at.clone());
            }
        }
        // The listed order is the preference; past u32::MAX the capacity check has failed.
        let priority = priority.unwrap_or_else(|| u32::try_from(index).unwrap_or(u32::MAX));
        let weight = weight.unwrap_or(1);
        if weight == 0 && mode == Mode::ActiveActive {
            return Err(invalid(
                format!("{at}.weight"),
                "0 in an active-active target: the path would take no flows",
            ));
        }
        if weight > MAX_WEIGHT {
            return Err(invalid(
                format!("{at}.weight"),
                format!("{weight} is more than the maximum of {MAX_WEIGHT}"),
            ));
        }
        let source = source
            .map(|s| unicast(&format!("{at}.source"), &s))
            .transpose()?;
        if let Some(source) = source
            && source.is_ipv4() != address.is_ipv4()
        {
            return Err(invalid(
                format!("{at}.source"),
                format!(
                    "{source} is {}, the path's address {address} {}: the probes go from an \
                     address of the path's family",
                    family(source),
                    family(address)
                ),
            ));
        }
        if let Some(name) = &interface {
            check_interface_name(&format!("{at}.interface"), name)?;
        }
        let probe = check_probe(&format!("{at}.probe"), probe, Some(target_probe))?;
        Ok(Path {
            name,
            address,
            priority,
            weight,
            probe,
            source,
            interface,
        })
    }

    fn vips(&self, raw_vips: Vec<RawVip>, targets: &[Target]) -> Result<Vec<Vip>, ConfigError> {
        // What each key is, for duplicates and reverse-NAT ambiguity: the index of the VIP.
        let mut by_key: HashMap<(IpAddr, Option<(Protocol, u16)>), usize> = HashMap::new();
        // By target and family: replies from a target's paths of one family are translated back
        // to its VIPs of that family only.
        let mut whole_by_target: HashMap<(&str, Family), usize> = HashMap::new();
        // (target, family, protocol, port on the VM): the key replies are translated by.
        let mut service_by_reply: HashMap<(&str, Family, Protocol, u16), usize> = HashMap::new();
        let mut per_target: HashMap<&str, usize> = HashMap::new();
        let mut vips: Vec<Vip> = Vec::with_capacity(raw_vips.len());
        for (i, raw) in raw_vips.into_iter().enumerate() {
            let at = format!("vips[{i}]");
            let (vip, target) = self.vip(&at, raw, targets)?;
            let key = (vip.address, vip.service.map(|s| (s.protocol, s.port)));
            let family = Family::of(vip.address);
            if let Some(&k) = by_key.get(&key) {
                return Err(invalid(
                    at,
                    format!("duplicate of vips[{k}] ({})", describe(&vip)),
                ));
            }
            match vip.service {
                None => {
                    if let Some(&k) = whole_by_target.get(&(target.name.as_str(), family)) {
                        return Err(invalid(
                            at,
                            format!(
                                "target {:?} already has the whole-address VIP vips[{k}] ({}): \
                                 replies from its paths could not tell which VIP they belong to",
                                target.name,
                                describe(&vips[k]),
                            ),
                        ));
                    }
                    whole_by_target.insert((&target.name, family), i);
                }
                Some(service) => {
                    let port = service.target_port.unwrap_or(service.port);
                    let reply = (target.name.as_str(), family, service.protocol, port);
                    if let Some(&k) = service_by_reply.get(&reply) {
                        return Err(invalid(
                            at,
                            format!(
                                "target {:?} already answers vips[{k}] ({}) from {} port {port}: \
                                 replies could not tell which VIP they belong to",
                                target.name,
                                describe(&vips[k]),
                                service.protocol,
                            ),
                        ));
                    }
                    service_by_reply.insert(reply, i);
                }
            }
            let served = per_target.entry(&target.name).or_default();
            *served += 1;
            if *served > MAX_VIPS_PER_TARGET as usize {
                return Err(invalid(
                    at,
                    format!(
                        "target {:?} would serve more than {MAX_VIPS_PER_TARGET} VIPs (the \
                         datapath counts each VIP's traffic per path in that many columns): \
                         a whole-address VIP serves every port",
                        target.name
                    ),
                ));
            }
            by_key.insert(key, i);
            vips.push(vip);
        }
        Ok(vips)
    }

    /// One VIP on its own (and against the paths), with its target.
    fn vip<'t>(
        &self,
        at: &str,
        raw: RawVip,
        targets: &'t [Target],
    ) -> Result<(Vip, &'t Target), ConfigError> {
        let RawVip {
            address,
            protocol,
            port,
            target,
            target_port,
            announce,
        } = raw;
        let announce = announce.unwrap_or(true);
        let address = unicast(&format!("{at}.address"), &address)?;
        let service = match (protocol, port) {
            (None, None) => {
                if target_port.is_some() {
                    return Err(invalid(
                        format!("{at}.target_port"),
                        "port translation needs a service (protocol and port); a \
                         whole-address VIP keeps every port",
                    ));
                }
                None
            }
            (Some(_), None) => {
                return Err(invalid(
                    format!("{at}.port"),
                    "a service needs a port with its protocol (or neither, for the whole address)",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    format!("{at}.protocol"),
                    "a service needs a protocol with its port (or neither, for the whole address)",
                ));
            }
            (Some(protocol), Some(port)) => {
                let port = port_number(&format!("{at}.port"), port)?;
                let target_port = target_port
                    .map(|p| port_number(&format!("{at}.target_port"), p))
                    .transpose()?;
                Some(Service {
                    protocol: protocol.into(),
                    port,
                    target_port: target_port.filter(|&p| p != port),
                })
            }
        };
        let Some(t) = targets.iter().position(|t| t.name == target) else {
            return Err(invalid(
                format!("{at}.target"),
                format!("unknown target {target:?}"),
            ));
        };
        let found = &targets[t];
        if let Some(path) = self.path_addresses.get(&address) {
            return Err(invalid(
                format!("{at}.address"),
                format!("{address} is also the address of {path}"),
            ));
        }
        // The datapath writes the chosen path's address over the VIP's: only the target's
        // paths of the VIP's family serve it (no translation between the families).
        let family = Family::of(address);
        if found.paths_of(family).next().is_none() {
            return Err(invalid(
                format!("{at}.address"),
                format!(
                    "{address} is an {family} VIP, but its target {target:?} (targets[{t}]) has \
                     no {family} path: a VIP is served by its target's paths of its family (lb \
                     translates addresses, never between IPv4 and IPv6)",
                ),
            ));
        }
        let vip = Vip {
            address,
            service,
            target,
            announce,
        };
        Ok((vip, found))
    }
}

fn check_interfaces_section(
    raw: RawInterfaces,
    has_targets: bool,
) -> Result<Interfaces, ConfigError> {
    let RawInterfaces {
        clients,
        paths,
        hooks,
    } = raw;
    if clients.is_empty() {
        return Err(invalid(
            "interfaces.clients",
            "at least one interface must face the clients",
        ));
    }
    if paths.is_empty() && has_targets {
        return Err(invalid(
            "interfaces.paths",
            "targets need at least one interface facing the paths (replies are translated there)",
        ));
    }
    let mut seen: HashMap<&str, (&str, usize)> = HashMap::new();
    for (list, names) in [("clients", &clients), ("paths", &paths)] {
        for (i, name) in names.iter().enumerate() {
            let at = format!("interfaces.{list}[{i}]");
            check_interface_name(&at, name)?;
            match seen.get(name.as_str()) {
                Some(&(first, j)) if first == list => {
                    return Err(invalid(
                        at,
                        format!("duplicate of interfaces.{first}[{j}] ({name:?})"),
                    ));
                }
                Some(&(first, j)) => {
                    return Err(invalid(
                        at,
                        format!(
                            "{name:?} is also interfaces.{first}[{j}]: an interface faces either \
                             the clients or the paths (it carries one XDP program)"
                        ),
                    ));
                }
                None => {
                    seen.insert(name, (list, i));
                }
            }
        }
    }
    let mut settings = std::collections::BTreeMap::new();
    for (name, hook) in hooks {
        let at = format!("interfaces.hooks.{name}");
        if !seen.contains_key(name.as_str()) {
            return Err(invalid(
                at,
                format!("{name:?} is in neither interfaces.clients nor interfaces.paths"),
            ));
        }
        let setting = match hook.as_str() {
            "auto" => HookSetting::Auto,
            "xdp" => HookSetting::Xdp,
            "tc" => HookSetting::Tc,
            other => {
                return Err(invalid(
                    at,
                    format!("{other:?} is not a hook: auto, xdp or tc"),
                ));
            }
        };
        settings.insert(name, setting);
    }
    Ok(Interfaces {
        clients,
        paths,
        hooks: settings,
    })
}

/// A name the kernel would take (`dev_valid_name`).
fn check_interface_name(at: &str, name: &str) -> Result<(), ConfigError> {
    if name.len() > MAX_IFNAME {
        return Err(invalid(
            at,
            format!("{name:?} is longer than {MAX_IFNAME} bytes (the kernel's limit)"),
        ));
    }
    let bad = |c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control();
    if name.is_empty() || name == "." || name == ".." || name.chars().any(bad) {
        return Err(invalid(at, format!("{name:?} is not an interface name")));
    }
    Ok(())
}

/// `value` of field `at` within `range`, or `default` when absent.
fn in_range(
    at: &str,
    value: Option<u64>,
    range: std::ops::RangeInclusive<u32>,
    default: u32,
) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => u32::try_from(v)
            .ok()
            .filter(|v| range.contains(v))
            .ok_or_else(|| {
                invalid(
                    at,
                    format!("{v} is not between {} and {}", range.start(), range.end()),
                )
            }),
    }
}

/// The `announce` section; every field optional. Refuses the tables and route protocols that
/// others own: a route there would be deleted, overwritten or used for forwarding.
fn check_announce(raw: RawAnnounce) -> Result<(Announce, Duration), ConfigError> {
    let RawAnnounce {
        table,
        protocol,
        settle_max_s,
    } = raw;
    let d = Announce::default();
    let table = match table {
        None => d.table,
        Some(t @ (0 | 253..=255)) => {
            return Err(invalid(
                "announce.table",
                format!(
                    "{t} is {}: lb needs a table of its own, which no rule selects for forwarding",
                    match t {
                        0 => "no table (RT_TABLE_UNSPEC)",
                        253 => "the kernel's default table",
                        254 => "the main table",
                        _ => "the local table",
                    }
                ),
            ));
        }
        Some(t) => u32::try_from(t).map_err(|_| {
            invalid(
                "announce.table",
                format!("{t} is not a routing table number (1 to 4294967295)"),
            )
        })?,
    };
    let protocol = match protocol {
        None => d.protocol,
        Some(p @ 0..=4) => {
            return Err(invalid(
                "announce.protocol",
                format!(
                    "{p} is the kernel's or `ip route`'s own route protocol (0 unspec, 1 redirect, \
                     2 kernel, 3 boot, 4 static): lb's routes must be told apart from them"
                ),
            ));
        }
        Some(12) => {
            return Err(invalid(
                "announce.protocol",
                "12 is BIRD's own route protocol: BIRD deletes such routes it did not make",
            ));
        }
        Some(p @ (11 | 186..=198)) => {
            return Err(invalid(
                "announce.protocol",
                format!("{p} is one of FRR's own route protocols: zebra sweeps such routes"),
            ));
        }
        Some(p) => u8::try_from(p).map_err(|_| {
            invalid(
                "announce.protocol",
                format!("{p} is not a route protocol number (5 to 255)"),
            )
        })?,
    };
    let settle_max = match settle_max_s {
        None => DEFAULT_SETTLE_MAX,
        Some(s) if Duration::from_secs(s) > MAX_SETTLE_MAX => {
            return Err(invalid(
                "announce.settle_max_s",
                format!(
                    "{s} is longer than {} s (an edge would stay withdrawn that long for a path \
                     down here alone)",
                    MAX_SETTLE_MAX.as_secs()
                ),
            ));
        }
        Some(s) => Duration::from_secs(s),
    };
    Ok((Announce { table, protocol }, settle_max))
}

/// The `flows` section; every field optional.
fn check_flows(raw: Option<RawFlows>) -> Result<Flows, ConfigError> {
    let d = Flows::default();
    let Some(RawFlows {
        tcp_idle_s,
        tcp_closing_s,
        unreplied_s,
        udp_idle_s,
        icmp_idle_s,
        pins_per_sec,
        pins_burst,
    }) = raw
    else {
        return Ok(d);
    };
    // A week: longer is a typo (and TCP keepalive probes an idle connection every 2 hours).
    const MAX_S: u32 = 7 * 24 * 3600;
    let secs = |at: &str, v: Option<u64>, default: Duration| {
        in_range(at, v, 1..=MAX_S, default.as_secs() as u32).map(|s| Duration::from_secs(s.into()))
    };
    Ok(Flows {
        tcp_idle: secs("flows.tcp_idle_s", tcp_idle_s, d.tcp_idle)?,
        tcp_closing: secs("flows.tcp_closing_s", tcp_closing_s, d.tcp_closing)?,
        unreplied: secs("flows.unreplied_s", unreplied_s, d.unreplied)?,
        udp_idle: secs("flows.udp_idle_s", udp_idle_s, d.udp_idle)?,
        icmp_idle: secs("flows.icmp_idle_s", icmp_idle_s, d.icmp_idle)?,
        pins_per_sec: in_range(
            "flows.pins_per_sec",
            pins_per_sec,
            1..=10_000_000,
            d.pins_per_sec,
        )?,
        pins_burst: in_range("flows.pins_burst", pins_burst, 1..=10_000_000, d.pins_burst)?,
    })
}

fn check_flow_table_size(size: u64) -> Result<u32, ConfigError> {
    const AT: &str = "flow_table_size";
    if size == 0 {
        return Err(invalid(
            AT,
            "0: the exception table needs room for at least one flow",
        ));
    }
    if size > MAX_FLOW_TABLE_SIZE {
        return Err(invalid(
            AT,
            format!("{size} is more than the maximum of {MAX_FLOW_TABLE_SIZE} (64 Mi)"),
        ));
    }
    u32::try_from(size).map_err(|_| invalid(AT, format!("{size} does not fit in 32 bits")))
}

fn at_most(at: &str, what: &str, count: usize, max: u32) -> Result<(), ConfigError> {
    if count > max as usize {
        return Err(invalid(
            at,
            format!("{count} {what}, more than the datapath's capacity of {max}"),
        ));
    }
    Ok(())
}

/// An address a host can have, IPv4 or IPv6, the same rules for both families: not
/// unspecified, broadcast, multicast or loopback. An IPv6 address may also not be link-local
/// (`fe80::/10` names a host only together with an interface, which neither the datapath's
/// maps nor its route lookup carry) nor IPv4-mapped (`::ffff:a.b.c.d` is the form the maps hold
/// IPv4 addresses in: it would be taken for the IPv4 address).
fn unicast(at: &str, text: &str) -> Result<IpAddr, ConfigError> {
    let address: IpAddr = text
        .parse()
        .map_err(|_| invalid(at, format!("{text:?} is not an IP address (IPv4 or IPv6)")))?;
    let what = match address {
        IpAddr::V4(a) if a.is_unspecified() => "the unspecified address",
        IpAddr::V4(a) if a.is_broadcast() => "the broadcast address",
        IpAddr::V4(a) if a.is_multicast() => "a multicast address",
        IpAddr::V4(a) if a.is_loopback() => "a loopback address",
        IpAddr::V4(_) => return Ok(address),
        IpAddr::V6(a) if a.is_unspecified() => "the unspecified address",
        IpAddr::V6(a) if a.is_multicast() => "a multicast address",
        IpAddr::V6(a) if a.is_loopback() => "the loopback address",
        IpAddr::V6(a) if a.is_unicast_link_local() => {
            return Err(invalid(
                at,
                format!(
                    "{address} is a link-local address: it names a host only together with an \
                     interface, which lb's maps and route lookups do not carry"
                ),
            ));
        }
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => {
                return Err(invalid(
                    at,
                    format!(
                        "{address} is an IPv4-mapped IPv6 address: write it as {v4} (lb holds \
                         IPv4 addresses in that form, so the two would be one)"
                    ),
                ));
            }
            None => return Ok(address),
        },
    };
    Err(invalid(at, format!("{address} is {what}, not a host's")))
}

/// `IPv4` or `IPv6`, as the errors name a family.
fn family(address: IpAddr) -> &'static str {
    Family::of(address).name()
}

pub(crate) fn port_number(at: &str, port: u16) -> Result<u16, ConfigError> {
    if port == 0 {
        return Err(invalid(at, "0 is not a port"));
    }
    Ok(port)
}

/// `203.0.113.10` or `203.0.113.10 tcp/443`: the key a VIP is found by.
fn describe(vip: &Vip) -> String {
    match vip.service {
        None => vip.address.to_string(),
        Some(s) => format!("{} {}/{}", vip.address, s.protocol, s.port),
    }
}

/// A target's `notify` section: an absolute program path (the daemon runs as root: no `PATH`
/// lookup decides what it runs) and its arguments, and a timeout.
fn check_notify(at: &str, raw: super::raw::RawNotify) -> Result<Notify, ConfigError> {
    let super::raw::RawNotify {
        command,
        timeout_ms,
    } = raw;
    let Some(program) = command.first() else {
        return Err(invalid(
            format!("{at}.command"),
            "a command needs a program: [\"/usr/local/bin/notify\", \"arg\", …]",
        ));
    };
    if !program.starts_with('/') {
        return Err(invalid(
            format!("{at}.command[0]"),
            format!("{program:?} is not an absolute path (the daemon looks up no PATH)"),
        ));
    }
    if let Some(i) = command.iter().position(|a| a.contains('\0')) {
        return Err(invalid(format!("{at}.command[{i}]"), "contains a NUL byte"));
    }
    let timeout = match timeout_ms {
        None => DEFAULT_NOTIFY_TIMEOUT,
        Some(ms) if (1..=MAX_NOTIFY_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms),
        Some(ms) => {
            return Err(invalid(
                format!("{at}.timeout_ms"),
                format!("{ms} is not within 1–{MAX_NOTIFY_TIMEOUT_MS}"),
            ));
        }
    };
    Ok(Notify { command, timeout })
}
