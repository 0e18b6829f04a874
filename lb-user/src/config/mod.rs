//! The configuration file (JSON): the raw serde shape, and the validated model the daemon
//! works with. Every field is documented in README.md ("Configuration").
//!
//! Loading is all-or-nothing: [`Config::from_json`] either returns a fully validated model or
//! one [`ConfigError`] naming the field and the reason; nothing is applied from an invalid
//! file.
//!
//! Two layers: private `Raw*` structs mirror the JSON exactly (`deny_unknown_fields`, every
//! optional field an `Option`), and a [`Validator`] walks them in file order, with the
//! location of each value in hand, building the model. Whether the named interfaces exist is
//! a separate check ([`Config::check_interfaces`]): a file may be checked on another host.

use std::{fmt, net::IpAddr, path::PathBuf, time::Duration};

use crate::config::{
    raw::{RawConfig, shape_error},
    validate::{Validator, invalid},
};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Interfaces,
    pub targets: Vec<Target>,
    pub vips: Vec<Vip>,
    /// Exception-table capacity (`None`: the datapath default).
    pub flow_table_size: Option<u32>,
    /// How long a client's TCP handshake to an up path may go unanswered before the path is
    /// flagged "datapath suspect".
    pub datapath_suspect: Duration,
    /// The datapath's "fragmentation needed" answers per second and CPU, and their burst.
    pub icmp_too_big_per_sec: u32,
    pub icmp_too_big_burst: u32,
    /// Exceptions: how long they live, how fast client packets may pin them.
    pub flows: Flows,
    /// Where the servable VIPs' host routes go, for a routing daemon to announce (`None`: no
    /// routes are kept).
    pub announce: Option<Announce>,
    /// `announce.settle_max_s`: with `announce`, a target coming back from no usable path waits
    /// for every one of its enabled paths to rise before its addresses are announced, at most
    /// this long after it came back (see `Model::settle`). Zero: it waits only
    /// `(rise + 1) × interval`. Kept apart from [`Announce`], which names `lb`'s routes.
    pub settle_max: Duration,
}

/// The `announce` section: `lb` keeps a host route (`/32`, or `/128` for an IPv6 VIP, type
/// blackhole) for each servable VIP address in routing table `table` with route protocol
/// `protocol`, and a routing daemon (BIRD, FRR) announces that table over BGP. No rule selects
/// the table, so its routes never forward anything on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    pub table: u32,
    pub protocol: u8,
}

impl Default for Announce {
    fn default() -> Self {
        Self {
            table: DEFAULT_ANNOUNCE_TABLE,
            protocol: DEFAULT_ANNOUNCE_PROTOCOL,
        }
    }
}

/// Within 1–252, which FRR 8's `ip import-table` takes (BIRD takes any table).
pub const DEFAULT_ANNOUNCE_TABLE: u32 = 200;
/// Unassigned in the kernel's list (`/etc/iproute2/rt_protos`); neither BIRD's nor FRR's own.
pub const DEFAULT_ANNOUNCE_PROTOCOL: u8 = 250;
/// Long enough for an edge's paths to come back together when its links do (their routes
/// relearned over BGP, their probes rising), short enough that a path down on this edge alone
/// keeps its targets withdrawn only briefly.
pub const DEFAULT_SETTLE_MAX: Duration = Duration::from_secs(10);
/// The longest `announce.settle_max_s` taken.
pub const MAX_SETTLE_MAX: Duration = Duration::from_secs(3600);

/// The `flows` section: the lifetimes of exceptions (flows that must not follow their target's
/// current decision) and the budget of pins client packets may make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flows {
    /// An established TCP connection idle this long is forgotten: its exception expires, and a
    /// transition (the previous decision kept for connections older than a change) ends this
    /// long after the change.
    pub tcp_idle: Duration,
    /// After a FIN or RST.
    pub tcp_closing: Duration,
    /// A TCP exception the other side has not answered (a client's pin without a reply from
    /// the VM, the VM's SYN-ACK without the client's next packet).
    pub unreplied: Duration,
    pub udp_idle: Duration,
    pub icmp_idle: Duration,
    /// Pins client packets may make per second and CPU, and at once.
    pub pins_per_sec: u32,
    pub pins_burst: u32,
}

impl Default for Flows {
    fn default() -> Self {
        Self {
            tcp_idle: Duration::from_secs(7200),
            tcp_closing: Duration::from_secs(10),
            unreplied: Duration::from_secs(30),
            udp_idle: Duration::from_secs(120),
            icmp_idle: Duration::from_secs(30),
            pins_per_sec: lb_common::maps::DEFAULT_PIN_PER_SEC,
            pins_burst: lb_common::maps::DEFAULT_PIN_BURST,
        }
    }
}

