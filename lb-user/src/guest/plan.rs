//! The plan for a VM: each path of its target with the VM's interface and next hop on it, its
//! routing table and its rule's priority, validated once so rendering cannot fail.

use std::{fmt, net::IpAddr, str::FromStr};

use crate::config::{Config, Family};

/// The default of `--table-base`: clear of the tables the kernel reserves (253–255) and of the
/// small numbers other tools tend to take first.
pub const DEFAULT_TABLE_BASE: u32 = 100;
/// The default of `--priority-base`: after the `local` rule (0), well before `main`'s (32766).
pub const DEFAULT_PRIORITY_BASE: u32 = 1000;
/// The priority of the kernel's rule that looks up `main`: a path's rule must come before it,
/// or `main`'s default route answers first.
pub const MAIN_RULE_PRIORITY: u32 = 32766;
/// Routing tables the kernel keeps for itself: 0 (unspecified), 253 (`default`), 254 (`main`),
/// 255 (`local`).
pub const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];

/// One `--path NAME=IFACE,GATEWAY`: a path of the target, the VM's interface on it and the
/// path's next hop as the VM sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathSpec {
    pub name: String,
    pub interface: String,
    pub gateway: IpAddr,
}

/// Why a `--path` value was not taken.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{value:?}: expected NAME=IFACE,GATEWAY (e.g. nn1=eth0,192.0.2.65)")]
    Shape { value: String },
    #[error("{value:?}: the path name is empty")]
    NoName { value: String },
    #[error(
        "{value:?}: {interface:?} is not an interface name (1 to 15 of letters, digits, `_`, `-` \
         and `.`, not starting with `-` or `.`: it goes into shell commands and file names)"
    )]
    Interface { value: String, interface: String },
    #[error("{value:?}: {gateway:?} is not an IP address (the path's next hop)")]
    Gateway { value: String, gateway: String },
}

impl FromStr for PathSpec {
    type Err = SpecError;

    fn from_str(value: &str) -> Result<Self, SpecError> {
        let shape = || SpecError::Shape {
            value: value.to_owned(),
        };
        // The name is the config's and may hold anything; the rest cannot hold a `=`.
        let (name, rest) = value.rsplit_once('=').ok_or_else(shape)?;
        let (interface, gateway) = rest.split_once(',').ok_or_else(shape)?;
        if name.is_empty() {
            return Err(SpecError::NoName {
                value: value.to_owned(),
            });
        }
        if !is_interface_name(interface) {
            return Err(SpecError::Interface {
                value: value.to_owned(),
                interface: interface.to_owned(),
            });
        }
        let gateway = gateway.trim().parse().map_err(|_| SpecError::Gateway {
            value: value.to_owned(),
            gateway: gateway.to_owned(),
        })?;
        Ok(PathSpec {
            name: name.to_owned(),
            interface: interface.to_owned(),
            gateway,
        })
    }
}

/// A name the kernel takes (at most 15 bytes) from a charset that needs no quoting in a shell
/// command, a file name, an INI value or a YAML key. The kernel takes more (anything but `/`,
/// `:` and whitespace), but such names are rare on a VM and would make every output quote.
pub fn is_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Where the numbers come from: path `i` of the target (its index in the configuration's list)
/// gets table `table_base + i` and rule priority `priority_base + i`, so the same configuration
/// always makes the same plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numbering {
    pub table_base: u32,
    pub priority_base: u32,
}

impl Default for Numbering {
    fn default() -> Self {
        Self {
            table_base: DEFAULT_TABLE_BASE,
            priority_base: DEFAULT_PRIORITY_BASE,
        }
    }
}

/// A validated plan: every path of the target, in the configuration's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub target: String,
    pub numbering: Numbering,
    pub paths: Vec<GuestPath>,
}

/// One path as the VM routes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPath {
    /// The path's name in the edge's configuration.
    pub name: String,
    /// The VM's address on this path (the edge's translation target).
    pub address: IpAddr,
    /// The VM's interface toward the path.
    pub interface: String,
    /// The path's next hop, as the VM sees it; of the address's family.
    pub gateway: IpAddr,
    pub table: u32,
    pub priority: u32,
}

impl GuestPath {
    pub fn family(&self) -> Family {
        Family::of(self.address)
    }
}

impl Plan {
    /// The interfaces of the paths, each once, in the order the paths name them.
    pub fn interfaces(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.paths {
            if !out.contains(&p.interface.as_str()) {
                out.push(&p.interface);
            }
        }
        out
    }

    /// The interfaces with an IPv4 path: those reverse-path filtering applies to.
    pub fn ipv4_interfaces(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in self.paths.iter().filter(|p| p.family() == Family::V4) {
            if !out.contains(&p.interface.as_str()) {
                out.push(&p.interface);
            }
        }
        out
    }

    /// The paths on `interface`, in order.
    pub fn on<'a>(&'a self, interface: &'a str) -> impl Iterator<Item = &'a GuestPath> + 'a {
        self.paths.iter().filter(move |p| p.interface == interface)
    }
}

