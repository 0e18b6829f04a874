//! A [`Plan`] as what the VM's owner installs: `ip` commands, systemd-networkd files, netplan
//! YAML or a cloud-config. Pure: a plan in, text out (every value in it was validated by
//! [`plan`](super::plan::plan), so nothing here needs quoting beyond what the formats ask).

use std::net::IpAddr;

use super::{
    plan::{GuestPath, Plan},
    rp_filter_key,
};
use crate::config::Family;

/// What `lb guest plan --format` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A shell script of `ip` and `sysctl` commands (lasts until the next reboot).
    Ip,
    /// systemd-networkd `.network` files and a sysctl.d file.
    Networkd,
    /// A netplan YAML file and a sysctl.d file.
    Netplan,
    /// A `#cloud-config` (user data) doing the same at every boot.
    CloudInit,
    /// All of the above, one after the other.
    #[default]
    All,
}

/// Where the sysctl.d file goes: late in the order, so it wins over the distribution's.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/90-lb-rp-filter.conf";
/// Where the netplan file goes: after the files cloud images ship (`50-cloud-init.yaml`).
pub const NETPLAN_FILE: &str = "/etc/netplan/90-lb-policy-routing.yaml";

/// Where the `.network` file of `interface` goes.
pub fn networkd_file(interface: &str) -> String {
    format!("/etc/systemd/network/10-lb-{interface}.network")
}

/// The plan in `format`, ending with the UDP note.
pub fn render(plan: &Plan, format: Format) -> String {
    let mut t = Text::default();
    match format {
        Format::All => {
            header(&mut t, plan);
            for (f, what) in [
                (Format::Ip, "ip: a shell script, until the next reboot"),
                (Format::Networkd, "networkd: systemd-networkd files"),
                (Format::Netplan, "netplan"),
                (Format::CloudInit, "cloud-init: user data"),
            ] {
                t.blank();
                t.line(format!("# ======== --format {} ========", name(f)));
                t.comment(what);
                prelude(&mut t, f);
                body(&mut t, plan, f);
            }
        }
        f => {
            prelude(&mut t, f);
            header(&mut t, plan);
            t.blank();
            body(&mut t, plan, f);
        }
    }
    t.blank();
    udp_note(&mut t);
    t.finish()
}

fn name(format: Format) -> &'static str {
    match format {
        Format::Ip => "ip",
        Format::Networkd => "networkd",
        Format::Netplan => "netplan",
        Format::CloudInit => "cloud-init",
        Format::All => "all",
    }
}

/// A script's and a cloud-config's first line is what makes them one.
fn prelude(t: &mut Text, format: Format) {
    match format {
        Format::Ip => t.line("#!/bin/sh"),
        Format::CloudInit => t.line("#cloud-config"),
        Format::Networkd | Format::Netplan | Format::All => {}
    }
}

fn body(t: &mut Text, plan: &Plan, format: Format) {
    match format {
        Format::Ip => ip_script(t, plan),
        Format::Networkd => networkd(t, plan),
        Format::Netplan => netplan(t, plan),
        Format::CloudInit => cloud_init(t, plan),
        Format::All => {}
    }
}

/// Lines, joined with newlines at the end.
#[derive(Default)]
struct Text(Vec<String>);

impl Text {
    fn line(&mut self, s: impl Into<String>) {
        self.0.push(s.into());
    }

    /// `text` as `# ` comment lines (one per line of `text`).
    fn comment(&mut self, text: &str) {
        for l in text.lines() {
            self.0.push(if l.is_empty() {
                "#".into()
            } else {
                format!("# {l}")
            });
        }
    }

    fn blank(&mut self) {
        if self.0.last().is_some_and(|l| !l.is_empty()) {
            self.0.push(String::new());
        }
    }

    fn finish(self) -> String {
        let mut s = self.0.join("\n");
        s.push('\n');
        s
    }
}