/// The default of `datapath_suspect_ms`: a client retransmits its SYN after 1 s, so 3 s is two
/// unanswered tries.
pub const DEFAULT_DATAPATH_SUSPECT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interfaces {
    /// Interfaces facing the clients: `lb_ingress` is attached here.
    pub clients: Vec<String>,
    /// Interfaces facing the paths: `lb_return` is attached here.
    pub paths: Vec<String>,
    /// The hook of some interfaces, overriding `lb run --hook` for them.
    pub hooks: std::collections::BTreeMap<String, HookSetting>,
}

/// Where an interface's program runs (`interfaces.hooks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookSetting {
    /// As `lb run --hook auto` chooses.
    Auto,
    Xdp,
    Tc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The up path with the lowest priority number carries all new flows.
    Failover,
    /// New flows spread over all up paths by weight (consistent hashing).
    ActiveActive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllDown {
    /// New flows (and flows on down paths) are dropped, counted.
    Drop,
    /// Keep sending to the last active path(s).
    LastKnown,
}

/// An address family. A target's paths of one family serve its VIPs of that family (`lb`
/// translates addresses, never between the families).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `address`.
    pub const fn of(address: IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// `IPv4` or `IPv6`, as messages name it.
    pub const fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// `ipv4` or `ipv6`, as `--json` names it.
    pub const fn key(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub name: String,
    pub mode: Mode,
    /// Failover: a recovered preferred path takes new flows back.
    pub preempt: bool,
    pub all_down: AllDown,
    /// Client packets to the target's path addresses pass to the kernel (else they are
    /// dropped on the client side).
    pub expose_paths: bool,
    pub paths: Vec<Path>,
    /// A command run on each transition of the target's paths (`notify`).
    pub notify: Option<Notify>,
}

/// A target's notify hook: `command` (an absolute program path, then its arguments) runs on
/// each transition of the target's paths and each drain, with the details in `LB_*`
/// environment variables; killed after `timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    pub command: Vec<String>,
    pub timeout: Duration,
}

/// The default of `notify.timeout_ms`.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest `notify.timeout_ms` taken (10 minutes).
pub const MAX_NOTIFY_TIMEOUT_MS: u64 = 600_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub name: String,
    /// The VM's address on this path, IPv4 or IPv6.
    pub address: IpAddr,
    /// Failover preference: lower is preferred. Defaults to the path's index in its target's
    /// list, so the listed order is the preference.
    pub priority: u32,
    /// Active/active share (relative).
    pub weight: u32,
    /// The effective probe: the target's, with this path's overrides applied.
    pub probe: Probe,
    /// Source address the probes are sent from (of the path address's family).
    pub source: Option<IpAddr>,
    /// Interface the probes are bound to.
    pub interface: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub kind: ProbeKind,
    /// From the start of one probe to the start of the next.
    pub interval: Duration,
    /// At most `interval`: a probe ends before the next starts. `None`: adapted to the path's
    /// measured round trip (`probe::ProbeTimeout`).
    pub timeout: Option<Duration>,
    /// Consecutive successes that bring a down path up.
    pub rise: u32,
    /// Consecutive failures that bring an up path down.
    pub fall: u32,
    /// When the datapath's word that client traffic goes unanswered makes the daemon probe
    /// at once (`passive_ms`).
    pub passive: Passive,
}

/// The passive trigger's threshold (`probe.passive_ms`): how long client traffic toward a path
/// may go unanswered before the daemon probes it at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passive {
    /// A few milliseconds above the path's round trip ([`Passive::threshold`]).
    Auto,
    /// Never (`passive_ms: 0`).
    Off,
    /// This long.
    After(Duration),
}

/// What [`Passive::Auto`] adds to the path's round trip.
pub const PASSIVE_MARGIN: Duration = Duration::from_millis(2);

