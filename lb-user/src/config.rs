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

use std::{
    collections::{HashMap, hash_map::Entry},
    fmt,
    net::Ipv4Addr,
    path::PathBuf,
    time::Duration,
};

use lb_common::maps::{MAX_PATHS, MAX_TARGETS, MAX_VIPS, MAX_VIPS_PER_TARGET};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

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
}

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
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub name: String,
    /// The VM's address on this path.
    pub address: Ipv4Addr,
    /// Failover preference: lower is preferred. Defaults to the path's index in its target's
    /// list, so the listed order is the preference.
    pub priority: u32,
    /// Active/active share (relative).
    pub weight: u32,
    /// The effective probe: the target's, with this path's overrides applied.
    pub probe: Probe,
    /// Source address the probes are sent from.
    pub source: Option<Ipv4Addr>,
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vip {
    pub address: Ipv4Addr,
    /// `None`: the whole address (every TCP/UDP port and ICMP echo).
    pub service: Option<Service>,
    /// Name of the target.
    pub target: String,
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
fn check_name(at: &str, name: &str) -> Result<(), ConfigError> {
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
const MAX_IFNAME: usize = 15;
/// Large enough for any edge; the table is preallocated, so a typo must not eat the memory.
const MAX_FLOW_TABLE_SIZE: u64 = 64 << 20;
const MAX_WEIGHT: u32 = 1000;
/// Rise and fall are counts of probes: more than this is a typo, not a policy.
const MAX_RISE_FALL: u32 = 100;
const MIN_INTERVAL_MS: u64 = 10;
const DEFAULT_INTERVAL: Duration = Duration::from_millis(1000);
/// Also capped by the interval.
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
const DEFAULT_HTTP_PORT: u16 = 80;
const DEFAULT_HTTP_PATH: &str = "/";
const DEFAULT_EXPECT_STATUS: u16 = 200;
const TOP_LEVEL: &str = "top level";

// ---- The raw shape: the JSON exactly as written. ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a configuration object")]
struct RawConfig {
    interfaces: RawInterfaces,
    flow_table_size: Option<u64>,
    datapath_suspect_ms: Option<u64>,
    icmp_too_big_per_sec: Option<u64>,
    icmp_too_big_burst: Option<u64>,
    flows: Option<RawFlows>,
    #[serde(default)]
    targets: Vec<RawTarget>,
    #[serde(default)]
    vips: Vec<RawVip>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with the lists clients and paths"
)]
struct RawInterfaces {
    #[serde(default)]
    clients: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    /// Checked by hand, so an unknown hook names its field.
    #[serde(default)]
    hooks: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a flows object")]
struct RawFlows {
    tcp_idle_s: Option<u64>,
    tcp_closing_s: Option<u64>,
    unreplied_s: Option<u64>,
    udp_idle_s: Option<u64>,
    icmp_idle_s: Option<u64>,
    pins_per_sec: Option<u64>,
    pins_burst: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a target object")]
struct RawTarget {
    name: String,
    mode: Option<RawMode>,
    preempt: Option<bool>,
    all_down: Option<RawAllDown>,
    expose_paths: Option<bool>,
    #[serde(default)]
    paths: Vec<RawPath>,
    #[serde(default)]
    probe: RawProbe,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a path object")]
struct RawPath {
    name: String,
    address: String,
    priority: Option<u32>,
    weight: Option<u32>,
    source: Option<String>,
    interface: Option<String>,
    /// Overrides of the target's probe: any subset of its fields.
    #[serde(default)]
    probe: RawProbe,
}

/// A target's probe, or a path's overrides of it: every field optional.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a probe object")]
struct RawProbe {
    #[serde(rename = "type")]
    kind: Option<RawProbeType>,
    port: Option<u16>,
    path: Option<String>,
    expect_status: Option<u16>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    rise: Option<u32>,
    fall: Option<u32>,
    passive_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a VIP object")]
struct RawVip {
    address: String,
    protocol: Option<RawProtocol>,
    port: Option<u16>,
    target: String,
    target_port: Option<u16>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawMode {
    Failover,
    ActiveActive,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawAllDown {
    Drop,
    LastKnown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProbeType {
    Tcp,
    Icmp,
    Http,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProtocol {
    Tcp,
    Udp,
}

impl From<RawMode> for Mode {
    fn from(raw: RawMode) -> Mode {
        match raw {
            RawMode::Failover => Mode::Failover,
            RawMode::ActiveActive => Mode::ActiveActive,
        }
    }
}

impl From<RawAllDown> for AllDown {
    fn from(raw: RawAllDown) -> AllDown {
        match raw {
            RawAllDown::Drop => AllDown::Drop,
            RawAllDown::LastKnown => AllDown::LastKnown,
        }
    }
}

impl From<RawProtocol> for Protocol {
    fn from(raw: RawProtocol) -> Protocol {
        match raw {
            RawProtocol::Tcp => Protocol::Tcp,
            RawProtocol::Udp => Protocol::Udp,
        }
    }
}

impl RawProbeType {
    fn of(kind: &ProbeKind) -> RawProbeType {
        match kind {
            ProbeKind::Tcp { .. } => RawProbeType::Tcp,
            ProbeKind::Icmp => RawProbeType::Icmp,
            ProbeKind::Http { .. } => RawProbeType::Http,
        }
    }

    fn name(self) -> &'static str {
        match self {
            RawProbeType::Tcp => "tcp",
            RawProbeType::Icmp => "icmp",
            RawProbeType::Http => "http",
        }
    }
}

// ---- Validation. ----

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Walks a [`RawConfig`] in file order, building the model; the first problem is the error.
/// Remembers what later sections are checked against.
#[derive(Default)]
struct Validator {
    /// Every path address so far, with the path's location.
    path_addresses: HashMap<Ipv4Addr, String>,
    /// Paths so far, over all targets (the datapath's capacity).
    paths: usize,
}

impl Validator {
    fn config(mut self, raw: RawConfig) -> Result<Config, ConfigError> {
        let RawConfig {
            interfaces,
            flow_table_size,
            datapath_suspect_ms,
            icmp_too_big_per_sec,
            icmp_too_big_burst,
            flows,
            targets: raw_targets,
            vips: raw_vips,
        } = raw;
        let flows = check_flows(flows)?;
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
        for (i, raw) in raw_targets.into_iter().enumerate() {
            let target = self.target(&format!("targets[{i}]"), raw, &targets)?;
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
        let mut by_key: HashMap<(Ipv4Addr, Option<(Protocol, u16)>), usize> = HashMap::new();
        let mut whole_by_target: HashMap<&str, usize> = HashMap::new();
        // (target, protocol, port on the VM): the key replies are translated by.
        let mut service_by_reply: HashMap<(&str, Protocol, u16), usize> = HashMap::new();
        let mut per_target: HashMap<&str, usize> = HashMap::new();
        let mut vips: Vec<Vip> = Vec::with_capacity(raw_vips.len());
        for (i, raw) in raw_vips.into_iter().enumerate() {
            let at = format!("vips[{i}]");
            let (vip, target) = self.vip(&at, raw, targets)?;
            let key = (vip.address, vip.service.map(|s| (s.protocol, s.port)));
            if let Some(&k) = by_key.get(&key) {
                return Err(invalid(
                    at,
                    format!("duplicate of vips[{k}] ({})", describe(&vip)),
                ));
            }
            match vip.service {
                None => {
                    if let Some(&k) = whole_by_target.get(target.name.as_str()) {
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
                    whole_by_target.insert(&target.name, i);
                }
                Some(service) => {
                    let port = service.target_port.unwrap_or(service.port);
                    let reply = (target.name.as_str(), service.protocol, port);
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
        } = raw;
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
        let Some(found) = targets.iter().find(|t| t.name == target) else {
            return Err(invalid(
                format!("{at}.target"),
                format!("unknown target {target:?}"),
            ));
        };
        if let Some(path) = self.path_addresses.get(&address) {
            return Err(invalid(
                format!("{at}.address"),
                format!("{address} is also the address of {path}"),
            ));
        }
        let vip = Vip {
            address,
            service,
            target,
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

/// An address a host can have: IPv4, and not unspecified, broadcast, multicast or loopback.
fn unicast(at: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
    let address: Ipv4Addr = text
        .parse()
        .map_err(|_| invalid(at, format!("{text:?} is not an IPv4 address")))?;
    let what = if address.is_unspecified() {
        "the unspecified address"
    } else if address.is_broadcast() {
        "the broadcast address"
    } else if address.is_multicast() {
        "a multicast address"
    } else if address.is_loopback() {
        "a loopback address"
    } else {
        return Ok(address);
    };
    Err(invalid(at, format!("{address} is {what}, not a host's")))
}

fn port_number(at: &str, port: u16) -> Result<u16, ConfigError> {
    if port == 0 {
        return Err(invalid(at, "0 is not a port"));
    }
    Ok(port)
}

/// A probe section resolved against what it inherits: the defaults for a target's probe
/// (`base` is `None`), the target's probe for a path's overrides.
///
/// The type-specific fields (`port`, `path`, `expect_status`) are inherited only while the
/// type stays the same. A timeout that is not given (a default or an inherited one) never
/// exceeds the interval; a given one must not.
fn check_probe(at: &str, raw: RawProbe, base: Option<&Probe>) -> Result<Probe, ConfigError> {
    let RawProbe {
        kind,
        port,
        path,
        expect_status,
        interval_ms,
        timeout_ms,
        rise,
        fall,
        passive_ms,
    } = raw;
    let base_kind = base.map(|b| RawProbeType::of(&b.kind));
    let ty = kind.or(base_kind).unwrap_or(RawProbeType::Icmp);
    let inherited = base
        .filter(|_| kind.is_none() || kind == base_kind)
        .map(|b| &b.kind);
    let field = |name: &str| format!("{at}.{name}");
    let not_for = |name: &str, given: bool, applies_to: &str| {
        if given {
            return Err(invalid(
                field(name),
                format!("applies only to {applies_to} probes, not {}", ty.name()),
            ));
        }
        Ok(())
    };

    let kind = match ty {
        RawProbeType::Icmp => {
            not_for("port", port.is_some(), "tcp and http")?;
            not_for("path", path.is_some(), "http")?;
            not_for("expect_status", expect_status.is_some(), "http")?;
            ProbeKind::Icmp
        }
        RawProbeType::Tcp => {
            not_for("path", path.is_some(), "http")?;
            not_for("expect_status", expect_status.is_some(), "http")?;
            let port = match (port, inherited) {
                (Some(port), _) => port_number(&field("port"), port)?,
                (None, Some(&ProbeKind::Tcp { port })) => port,
                (None, _) => return Err(invalid(field("port"), "a tcp probe needs a port")),
            };
            ProbeKind::Tcp { port }
        }
        RawProbeType::Http => {
            let (base_port, base_path, base_status) = match inherited {
                Some(ProbeKind::Http {
                    port,
                    path,
                    expect_status,
                }) => (*port, path.as_str(), *expect_status),
                _ => (DEFAULT_HTTP_PORT, DEFAULT_HTTP_PATH, DEFAULT_EXPECT_STATUS),
            };
            let port = port.map_or(Ok(base_port), |p| port_number(&field("port"), p))?;
            let path = match path {
                Some(path) => check_http_path(&field("path"), path)?,
                None => base_path.to_owned(),
            };
            let expect_status = expect_status.unwrap_or(base_status);
            if !(100..=599).contains(&expect_status) {
                return Err(invalid(
                    field("expect_status"),
                    format!("{expect_status} is not an HTTP status (100 to 599)"),
                ));
            }
            ProbeKind::Http {
                port,
                path,
                expect_status,
            }
        }
    };

    let interval = match interval_ms {
        Some(ms) if ms < MIN_INTERVAL_MS => {
            return Err(invalid(
                field("interval_ms"),
                format!("{ms} is less than the minimum of {MIN_INTERVAL_MS}"),
            ));
        }
        Some(ms) => Duration::from_millis(ms),
        None => base.map_or(DEFAULT_INTERVAL, |b| b.interval),
    };
    let timeout = match timeout_ms {
        Some(0) => {
            return Err(invalid(
                field("timeout_ms"),
                "0: a probe needs time to be answered",
            ));
        }
        Some(ms) => Some(Duration::from_millis(ms)),
        // An inherited one is capped by this interval; none at all adapts to the round trip.
        None => base.and_then(|b| b.timeout).map(|t| t.min(interval)),
    };
    if let Some(timeout) = timeout
        && timeout > interval
    {
        let (i, t) = (interval.as_millis(), timeout.as_millis());
        return Err(match interval_ms {
            Some(_) => invalid(
                field("interval_ms"),
                format!(
                    "{i} is shorter than timeout_ms {t} (a probe must end before the next starts)"
                ),
            ),
            None => invalid(
                field("timeout_ms"),
                format!(
                    "{t} is longer than interval_ms {i} (a probe must end before the next starts)"
                ),
            ),
        });
    }
    let rise = probe_count(&field("rise"), rise, base.map_or(DEFAULT_RISE, |b| b.rise))?;
    let fall = probe_count(&field("fall"), fall, base.map_or(DEFAULT_FALL, |b| b.fall))?;
    let passive = match passive_ms {
        Some(0) => Passive::Off,
        Some(ms) => {
            let hold = interval.saturating_mul(fall);
            if Duration::from_millis(ms) >= hold {
                return Err(invalid(
                    field("passive_ms"),
                    format!(
                        "{ms} is not shorter than fall × interval_ms ({} ms): the hold timer would always decide first (0 turns the passive trigger off)",
                        hold.as_millis()
                    ),
                ));
            }
            Passive::After(Duration::from_millis(ms))
        }
        None => base.map_or(Passive::Auto, |b| b.passive),
    };
    Ok(Probe {
        kind,
        interval,
        timeout,
        rise,
        fall,
        passive,
    })
}

fn check_http_path(at: &str, path: String) -> Result<String, ConfigError> {
    if !path.starts_with('/') {
        return Err(invalid(at, format!("{path:?} does not start with '/'")));
    }
    // It goes into the request line as it is.
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            at,
            format!("{path:?} has a space or a control character (percent-encode it)"),
        ));
    }
    Ok(path)
}

/// `rise` or `fall`: given, or else inherited.
fn probe_count(at: &str, given: Option<u32>, inherited: u32) -> Result<u32, ConfigError> {
    match given {
        Some(0) => Err(invalid(at, "0 is less than the minimum of 1")),
        Some(n) if n > MAX_RISE_FALL => Err(invalid(
            at,
            format!("{n} is more than the maximum of {MAX_RISE_FALL}"),
        )),
        Some(n) => Ok(n),
        None => Ok(inherited),
    }
}

/// `203.0.113.10` or `203.0.113.10 tcp/443`: the key a VIP is found by.
fn describe(vip: &Vip) -> String {
    match vip.service {
        None => vip.address.to_string(),
        Some(s) => format!("{} {}/{}", vip.address, s.protocol, s.port),
    }
}

// ---- Errors in the JSON's shape. ----

/// A serde_json error as a [`ConfigError`]. Not JSON: a syntax error, with line and column.
/// JSON of the wrong shape (unknown field, wrong type, missing field): located in the tree.
fn shape_error(text: &str, error: &serde_json::Error) -> ConfigError {
    let message = bare_message(error);
    if !error.is_data() {
        return ConfigError::Syntax {
            line: error.line(),
            column: error.column(),
            message,
        };
    }
    // serde_json does not say where in the tree it failed, only the line and column: find the
    // innermost object that does not fit its raw type.
    let (field, reason) = serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|root| locate(&root))
        .unwrap_or_else(|| (TOP_LEVEL.to_owned(), message.clone()));
    // serde_json stops at the first misfit in file order, `locate` at the first in schema
    // order: the line and column are only worth quoting when both found the same one.
    let reason = if reason == message {
        format!(
            "{reason} (line {}, column {})",
            error.line(),
            error.column()
        )
    } else {
        reason
    };
    ConfigError::Invalid { field, reason }
}

/// serde_json's message without its " at line L column C" suffix.
fn bare_message(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_owned()
}

type Misfit = Option<(String, String)>;

/// The innermost object in `root` that does not fit its raw type, and serde's reason. Walks
/// the sections in schema order, children before their parent.
fn locate(root: &Value) -> Misfit {
    root.get("interfaces")
        .and_then(|v| misfit::<RawInterfaces>(v, "interfaces"))
        .or_else(|| each(root.get("targets"), "targets", locate_target))
        .or_else(|| each(root.get("vips"), "vips", misfit::<RawVip>))
        .or_else(|| misfit::<RawConfig>(root, TOP_LEVEL))
}

fn locate_target(target: &Value, at: &str) -> Misfit {
    each(target.get("paths"), &format!("{at}.paths"), locate_path)
        .or_else(|| {
            let probe = target.get("probe")?;
            misfit::<RawProbe>(probe, &format!("{at}.probe"))
        })
        .or_else(|| misfit::<RawTarget>(target, at))
}

fn locate_path(path: &Value, at: &str) -> Misfit {
    path.get("probe")
        .and_then(|probe| misfit::<RawProbe>(probe, &format!("{at}.probe")))
        .or_else(|| misfit::<RawPath>(path, at))
}

/// The first misfit among the elements of `list` (when it is an array).
fn each(list: Option<&Value>, at: &str, locate: impl Fn(&Value, &str) -> Misfit) -> Misfit {
    list?
        .as_array()?
        .iter()
        .enumerate()
        .find_map(|(i, v)| locate(v, &format!("{at}[{i}]")))
}

fn misfit<T: DeserializeOwned>(value: &Value, at: &str) -> Misfit {
    T::deserialize(value)
        .err()
        .map(|e| (at.to_owned(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(json: &str, base: Option<&Probe>) -> Result<Probe, ConfigError> {
        let raw: RawProbe = serde_json::from_str(json).expect("a probe object");
        check_probe("p", raw, base)
    }

    #[test]
    fn probe_defaults() {
        let p = probe("{}", None).expect("valid");
        assert_eq!(
            p,
            Probe {
                kind: ProbeKind::Icmp,
                interval: Duration::from_secs(1),
                timeout: None,
                rise: 2,
                fall: 3,
                passive: Passive::Auto,
            }
        );
        // An inherited timeout is capped by the interval.
        let base = probe(r#"{"timeout_ms": 500}"#, None).expect("valid");
        let p = probe(r#"{"interval_ms": 200}"#, Some(&base)).expect("valid");
        assert_eq!(p.timeout, Some(Duration::from_millis(200)));
    }

    #[test]
    fn passive_threshold() {
        let p = probe(r#"{"passive_ms": 0}"#, None).expect("valid");
        assert_eq!(p.passive, Passive::Off);
        let q = probe("{}", Some(&p)).expect("valid");
        assert_eq!(q.passive, Passive::Off, "inherited");
        let fixed = probe(r#"{"passive_ms": 7}"#, None).expect("valid");
        assert_eq!(fixed.passive, Passive::After(Duration::from_millis(7)));
        let e = probe(
            r#"{"interval_ms": 100, "fall": 3, "passive_ms": 300}"#,
            None,
        )
        .expect_err("not shorter than the hold time");
        assert!(e.to_string().contains("fall × interval_ms (300 ms)"), "{e}");
        let ms = Duration::from_millis;
        // Auto: the round trip plus 2 ms, whole milliseconds, at most the interval.
        let auto = Passive::Auto;
        assert_eq!(auto.threshold(ms(100), None), ms(2));
        assert_eq!(
            auto.threshold(ms(100), Some(Duration::from_micros(120))),
            ms(3)
        );
        assert_eq!(
            auto.threshold(ms(100), Some(Duration::from_micros(180))),
            ms(3)
        );
        assert_eq!(auto.threshold(ms(10), Some(ms(40))), ms(10));
        assert_eq!(Passive::Off.threshold(ms(100), Some(ms(1))), Duration::ZERO);
    }

    #[test]
    fn override_keeps_type_specific_fields_only_for_the_same_type() {
        let base = probe(r#"{"type": "http", "port": 8080, "path": "/up"}"#, None).expect("valid");
        let same = probe(r#"{"expect_status": 204}"#, Some(&base)).expect("valid");
        assert_eq!(
            same.kind,
            ProbeKind::Http {
                port: 8080,
                path: "/up".into(),
                expect_status: 204
            }
        );
        let other = probe(r#"{"type": "tcp"}"#, Some(&base));
        assert!(
            matches!(other, Err(ConfigError::Invalid { ref field, .. }) if field == "p.port"),
            "{other:?}"
        );
    }

    #[test]
    fn bare_message_drops_the_position() {
        let e = serde_json::from_str::<Value>("{").expect_err("not JSON");
        assert_eq!(bare_message(&e), "EOF while parsing an object");
    }

    #[test]
    fn locate_finds_the_innermost_misfit() {
        let root: Value = serde_json::from_str(
            r#"{"interfaces": {"clients": ["eth0"]},
                "targets": [{"name": "t", "paths": [{"name": "p", "address": "192.0.2.1",
                             "probe": {"type": "ping"}}]}]}"#,
        )
        .expect("JSON");
        let (at, reason) = locate(&root).expect("a misfit");
        assert_eq!(at, "targets[0].paths[0].probe");
        assert!(reason.contains("unknown variant `ping`"), "{reason}");
    }
}