fn header(t: &mut Text, plan: &Plan) {
    t.comment(&format!(
        "lb guest plan for target {:?}: policy routing inside its VM, so that each reply leaves\n\
         by the path its request came in on. Per path: a routing table whose default route\n\
         leaves by the path's interface toward its next hop, and a rule sending what comes from\n\
         the path's address to that table.",
        plan.target
    ));
    let w = |f: &dyn Fn(&GuestPath) -> String| plan.paths.iter().map(f).map(|s| s.len()).max();
    let wn = w(&|p| format!("{:?}", p.name)).unwrap_or(0);
    let wa = w(&|p| p.address.to_string()).unwrap_or(0);
    let wi = w(&|p| p.interface.clone()).unwrap_or(0);
    let wg = w(&|p| p.gateway.to_string()).unwrap_or(0);
    for p in &plan.paths {
        t.line(format!(
            "#   path {:<wn$}  {:<wa$}  on {:<wi$}  via {:<wg$}  table {}, rule priority {}",
            format!("{:?}", p.name),
            p.address,
            p.interface,
            p.gateway,
            p.table,
            p.priority
        ));
    }
    let n = plan.numbering;
    t.comment(&format!(
        "Tables: --table-base ({}) + the path's index in the target's list; rule priorities:\n\
         --priority-base ({}) + the same index: the same file always makes the same plan.\n\
         Each path address must already be configured on its interface (the VM's own\n\
         addressing: DHCP, cloud-init, netplan, networkd...): nothing here adds an address.",
        n.table_base, n.priority_base
    ));
}

/// `ip` or `ip -6`.
fn ip(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip -6",
    }
}

/// The default route of `p`'s table (`replace`: idempotent).
pub fn route_command(p: &GuestPath) -> String {
    format!(
        "{} route replace default via {} dev {} onlink table {}",
        ip(p.family()),
        p.gateway,
        p.interface,
        p.table
    )
}

/// `p`'s rule, removed first: iproute2 has no `ip rule replace`, and a second `add` of the
/// same rule fails (`File exists`) on current kernels, or doubles it on old ones.
pub fn rule_commands(p: &GuestPath) -> [String; 2] {
    let rule = format!(
        "from {} lookup {} priority {}",
        p.address, p.table, p.priority
    );
    let ip = ip(p.family());
    [
        format!("{ip} rule del {rule} 2>/dev/null || true"),
        format!("{ip} rule add {rule}"),
    ]
}

/// `sysctl -w` commands for loose reverse-path filtering: `all` and each IPv4 interface.
pub fn sysctl_commands(plan: &Plan) -> Vec<String> {
    rp_filter_keys(plan)
        .into_iter()
        .map(|k| format!("sysctl -w {k}=2"))
        .collect()
}

fn rp_filter_keys(plan: &Plan) -> Vec<String> {
    let interfaces = plan.ipv4_interfaces();
    if interfaces.is_empty() {
        return Vec::new();
    }
    let mut keys = vec![rp_filter_key("all")];
    keys.extend(interfaces.into_iter().map(rp_filter_key));
    keys
}

const RP_FILTER_WHY: &str = "\
Reverse-path filtering (IPv4): the kernel applies max(all, interface). Strict (1) drops a
request unless the route back to its source, looked up through the rules here, leaves by
the interface it came in on: a request arriving while a rule is missing or late is lost
without a trace. Loose (2) only wants the source routable at all. Setting `all` to 2 makes
every interface at least loose; each path interface is set too, in case `all` is lowered.";

const RP_FILTER_V6: &str = "\
IPv6 has no rp_filter: if a firewall checks reverse paths (firewalld's IPv6_rpfilter, an
nftables `fib saddr . iif oif missing drop`), make sure it lets the paths' traffic in.";

fn has_v6(plan: &Plan) -> bool {
    plan.paths.iter().any(|p| p.family() == Family::V6)
}

