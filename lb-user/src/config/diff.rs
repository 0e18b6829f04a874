//! What differs between two configurations, in the file's terms: what `lb reload` reports
//! and `lb reload --dry-run` prints.
//!
//! Each configuration is flattened into items (an interface, a target, a path, a path's probe,
//! a VIP, a global setting), each with one line of its settings; two configurations differ in
//! the items one lacks and in those whose lines differ. The daemon computes this from the
//! configuration it runs and the one it is about to apply, the same [`Config`]s it applies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{
    AllDown, Config, HookSetting, Mode, Passive, Probe, ProbeKind, Protocol, TlsTrust,
};

/// One difference between two configurations.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// What is added, removed or changed, e.g. `vip 203.0.113.10 tcp/80` or `path web/nn1`.
    pub item: String,
    /// `added`, `removed` or `changed`.
    pub change: String,
    /// Its settings before (`None` when added).
    pub from: Option<String>,
    /// Its settings after (`None` when removed).
    pub to: Option<String>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.from, &self.to) {
            (None, Some(to)) => write!(f, "+ {}: {to}", self.item),
            (Some(from), None) => write!(f, "- {}: {from}", self.item),
            (Some(from), Some(to)) => write!(f, "~ {}: {from} → {to}", self.item),
            (None, None) => write!(f, "  {}", self.item),
        }
    }
}

/// The changes that turn `old` into `new`, interfaces first, then targets, paths, probes,
/// VIPs and settings, each kind in name order.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let (a, b) = (items(old), items(new));
    let mut out = Vec::new();
    for (key, before) in &a {
        match b.get(key) {
            None => out.push((key.clone(), "removed", Some(before.clone()), None)),
            Some(after) if after != before => out.push((
                key.clone(),
                "changed",
                Some(before.clone()),
                Some(after.clone()),
            )),
            Some(_) => {}
        }
    }
    for (key, after) in &b {
        if !a.contains_key(key) {
            out.push((key.clone(), "added", None, Some(after.clone())));
        }
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out.into_iter()
        .map(|((_, item), change, from, to)| Change {
            item,
            change: change.into(),
            from,
            to,
        })
        .collect()
}

/// Orders the kinds of items (an `u8` before the name).
type Key = (u8, String);

