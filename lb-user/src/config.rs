//! The configuration file (JSON): the raw serde shape, and the validated model the daemon
//! works with. Every field is documented in README.md ("Configuration").
//!
//! Loading is all-or-nothing: [`Config::from_json`] either returns a fully validated model or
//! one [`ConfigError`] naming the field and the reason; nothing is applied from an invalid
//! file.

use std::{net::Ipv4Addr, time::Duration};

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub interfaces: Interfaces,
    pub targets: Vec<Target>,
    pub vips: Vec<Vip>,
    /// Flow-table capacity (`None`: the datapath default).
    pub flow_table_size: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interfaces {
    /// Interfaces facing the clients: `lb_ingress` is attached here.
    pub clients: Vec<String>,
    /// Interfaces facing the paths: `lb_return` is attached here.
    pub paths: Vec<String>,
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
    pub paths: Vec<Path>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Path {
    pub name: String,
    /// The VM's address on this path.
    pub address: Ipv4Addr,
    /// Failover preference: lower is preferred.
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
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down path up.
    pub rise: u32,
    /// Consecutive failures that bring an up path down.
    pub fall: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP connection to `port` completes.
    Tcp { port: u16 },
    /// An ICMP echo is answered.
    Icmp,
    /// `GET path` on `port` answers with `expect_status`.
    Http { port: u16, path: String, expect_status: u16 },
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
    /// The port on the VM; `None`: the same as `port`.
    pub target_port: Option<u16>,
}
