//! What the VM behind the edge needs (`lb guest`): policy routing, so that each reply leaves by
//! the path its request came in on.
//!
//! The edge translates a VIP to one of the VM's path addresses, one address per path, each on
//! the VM's interface toward that path. The VM's main routing table has one default route, so
//! without more it would answer every path's requests over that one route. What it needs, per
//! path address: a routing table of its own whose default route leaves by the address's
//! interface toward the path's next hop, a rule `from ADDR lookup TABLE` that selects it, and
//! (IPv4) reverse-path filtering loose or off on that interface.
//!
//! - [`plan`]: the edge's configuration plus what only the VM's owner knows (each path's
//!   interface and next hop, as the VM sees them) make a validated [`plan::Plan`];
//! - [`render`]: the plan as `ip` commands, systemd-networkd files, netplan YAML or a
//!   cloud-config (pure: a plan in, text out);
//! - [`check`]: inside the VM, whether the addresses are routed that way: the facts gathered
//!   from `ip -j` and `/proc` ([`facts`]), judged by a pure function into findings, each problem
//!   with the command that fixes it.
//!
//! Nothing here runs on the edge's datapath or touches the VM: `plan` prints, `check` reads.

pub mod agent;
pub mod check;
pub mod facts;
pub mod plan;
pub mod render;

#[cfg(test)]
mod tests;

/// A destination off every link, for `ip route get` to find the default route a reply from a
/// path address takes: TEST-NET-2 (RFC 5737). `ip route get` asks the kernel which route it
/// would use and sends nothing, so the address never sees a packet.
pub const PROBE_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 1);
/// The same in IPv6: in the documentation prefix 2001:db8::/32 (RFC 3849).
pub const PROBE_V6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);

/// The key of `net.ipv4.conf.IFACE.rp_filter` as sysctl(8) and sysctl.d(5) take it: both read
/// the first separator as the one in use, so an interface name with a dot (a VLAN, `eth0.100`)
/// needs the slash form, `net/ipv4/conf/eth0.100/rp_filter`.
pub fn rp_filter_key(interface: &str) -> String {
    if interface.contains('.') {
        format!("net/ipv4/conf/{interface}/rp_filter")
    } else {
        format!("net.ipv4.conf.{interface}.rp_filter")
    }
}
