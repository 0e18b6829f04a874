//! What `lb guest check` looks at, gathered inside the VM: addresses, rules and routes from
//! iproute2's JSON output (`ip -j`), the route a reply would take from `ip -j route get`, and
//! reverse-path filtering from `/proc`. The gathering is the only I/O of the check; the
//! parsers are pure and take the text, so odd output is tested without a host.

use std::{
    collections::BTreeMap,
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
};

use serde::Deserialize;
use serde_json::Value;

use super::{PROBE_V4, PROBE_V6};
use crate::config::Family;

/// Everything the judging needs, as gathered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub interfaces: Vec<Interface>,
    /// The rules of the families checked, as listed (in priority order).
    pub rules: Vec<Rule>,
    /// The routes of every table, of the families checked.
    pub routes: Vec<Route>,
    /// `ip route get PROBE from ADDR` of each address checked: the route taken, or why there
    /// is none (what `ip` said).
    pub lookups: BTreeMap<IpAddr, Result<Hop, String>>,
    /// `/proc/sys/net/ipv4/conf/NAME/rp_filter` for `all` and each interface holding an IPv4
    /// address checked (an interface without the file is left out).
    pub rp_filter: BTreeMap<String, u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub addresses: Vec<HostAddress>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddress {
    pub address: IpAddr,
    pub prefix_len: u8,
    /// `global`, `link`, `host`, ... as `ip` names it.
    pub scope: String,
    /// An IPv6 privacy address (RFC 8981): never a path address.
    pub temporary: bool,
    /// IPv6 duplicate address detection failed: the kernel will not use the address.
    pub dad_failed: bool,
}

/// A routing policy rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    /// `None`: `from all`.
    pub from: Option<IpAddr>,
    /// The prefix length of `from` (the full length when `ip` leaves it out).
    pub from_len: u8,
    /// The table it looks up; `None` for a rule of another action (`goto`, `prohibit`...).
    pub table: Option<String>,
    /// Its other conditions and modifiers, by `ip`'s JSON key (`fwmark`, `iif`, `not`,
    /// `suppress_prefixlength`, `action`, `goto`...): a rule with any of them does not take
    /// every packet from its source.
    pub other: Vec<String>,
}

/// A route of some table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub family: Family,
    /// `main` when `ip` leaves it out.
    pub table: String,
    /// The destination is `default` (0.0.0.0/0 or ::/0).
    pub default: bool,
    /// `unicast` when `ip` leaves it out; else `blackhole`, `unreachable`, `local`...
    pub kind: String,
    /// The interfaces it leaves by (several for a multipath route).
    pub devs: Vec<String>,
    pub gateway: Option<String>,
    /// Its metric (IPv6 routes always have one; IPv4 routes when not 0).
    pub metric: Option<u32>,
}

/// Where `ip route get` says a packet goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    pub dev: Option<String>,
    /// `main` when `ip` leaves it out.
    pub table: String,
    pub gateway: Option<String>,
}

impl Facts {
    /// The interfaces holding `address`.
    pub fn holders(&self, address: IpAddr) -> Vec<(&Interface, &HostAddress)> {
        self.interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().map(move |a| (i, a)))
            .filter(|(_, a)| a.address == address)
            .collect()
    }

    /// What `lb guest check` checks by default: every address of global scope, except those
    /// on the loopback interface (service addresses, not paths) and IPv6 privacy addresses.
    pub fn global_addresses(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for i in self.interfaces.iter().filter(|i| i.name != "lo") {
            for a in &i.addresses {
                if a.scope == "global" && !a.temporary && !out.contains(&a.address) {
                    out.push(a.address);
                }
            }
        }
        out
    }
}

/// Why the facts could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    #[error("running `{command}` (is iproute2 installed?)")]
    Run {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
    #[error(
        "`{command}` printed what this cannot read ({reason}); it needs iproute2's JSON output \
         (`ip -j`)"
    )]
    Output { command: String, reason: String },
    #[error("reading {}: {reason}", path.display())]
    Proc { path: PathBuf, reason: String },
}