/// Why no plan was made. Each names the flag to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error(
        "--target {target:?}: the configuration has no such target (its targets: {})",
        list(known)
    )]
    UnknownTarget { target: String, known: Vec<String> },
    #[error(
        "--path {path:?}: target {target:?} has no such path (its paths: {})",
        list(known)
    )]
    UnknownPath {
        target: String,
        path: String,
        known: Vec<String>,
    },
    #[error("--path {path:?}: given twice")]
    Duplicate { path: String },
    #[error(
        "target {target:?}: no --path for {}; every path of the target needs one, giving the \
         VM's interface on it and the path's next hop as the VM sees it: {}",
        missing.iter().map(|(n, a)| format!("{n:?} ({a})")).collect::<Vec<_>>().join(", "),
        missing.iter().map(|(n, _)| format!("--path {n}=IFACE,GATEWAY")).collect::<Vec<_>>().join(" ")
    )]
    Missing {
        target: String,
        missing: Vec<(String, IpAddr)>,
    },
    #[error(
        "--path {path:?}: gateway {gateway} is {}, but the path's address {address} is {}: give \
         the path's {} next hop",
        Family::of(*gateway), Family::of(*address), Family::of(*address)
    )]
    GatewayFamily {
        path: String,
        address: IpAddr,
        gateway: IpAddr,
    },
    #[error("--path {path:?}: gateway {gateway} {reason}")]
    Gateway {
        path: String,
        gateway: IpAddr,
        reason: &'static str,
    },
    #[error("--table-base {base}: {reason}")]
    TableBase { base: u32, reason: String },
    #[error("--priority-base {base}: {reason}")]
    PriorityBase { base: u32, reason: String },
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes the plan for the VM of `target`: every path of the target must be in `given`, once.
pub fn plan(
    config: &Config,
    target: &str,
    given: &[PathSpec],
    numbering: Numbering,
) -> Result<Plan, PlanError> {
    let Some(t) = config.targets.iter().find(|t| t.name == target) else {
        return Err(PlanError::UnknownTarget {
            target: target.to_owned(),
            known: config.targets.iter().map(|t| t.name.clone()).collect(),
        });
    };
    for (i, spec) in given.iter().enumerate() {
        if !t.paths.iter().any(|p| p.name == spec.name) {
            return Err(PlanError::UnknownPath {
                target: t.name.clone(),
                path: spec.name.clone(),
                known: t.paths.iter().map(|p| p.name.clone()).collect(),
            });
        }
        if given[..i].iter().any(|g| g.name == spec.name) {
            return Err(PlanError::Duplicate {
                path: spec.name.clone(),
            });
        }
    }
    let missing: Vec<(String, IpAddr)> = t
        .paths
        .iter()
        .filter(|p| !given.iter().any(|g| g.name == p.name))
        .map(|p| (p.name.clone(), p.address))
        .collect();
    if !missing.is_empty() {
        return Err(PlanError::Missing {
            target: t.name.clone(),
            missing,
        });
    }
    let n = u32::try_from(t.paths.len()).unwrap_or(u32::MAX);
    check_numbers(numbering, n)?;
    let mut paths = Vec::with_capacity(t.paths.len());
    for (i, p) in (0u32..).zip(&t.paths) {
        // Every path is in `given`: checked above.
        let Some(spec) = given.iter().find(|g| g.name == p.name) else {
            continue;
        };
        check_gateway(&p.name, p.address, spec.gateway)?;
        paths.push(GuestPath {
            name: p.name.clone(),
            address: p.address,
            interface: spec.interface.clone(),
            gateway: spec.gateway,
            table: numbering.table_base + i,
            priority: numbering.priority_base + i,
        });
    }
    Ok(Plan {
        target: t.name.clone(),
        numbering,
        paths,
    })
}

/// Tables `table_base..table_base + n` must all be usable, and priorities
/// `priority_base..priority_base + n` all between the `local` rule and the `main` one.
fn check_numbers(numbering: Numbering, n: u32) -> Result<(), PlanError> {
    let Numbering {
        table_base,
        priority_base,
    } = numbering;
    let last = n.saturating_sub(1);
    let Some(table_last) = table_base.checked_add(last) else {
        return Err(PlanError::TableBase {
            base: table_base,
            reason: format!("the last of {n} tables would pass {}", u32::MAX),
        });
    };
    if let Some(r) = RESERVED_TABLES
        .iter()
        .find(|r| (table_base..=table_last).contains(r))
    {
        return Err(PlanError::TableBase {
            base: table_base,
            reason: format!(
                "the tables {table_base}..={table_last} would include {r}, which the kernel \
                 keeps for itself (0 unspecified, 253 default, 254 main, 255 local); e.g. \
                 --table-base {DEFAULT_TABLE_BASE}"
            ),
        });
    }
    let priority_last = priority_base.saturating_add(last);
    if priority_base == 0 || priority_last >= MAIN_RULE_PRIORITY {
        return Err(PlanError::PriorityBase {
            base: priority_base,
            reason: format!(
                "the rule priorities {priority_base}..={priority_last} must lie within \
                 1..{MAIN_RULE_PRIORITY}: after the `local` table's rule (0) and before the \
                 `main` table's ({MAIN_RULE_PRIORITY}), whose default route would answer \
                 first; e.g. --priority-base {DEFAULT_PRIORITY_BASE}"
            ),
        });
    }
    Ok(())
}

fn check_gateway(path: &str, address: IpAddr, gateway: IpAddr) -> Result<(), PlanError> {
    if Family::of(gateway) != Family::of(address) {
        return Err(PlanError::GatewayFamily {
            path: path.to_owned(),
            address,
            gateway,
        });
    }
    let bad = |reason| PlanError::Gateway {
        path: path.to_owned(),
        gateway,
        reason,
    };
    if gateway == address {
        return Err(bad(
            "is the path's own address; give the next hop (the router on the path)",
        ));
    }
    if gateway.is_unspecified() || gateway.is_loopback() || gateway.is_multicast() {
        return Err(bad(
            "cannot be a next hop (unspecified, loopback or multicast)",
        ));
    }
    if let IpAddr::V4(v4) = gateway
        && v4.is_broadcast()
    {
        return Err(bad("cannot be a next hop (the broadcast address)"));
    }
    Ok(())
}

impl fmt::Display for PathSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={},{}", self.name, self.interface, self.gateway)
    }
}