fn ip_script(t: &mut Text, plan: &Plan) {
    t.comment(
        "Routes and rules set with `ip` last until the next reboot: run this at every boot (it is\n\
         idempotent), or use a persistent form (--format networkd, netplan or cloud-init).\n\
         Where systemd-networkd manages the interfaces it removes, when it starts, the rules and\n\
         routes it did not make (ManageForeignRoutingPolicyRules=, ManageForeignRoutes=, yes by\n\
         default): use the networkd or netplan form there.",
    );
    t.line("set -e");
    let sysctl = sysctl_commands(plan);
    if !sysctl.is_empty() {
        t.blank();
        t.comment(RP_FILTER_WHY);
        for c in sysctl {
            t.line(c);
        }
    }
    if has_v6(plan) {
        t.blank();
        t.comment(RP_FILTER_V6);
    }
    for p in &plan.paths {
        t.blank();
        t.line(format!(
            "# path {:?}: {} on {}, next hop {}",
            p.name, p.address, p.interface, p.gateway
        ));
        t.line(route_command(p));
        for c in rule_commands(p) {
            t.line(c);
        }
    }
}

/// The sysctl.d file, preceded by its path; nothing without an IPv4 path.
fn sysctl_file(t: &mut Text, plan: &Plan) {
    let keys = rp_filter_keys(plan);
    if keys.is_empty() {
        return;
    }
    t.blank();
    t.line(format!("# {SYSCTL_FILE}"));
    t.comment(RP_FILTER_WHY);
    for k in keys {
        t.line(format!("{k} = 2"));
    }
}

/// An address with its full prefix length, as networkd's `From=` is written here (its
/// default for a bare address has changed across versions; a prefix leaves no doubt).
fn host_prefix(a: IpAddr) -> String {
    match a {
        IpAddr::V4(_) => format!("{a}/32"),
        IpAddr::V6(_) => format!("{a}/128"),
    }
}

fn networkd(t: &mut Text, plan: &Plan) {
    let interfaces = plan.interfaces();
    t.comment(&format!(
        "Install each file at the path its first line names, then: sysctl --system;\n\
         networkctl reload; networkctl reconfigure {}\n\
         networkd applies only the first .network file (in lexical order) that matches an\n\
         interface: if one already configures {} (cloud images: 50-cloud-init.network,\n\
         10-netplan-*.network), put the [Route] and [RoutingPolicyRule] sections below into a\n\
         drop-in of that file instead (/etc/systemd/network/THAT.network.d/50-lb.conf);\n\
         otherwise the file below is the interface's only one, and must also carry its\n\
         addressing (Address=, DHCP=).",
        interfaces.join(" "),
        interfaces.join(" or ")
    ));
    let v4 = plan.ipv4_interfaces();
    for iface in interfaces {
        t.blank();
        t.line(format!("# {}", networkd_file(iface)));
        t.line("[Match]");
        t.line(format!("Name={iface}"));
        if v4.contains(&iface) {
            t.blank();
            t.line("[Network]");
            t.comment(
                "systemd 255 or later may take this line instead of the sysctl.d file (older\n\
                 versions do not know the key):",
            );
            t.line("#IPv4ReversePathFilter=loose");
        }
        for p in plan.on(iface) {
            t.blank();
            t.line(format!("# path {:?}: {}", p.name, p.address));
            t.line("[Route]");
            t.line(format!("Gateway={}", p.gateway));
            t.line("GatewayOnLink=yes");
            t.line(format!("Table={}", p.table));
            t.blank();
            t.line("[RoutingPolicyRule]");
            t.line(format!("From={}", host_prefix(p.address)));
            t.line(format!("Table={}", p.table));
            t.line(format!("Priority={}", p.priority));
        }
    }
    sysctl_file(t, plan);
    if has_v6(plan) {
        t.blank();
        t.comment(RP_FILTER_V6);
    }
}