/// The output of `ip ARGS`: its standard output on success, what it said on failure.
fn ip(args: &[&str]) -> Result<Result<String, String>, FactsError> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| FactsError::Run {
            command: command(args),
            source,
        })?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_owned();
    Ok(match output.status.success() {
        true => Ok(text(&output.stdout)),
        false => Err(match text(&output.stderr) {
            e if e.is_empty() => format!("exit status {}", output.status),
            e => e,
        }),
    })
}

fn command(args: &[&str]) -> String {
    format!("ip {}", args.join(" "))
}

/// `ip ARGS`, which must succeed, parsed by `parse`.
fn ip_parsed<T>(args: &[&str], parse: impl Fn(&str) -> Result<T, String>) -> Result<T, FactsError> {
    let out = ip(args)?.map_err(|stderr| FactsError::Failed {
        command: command(args),
        stderr,
    })?;
    parse(&out).map_err(|reason| FactsError::Output {
        command: command(args),
        reason,
    })
}

fn family_flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// The probe destination of `family` (see [`PROBE_V4`]).
pub fn probe(family: Family) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(PROBE_V4),
        Family::V6 => IpAddr::V6(PROBE_V6),
    }
}

/// Gathers the facts about `wanted` (empty: [`Facts::global_addresses`]); returns them with
/// the addresses to check.
pub fn gather(wanted: &[IpAddr]) -> Result<(Facts, Vec<IpAddr>), FactsError> {
    let mut facts = Facts {
        interfaces: ip_parsed(&["-j", "addr", "show"], parse_addresses)?,
        ..Facts::default()
    };
    let addresses = match wanted.is_empty() {
        true => facts.global_addresses(),
        false => wanted.to_vec(),
    };
    for family in [Family::V4, Family::V6] {
        // Only the families checked: a host without IPv6 fails `ip -6 rule`.
        if !addresses.iter().any(|a| Family::of(*a) == family) {
            continue;
        }
        let f = family_flag(family);
        facts
            .rules
            .extend(ip_parsed(&["-j", f, "rule", "show"], |s| {
                parse_rules(s, family)
            })?);
        facts.routes.extend(ip_parsed(
            &["-j", f, "route", "show", "table", "all"],
            |s| parse_routes(s, family),
        )?);
    }
    for &a in &addresses {
        let family = Family::of(a);
        let (probe, from) = (probe(family).to_string(), a.to_string());
        let args = [
            "-j",
            family_flag(family),
            "route",
            "get",
            probe.as_str(),
            "from",
            from.as_str(),
        ];
        // A failure is a fact here ("Network is unreachable"), not an error.
        let hop = match ip(&args)? {
            Ok(out) => Ok(parse_lookup(&out).map_err(|reason| FactsError::Output {
                command: command(&args),
                reason,
            })?),
            Err(said) => Err(said),
        };
        facts.lookups.insert(a, hop);
    }
    if addresses.iter().any(|a| a.is_ipv4()) {
        let conf = Path::new("/proc/sys/net/ipv4/conf");
        let mut names = vec!["all".to_owned()];
        for a in addresses.iter().filter(|a| a.is_ipv4()) {
            for (i, _) in facts.holders(*a) {
                if !names.contains(&i.name) {
                    names.push(i.name.clone());
                }
            }
        }
        for name in names {
            let path = conf.join(&name).join("rp_filter");
            match read_rp_filter(&path) {
                Ok(Some(v)) => {
                    facts.rp_filter.insert(name, v);
                }
                // An interface gone since `ip addr`: the judging says it is unknown.
                Ok(None) if name != "all" => {}
                Ok(None) => {
                    return Err(FactsError::Proc {
                        path,
                        reason: "missing (no IPv4 in this kernel?)".into(),
                    });
                }
                Err(reason) => return Err(FactsError::Proc { path, reason }),
            }
        }
    }
    Ok((facts, addresses))
}

fn read_rp_filter(path: &Path) -> Result<Option<u8>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{:?} is not a number", s.trim())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

fn address(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an address"))
}