impl Passive {
    /// The threshold for a path whose probes last measured `rtt`, under `probe`; zero: off.
    /// Auto is the round trip plus [`PASSIVE_MARGIN`] in whole milliseconds (so jitter does
    /// not rewrite it), at most the interval.
    pub fn threshold(self, probe_interval: Duration, rtt: Option<Duration>) -> Duration {
        match self {
            Passive::Off => Duration::ZERO,
            Passive::After(d) => d,
            Passive::Auto => {
                let ms = (rtt.unwrap_or_default() + PASSIVE_MARGIN)
                    .as_micros()
                    .div_ceil(1000) as u64;
                Duration::from_millis(ms).min(probe_interval)
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP connection to `port` completes.
    Tcp { port: u16 },
    /// An ICMP echo is answered.
    Icmp,
    /// `GET path` on `port` answers with `expect_status`.
    Http {
        port: u16,
        path: String,
        expect_status: u16,
    },
    /// As `Http`, over TLS: the server's certificate verified as `trust` says, for `sni`.
    Https {
        port: u16,
        path: String,
        expect_status: u16,
        /// The server name sent (SNI) and verified. `None`: no SNI, and the certificate must
        /// be valid for the path's address (an IP SAN).
        sni: Option<String>,
        trust: TlsTrust,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    /// IPv4 or IPv6. Its target's paths of its family serve it, and it has at least one (lb
    /// translates addresses, never families).
    pub address: IpAddr,
    /// `None`: the whole address (every TCP/UDP port and ICMP echo).
    pub service: Option<Service>,
    /// Name of the target.
    pub target: String,
    /// Whether the VIP's state decides its address's announcement (`announce: false` in the
    /// file: it does not; an address none of whose VIPs count is not announced).
    pub announce: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    pub protocol: Protocol,
    pub port: u16,
    /// The port on the VM; `None`: the same as `port` (a `target_port` equal to `port` in the
    /// file is `None` here).
    pub target_port: Option<u16>,
}

/// Why a configuration was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writable by every user: a root daemon must not take its orders from such a file.
    #[error(
        "{} is writable by every user (mode {mode:o}); the daemon runs as root and does what \
         this file says, so it refuses it: `chmod o-w {}`",
        path.display(),
        path.display()
    )]
    WorldWritable { path: PathBuf, mode: u32 },
    /// Not JSON.
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    /// JSON, but not a valid configuration. `field` is a JSON-path-like location such as
    /// `targets[0].paths[1].address` (`top level` for the document itself).
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl Config {
    /// Parses and validates a configuration.
    pub fn from_json(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| shape_error(text, &e))?;
        Validator::default().config(raw)
    }

    /// Reads, parses and validates the configuration file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        use std::{io::Read as _, os::unix::fs::MetadataExt as _};
        let io = |source| ConfigError::Io {
            path: path.to_owned(),
            source,
        };
        // The mode of the file as opened, so a swap between the check and the read is moot.
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mode = file.metadata().map_err(io)?.mode();
        if mode & 0o002 != 0 {
            return Err(ConfigError::WorldWritable {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io)?;
        Config::from_json(&text)
    }

    /// What is valid but likely not what an operator of several edges wants, or not what it
    /// seems (an https probe that verifies nothing); `lb check` prints these and the daemon
    /// logs them.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.announce.is_some() {
            for t in &self.targets {
                if t.mode == Mode::Failover && !t.preempt {
                    out.push(format!(
                        "target {:?}: with `preempt: false` the active path depends on the order \
                         in which paths came and went, which edges see differently: edges \
                         announcing the same VIP may choose different paths, and a connection \
                         moving between them is reset (`preempt: true` makes the choice \
                         depend on the path states alone)",
                        t.name
                    ));
                }
            }
            let mut targets_of: std::collections::BTreeMap<IpAddr, Vec<&str>> = Default::default();
            for v in self.vips.iter().filter(|v| v.announce) {
                let ts = targets_of.entry(v.address).or_default();
                if !ts.contains(&v.target.as_str()) {
                    ts.push(&v.target);
                }
            }
            for (address, ts) in targets_of.iter().filter(|(_, ts)| ts.len() > 1) {
                out.push(format!(
                    "{address}: its VIPs go to targets {}; one host route covers the address, \
                     so it is withdrawn when any of them has no usable path",
                    ts.join(", ")
                ));
            }
        }
        for t in &self.targets {
            for p in &t.paths {
                if let ProbeKind::Https {
                    trust: TlsTrust::Insecure,
                    ..
                } = p.probe.kind
                {
                    out.push(format!(
                        "target {:?} path {:?}: its https probe does not verify the server's \
                         certificate (`insecure: true`): whatever answers TLS on the port passes \
                         it (`ca_file` names the CA to verify against)",
                        t.name, p.name
                    ));
                }
            }
        }
        out
    }