/// A YAML key for an interface: bare when it starts with a letter, else quoted (a name such
/// as `1a` would otherwise be read as something other than a string).
fn yaml_key(interface: &str) -> String {
    if interface.starts_with(|c: char| c.is_ascii_alphabetic()) {
        interface.to_owned()
    } else {
        format!("\"{interface}\"")
    }
}

fn netplan(t: &mut Text, plan: &Plan) {
    let interfaces = plan.interfaces();
    t.line(format!("# {NETPLAN_FILE}"));
    t.comment(&format!(
        "Mode 600 (netplan warns otherwise); then `netplan try` (or `netplan apply`).\n\
         netplan merges the files in /etc/netplan in lexical order, but an interface's lists\n\
         (routes:, routing-policy:) are not reliably combined across files: if another file\n\
         already gives {} routes: or routing-policy:, move these entries into it. The ids\n\
         below must be the ones your netplan files use (here the interface names). Addresses\n\
         are quoted, as `netplan get` writes them.",
        interfaces.join(" or ")
    ));
    t.line("network:");
    t.line("  version: 2");
    t.line("  ethernets:");
    for iface in interfaces {
        t.line(format!("    {}:", yaml_key(iface)));
        t.line("      routes:");
        for p in plan.on(iface) {
            t.line("        - to: default");
            t.line(format!("          via: \"{}\"", p.gateway));
            t.line(format!("          table: {}", p.table));
            t.line("          on-link: true");
        }
        t.line("      routing-policy:");
        for p in plan.on(iface) {
            t.line(format!("        - from: \"{}\"", p.address));
            t.line(format!("          table: {}", p.table));
            t.line(format!("          priority: {}", p.priority));
        }
    }
    sysctl_file(t, plan);
    if has_v6(plan) {
        t.blank();
        t.comment(RP_FILTER_V6);
    }
}

fn cloud_init(t: &mut Text, plan: &Plan) {
    t.comment(
        "bootcmd rather than runcmd: routes and rules set with `ip` last until the next reboot,\n\
         and runcmd runs once per instance (its first boot) while bootcmd runs at every boot,\n\
         in cloud-init's network stage; the commands are idempotent. The sysctl.d file keeps\n\
         the rp_filter setting for an interface that comes back later (udev applies sysctl.d\n\
         to a new interface). Where systemd-networkd manages the interfaces it removes foreign\n\
         rules and routes when it restarts: give cloud-init the netplan form as its\n\
         network-config (version 2) there instead.",
    );
    let keys = rp_filter_keys(plan);
    if !keys.is_empty() {
        t.line("write_files:");
        t.line(format!("  - path: {SYSCTL_FILE}"));
        t.line("    permissions: '0644'");
        t.line("    content: |");
        for k in &keys {
            t.line(format!("      {k} = 2"));
        }
    }
    t.line("bootcmd:");
    // Single-quoted: a command holds `||`, `>` and IPv6 addresses, which could end in `:`.
    let mut item = |c: String| t.line(format!("  - '{c}'"));
    for c in sysctl_commands(plan) {
        item(c);
    }
    for p in &plan.paths {
        item(route_command(p));
        for c in rule_commands(p) {
            item(c);
        }
    }
}

const UDP_NOTE: &str = "\
The UDP trap: a UDP socket bound to 0.0.0.0 or :: answers from the address the main
table's route picks, not from the one the request came to, so its replies leave by the
main table's path whichever path the request took: that seems to work while that path is
up, and fails exactly when the edge has moved the traffic off it. Bind one socket per path
address, or have the server use IP_PKTINFO / IPV6_RECVPKTINFO to answer from the address
it was reached at (unbound: `interface-automatic: yes`, or `ip-freebind: yes` with one
`interface:` per address). TCP is not affected: an accepted socket's source is the address
it was reached at, and the rules above route it.";

fn udp_note(t: &mut Text) {
    t.comment(UDP_NOTE);
}
