//! `lb guest`: the plan's validation, each format's important lines, the parsing of `ip -j`'s
//! output (odd output included), and the judging of hand-built facts, one problem at a time.

use std::{collections::BTreeMap, net::IpAddr};

use super::{
    check::{Check, Finding, Report, judge},
    facts::{
        Facts, Hop, HostAddress, Interface, Route, Rule, parse_addresses, parse_lookup,
        parse_routes, parse_rules,
    },
    plan::{Numbering, PathSpec, Plan, PlanError, SpecError, is_interface_name, plan},
    render::{Format, render},
    rp_filter_key,
};
use crate::config::{Config, Family};

const WEB: &str = r#"{
  "interfaces": { "clients": ["eth0"], "paths": ["eth1", "eth2"] },
  "targets": [
    {
      "name": "web",
      "paths": [
        { "name": "nn1", "address": "192.0.2.70" },
        { "name": "nn2", "address": "192.0.2.134" },
        { "name": "v1", "address": "2001:db8:70::70" },
        { "name": "v2", "address": "2001:db8:134::134" }
      ]
    },
    {
      "name": "six",
      "paths": [
        { "name": "a", "address": "2001:db8:1::70" },
        { "name": "b", "address": "2001:db8:2::70" }
      ]
    }
  ],
  "vips": [
    { "address": "203.0.113.10", "target": "web" },
    { "address": "2001:db8:71::10", "target": "web" },
    { "address": "2001:db8:71::11", "target": "six" }
  ]
}"#;

fn config() -> Config {
    Config::from_json(WEB).expect("valid configuration")
}

fn specs(list: &[&str]) -> Vec<PathSpec> {
    list.iter()
        .map(|s| s.parse().expect("a valid --path"))
        .collect()
}

const WEB_PATHS: [&str; 4] = [
    "nn1=eth0,192.0.2.65",
    "nn2=eth1,192.0.2.129",
    "v1=eth0,2001:db8:70::1",
    "v2=eth1,2001:db8:134::1",
];