/// Every item of `c` with its settings line.
fn items(c: &Config) -> BTreeMap<Key, String> {
    let mut out = BTreeMap::new();
    let roles = c
        .interfaces
        .clients
        .iter()
        .map(|i| (i, "clients"))
        .chain(c.interfaces.paths.iter().map(|i| (i, "paths")));
    for (iface, role) in roles {
        let hook = match c.interfaces.hooks.get(iface) {
            None => "as lb run --hook says",
            Some(HookSetting::Auto) => "auto",
            Some(HookSetting::Xdp) => "xdp",
            Some(HookSetting::Tc) => "tc",
        };
        out.insert(
            (0, format!("interface {iface}")),
            format!("{role}, hook {hook}"),
        );
    }
    for t in &c.targets {
        let mode = match t.mode {
            Mode::Failover => "failover",
            Mode::ActiveActive => "active-active",
        };
        let all_down = match t.all_down {
            AllDown::Drop => "drop",
            AllDown::LastKnown => "last-known",
        };
        out.insert(
            (1, format!("target {}", t.name)),
            format!(
                "{mode}, preempt {}, all_down {all_down}, expose_paths {}",
                t.preempt, t.expose_paths
            ),
        );
        if let Some(n) = &t.notify {
            out.insert(
                (1, format!("notify {}", t.name)),
                format!("{:?}, timeout {}", n.command, secs(n.timeout)),
            );
        }
        for p in &t.paths {
            let mut line = format!(
                "address {}, priority {}, weight {}",
                p.address, p.priority, p.weight
            );
            if let Some(source) = p.source {
                line.push_str(&format!(", source {source}"));
            }
            if let Some(iface) = &p.interface {
                line.push_str(&format!(", interface {iface}"));
            }
            out.insert((2, format!("path {}/{}", t.name, p.name)), line);
            out.insert(
                (3, format!("probe {}/{}", t.name, p.name)),
                probe_text(&p.probe),
            );
        }
    }
    for v in &c.vips {
        let service = match v.service {
            None => "all".to_string(),
            Some(s) => format!(
                "{}/{}",
                match s.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                },
                s.port
            ),
        };
        let mut line = format!("→ {}", v.target);
        if let Some(port) = v.service.and_then(|s| s.target_port) {
            line.push_str(&format!(" port {port}"));
        }
        if !v.announce {
            line.push_str(", announce false");
        }
        out.insert((4, format!("vip {} {service}", v.address)), line);
    }
    let mut setting = |name: &str, value: String| {
        out.insert((5, format!("setting {name}")), value);
    };
    setting(
        "flow_table_size",
        c.flow_table_size
            .map_or("default".into(), |n| n.to_string()),
    );
    setting(
        "datapath_suspect_ms",
        c.datapath_suspect.as_millis().to_string(),
    );
    setting(
        "icmp_too_big",
        format!(
            "{} per second, burst {}",
            c.icmp_too_big_per_sec, c.icmp_too_big_burst
        ),
    );
    let f = &c.flows;
    setting(
        "flows",
        format!(
            "tcp_idle {}, tcp_closing {}, unreplied {}, udp_idle {}, icmp_idle {}, pins {} per second burst {}",
            secs(f.tcp_idle),
            secs(f.tcp_closing),
            secs(f.unreplied),
            secs(f.udp_idle),
            secs(f.icmp_idle),
            f.pins_per_sec,
            f.pins_burst
        ),
    );
    setting(
        "announce",
        match c.announce {
            None => "off".into(),
            Some(a) => format!(
                "table {}, protocol {}, settle_max {}",
                a.table,
                a.protocol,
                secs(c.settle_max)
            ),
        },
    );
    out
}

