//! The raw shape: the JSON exactly as written, and where a JSON of the wrong shape went wrong.

use schemars::JsonSchema;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

use crate::config::{AllDown, ConfigError, Mode, ProbeKind, Protocol, TOP_LEVEL};

/// The lb configuration file. Every field is documented in README.md, "Configuration".
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a configuration object")]
#[schemars(title = "lb configuration")]
pub(crate) struct RawConfig {
    /// The schema this file follows, for editors (e.g. `/usr/share/lb/lb.schema.json`);
    /// ignored by lb.
    #[serde(rename = "$schema")]
    #[expect(dead_code, reason = "for editors only: lb never reads it")]
    pub(super) schema: Option<String>,
    pub(super) interfaces: RawInterfaces,
    pub(super) flow_table_size: Option<u64>,
    pub(super) datapath_suspect_ms: Option<u64>,
    pub(super) icmp_too_big_per_sec: Option<u64>,
    pub(super) icmp_too_big_burst: Option<u64>,
    pub(super) flows: Option<RawFlows>,
    pub(super) announce: Option<RawAnnounce>,
    #[serde(default)]
    pub(super) targets: Vec<RawTarget>,
    #[serde(default)]
    pub(super) vips: Vec<RawVip>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(
    deny_unknown_fields,
    expecting = "an object with the lists clients and paths"
)]
pub(crate) struct RawInterfaces {
    #[serde(default)]
    pub(super) clients: Vec<String>,
    #[serde(default)]
    pub(super) paths: Vec<String>,
    /// Checked by hand, so an unknown hook names its field.
    #[serde(default)]
    pub(super) hooks: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a flows object")]
pub(crate) struct RawFlows {
    pub(super) tcp_idle_s: Option<u64>,
    pub(super) tcp_closing_s: Option<u64>,
    pub(super) unreplied_s: Option<u64>,
    pub(super) udp_idle_s: Option<u64>,
    pub(super) icmp_idle_s: Option<u64>,
    pub(super) pins_per_sec: Option<u64>,
    pub(super) pins_burst: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "an announce object")]
pub(crate) struct RawAnnounce {
    pub(super) table: Option<u64>,
    pub(super) protocol: Option<u64>,
    pub(super) settle_max_s: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a target object")]
pub(crate) struct RawTarget {
    pub(super) name: String,
    pub(super) mode: Option<RawMode>,
    pub(super) preempt: Option<bool>,
    pub(super) all_down: Option<RawAllDown>,
    pub(super) expose_paths: Option<bool>,
    #[serde(default)]
    pub(super) paths: Vec<RawPath>,
    #[serde(default)]
    pub(super) probe: RawProbe,
    pub(super) notify: Option<RawNotify>,
}

/// A target's notify hook.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a notify object")]
pub(crate) struct RawNotify {
    pub(super) command: Vec<String>,
    pub(super) timeout_ms: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a path object")]
pub(crate) struct RawPath {
    pub(super) name: String,
    pub(super) address: String,
    pub(super) priority: Option<u32>,
    pub(super) weight: Option<u32>,
    pub(super) source: Option<String>,
    pub(super) interface: Option<String>,
    /// Overrides of the target's probe: any subset of its fields.
    #[serde(default)]
    pub(super) probe: RawProbe,
}

/// A target's probe, or a path's overrides of it: every field optional.
#[derive(Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a probe object")]
pub(crate) struct RawProbe {
    #[serde(rename = "type")]
    pub(super) kind: Option<RawProbeType>,
    pub(super) port: Option<u16>,
    pub(super) path: Option<String>,
    pub(super) expect_status: Option<u16>,
    /// https only: the server name to send and verify.
    pub(super) sni: Option<String>,
    /// https only: a PEM file of the CA certificates to trust (read at load).
    pub(super) ca_file: Option<String>,
    /// https only: no verification of the server's certificate.
    pub(super) insecure: Option<bool>,
    pub(super) interval_ms: Option<u64>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
    pub(super) passive_ms: Option<u64>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, expecting = "a VIP object")]
pub(crate) struct RawVip {
    pub(super) address: String,
    pub(super) protocol: Option<RawProtocol>,
    pub(super) port: Option<u16>,
    pub(super) target: String,
    pub(super) target_port: Option<u16>,
    pub(super) announce: Option<bool>,
}

#[derive(Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawMode {
    Failover,
    ActiveActive,
}

#[derive(Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawAllDown {
    Drop,
    LastKnown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawProbeType {
    Tcp,
    Icmp,
    Http,
    Https,
}

#[derive(Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawProtocol {
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
    pub(crate) fn of(kind: &ProbeKind) -> RawProbeType {
        match kind {
            ProbeKind::Tcp { .. } => RawProbeType::Tcp,
            ProbeKind::Icmp => RawProbeType::Icmp,
            ProbeKind::Http { .. } => RawProbeType::Http,
            ProbeKind::Https { .. } => RawProbeType::Https,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            RawProbeType::Tcp => "tcp",
            RawProbeType::Icmp => "icmp",
            RawProbeType::Http => "http",
            RawProbeType::Https => "https",
        }
    }
}

// ---- Errors in the JSON's shape. ----

/// A serde_json error as a [`ConfigError`]. Not JSON: a syntax error, with line and column.
/// JSON of the wrong shape (unknown field, wrong type, missing field): located in the tree.
pub(crate) fn shape_error(text: &str, error: &serde_json::Error) -> ConfigError {
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
pub(crate) fn bare_message(error: &serde_json::Error) -> String {
    let full = error.to_string();
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    full.strip_suffix(&suffix).unwrap_or(&full).to_owned()
}

type Misfit = Option<(String, String)>;

/// The innermost object in `root` that does not fit its raw type, and serde's reason. Walks
/// the sections in schema order, children before their parent.
pub(crate) fn locate(root: &Value) -> Misfit {
    root.get("interfaces")
        .and_then(|v| misfit::<RawInterfaces>(v, "interfaces"))
        .or_else(|| {
            root.get("announce")
                .and_then(|v| misfit::<RawAnnounce>(v, "announce"))
        })
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