    /// The target called `name`.
    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    /// Checks that every interface the configuration names exists, by `exists` (in production
    /// [`interface_exists`]; the file may be validated on another host, so this is not part of
    /// [`Config::from_json`]). Covers `interfaces.*` and the paths' `interface`.
    pub fn check_interfaces(&self, exists: impl Fn(&str) -> bool) -> Result<(), ConfigError> {
        let Interfaces {
            clients,
            paths,
            hooks: _,
        } = &self.interfaces;
        for (list, names) in [("clients", clients), ("paths", paths)] {
            for (i, name) in names.iter().enumerate() {
                if !exists(name) {
                    return Err(invalid(
                        format!("interfaces.{list}[{i}]"),
                        format!("unknown interface {name:?}"),
                    ));
                }
            }
        }
        for (i, target) in self.targets.iter().enumerate() {
            for (j, path) in target.paths.iter().enumerate() {
                if let Some(name) = &path.interface
                    && !exists(name)
                {
                    return Err(invalid(
                        format!("targets[{i}].paths[{j}].interface"),
                        format!("unknown interface {name:?}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Target {
    /// The families of the target's paths, IPv4 first: one, or both for a target with paths of
    /// both families (each family is decided on its own paths and has its own datapath target
    /// id; `control::model::Ids`).
    pub fn families(&self) -> Vec<Family> {
        let mut out: Vec<Family> = self.paths.iter().map(|p| Family::of(p.address)).collect();
        out.sort();
        out.dedup();
        out
    }

    /// The target's paths of `family`.
    pub fn paths_of(&self, family: Family) -> impl Iterator<Item = &Path> {
        self.paths
            .iter()
            .filter(move |p| Family::of(p.address) == family)
    }
}

impl Vip {
    /// The port on the VM when the service translates it (differs from `port`); `None` for a
    /// whole-address VIP or an untranslated service.
    pub fn target_port(&self) -> Option<u16> {
        let service = self.service?;
        service.target_port.filter(|&p| p != service.port)
    }
}

impl Protocol {
    /// `tcp` or `udp`, as the file spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether interface `name` exists in this network namespace.
pub fn interface_exists(name: &str) -> bool {
    crate::ifindex(name).is_some()
}

/// Names are kept in the pinned maps (`lb_common::maps::NAME_LEN` bytes, NUL-padded), where
/// the CLI and a restarted daemon find them: longer ones, or ones with a NUL, would not survive.
pub(crate) fn check_name(at: &str, name: &str) -> Result<(), ConfigError> {
    if name.len() > lb_common::maps::NAME_LEN {
        return Err(invalid(
            at.to_string(),
            format!(
                "{name:?} is longer than {} bytes (names are kept in the pinned maps)",
                lb_common::maps::NAME_LEN
            ),
        ));
    }
    if name.contains('\0') {
        return Err(invalid(
            at.to_string(),
            format!("{name:?} contains a NUL byte"),
        ));
    }
    Ok(())
}

// ---- Limits and defaults. ----

/// `IFNAMSIZ` less the terminating NUL.
pub(crate) const MAX_IFNAME: usize = 15;
/// Large enough for any edge; the table is preallocated, so a typo must not eat the memory.
pub(crate) const MAX_FLOW_TABLE_SIZE: u64 = 64 << 20;
pub(crate) const MAX_WEIGHT: u32 = 1000;
/// Rise and fall are counts of probes: more than this is a typo, not a policy.
pub(crate) const MAX_RISE_FALL: u32 = 100;
pub(crate) const MIN_INTERVAL_MS: u64 = 10;
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
/// Also capped by the interval.
pub(crate) const DEFAULT_RISE: u32 = 2;
pub(crate) const DEFAULT_FALL: u32 = 3;
pub(crate) const DEFAULT_HTTP_PORT: u16 = 80;
pub(crate) const DEFAULT_HTTPS_PORT: u16 = 443;
pub(crate) const DEFAULT_HTTP_PATH: &str = "/";
pub(crate) const DEFAULT_EXPECT_STATUS: u16 = 200;
pub(crate) const TOP_LEVEL: &str = "top level";

/// The JSON Schema of the configuration file (draft 2020-12), made from the types that parse
/// it: what editors complete and check against (`lb generate schema`,
/// `docs/lb.schema.json`). The ranges and cross-field rules are the validator's (README,
/// "Configuration").
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(raw::RawConfig)).unwrap_or_default()
}

pub mod diff;
mod probe;
mod raw;
mod validate;

pub use probe::{CaCertificates, TlsTrust};

#[cfg(test)]
mod tests;