fn secs(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A probe's settings on one line, e.g. `tcp port 80, every 1s, timeout adaptive, rise 2,
/// fall 3, passive auto`.
pub fn probe_text(p: &Probe) -> String {
    let kind = match &p.kind {
        ProbeKind::Icmp => "icmp".to_string(),
        ProbeKind::Tcp { port } => format!("tcp port {port}"),
        ProbeKind::Http {
            port,
            path,
            expect_status,
        } => format!("http port {port} GET {path} expect {expect_status}"),
        ProbeKind::Https {
            port,
            path,
            expect_status,
            sni,
            trust,
        } => {
            let sni = sni.as_ref().map_or(String::new(), |n| format!(" sni {n}"));
            let trust = match trust {
                TlsTrust::System => String::new(),
                TlsTrust::CaFile { path, certs } => format!(
                    " ca_file {} ({} certificates, {})",
                    path.display(),
                    certs.certs().len(),
                    certs.digest()
                ),
                TlsTrust::Insecure => " insecure".into(),
            };
            format!("https port {port} GET {path} expect {expect_status}{sni}{trust}")
        }
    };
    let timeout = p.timeout.map_or("adaptive".into(), secs);
    let passive = match p.passive {
        Passive::Auto => "auto".to_string(),
        Passive::Off => "off".to_string(),
        Passive::After(d) => secs(d),
    };
    format!(
        "{kind}, every {}, timeout {timeout}, rise {}, fall {}, passive {passive}",
        secs(p.interval),
        p.rise,
        p.fall
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{
      "interfaces": { "clients": ["c0"], "paths": ["p0"] },
      "targets": [ { "name": "web",
        "probe": { "type": "tcp", "port": 80 },
        "paths": [
          { "name": "nn1", "address": "192.0.2.1" },
          { "name": "nn2", "address": "192.0.2.2" } ] } ],
      "vips": [ { "address": "203.0.113.10", "protocol": "tcp", "port": 80, "target": "web" } ]
    }"#;

    fn config(json: &str) -> Config {
        Config::from_json(json).expect("valid")
    }

    fn lines(changes: &[Change]) -> Vec<String> {
        changes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn changes_read_as_a_diff() {
        let old = config(BASE);
        let new = config(
            &BASE
                .replace(
                    r#""address": "192.0.2.2" }"#,
                    r#""address": "192.0.2.2", "weight": 3 }"#,
                )
                .replace(r#""clients": ["c0"]"#, r#""clients": ["c1"]"#),
        );
        assert_eq!(
            lines(&diff(&old, &new)),
            [
                "- interface c0: clients, hook as lb run --hook says",
                "+ interface c1: clients, hook as lb run --hook says",
                "~ path web/nn2: address 192.0.2.2, priority 1, weight 1 → address 192.0.2.2, \
                 priority 1, weight 3",
            ]
        );
    }

    #[test]
    fn the_same_file_changes_nothing() {
        assert_eq!(diff(&config(BASE), &config(BASE)), []);
    }

    #[test]
    fn each_kind_of_item_is_reported_added_removed_or_changed() {
        let new = BASE
            .replace(r#""port": 80 },"#, r#""port": 8080, "fall": 5 },"#)
            .replace(r#""paths": ["p0"]"#, r#""paths": ["p0", "p1"]"#)
            .replace(
                r#"{ "name": "nn2", "address": "192.0.2.2" }"#,
                r#"{ "name": "nn3", "address": "192.0.2.3", "weight": 2 }"#,
            )
            .replace(r#""port": 80, "target""#, r#""port": 443, "target""#);
        let changes = diff(&config(BASE), &config(&new));
        let items: Vec<(&str, &str)> = changes
            .iter()
            .map(|c| (c.item.as_str(), c.change.as_str()))
            .collect();
        assert_eq!(
            items,
            [
                ("interface p1", "added"),
                ("path web/nn2", "removed"),
                ("path web/nn3", "added"),
                ("probe web/nn1", "changed"),
                ("probe web/nn2", "removed"),
                ("probe web/nn3", "added"),
                ("vip 203.0.113.10 tcp/443", "added"),
                ("vip 203.0.113.10 tcp/80", "removed"),
            ]
        );
        let probe = changes
            .iter()
            .find(|c| c.item == "probe web/nn1")
            .expect("changed");
        assert_eq!(
            probe.to_string(),
            "~ probe web/nn1: tcp port 80, every 1s, timeout adaptive, rise 2, fall 3, passive auto \
             → tcp port 8080, every 1s, timeout adaptive, rise 2, fall 5, passive auto"
        );
        assert_eq!(
            changes
                .iter()
                .find(|c| c.item == "path web/nn3")
                .and_then(|c| c.to.clone())
                .as_deref(),
            Some("address 192.0.2.3, priority 1, weight 2")
        );
    }

    #[test]
    fn global_settings_and_target_policy_are_items_too() {
        let new = BASE
            .replace(
                r#""name": "web","#,
                r#""name": "web", "mode": "active-active", "notify": { "command": ["/bin/true", "x"] },"#,
            )
            .replace(
                r#""vips""#,
                r#""announce": { "table": 201 }, "flow_table_size": 4096, "vips""#,
            );
        let changes = diff(&config(BASE), &config(&new));
        let items: Vec<&str> = changes.iter().map(|c| c.item.as_str()).collect();
        assert_eq!(
            items,
            [
                "notify web",
                "target web",
                "setting announce",
                "setting flow_table_size"
            ]
        );
        assert_eq!(
            changes[0].to.as_deref(),
            Some(r#"["/bin/true", "x"], timeout 10s"#)
        );
        assert_eq!(
            changes[1].to.as_deref(),
            Some("active-active, preempt true, all_down drop, expose_paths false")
        );
        assert_eq!(changes[3].from.as_deref(), Some("default"));
        assert_eq!(changes[3].to.as_deref(), Some("4096"));
    }
}