/// A table as `ip` prints it (a name, or a number where it has none), as a string.
fn table(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[derive(Deserialize)]
struct RawLink {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<RawAddr>,
}

#[derive(Deserialize)]
struct RawAddr {
    local: Option<String>,
    prefixlen: Option<u8>,
    scope: Option<Value>,
    temporary: Option<bool>,
    dadfailed: Option<bool>,
}

/// `ip -j addr show`.
pub fn parse_addresses(text: &str) -> Result<Vec<Interface>, String> {
    let links: Vec<RawLink> = json(text)?;
    let mut out = Vec::with_capacity(links.len());
    for l in links {
        let mut addresses = Vec::new();
        for a in l.addr_info {
            // Entries without an address (some link-layer families) are not ours.
            let Some(local) = a.local else { continue };
            let address = address(&local)?;
            addresses.push(HostAddress {
                address,
                prefix_len: a.prefixlen.unwrap_or(full_len(address)),
                scope: match a.scope {
                    Some(Value::String(s)) => s,
                    Some(v) => v.to_string(),
                    None => "global".into(),
                },
                temporary: a.temporary.unwrap_or(false),
                dad_failed: a.dadfailed.unwrap_or(false),
            });
        }
        out.push(Interface {
            name: l.ifname,
            addresses,
        });
    }
    Ok(out)
}

/// 32 or 128.
pub fn full_len(address: IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

#[derive(Deserialize)]
struct RawRule {
    priority: u32,
    src: Option<String>,
    srclen: Option<u8>,
    table: Option<Value>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// Keys of a rule that neither narrow what it matches nor change what it does.
const BENIGN_RULE_KEYS: [&str; 1] = ["protocol"];

/// `ip -j -4|-6 rule show`.
pub fn parse_rules(text: &str, family: Family) -> Result<Vec<Rule>, String> {
    let raw: Vec<RawRule> = json(text)?;
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let from = match r.src.as_deref() {
            None | Some("all") => None,
            Some(s) => Some(address(s)?),
        };
        out.push(Rule {
            family,
            priority: r.priority,
            from,
            from_len: r.srclen.unwrap_or_else(|| from.map_or(0, full_len)),
            table: table(r.table.as_ref()),
            other: r
                .rest
                .into_keys()
                .filter(|k| !BENIGN_RULE_KEYS.contains(&k.as_str()))
                .collect(),
        });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct RawRoute {
    dst: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    table: Option<Value>,
    dev: Option<String>,
    gateway: Option<String>,
    metric: Option<u32>,
    #[serde(default)]
    nexthops: Vec<RawNexthop>,
}

#[derive(Deserialize)]
struct RawNexthop {
    dev: Option<String>,
    gateway: Option<String>,
}

/// `ip -j -4|-6 route show table all`.
pub fn parse_routes(text: &str, family: Family) -> Result<Vec<Route>, String> {
    let raw: Vec<RawRoute> = json(text)?;
    Ok(raw
        .into_iter()
        .map(|r| {
            let mut devs: Vec<String> = r.dev.into_iter().collect();
            devs.extend(r.nexthops.iter().filter_map(|n| n.dev.clone()));
            let gateway = r
                .gateway
                .or_else(|| r.nexthops.iter().find_map(|n| n.gateway.clone()));
            Route {
                family,
                table: table(r.table.as_ref()).unwrap_or_else(|| "main".into()),
                default: r.dst.as_deref() == Some("default"),
                kind: r.kind.unwrap_or_else(|| "unicast".into()),
                devs,
                gateway,
                metric: r.metric,
            }
        })
        .collect())
}

#[derive(Deserialize)]
struct RawHop {
    dev: Option<String>,
    table: Option<Value>,
    gateway: Option<String>,
}

/// `ip -j route get ...`: a list of one route.
pub fn parse_lookup(text: &str) -> Result<Hop, String> {
    let raw: Vec<RawHop> = json(text)?;
    let Some(r) = raw.into_iter().next() else {
        return Err("no route in the answer".into());
    };
    Ok(Hop {
        dev: r.dev,
        table: table(r.table.as_ref()).unwrap_or_else(|| "main".into()),
        gateway: r.gateway,
    })
}