fn web_plan() -> Plan {
    plan(&config(), "web", &specs(&WEB_PATHS), Numbering::default()).expect("a plan")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

// ---- --path

#[test]
fn path_specs_parse() {
    let s: PathSpec = "nn1=eth0,192.0.2.65".parse().expect("valid");
    assert_eq!(
        s,
        PathSpec {
            name: "nn1".into(),
            interface: "eth0".into(),
            gateway: ip("192.0.2.65"),
        }
    );
    // A name may hold `=`; the interface and gateway cannot.
    let s: PathSpec = "a=b=eth0.100,fe80::1".parse().expect("valid");
    assert_eq!((s.name.as_str(), s.interface.as_str()), ("a=b", "eth0.100"));
    assert_eq!(s.gateway, ip("fe80::1"));
}

#[test]
fn bad_path_specs_say_why() {
    let err = |s: &str| s.parse::<PathSpec>().expect_err(s);
    assert!(matches!(err("nn1"), SpecError::Shape { .. }));
    assert!(matches!(err("nn1=eth0"), SpecError::Shape { .. }));
    assert!(matches!(err("=eth0,192.0.2.1"), SpecError::NoName { .. }));
    for bad in [
        "",
        "eth 0",
        "-eth0",
        ".x",
        "averyveryverylong0",
        "eth0;rm",
        "eth/0",
    ] {
        let e = err(&format!("nn1={bad},192.0.2.1"));
        assert!(matches!(e, SpecError::Interface { .. }), "{bad:?}: {e}");
    }
    let e = err("nn1=eth0,192.0.2");
    assert!(matches!(e, SpecError::Gateway { .. }), "{e}");
    assert!(e.to_string().contains("not an IP address"), "{e}");
    assert!(
        err("nn1").to_string().contains("NAME=IFACE,GATEWAY"),
        "the message shows the shape"
    );
    assert!(is_interface_name("enp0s3"));
    assert!(is_interface_name("eth0.100"));
    assert!(is_interface_name("a23456789012345"));
}

// ---- the plan

#[test]
fn a_plan_numbers_paths_by_their_index() {
    let p = web_plan();
    let got: Vec<(&str, &str, u32, u32)> = p
        .paths
        .iter()
        .map(|g| (g.name.as_str(), g.interface.as_str(), g.table, g.priority))
        .collect();
    assert_eq!(
        got,
        [
            ("nn1", "eth0", 100, 1000),
            ("nn2", "eth1", 101, 1001),
            ("v1", "eth0", 102, 1002),
            ("v2", "eth1", 103, 1003),
        ]
    );
    assert_eq!(p.interfaces(), ["eth0", "eth1"]);
    assert_eq!(p.ipv4_interfaces(), ["eth0", "eth1"]);
    // The order of the flags does not matter: the configuration's does.
    let mut reversed = specs(&WEB_PATHS);
    reversed.reverse();
    assert_eq!(
        plan(&config(), "web", &reversed, Numbering::default()).expect("a plan"),
        p
    );
    let other = Numbering {
        table_base: 1000,
        priority_base: 500,
    };
    let q = plan(&config(), "web", &specs(&WEB_PATHS), other).expect("a plan");
    assert_eq!(q.paths[3].table, 1003);
    assert_eq!(q.paths[3].priority, 503);
}

fn plan_err(target: &str, given: &[&str], numbering: Numbering) -> PlanError {
    plan(&config(), target, &specs(given), numbering).expect_err("invalid")
}

#[test]
fn every_path_must_be_given() {
    let e = plan_err("web", &WEB_PATHS[..2], Numbering::default());
    assert_eq!(
        e,
        PlanError::Missing {
            target: "web".into(),
            missing: vec![
                ("v1".into(), ip("2001:db8:70::70")),
                ("v2".into(), ip("2001:db8:134::134"))
            ],
        }
    );
    let m = e.to_string();
    assert!(
        m.contains(r#""v1" (2001:db8:70::70), "v2" (2001:db8:134::134)"#),
        "{m}"
    );
    assert!(
        m.contains("--path v1=IFACE,GATEWAY --path v2=IFACE,GATEWAY"),
        "an example flag: {m}"
    );
    // None at all: the same, naming all four.
    let e = plan_err("web", &[], Numbering::default()).to_string();
    assert!(e.contains("--path nn1=IFACE,GATEWAY"), "{e}");
}

#[test]
fn unknown_and_duplicate_paths_and_targets() {
    let e = plan_err("nope", &WEB_PATHS, Numbering::default());
    assert!(matches!(e, PlanError::UnknownTarget { .. }), "{e}");
    assert!(e.to_string().contains(r#""web", "six""#), "{e}");
    let e = plan_err("web", &["nn3=eth2,192.0.2.1"], Numbering::default());
    assert!(matches!(e, PlanError::UnknownPath { .. }), "{e}");
    assert!(
        e.to_string()
            .contains(r#"its paths: "nn1", "nn2", "v1", "v2""#),
        "{e}"
    );
    let mut twice = WEB_PATHS.to_vec();
    twice.push("nn1=eth2,192.0.2.1");
    let e = plan_err("web", &twice, Numbering::default());
    assert_eq!(e, PlanError::Duplicate { path: "nn1".into() });
}

#[test]
fn gateways_are_checked() {
    let with = |v1: &str| {
        let mut g = WEB_PATHS.to_vec();
        g[2] = v1;
        plan_err("web", &g, Numbering::default())
    };
    let e = with("v1=eth0,192.0.2.65");
    assert!(matches!(e, PlanError::GatewayFamily { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("gateway 192.0.2.65 is IPv4, but the path's address 2001:db8:70::70 is IPv6"),
        "{e}"
    );
    for bad in [
        "v1=eth0,::",
        "v1=eth0,ff02::1",
        "v1=eth0,::1",
        "v1=eth0,2001:db8:70::70",
    ] {
        assert!(
            matches!(with(bad), PlanError::Gateway { .. }),
            "{bad}: {}",
            with(bad)
        );
    }
    let mut g = WEB_PATHS.to_vec();
    g[0] = "nn1=eth0,255.255.255.255";
    assert!(matches!(
        plan_err("web", &g, Numbering::default()),
        PlanError::Gateway { .. }
    ));
    // A link-local next hop is what IPv6 routers usually are: taken.
    let mut g = WEB_PATHS.to_vec();
    g[2] = "v1=eth0,fe80::1";
    plan(&config(), "web", &specs(&g), Numbering::default()).expect("link-local next hop");
}

#[test]
fn numbers_stay_clear_of_the_kernels() {
    let n = |table_base, priority_base| Numbering {
        table_base,
        priority_base,
    };
    // 250..=253 holds `default` (253).
    let e = plan_err("web", &WEB_PATHS, n(250, 1000));
    assert!(matches!(e, PlanError::TableBase { base: 250, .. }), "{e}");
    assert!(e.to_string().contains("253"), "{e}");
    assert!(matches!(
        plan_err("web", &WEB_PATHS, n(0, 1000)),
        PlanError::TableBase { .. }
    ));
    assert!(matches!(
        plan_err("web", &WEB_PATHS, n(u32::MAX - 1, 1000)),
        PlanError::TableBase { .. }
    ));
    // 249..=252 and 256.. are fine.
    plan(&config(), "web", &specs(&WEB_PATHS), n(249, 1000)).expect("below 253");
    plan(&config(), "web", &specs(&WEB_PATHS), n(256, 1000)).expect("above 255");
    assert!(matches!(
        plan_err("web", &WEB_PATHS, n(100, 0)),
        PlanError::PriorityBase { .. }
    ));
    // 32763..=32766 reaches main's rule.
    let e = plan_err("web", &WEB_PATHS, n(100, 32763));
    assert!(matches!(e, PlanError::PriorityBase { .. }), "{e}");
    plan(&config(), "web", &specs(&WEB_PATHS), n(100, 32762)).expect("just before main");
}

// ---- rendering

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// `want` appear in `text` as whole lines, in this order.
fn has_in_order(text: &str, want: &[&str]) {
    let all = lines(text);
    let mut from = 0;
    for w in want {
        match all[from..].iter().position(|l| l == w) {
            Some(i) => from += i + 1,
            None => panic!("missing line (or out of order) {w:?} in:\n{text}"),
        }
    }
}

#[test]
fn the_ip_form() {
    let text = render(&web_plan(), Format::Ip);
    assert_eq!(lines(&text)[0], "#!/bin/sh");
    has_in_order(
        &text,
        &[
            "set -e",
            "sysctl -w net.ipv4.conf.all.rp_filter=2",
            "sysctl -w net.ipv4.conf.eth0.rp_filter=2",
            "sysctl -w net.ipv4.conf.eth1.rp_filter=2",
            "ip route replace default via 192.0.2.65 dev eth0 onlink table 100",
            "ip rule del from 192.0.2.70 lookup 100 priority 1000 2>/dev/null || true",
            "ip rule add from 192.0.2.70 lookup 100 priority 1000",
            "ip route replace default via 192.0.2.129 dev eth1 onlink table 101",
            "ip rule del from 192.0.2.134 lookup 101 priority 1001 2>/dev/null || true",
            "ip rule add from 192.0.2.134 lookup 101 priority 1001",
            "ip -6 route replace default via 2001:db8:70::1 dev eth0 onlink table 102",
            "ip -6 rule del from 2001:db8:70::70 lookup 102 priority 1002 2>/dev/null || true",
            "ip -6 rule add from 2001:db8:70::70 lookup 102 priority 1002",
            "ip -6 route replace default via 2001:db8:134::1 dev eth1 onlink table 103",
            "ip -6 rule del from 2001:db8:134::134 lookup 103 priority 1003 2>/dev/null || true",
            "ip -6 rule add from 2001:db8:134::134 lookup 103 priority 1003",
        ],
    );
    // Every line is a comment, blank, or a command of these.
    for l in lines(&text) {
        assert!(
            l.is_empty()
                || l.starts_with('#')
                || l == "set -e"
                || l.starts_with("ip ")
                || l.starts_with("sysctl -w "),
            "{l:?}"
        );
    }
}

#[test]
fn the_networkd_form() {
    let text = render(&web_plan(), Format::Networkd);
    has_in_order(
        &text,
        &[
            "# /etc/systemd/network/10-lb-eth0.network",
            "[Match]",
            "Name=eth0",
            "[Network]",
            "#IPv4ReversePathFilter=loose",
            "[Route]",
            "Gateway=192.0.2.65",
            "GatewayOnLink=yes",
            "Table=100",
            "[RoutingPolicyRule]",
            "From=192.0.2.70/32",
            "Table=100",
            "Priority=1000",
            "[Route]",
            "Gateway=2001:db8:70::1",
            "GatewayOnLink=yes",
            "Table=102",
            "[RoutingPolicyRule]",
            "From=2001:db8:70::70/128",
            "Table=102",
            "Priority=1002",
            "# /etc/systemd/network/10-lb-eth1.network",
            "Name=eth1",
            "Gateway=192.0.2.129",
            "From=192.0.2.134/32",
            "Priority=1001",
            "From=2001:db8:134::134/128",
            "Priority=1003",
            "# /etc/sysctl.d/90-lb-rp-filter.conf",
            "net.ipv4.conf.all.rp_filter = 2",
            "net.ipv4.conf.eth0.rp_filter = 2",
            "net.ipv4.conf.eth1.rp_filter = 2",
        ],
    );
    // The key newer systemd takes is offered, never set: older versions do not know it.
    assert!(!lines(&text).contains(&"IPv4ReversePathFilter=loose"));
}

#[test]
fn the_netplan_form() {
    let text = render(&web_plan(), Format::Netplan);
    has_in_order(
        &text,
        &[
            "# /etc/netplan/90-lb-policy-routing.yaml",
            "network:",
            "  version: 2",
            "  ethernets:",
            "    eth0:",
            "      routes:",
            "        - to: default",
            "          via: \"192.0.2.65\"",
            "          table: 100",
            "          on-link: true",
            "        - to: default",
            "          via: \"2001:db8:70::1\"",
            "          table: 102",
            "          on-link: true",
            "      routing-policy:",
            "        - from: \"192.0.2.70\"",
            "          table: 100",
            "          priority: 1000",
            "        - from: \"2001:db8:70::70\"",
            "          table: 102",
            "          priority: 1002",
            "    eth1:",
            "      routes:",
            "          via: \"192.0.2.129\"",
            "          table: 101",
            "      routing-policy:",
            "        - from: \"2001:db8:134::134\"",
            "          priority: 1003",
            "# /etc/sysctl.d/90-lb-rp-filter.conf",
            "net.ipv4.conf.all.rp_filter = 2",
        ],
    );
}

#[test]
fn the_cloud_init_form() {
    let text = render(&web_plan(), Format::CloudInit);
    assert_eq!(lines(&text)[0], "#cloud-config", "what makes it one");
    has_in_order(
        &text,
        &[
            "write_files:",
            "  - path: /etc/sysctl.d/90-lb-rp-filter.conf",
            "    content: |",
            "      net.ipv4.conf.all.rp_filter = 2",
            "      net.ipv4.conf.eth1.rp_filter = 2",
            "bootcmd:",
            "  - 'sysctl -w net.ipv4.conf.all.rp_filter=2'",
            "  - 'ip route replace default via 192.0.2.65 dev eth0 onlink table 100'",
            "  - 'ip rule del from 192.0.2.70 lookup 100 priority 1000 2>/dev/null || true'",
            "  - 'ip rule add from 192.0.2.70 lookup 100 priority 1000'",
            "  - 'ip -6 rule add from 2001:db8:134::134 lookup 103 priority 1003'",
        ],
    );
    assert!(text.contains("bootcmd rather than runcmd"), "says why");
}

#[test]
fn every_form_ends_with_the_udp_trap_and_adds_no_address() {
    let plan = web_plan();
    for f in [
        Format::Ip,
        Format::Networkd,
        Format::Netplan,
        Format::CloudInit,
        Format::All,
    ] {
        let text = render(&plan, f);
        assert_eq!(text.matches("The UDP trap").count(), 1, "{f:?}");
        assert!(text.contains("IP_PKTINFO / IPV6_RECVPKTINFO"), "{f:?}");
        assert!(text.contains("TCP is not affected"), "{f:?}");
        assert!(
            text.contains("must already be configured on its interface"),
            "{f:?}"
        );
        assert!(!text.contains("ip addr"), "{f:?}: no addressing");
        assert!(
            !lines(&text).iter().any(|l| l.starts_with("Address=")),
            "{f:?}: no addressing"
        );
        assert!(text.ends_with("and the rules above route it.\n"), "{f:?}");
    }
    let all = render(&plan, Format::All);
    for banner in ["ip", "networkd", "netplan", "cloud-init"] {
        assert!(
            all.contains(&format!("# ======== --format {banner} ========")),
            "{banner}"
        );
    }
    has_in_order(
        &all,
        &[
            "#!/bin/sh",
            "# /etc/systemd/network/10-lb-eth0.network",
            "network:",
            "#cloud-config",
        ],
    );
}

#[test]
fn an_ipv6_only_plan_has_no_rp_filter() {
    let p = plan(
        &config(),
        "six",
        &specs(&["a=ens3,fe80::1", "b=ens4,fe80::1"]),
        Numbering::default(),
    )
    .expect("a plan");
    for f in [
        Format::Ip,
        Format::Networkd,
        Format::Netplan,
        Format::CloudInit,
    ] {
        let text = render(&p, f);
        assert!(!text.contains("rp_filter ="), "{f:?}");
        assert!(!text.contains("sysctl -w"), "{f:?}");
        assert!(!text.contains("[Network]"), "{f:?}");
        assert!(!text.contains("write_files"), "{f:?}");
        assert!(text.contains("IPv6 has no rp_filter") || f == Format::CloudInit);
    }
    has_in_order(
        &render(&p, Format::Ip),
        &["ip -6 route replace default via fe80::1 dev ens3 onlink table 100"],
    );
}

#[test]
fn sysctl_keys_of_dotted_interfaces_use_slashes() {
    assert_eq!(rp_filter_key("eth0"), "net.ipv4.conf.eth0.rp_filter");
    assert_eq!(
        rp_filter_key("eth0.100"),
        "net/ipv4/conf/eth0.100/rp_filter"
    );
}

// ---- parsing `ip -j`

#[test]
fn addresses_parse() {
    let text = r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":3,"ifname":"eth0","addr_info":[
        {"family":"inet","local":"192.0.2.70","prefixlen":26,"scope":"global","label":"eth0"},
        {"family":"inet6","local":"2001:db8:70::70","prefixlen":64,"scope":"global","nodad":true},
        {"family":"inet6","local":"2001:db8:70::beef","prefixlen":64,"scope":"global","temporary":true,"dynamic":true},
        {"family":"inet6","local":"2001:db8:70::dead","prefixlen":64,"scope":"global","dadfailed":true,"tentative":true},
        {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
      {"ifindex":4,"ifname":"eth1","flags":["NO-CARRIER"]}]"#;
    let facts = Facts {
        interfaces: parse_addresses(text).expect("parsed"),
        ..Facts::default()
    };
    assert_eq!(facts.interfaces.len(), 3);
    assert!(facts.interfaces[2].addresses.is_empty());
    let a = &facts.interfaces[1].addresses;
    assert_eq!((a[0].address, a[0].prefix_len), (ip("192.0.2.70"), 26));
    assert!(a[2].temporary && a[3].dad_failed);
    assert_eq!(
        facts.global_addresses(),
        [
            ip("192.0.2.70"),
            ip("2001:db8:70::70"),
            ip("2001:db8:70::dead")
        ],
        "not lo's, not link-local, not temporary"
    );
}

#[test]
fn rules_parse() {
    let text = r#"[{"priority":0,"src":"all","table":"local"},
      {"priority":1000,"src":"192.0.2.70","table":"100"},
      {"priority":1001,"src":"192.0.2.128","srclen":26,"table":"101"},
      {"priority":1002,"src":"all","fwmark":"0x1","table":"main"},
      {"priority":1003,"not":null,"src":"10.0.0.1","table":"5"},
      {"priority":1004,"src":"10.0.0.3","goto":1010},
      {"priority":1005,"src":"10.0.0.4","action":"prohibit"},
      {"priority":1006,"src":"10.0.0.5","table":"7","protocol":"static"},
      {"priority":32766,"src":"all","table":"main"}]"#;
    let r = parse_rules(text, Family::V4).expect("parsed");
    assert_eq!(r.len(), 9);
    assert_eq!(
        r[1],
        Rule {
            family: Family::V4,
            priority: 1000,
            from: Some(ip("192.0.2.70")),
            from_len: 32,
            table: Some("100".into()),
            other: vec![],
        }
    );
    assert_eq!(r[0].from, None);
    assert_eq!(r[2].from_len, 26);
    assert_eq!(r[3].other, ["fwmark"]);
    assert_eq!(r[4].other, ["not"], "`not` is null in the JSON, and counts");
    assert_eq!(
        (r[5].table.as_deref(), &r[5].other[..]),
        (None, &["goto".to_owned()][..])
    );
    assert_eq!(r[6].other, ["action"]);
    assert!(
        r[7].other.is_empty(),
        "protocol is where it came from, not a condition"
    );
}

#[test]
fn routes_and_lookups_parse() {
    let text = r#"[{"dst":"default","gateway":"192.0.2.65","dev":"eth0","table":"100","flags":["onlink"]},
      {"dst":"default","gateway":"192.0.2.65","dev":"eth0","flags":[]},
      {"dst":"192.0.2.64/26","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.70","flags":[]},
      {"type":"blackhole","dst":"default","table":"7","flags":[]},
      {"dst":"default","table":"8","nexthops":[{"gateway":"192.0.2.65","dev":"eth0"},{"gateway":"192.0.2.129","dev":"eth1"}]},
      {"type":"local","dst":"192.0.2.70","dev":"eth0","table":"local","protocol":"kernel","scope":"host"}]"#;
    let r = parse_routes(text, Family::V4).expect("parsed");
    assert_eq!(
        r[0],
        Route {
            family: Family::V4,
            table: "100".into(),
            default: true,
            kind: "unicast".into(),
            devs: vec!["eth0".into()],
            gateway: Some("192.0.2.65".into()),
            metric: None,
        }
    );
    assert_eq!(r[1].table, "main", "main's routes carry no table");
    assert!(!r[2].default);
    assert_eq!(r[3].kind, "blackhole");
    assert!(r[3].devs.is_empty());
    assert_eq!(r[4].devs, ["eth0", "eth1"]);
    assert_eq!(r[5].kind, "local");

    let hop = parse_lookup(
        r#"[{"dst":"198.51.100.1","from":"192.0.2.70","gateway":"192.0.2.65","dev":"eth0","table":"100","flags":[],"uid":0,"cache":[]}]"#,
    )
    .expect("parsed");
    assert_eq!(
        hop,
        Hop {
            dev: Some("eth0".into()),
            table: "100".into(),
            gateway: Some("192.0.2.65".into()),
        }
    );
    let main = parse_lookup(r#"[{"dst":"198.51.100.1","dev":"eth0","flags":[]}]"#).expect("ok");
    assert_eq!((main.table.as_str(), main.gateway), ("main", None));
}

#[test]
fn odd_output_is_an_error_not_a_panic() {
    // What an `ip` without JSON prints, truncated JSON, an object instead of a list.
    for text in ["default via 192.0.2.1 dev eth0", "[{\"dst\":", "{}", ""] {
        assert!(parse_routes(text, Family::V4).is_err(), "{text:?}");
        assert!(parse_rules(text, Family::V4).is_err(), "{text:?}");
        assert!(parse_addresses(text).is_err(), "{text:?}");
        assert!(parse_lookup(text).is_err(), "{text:?}");
    }
    // The wrong shapes inside.
    assert!(parse_lookup("[]").is_err(), "no route in the answer");
    assert!(parse_rules(r#"[{"priority":"high","src":"all"}]"#, Family::V4).is_err());
    assert!(
        parse_rules(r#"[{"src":"all"}]"#, Family::V4).is_err(),
        "no priority"
    );
    assert!(parse_rules(r#"[{"priority":5,"src":"nonsense"}]"#, Family::V4).is_err());
    assert!(parse_routes(r#"[{"dst":"default","dev":7}]"#, Family::V4).is_err());
    assert!(parse_addresses(r#"[{"ifname":"eth0","addr_info":[{"local":"x"}]}]"#).is_err());
    assert!(
        parse_addresses(r#"[{"addr_info":[]}]"#).is_err(),
        "no ifname"
    );
    // Unknown keys are fine: iproute2 adds them over time.
    assert!(parse_lookup(r#"[{"dev":"eth0","new_key":{"a":1}}]"#).is_ok());
}

// ---- judging

fn iface(name: &str, addresses: &[(&str, u8)]) -> Interface {
    Interface {
        name: name.into(),
        addresses: addresses
            .iter()
            .map(|(a, len)| HostAddress {
                address: ip(a),
                prefix_len: *len,
                scope: "global".into(),
                temporary: false,
                dad_failed: false,
            })
            .collect(),
    }
}

fn rule(family: Family, priority: u32, from: Option<&str>, table: &str) -> Rule {
    let from = from.map(ip);
    Rule {
        family,
        priority,
        from,
        from_len: from.map_or(0, super::facts::full_len),
        table: Some(table.into()),
        other: vec![],
    }
}

fn default_route(family: Family, table: &str, dev: &str, gateway: &str) -> Route {
    Route {
        family,
        table: table.into(),
        default: true,
        kind: "unicast".into(),
        devs: vec![dev.into()],
        gateway: Some(gateway.into()),
        metric: match family {
            Family::V4 => None,
            Family::V6 => Some(1024),
        },
    }
}

fn hop(dev: &str, table: &str, gateway: &str) -> Result<Hop, String> {
    Ok(Hop {
        dev: Some(dev.into()),
        table: table.into(),
        gateway: Some(gateway.into()),
    })
}

const A: &str = "192.0.2.70";
const B: &str = "192.0.2.134";
const C: &str = "2001:db8:70::70";

/// A VM set up as `lb guest plan` says, for nn1, nn2 and v1.
fn healthy() -> Facts {
    use Family::{V4, V6};
    Facts {
        interfaces: vec![
            iface("lo", &[("127.0.0.1", 8)]),
            iface("eth0", &[(A, 26), (C, 64)]),
            iface("eth1", &[(B, 26)]),
        ],
        rules: vec![
            rule(V4, 0, None, "local"),
            rule(V4, 1000, Some(A), "100"),
            rule(V4, 1001, Some(B), "101"),
            rule(V4, 32766, None, "main"),
            rule(V4, 32767, None, "default"),
            rule(V6, 0, None, "local"),
            rule(V6, 1002, Some(C), "102"),
            rule(V6, 32766, None, "main"),
        ],
        routes: vec![
            default_route(V4, "main", "eth0", "192.0.2.65"),
            default_route(V4, "100", "eth0", "192.0.2.65"),
            default_route(V4, "101", "eth1", "192.0.2.129"),
            default_route(V6, "main", "eth0", "2001:db8:70::1"),
            default_route(V6, "102", "eth0", "2001:db8:70::1"),
        ],
        lookups: BTreeMap::from([
            (ip(A), hop("eth0", "100", "192.0.2.65")),
            (ip(B), hop("eth1", "101", "192.0.2.129")),
            (ip(C), hop("eth0", "102", "2001:db8:70::1")),
        ]),
        rp_filter: BTreeMap::from([("all".into(), 0), ("eth0".into(), 2), ("eth1".into(), 0)]),
    }
}

fn problems(findings: &[Finding]) -> Vec<&Finding> {
    findings.iter().filter(|f| !f.ok).collect()
}

/// The one problem about `address`.
fn only_problem(facts: &Facts, address: &str) -> Finding {
    let findings = judge(facts, &[ip(address)]);
    let p = problems(&findings);
    assert_eq!(p.len(), 1, "{findings:#?}");
    p[0].clone()
}

#[test]
fn a_healthy_vm_passes() {
    let facts = healthy();
    let addresses = [ip(A), ip(B), ip(C)];
    let findings = judge(&facts, &addresses);
    assert!(problems(&findings).is_empty(), "{findings:#?}");
    let checks = |a: &str| -> Vec<Check> {
        findings
            .iter()
            .filter(|f| f.address == ip(a))
            .map(|f| f.check)
            .collect()
    };
    use Check::*;
    assert_eq!(checks(A), [Interface, Rule, Table, RouteGet, RpFilter]);
    assert_eq!(
        checks(C),
        [Interface, Rule, Table, RouteGet],
        "no rp_filter for IPv6"
    );
    let messages: Vec<&str> = findings.iter().map(|f| f.message.as_str()).collect();
    assert!(messages.contains(&"rule 1000: from 192.0.2.70 lookup 100"));
    assert!(messages.contains(&"table 101: default via 192.0.2.129 dev eth1"));
    assert!(messages.contains(&"reverse-path filtering on eth0: max(all 0, eth0 2) = 2 (loose)"));
    assert!(messages.contains(&"reverse-path filtering on eth1: max(all 0, eth1 0) = 0 (off)"));
    let report = Report::new(&facts, addresses.to_vec(), false);
    assert_eq!(report.problems, 0);
    assert!(report.fixes().is_empty());
    assert_eq!(
        facts.global_addresses(),
        [ip(A), ip(C), ip(B)],
        "lo's are not paths"
    );
}

#[test]
fn an_address_nowhere_or_twice() {
    let p = only_problem(&healthy(), "192.0.2.99");
    assert_eq!(p.check, Check::Interface);
    assert_eq!(p.fix, ["ip addr add 192.0.2.99/PREFIX dev IFACE"]);

    let mut facts = healthy();
    let again = facts.interfaces[1].addresses[0].clone();
    facts.interfaces[2].addresses.push(again);
    let p = only_problem(&facts, A);
    assert!(
        p.message.contains("several interfaces (eth0, eth1)"),
        "{}",
        p.message
    );
    assert_eq!(
        p.fix,
        [
            "ip addr del 192.0.2.70/26 dev eth0",
            "ip addr del 192.0.2.70/26 dev eth1"
        ]
    );
    assert_eq!(judge(&facts, &[ip(A)]).len(), 1, "the rest is skipped");

    let mut facts = healthy();
    facts.interfaces[1].addresses[1].dad_failed = true;
    let p = only_problem(&facts, C);
    assert_eq!(p.check, Check::Interface);
    assert!(p.message.contains("duplicate address detection failed"));
}

#[test]
fn a_missing_rule_is_fixed_with_a_free_table() {
    let mut facts = healthy();
    facts.rules.retain(|r| r.from != Some(ip(B)));
    facts.routes.retain(|r| r.table != "101");
    facts
        .lookups
        .insert(ip(B), hop("eth0", "main", "192.0.2.65"));
    let findings = judge(&facts, &[ip(B)]);
    let p = problems(&findings);
    assert_eq!(p.len(), 2, "{findings:#?}");
    assert_eq!(p[0].check, Check::Rule);
    assert!(
        p[0].message
            .starts_with("no rule `from 192.0.2.134` selects a routing table")
    );
    // The first table from 100 and priority from 1000 that nothing uses: 101 and 1001.
    assert_eq!(
        p[0].fix,
        [
            "ip route replace default via GATEWAY dev eth1 onlink table 101",
            "ip rule add from 192.0.2.134 lookup 101 priority 1001",
        ]
    );
    assert!(
        p[0].message.contains("GATEWAY: the path's next hop"),
        "{}",
        p[0].message
    );
    // The symptom, whose fix is the one above.
    assert_eq!(p[1].check, Check::RouteGet);
    assert!(
        p[1].message
            .contains("leaves by eth0 (table main, via 192.0.2.65), not eth1")
    );
    assert!(p[1].fix.is_empty());
    // No table to look at without a rule.
    assert!(!findings.iter().any(|f| f.check == Check::Table));

    // The next hop is taken from a default route by the interface, when there is one.
    let mut facts = healthy();
    facts.rules.retain(|r| r.from != Some(ip(A)));
    let p = problems(&judge(&facts, &[ip(A)]))[0].clone();
    assert_eq!(
        p.fix[0],
        "ip route replace default via 192.0.2.65 dev eth0 onlink table 103"
    );
}

#[test]
fn rules_that_do_not_take_every_packet() {
    let mut facts = healthy();
    for r in &mut facts.rules {
        if r.from == Some(ip(A)) {
            r.other = vec!["fwmark".into()];
        }
    }
    let p = problems(&judge(&facts, &[ip(A)]))[0].clone();
    assert_eq!(p.check, Check::Rule);
    assert!(
        p.message
            .contains("(priority 1000) carry other conditions or actions (fwmark)")
    );

    // A /24 rule covers the address, but is not the path's own.
    let mut facts = healthy();
    for r in &mut facts.rules {
        if r.from == Some(ip(A)) {
            r.from_len = 24;
        }
    }
    assert_eq!(problems(&judge(&facts, &[ip(A)]))[0].check, Check::Rule);
}

#[test]
fn a_rule_to_the_main_table() {
    let mut facts = healthy();
    for r in &mut facts.rules {
        if r.from == Some(ip(A)) {
            r.table = Some("main".into());
        }
    }
    let p = only_problem(&facts, A);
    assert_eq!(p.check, Check::Rule);
    assert_eq!(
        p.fix[0],
        "ip rule del from 192.0.2.70 lookup main priority 1000"
    );
    assert_eq!(p.fix.len(), 3);
}

#[test]
fn a_rule_after_main() {
    let mut facts = healthy();
    for r in &mut facts.rules {
        if r.from == Some(ip(A)) {
            r.priority = 32800;
        }
    }
    facts
        .lookups
        .insert(ip(A), hop("eth0", "main", "192.0.2.65"));
    let p = only_problem(&facts, A);
    assert_eq!(p.check, Check::Rule);
    assert!(
        p.message
            .contains("comes after the main table's rule (priority 32766)")
    );
    assert_eq!(
        p.fix,
        [
            "ip rule del from 192.0.2.70 lookup 100 priority 32800",
            "ip rule add from 192.0.2.70 lookup 100 priority 1000",
        ]
    );
    // Without a default route in main the lookup goes on to it: fine.
    facts
        .routes
        .retain(|r| !(r.table == "main" && r.family == Family::V4));
    assert!(problems(&judge(&facts, &[ip(A)])).is_empty());
}

#[test]
fn the_rules_table_lacks_the_right_default_route() {
    // None at all.
    let mut facts = healthy();
    facts.routes.retain(|r| r.table != "101");
    facts
        .lookups
        .insert(ip(B), hop("eth0", "main", "192.0.2.65"));
    let p = problems(&judge(&facts, &[ip(B)]))[0].clone();
    assert_eq!(p.check, Check::Table);
    assert!(p.message.starts_with("table 101 has no default route"));
    assert_eq!(
        p.fix,
        ["ip route replace default via GATEWAY dev eth1 onlink table 101"]
    );

    // By the other interface.
    let mut facts = healthy();
    for r in &mut facts.routes {
        if r.table == "101" {
            *r = default_route(Family::V4, "101", "eth0", "192.0.2.65");
        }
    }
    facts
        .lookups
        .insert(ip(B), hop("eth0", "101", "192.0.2.65"));
    let p = problems(&judge(&facts, &[ip(B)]))[0].clone();
    assert!(
        p.message.contains("leaves by eth0, not eth1"),
        "{}",
        p.message
    );
    assert_eq!(
        p.fix,
        [
            "ip route del default table 101",
            "ip route replace default via GATEWAY dev eth1 onlink table 101"
        ],
        "no route by eth1 tells its next hop"
    );

    // A blackhole.
    let mut facts = healthy();
    for r in &mut facts.routes {
        if r.table == "100" {
            r.kind = "blackhole".into();
            r.devs.clear();
            r.gateway = None;
        }
    }
    facts
        .lookups
        .insert(ip(A), Err("RTNETLINK answers: Invalid argument".into()));
    let p = problems(&judge(&facts, &[ip(A)]))[0].clone();
    assert_eq!(p.check, Check::Table);
    assert!(p.message.contains("is of type blackhole"));
    assert_eq!(
        p.fix,
        [
            "ip route del blackhole default table 100",
            "ip route replace default via 192.0.2.65 dev eth0 onlink table 100"
        ]
    );

    // IPv6: a blackhole in front (a lower metric) of the right route.
    let mut facts = healthy();
    facts.routes.push(Route {
        family: Family::V6,
        table: "102".into(),
        default: true,
        kind: "blackhole".into(),
        devs: vec!["lo".into()],
        gateway: None,
        metric: Some(10),
    });
    facts
        .lookups
        .insert(ip(C), Err("RTNETLINK answers: Invalid argument".into()));
    let p = problems(&judge(&facts, &[ip(C)]))[0].clone();
    assert_eq!(
        p.fix,
        [
            "ip -6 route del blackhole default table 102 metric 10",
            "ip -6 route replace default via 2001:db8:70::1 dev eth0 onlink table 102"
        ]
    );
}

#[test]
fn what_route_get_says() {
    // Everything configured, yet the reply goes elsewhere (an earlier rule, say).
    let mut facts = healthy();
    facts.lookups.insert(ip(B), hop("eth0", "50", "192.0.2.65"));
    let p = only_problem(&facts, B);
    assert_eq!(p.check, Check::RouteGet);
    assert!(
        p.message.starts_with(
            "`ip route get 198.51.100.1 from 192.0.2.134` leaves by eth0 (table 50, via 192.0.2.65), not eth1"
        ),
        "{}",
        p.message
    );
    assert_eq!(p.fix, ["ip rule show", "ip route show table all"]);

    let mut facts = healthy();
    facts.lookups.insert(
        ip(C),
        Err("RTNETLINK answers: Network is unreachable".into()),
    );
    let p = only_problem(&facts, C);
    assert!(p.message.contains("`ip -6 route get 2001:db8:ffff::1 from 2001:db8:70::70` finds no route (RTNETLINK answers: Network is unreachable)"), "{}", p.message);
    assert_eq!(p.fix, ["ip -6 rule show", "ip -6 route show table all"]);
}

#[test]
fn strict_reverse_path_filtering() {
    let with = |all: u8, own: u8| {
        let mut facts = healthy();
        facts.rp_filter.insert("all".into(), all);
        facts.rp_filter.insert("eth1".into(), own);
        judge(&facts, &[ip(B)])
    };
    let p = problems(&with(1, 0))[0].clone();
    assert_eq!(p.check, Check::RpFilter);
    assert!(
        p.message
            .starts_with("reverse-path filtering on eth1: max(all 1, eth1 0) = 1, strict")
    );
    assert_eq!(p.fix, ["sysctl -w net.ipv4.conf.all.rp_filter=2"]);
    let p = problems(&with(0, 1))[0].clone();
    assert_eq!(p.fix, ["sysctl -w net.ipv4.conf.eth1.rp_filter=2"]);
    let p = problems(&with(1, 1))[0].clone();
    assert_eq!(
        p.fix,
        [
            "sysctl -w net.ipv4.conf.all.rp_filter=2",
            "sysctl -w net.ipv4.conf.eth1.rp_filter=2"
        ]
    );
    // max(1, 2) is loose; max(2, 1) too.
    assert!(problems(&with(1, 2)).is_empty());
    assert!(problems(&with(2, 1)).is_empty());
    assert!(problems(&with(0, 0)).is_empty());

    let mut facts = healthy();
    facts.rp_filter.remove("eth1");
    let p = only_problem(&facts, B);
    assert_eq!(p.check, Check::RpFilter);
    assert!(p.message.contains("unknown"));
}

#[test]
fn the_report_counts_and_gathers_fixes_once() {
    let mut facts = healthy();
    facts.rp_filter.insert("all".into(), 1);
    facts.rp_filter.insert("eth0".into(), 0);
    let report = Report::new(&facts, vec![ip(A), ip(B), ip(C)], true);
    assert_eq!(report.problems, 2, "{report:#?}");
    assert_eq!(report.fixes(), ["sysctl -w net.ipv4.conf.all.rp_filter=2"]);
    let json = serde_json::to_value(&report).expect("JSON");
    assert_eq!(json["problems"], 2);
    assert_eq!(json["every_global_address"], true);
    assert_eq!(json["findings"][3]["check"], "route-get");
    assert_eq!(json["findings"][4]["check"], "rp-filter");
    assert_eq!(json["findings"][4]["ok"], false);
    assert_eq!(json["findings"][0]["address"], "192.0.2.70");
}
