//! The capabilities a command needs, checked up front with one clear line.

use anyhow::bail;

/// A capability a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// Load programs, create, read and write maps (`CAP_BPF`, 39).
    Bpf,
    /// Attach to interfaces (`CAP_NET_ADMIN`, 12).
    NetAdmin,
    /// ICMP probes (`CAP_NET_RAW`, 13).
    NetRaw,
    /// Mount and unmount a bpffs (`CAP_SYS_ADMIN`, 21).
    SysAdmin,
}

impl Cap {
    fn bit(self) -> u32 {
        match self {
            Cap::Bpf => 39,
            Cap::NetAdmin => 12,
            Cap::NetRaw => 13,
            Cap::SysAdmin => 21,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Cap::Bpf => "CAP_BPF",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::NetRaw => "CAP_NET_RAW",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
        }
    }
}

/// This process's effective capabilities (`CapEff` of /proc/self/status).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Fails, before anything is touched, when this process lacks a capability `command` needs
/// to do `what`, naming the command, root and every missing capability.
pub fn require(command: &str, what: &str, caps: &[Cap]) -> anyhow::Result<()> {
    let have = effective_caps();
    // CAP_SYS_ADMIN stands in for CAP_BPF (kernels before 5.8 know only it).
    let has = |c: Cap| {
        have & (1 << c.bit()) != 0 || (c == Cap::Bpf && have & (1 << Cap::SysAdmin.bit()) != 0)
    };
    let missing: Vec<&str> = caps
        .iter()
        .filter(|c| !has(**c))
        .map(|c| c.name())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let all: Vec<&str> = caps.iter().map(|c| c.name()).collect();
    bail!(
        "lb {command} needs root (or {}) to {what}; this process lacks {}",
        all.join(" + "),
        missing.join(", ")
    );
}
