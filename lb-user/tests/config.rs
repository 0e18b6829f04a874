//! The configuration file: the documented example parses into the expected model (defaults,
//! per-path probe overrides), and every rejected case names its field and the reason.
//! Host-only: no privileges, no interfaces (those are checked through a fake).

use std::{net::Ipv4Addr, time::Duration};

use lb_user::config::{
    AllDown, Announce, CaCertificates, Config, ConfigError, HookSetting, Interfaces, Mode, Passive,
    Path, Probe, ProbeKind, Protocol, Service, Target, TlsTrust, Vip, interface_exists,
};
use serde_json::{Value, json};

/// The example of the documentation, without its comments.
const EXAMPLE: &str = r#"{
  "interfaces": { "clients": ["eth0"], "paths": ["eth1", "eth2"] },
  "flow_table_size": 1048576,
  "targets": [
    {
      "name": "web-vm",
      "mode": "failover",
      "preempt": true,
      "all_down": "drop",
      "paths": [
        { "name": "nn1", "address": "192.0.2.70",  "priority": 10, "weight": 1 },
        { "name": "nn2", "address": "192.0.2.100", "priority": 20, "weight": 1,
          "source": "198.51.100.1", "interface": "eth2",
          "probe": { "type": "icmp", "interval_ms": 50 } }
      ],
      "probe": { "type": "tcp", "port": 22, "interval_ms": 100, "timeout_ms": 80, "rise": 2, "fall": 3 }
    }
  ],
  "vips": [
    { "address": "203.0.113.10", "target": "web-vm" },
    { "address": "203.0.113.11", "protocol": "tcp", "port": 443, "target": "web-vm", "target_port": 8443 }
  ]
}"#;

fn example() -> Value {
    serde_json::from_str(EXAMPLE).expect("the example is JSON")
}

/// The example with `edit` applied, as text.
fn edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = example();
    edit(&mut v);
    v.to_string()
}

fn push(list: &mut Value, item: Value) {
    list.as_array_mut().expect("an array").push(item);
}

/// A small valid configuration: one target `t` with paths p0.., and `vips`.
fn config_with(paths: usize, vips: Value) -> Value {
    let paths: Vec<Value> = (0..paths)
        .map(|j| json!({ "name": format!("p{j}"), "address": format!("192.0.2.{}", j + 1) }))
        .collect();
    json!({
        "interfaces": { "clients": ["eth0"], "paths": ["eth1"] },
        "targets": [{ "name": "t", "paths": paths }],
        "vips": vips,
    })
}

#[track_caller]
fn invalid(text: &str) -> (String, String) {
    match Config::from_json(text) {
        Err(ConfigError::Invalid { field, reason }) => (field, reason),
        other => panic!("expected an invalid-configuration error, got {other:?}"),
    }
}

/// `text` is rejected at `field`, with a reason containing `phrase`.
#[track_caller]
fn rejects(text: &str, field: &str, phrase: &str) {
    let (f, reason) = invalid(text);
    assert_eq!(f, field, "location (reason: {reason})");
    assert!(
        reason.contains(phrase),
        "{f}: {reason:?} does not say {phrase:?}"
    );
}

#[track_caller]
fn rejects_edit(edit: impl FnOnce(&mut Value), field: &str, phrase: &str) {
    rejects(&edited(edit), field, phrase);
}

#[track_caller]
fn accepts(text: &str) -> Config {
    Config::from_json(text).unwrap_or_else(|e| panic!("rejected: {e}"))
}

// ---- What parses. ----

#[test]
fn example_parses_into_the_model() {
    let config = accepts(EXAMPLE);
    let target_probe = Probe {
        kind: ProbeKind::Tcp { port: 22 },
        interval: Duration::from_millis(100),
        timeout: Some(Duration::from_millis(80)),
        rise: 2,
        fall: 3,
        passive: Passive::Auto,
    };
    let want = Config {
        interfaces: Interfaces {
            clients: vec!["eth0".into()],
            paths: vec!["eth1".into(), "eth2".into()],
            hooks: Default::default(),
        },
        targets: vec![Target {
            name: "web-vm".into(),
            mode: Mode::Failover,
            preempt: true,
            all_down: AllDown::Drop,
            expose_paths: false,
            notify: None,
            paths: vec![
                Path {
                    name: "nn1".into(),
                    address: Ipv4Addr::new(192, 0, 2, 70).into(),
                    priority: 10,
                    weight: 1,
                    probe: target_probe.clone(),
                    source: None,
                    interface: None,
                },
                Path {
                    name: "nn2".into(),
                    address: Ipv4Addr::new(192, 0, 2, 100).into(),
                    priority: 20,
                    weight: 1,
                    // The type changes: the tcp port is not inherited. The interval is
                    // overridden; the inherited timeout (80) is capped by it; rise and fall
                    // are the target's.
                    probe: Probe {
                        kind: ProbeKind::Icmp,
                        interval: Duration::from_millis(50),
                        timeout: Some(Duration::from_millis(50)),
                        rise: 2,
                        fall: 3,
                        passive: Passive::Auto,
                    },
                    source: Some(Ipv4Addr::new(198, 51, 100, 1).into()),
                    interface: Some("eth2".into()),
                },
            ],
        }],
        vips: vec![
            Vip {
                address: Ipv4Addr::new(203, 0, 113, 10).into(),
                service: None,
                target: "web-vm".into(),
                announce: true,
            },
            Vip {
                address: Ipv4Addr::new(203, 0, 113, 11).into(),
                service: Some(Service {
                    protocol: Protocol::Tcp,
                    port: 443,
                    target_port: Some(8443),
                }),
                target: "web-vm".into(),
                announce: true,
            },
        ],
        flow_table_size: Some(1 << 20),
        datapath_suspect: Duration::from_secs(3),
        icmp_too_big_per_sec: 1000,
        icmp_too_big_burst: 50,
        flows: lb_user::config::Flows::default(),
        announce: None,
        settle_max: Duration::from_secs(10),
    };
    assert_eq!(config, want);
    assert_eq!(config.target("web-vm"), Some(&want.targets[0]));
    assert_eq!(config.target("web"), None);
    assert_eq!(config.vips[0].target_port(), None);
    assert_eq!(config.vips[1].target_port(), Some(8443));
}

#[test]
fn defaults() {
    let config = accepts(
        &json!({
            "interfaces": { "clients": ["eth0"], "paths": ["eth1"] },
            "targets": [{ "name": "t", "paths": [
                { "name": "a", "address": "192.0.2.1" },
                { "name": "b", "address": "192.0.2.2" },
            ]}],
            "vips": [{ "address": "203.0.113.1", "protocol": "udp", "port": 53,
                       "target": "t", "target_port": 53 }],
        })
        .to_string(),
    );
    assert_eq!(config.flow_table_size, None);
    assert_eq!(config.datapath_suspect, Duration::from_secs(3));
    // As the kernel's icmp_msgs_per_sec and icmp_msgs_burst.
    assert_eq!(
        (config.icmp_too_big_per_sec, config.icmp_too_big_burst),
        (1000, 50)
    );
    let t = &config.targets[0];
    assert_eq!(
        (t.mode, t.preempt, t.all_down, t.expose_paths),
        (Mode::Failover, true, AllDown::Drop, false)
    );
    let default_probe = Probe {
        kind: ProbeKind::Icmp,
        interval: Duration::from_millis(1000),
        // Not given: adapted to the round trip.
        timeout: None,
        rise: 2,
        fall: 3,
        passive: Passive::Auto,
    };
    for (j, p) in t.paths.iter().enumerate() {
        // The listed order is the preference.
        assert_eq!(p.priority, j as u32);
        assert_eq!(p.weight, 1);
        assert_eq!(p.probe, default_probe);
        assert_eq!((p.source, p.interface.as_deref()), (None, None));
    }
    // A target port equal to the port is no translation.
    let s = config.vips[0].service.expect("a service");
    assert_eq!(s.target_port, None);
    assert_eq!(config.vips[0].target_port(), None);
}

#[test]
fn an_idle_edge_has_no_targets_and_no_vips() {
    let config = accepts(r#"{ "interfaces": { "clients": ["eth0"] } }"#);
    assert!(config.targets.is_empty() && config.vips.is_empty());
    assert!(config.interfaces.paths.is_empty());
}

#[test]
fn other_modes_and_options() {
    let text = edited(|v| {
        let t = &mut v["targets"][0];
        t["mode"] = json!("active-active");
        t["preempt"] = json!(false);
        t["all_down"] = json!("last-known");
    });
    let t = &accepts(&text).targets[0];
    assert_eq!(
        (t.mode, t.preempt, t.all_down),
        (Mode::ActiveActive, false, AllDown::LastKnown)
    );
}

#[test]
fn http_probe_defaults_and_merge() {
    let text = edited(|v| {
        v["targets"][0]["probe"] = json!({ "type": "http", "port": 8080, "path": "/health" });
        v["targets"][0]["paths"][0]["probe"] = json!({ "expect_status": 204, "rise": 5 });
        v["targets"][0]["paths"][1]["probe"] = json!({ "type": "http" });
    });
    let config = accepts(&text);
    let paths = &config.targets[0].paths;
    // Same type: the target's port and path are inherited.
    assert_eq!(
        paths[0].probe.kind,
        ProbeKind::Http {
            port: 8080,
            path: "/health".into(),
            expect_status: 204
        }
    );
    assert_eq!(paths[0].probe.rise, 5);
    assert_eq!(paths[0].probe.fall, 3);
    // Naming the same type again still inherits.
    assert_eq!(
        paths[1].probe.kind,
        ProbeKind::Http {
            port: 8080,
            path: "/health".into(),
            expect_status: 200
        }
    );
    // Defaults for an http probe with nothing else said.
    let text = edited(|v| v["targets"][0]["probe"] = json!({ "type": "http" }));
    assert_eq!(
        accepts(&text).targets[0].paths[0].probe.kind,
        ProbeKind::Http {
            port: 80,
            path: "/".into(),
            expect_status: 200
        }
    );
}

#[test]
fn override_of_a_tcp_port_and_timeout() {
    let text = edited(|v| {
        v["targets"][0]["paths"][0]["probe"] = json!({ "port": 2222, "timeout_ms": 100 });
    });
    let probe = &accepts(&text).targets[0].paths[0].probe;
    assert_eq!(probe.kind, ProbeKind::Tcp { port: 2222 });
    assert_eq!(probe.timeout, Some(Duration::from_millis(100)));
    assert_eq!(probe.interval, Duration::from_millis(100));
}

#[test]
fn weight_0_is_allowed_in_failover() {
    let text = edited(|v| v["targets"][0]["paths"][1]["weight"] = json!(0));
    assert_eq!(accepts(&text).targets[0].paths[1].weight, 0);
}

#[test]
fn the_same_port_over_tcp_and_udp_is_not_ambiguous() {
    let vips = json!([
        { "address": "203.0.113.1", "protocol": "tcp", "port": 53, "target": "t" },
        { "address": "203.0.113.1", "protocol": "udp", "port": 53, "target": "t" },
        { "address": "203.0.113.2", "protocol": "tcp", "port": 54, "target": "t", "target_port": 55 },
    ]);
    assert_eq!(accepts(&config_with(1, vips).to_string()).vips.len(), 3);
}

#[test]
fn the_example_file_parses() {
    // README.md points new users at this file: it must exist and be valid.
    let file = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/lb.json"));
    Config::load(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
}

// ---- Loading. ----

#[test]
fn load_reads_the_file() {
    let file = std::env::temp_dir().join(format!("lb-config-test-{}.json", std::process::id()));
    std::fs::write(&file, EXAMPLE).expect("writing the temporary file");
    let loaded = Config::load(&file);
    std::fs::remove_file(&file).expect("removing the temporary file");
    assert_eq!(loaded.expect("valid"), accepts(EXAMPLE));
}

#[test]
fn load_names_a_missing_file() {
    let file = std::path::Path::new("/nonexistent/lb.json");
    let e = Config::load(file).expect_err("no such file");
    assert!(
        matches!(&e, ConfigError::Io { path, source }
            if path == file && source.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "reading /nonexistent/lb.json");
}

// ---- Rejected: not JSON, or JSON of the wrong shape. ----

#[test]
fn syntax_error_has_line_and_column() {
    let text = "{\n  \"interfaces\": { \"clients\": [\"eth0\"], },\n}";
    let e = Config::from_json(text).expect_err("not JSON");
    assert!(
        matches!(&e, ConfigError::Syntax { line: 2, column: 40, message } if message == "trailing comma"),
        "{e:?}"
    );
    assert_eq!(e.to_string(), "line 2, column 40: trailing comma");
}

#[test]
fn truncated_json_is_a_syntax_error() {
    let e = Config::from_json(&EXAMPLE[..EXAMPLE.len() / 2]).expect_err("truncated");
    assert!(
        matches!(&e, ConfigError::Syntax { message, .. } if message.contains("EOF")),
        "{e:?}"
    );
}

#[test]
fn unknown_field_is_located() {
    rejects_edit(
        |v| v["targets"][0]["paths"][1]["prio"] = json!(1),
        "targets[0].paths[1]",
        "unknown field `prio`",
    );
    rejects_edit(
        |v| v["targets"][0]["probe"]["retries"] = json!(1),
        "targets[0].probe",
        "unknown field `retries`",
    );
    rejects_edit(
        |v| v["vips"][1]["weight"] = json!(1),
        "vips[1]",
        "unknown field `weight`",
    );
    rejects_edit(
        |v| v["interface"] = json!({}),
        "top level",
        "unknown field `interface`",
    );
}

#[test]
fn shape_errors_quote_the_line_when_it_is_the_same_error() {
    let text = EXAMPLE.replace(r#""priority": 20"#, r#""priority": "20""#);
    let (field, reason) = invalid(&text);
    assert_eq!(field, "targets[0].paths[1]");
    assert_eq!(
        reason,
        r#"invalid type: string "20", expected u32 (line 12, column 67)"#
    );
}

#[test]
fn wrong_type() {
    rejects_edit(
        |v| v["targets"][0]["preempt"] = json!("yes"),
        "targets[0]",
        "invalid type: string \"yes\", expected a boolean",
    );
    rejects_edit(
        |v| v["flow_table_size"] = json!(-1),
        "top level",
        "invalid value: integer `-1`",
    );
    rejects_edit(
        |v| v["vips"][1]["port"] = json!(70000),
        "vips[1]",
        "invalid value: integer `70000`, expected u16",
    );
    rejects_edit(
        |v| v["targets"] = json!({}),
        "top level",
        "invalid type: map, expected a sequence",
    );
    rejects("[]", "top level", "expected a configuration object");
    rejects_edit(
        |v| v["targets"][0]["mode"] = json!("round-robin"),
        "targets[0]",
        "unknown variant `round-robin`, expected `failover` or `active-active`",
    );
    rejects_edit(
        |v| v["targets"][0]["probe"]["type"] = json!("ping"),
        "targets[0].probe",
        "unknown variant `ping`",
    );
    rejects_edit(
        |v| v["vips"][1]["protocol"] = json!("sctp"),
        "vips[1]",
        "unknown variant `sctp`",
    );
}

#[test]
fn missing_field() {
    rejects_edit(
        |v| {
            v["targets"][0]["paths"][0]
                .as_object_mut()
                .expect("an object")
                .remove("address");
        },
        "targets[0].paths[0]",
        "missing field `address`",
    );
    rejects(
        r#"{ "targets": [] }"#,
        "top level",
        "missing field `interfaces`",
    );
}

// ---- Rejected: names and references. ----

#[test]
fn unknown_target_in_a_vip() {
    rejects_edit(
        |v| v["vips"][1]["target"] = json!("web"),
        "vips[1].target",
        r#"unknown target "web""#,
    );
}

#[test]
fn duplicate_target_names() {
    rejects_edit(
        |v| {
            push(
                &mut v["targets"],
                json!({ "name": "web-vm", "paths": [{ "name": "a", "address": "192.0.2.1" }] }),
            )
        },
        "targets[1].name",
        r#""web-vm" is already the name of targets[0]"#,
    );
}

#[test]
fn duplicate_path_names() {
    rejects_edit(
        |v| v["targets"][0]["paths"][1]["name"] = json!("nn1"),
        "targets[0].paths[1].name",
        r#""nn1" is already the name of targets[0].paths[0]"#,
    );
}

#[test]
fn empty_names() {
    rejects_edit(
        |v| v["targets"][0]["name"] = json!(""),
        "targets[0].name",
        "a target needs a name",
    );
    rejects_edit(
        |v| v["targets"][0]["paths"][0]["name"] = json!(""),
        "targets[0].paths[0].name",
        "a path needs a name",
    );
}

/// Names are kept in the pinned maps, `lb_common::maps::NAME_LEN` (32) bytes each: 32 bytes
/// pass, 33 are rejected with the limit named, and so is a NUL byte.
#[test]
fn names_fit_the_pinned_maps() {
    assert_eq!(lb_common::maps::NAME_LEN, 32);
    let longest = "a".repeat(32);
    let config = accepts(&edited(|v| {
        v["targets"][0]["name"] = json!(longest);
        v["targets"][0]["paths"][0]["name"] = json!(longest);
        v["vips"][0]["target"] = json!(longest);
        v["vips"][1]["target"] = json!(longest);
    }));
    assert_eq!(config.targets[0].name, longest);
    assert_eq!(config.targets[0].paths[0].name, longest);

    let too_long = "a".repeat(33);
    rejects_edit(
        |v| v["targets"][0]["name"] = json!(too_long),
        "targets[0].name",
        &format!("{too_long:?} is longer than 32 bytes (names are kept in the pinned maps)"),
    );
    rejects_edit(
        |v| v["targets"][0]["paths"][1]["name"] = json!(too_long),
        "targets[0].paths[1].name",
        &format!("{too_long:?} is longer than 32 bytes"),
    );
    // Bytes, not characters: 11 three-byte characters are 33 bytes.
    rejects_edit(
        |v| v["targets"][0]["name"] = json!("€".repeat(11)),
        "targets[0].name",
        "is longer than 32 bytes",
    );
    rejects_edit(
        |v| v["targets"][0]["paths"][0]["name"] = json!("nn\u{0}1"),
        "targets[0].paths[0].name",
        "contains a NUL byte",
    );
}

#[test]
fn datapath_suspect_time() {
    let config = accepts(&edited(|v| v["datapath_suspect_ms"] = json!(1500)));
    assert_eq!(config.datapath_suspect, Duration::from_millis(1500));
    for bad in [0, 99, 3_600_001] {
        rejects_edit(
            |v| v["datapath_suspect_ms"] = json!(bad),
            "datapath_suspect_ms",
            &format!("{bad} is not between 100 and 3600000"),
        );
    }
}

#[test]
fn icmp_too_big_rate() {
    let config = accepts(&edited(|v| {
        v["icmp_too_big_per_sec"] = json!(10);
        v["icmp_too_big_burst"] = json!(2);
    }));
    assert_eq!(
        (config.icmp_too_big_per_sec, config.icmp_too_big_burst),
        (10, 2)
    );
    for field in ["icmp_too_big_per_sec", "icmp_too_big_burst"] {
        for bad in [0u64, 1_000_001, 1 << 40] {
            rejects_edit(
                |v| v[field] = json!(bad),
                field,
                &format!("{bad} is not between 1 and 1000000"),
            );
        }
    }
}

#[test]
fn expose_paths() {
    let config = accepts(&edited(|v| v["targets"][0]["expose_paths"] = json!(true)));
    assert!(config.targets[0].expose_paths);
    rejects_edit(
        |v| v["targets"][0]["expose_paths"] = json!("yes"),
        "targets[0]",
        "expected a boolean",
    );
}

#[test]
fn interface_hooks() {
    let config = accepts(&edited(|v| {
        v["interfaces"]["hooks"] = json!({ "eth0": "tc", "eth2": "xdp", "eth1": "auto" });
    }));
    assert_eq!(
        config.interfaces.hooks.into_iter().collect::<Vec<_>>(),
        [
            ("eth0".to_owned(), HookSetting::Tc),
            ("eth1".to_owned(), HookSetting::Auto),
            ("eth2".to_owned(), HookSetting::Xdp),
        ]
    );
    rejects_edit(
        |v| v["interfaces"]["hooks"] = json!({ "eth9": "tc" }),
        "interfaces.hooks.eth9",
        r#""eth9" is in neither interfaces.clients nor interfaces.paths"#,
    );
    let (field, reason) = invalid(&edited(|v| {
        v["interfaces"]["hooks"] = json!({ "eth0": "generic" });
    }));
    assert_eq!(field, "interfaces.hooks.eth0", "{reason}");
    assert!(reason.contains("generic"), "{reason}");
}

#[test]
fn path_address_twice_in_a_target() {
    rejects_edit(
        |v| v["targets"][0]["paths"][1]["address"] = json!("192.0.2.70"),
        "targets[0].paths[1].address",
        "192.0.2.70 is already the address of targets[0].paths[0]",
    );
}

#[test]
fn path_address_twice_across_targets() {
    rejects_edit(
        |v| {
            push(
                &mut v["targets"],
                json!({ "name": "db", "paths": [{ "name": "a", "address": "192.0.2.100" }] }),
            )
        },
        "targets[1].paths[0].address",
        "192.0.2.100 is already the address of targets[0].paths[1]",
    );
}

#[test]
fn path_address_used_as_a_vip() {
    rejects_edit(
        |v| v["vips"][0]["address"] = json!("192.0.2.100"),
        "vips[0].address",
        "192.0.2.100 is also the address of targets[0].paths[1]",
    );
}

// ---- Rejected: VIPs. ----

#[test]
fn duplicate_whole_address_vip() {
    rejects_edit(
        |v| {
            push(
                &mut v["targets"],
                json!({ "name": "db", "paths": [{ "name": "a", "address": "192.0.2.1" }] }),
            );
            push(
                &mut v["vips"],
                json!({ "address": "203.0.113.10", "target": "db" }),
            );
        },
        "vips[2]",
        "duplicate of vips[0] (203.0.113.10)",
    );
}

#[test]
fn duplicate_service_vip() {
    rejects_edit(
        |v| {
            push(
                &mut v["vips"],
                json!({ "address": "203.0.113.11", "protocol": "tcp", "port": 443,
                        "target": "web-vm", "target_port": 9443 }),
            )
        },
        "vips[2]",
        "duplicate of vips[1] (203.0.113.11 tcp/443)",
    );
}

#[test]
fn port_translation_needs_a_service() {
    rejects_edit(
        |v| v["vips"][0]["target_port"] = json!(8080),
        "vips[0].target_port",
        "port translation needs a service (protocol and port); a whole-address VIP keeps every port",
    );
}

#[test]
fn protocol_and_port_go_together() {
    rejects_edit(
        |v| {
            v["vips"][1]
                .as_object_mut()
                .expect("an object")
                .remove("port");
        },
        "vips[1].port",
        "a service needs a port with its protocol",
    );
    rejects_edit(
        |v| {
            v["vips"][1]
                .as_object_mut()
                .expect("an object")
                .remove("protocol");
        },
        "vips[1].protocol",
        "a service needs a protocol with its port",
    );
}

#[test]
fn port_0() {
    rejects_edit(
        |v| v["vips"][1]["port"] = json!(0),
        "vips[1].port",
        "0 is not a port",
    );
    rejects_edit(
        |v| v["vips"][1]["target_port"] = json!(0),
        "vips[1].target_port",
        "0 is not a port",
    );
    rejects_edit(
        |v| v["targets"][0]["probe"]["port"] = json!(0),
        "targets[0].probe.port",
        "0 is not a port",
    );
}

#[test]
fn two_whole_address_vips_for_one_target_are_ambiguous() {
    rejects_edit(
        |v| {
            push(
                &mut v["vips"],
                json!({ "address": "203.0.113.12", "target": "web-vm" }),
            )
        },
        "vips[2]",
        r#"target "web-vm" already has the whole-address VIP vips[0] (203.0.113.10): replies from its paths could not tell which VIP they belong to"#,
    );
}

#[test]
fn two_services_answering_from_one_port_are_ambiguous() {
    // 203.0.113.11 tcp/443 goes to 8443 on the VM; so would this one, untranslated.
    rejects_edit(
        |v| {
            push(
                &mut v["vips"],
                json!({ "address": "203.0.113.12", "protocol": "tcp", "port": 8443,
                        "target": "web-vm" }),
            )
        },
        "vips[2]",
        r#"target "web-vm" already answers vips[1] (203.0.113.11 tcp/443) from tcp port 8443"#,
    );
    // Another port on the same address, translated to the same port on the VM.
    rejects_edit(
        |v| {
            push(
                &mut v["vips"],
                json!({ "address": "203.0.113.11", "protocol": "tcp", "port": 444,
                        "target": "web-vm", "target_port": 8443 }),
            )
        },
        "vips[2]",
        "replies could not tell which VIP they belong to",
    );
}

// ---- Rejected: addresses. ----

#[test]
fn bad_addresses() {
    let cases = [
        (
            "192.0.2.300",
            r#""192.0.2.300" is not an IP address (IPv4 or IPv6)"#,
        ),
        ("2001:db8::1::2", r#""2001:db8::1::2" is not an IP address"#),
        ("[2001:db8::1]", r#""[2001:db8::1]" is not an IP address"#),
        ("fe80::1%eth0", r#""fe80::1%eth0" is not an IP address"#),
        ("web", r#""web" is not an IP address (IPv4 or IPv6)"#),
        ("0.0.0.0", "0.0.0.0 is the unspecified address"),
        (
            "255.255.255.255",
            "255.255.255.255 is the broadcast address",
        ),
        ("224.0.0.1", "224.0.0.1 is a multicast address"),
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        // The same rules for IPv6, and two of its own.
        ("::", ":: is the unspecified address"),
        ("ff02::1", "ff02::1 is a multicast address"),
        ("ff0e::10", "ff0e::10 is a multicast address"),
        ("::1", "::1 is the loopback address"),
        (
            "fe80::1",
            "fe80::1 is a link-local address: it names a host only together with an interface",
        ),
        (
            "::ffff:192.0.2.70",
            "::ffff:192.0.2.70 is an IPv4-mapped IPv6 address: write it as 192.0.2.70",
        ),
    ];
    for (address, phrase) in cases {
        rejects_edit(
            |v| v["targets"][0]["paths"][1]["address"] = json!(address),
            "targets[0].paths[1].address",
            phrase,
        );
        rejects_edit(
            |v| v["vips"][1]["address"] = json!(address),
            "vips[1].address",
            phrase,
        );
        rejects_edit(
            |v| v["targets"][0]["paths"][1]["source"] = json!(address),
            "targets[0].paths[1].source",
            phrase,
        );
    }
}

// ---- Rejected: paths. ----

#[test]
fn a_target_needs_a_path() {
    rejects_edit(
        |v| v["targets"][0]["paths"] = json!([]),
        "targets[0].paths",
        "a target needs at least one path",
    );
    rejects_edit(
        |v| {
            v["targets"][0]
                .as_object_mut()
                .expect("an object")
                .remove("paths");
        },
        "targets[0].paths",
        "a target needs at least one path",
    );
}

#[test]
fn weight_0_in_active_active() {
    rejects_edit(
        |v| {
            v["targets"][0]["mode"] = json!("active-active");
            v["targets"][0]["paths"][1]["weight"] = json!(0);
        },
        "targets[0].paths[1].weight",
        "0 in an active-active target",
    );
}

#[test]
fn weight_above_1000() {
    rejects_edit(
        |v| v["targets"][0]["paths"][0]["weight"] = json!(1001),
        "targets[0].paths[0].weight",
        "1001 is more than the maximum of 1000",
    );
}

// ---- Rejected: probes. ----

#[test]
fn interval_shorter_than_timeout() {
    rejects_edit(
        |v| v["targets"][0]["probe"]["interval_ms"] = json!(50),
        "targets[0].probe.interval_ms",
        "50 is shorter than timeout_ms 80 (a probe must end before the next starts)",
    );
    // A path's timeout against the interval it inherits.
    rejects_edit(
        |v| v["targets"][0]["paths"][0]["probe"] = json!({ "timeout_ms": 200 }),
        "targets[0].paths[0].probe.timeout_ms",
        "200 is longer than interval_ms 100",
    );
    // A path's interval against its own timeout.
    rejects_edit(
        |v| v["targets"][0]["paths"][0]["probe"] = json!({ "interval_ms": 40, "timeout_ms": 60 }),
        "targets[0].paths[0].probe.interval_ms",
        "40 is shorter than timeout_ms 60",
    );
}

#[test]
fn interval_below_10_ms() {
    rejects_edit(
        |v| v["targets"][0]["probe"]["interval_ms"] = json!(9),
        "targets[0].probe.interval_ms",
        "9 is less than the minimum of 10",
    );
    rejects_edit(
        |v| v["targets"][0]["paths"][1]["probe"]["interval_ms"] = json!(5),
        "targets[0].paths[1].probe.interval_ms",
        "5 is less than the minimum of 10",
    );
}

#[test]
fn timeout_0() {
    rejects_edit(
        |v| v["targets"][0]["probe"]["timeout_ms"] = json!(0),
        "targets[0].probe.timeout_ms",
        "0: a probe needs time to be answered",
    );
}

#[test]
fn rise_and_fall_out_of_range() {
    for field in ["rise", "fall"] {
        let at = format!("targets[0].probe.{field}");
        rejects_edit(
            |v| v["targets"][0]["probe"][field] = json!(0),
            &at,
            "0 is less than the minimum of 1",
        );
        rejects_edit(
            |v| v["targets"][0]["probe"][field] = json!(101),
            &at,
            "101 is more than the maximum of 100",
        );
        rejects_edit(
            |v| v["targets"][0]["paths"][0]["probe"][field] = json!(0),
            &format!("targets[0].paths[0].probe.{field}"),
            "0 is less than the minimum of 1",
        );
    }
}

#[test]
fn http_path_must_start_with_a_slash() {
    rejects_edit(
        |v| v["targets"][0]["probe"] = json!({ "type": "http", "path": "health" }),
        "targets[0].probe.path",
        r#""health" does not start with '/'"#,
    );
    rejects_edit(
        |v| v["targets"][0]["probe"] = json!({ "type": "http", "path": "/a b" }),
        "targets[0].probe.path",
        "has a space or a control character",
    );
}

#[test]
fn http_expect_status_out_of_range() {
    for status in [0, 99, 600] {
        rejects_edit(
            |v| v["targets"][0]["probe"] = json!({ "type": "http", "expect_status": status }),
            "targets[0].probe.expect_status",
            &format!("{status} is not an HTTP status (100 to 599)"),
        );
    }
}

#[test]
fn tcp_probe_needs_a_port() {
    rejects_edit(
        |v| v["targets"][0]["probe"] = json!({ "type": "tcp" }),
        "targets[0].probe.port",
        "a tcp probe needs a port",
    );
    // A path switching an icmp target to tcp has no port to inherit.
    rejects_edit(
        |v| {
            v["targets"][0]["probe"] = json!({});
            v["targets"][0]["paths"][0]["probe"] = json!({ "type": "tcp" });
        },
        "targets[0].paths[0].probe.port",
        "a tcp probe needs a port",
    );
}

#[test]
fn fields_that_do_not_apply_to_the_probe_type() {
    rejects_edit(
        |v| v["targets"][0]["probe"]["path"] = json!("/"),
        "targets[0].probe.path",
        "applies only to http and https probes, not tcp",
    );
    rejects_edit(
        |v| v["targets"][0]["probe"]["expect_status"] = json!(200),
        "targets[0].probe.expect_status",
        "applies only to http and https probes, not tcp",
    );
    rejects_edit(
        |v| v["targets"][0]["probe"] = json!({ "type": "icmp", "port": 22 }),
        "targets[0].probe.port",
        "applies only to tcp, http and https probes, not icmp",
    );
    // An override without a type is checked against the target's type.
    rejects_edit(
        |v| v["targets"][0]["paths"][0]["probe"] = json!({ "path": "/health" }),
        "targets[0].paths[0].probe.path",
        "applies only to http and https probes, not tcp",
    );
    rejects_edit(
        |v| v["targets"][0]["paths"][1]["probe"]["port"] = json!(22),
        "targets[0].paths[1].probe.port",
        "applies only to tcp, http and https probes, not icmp",
    );
}

// ---- https probes. ----

/// A CA certificate (PEM) made for the test.
fn ca_pem() -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let key = KeyPair::generate().expect("a key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.self_signed(&key).expect("a certificate").pem()
}

/// A file of its own for each test under the temporary directory, removed on drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> Self {
        let path =
            std::env::temp_dir().join(format!("lb-config-test-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("writing the temporary file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The example with the target's probe replaced by `probe`.
fn with_target_probe(probe: Value) -> String {
    edited(|v| v["targets"][0]["probe"] = probe)
}

#[test]
fn https_probe_defaults() {
    let config = accepts(&with_target_probe(json!({ "type": "https" })));
    assert_eq!(
        config.targets[0].paths[0].probe.kind,
        ProbeKind::Https {
            port: 443,
            path: "/".into(),
            expect_status: 200,
            sni: None,
            trust: TlsTrust::System,
        }
    );
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
}

#[test]
fn https_probe_fields_and_their_inheritance() {
    let pem = ca_pem();
    let ca = TempFile::new("https-fields-ca.pem", pem.as_bytes());
    let text = edited(|v| {
        v["targets"][0]["probe"] = json!({ "type": "https", "port": 8443, "path": "/up",
            "expect_status": 204, "sni": "vm.test", "ca_file": ca.path() });
        // Same type: everything inherited, one field overridden.
        v["targets"][0]["paths"][0]["probe"] = json!({ "sni": "nn1.vm.test" });
        // Another type: nothing type-specific inherited.
        v["targets"][0]["paths"][1]["probe"] = json!({ "type": "http" });
    });
    let config = accepts(&text);
    let paths = &config.targets[0].paths;
    let certs = CaCertificates::from_pem(pem.as_bytes()).expect("the CA");
    assert_eq!(
        paths[0].probe.kind,
        ProbeKind::Https {
            port: 8443,
            path: "/up".into(),
            expect_status: 204,
            sni: Some("nn1.vm.test".into()),
            trust: TlsTrust::CaFile {
                path: ca.0.clone(),
                certs: certs.clone(),
            },
        }
    );
    assert_eq!(
        paths[1].probe.kind,
        ProbeKind::Http {
            port: 80,
            path: "/".into(),
            expect_status: 200
        }
    );

    // insecure on a path of a ca_file target; `insecure: false` on its own turns verification
    // back on: the host's roots, since nothing else is inherited.
    let text = edited(|v| {
        v["targets"][0]["probe"] = json!({ "type": "https", "ca_file": ca.path() });
        v["targets"][0]["paths"][0]["probe"] = json!({ "insecure": true });
        v["targets"][0]["paths"][1]["probe"] = json!({ "insecure": false });
    });
    let config = accepts(&text);
    let trust = |j: usize| match &config.targets[0].paths[j].probe.kind {
        ProbeKind::Https { trust, .. } => trust.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(trust(0), TlsTrust::Insecure);
    assert_eq!(
        trust(1),
        TlsTrust::CaFile {
            path: ca.0.clone(),
            certs: certs.clone(),
        },
        "insecure: false keeps the inherited ca_file"
    );
    let w = config.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("\"web-vm\"") && w[0].contains("\"nn1\"") && w[0].contains("does not verify"),
        "{w:?}"
    );
    let text = edited(|v| {
        v["targets"][0]["probe"] = json!({ "type": "https", "insecure": true });
        v["targets"][0]["paths"][1]["probe"] = json!({ "insecure": false });
    });
    let config = accepts(&text);
    assert!(matches!(
        config.targets[0].paths[1].probe.kind,
        ProbeKind::Https {
            trust: TlsTrust::System,
            ..
        }
    ));

    // A path switching an https target to tcp inherits none of its fields, and may give none.
    let text = edited(|v| {
        v["targets"][0]["probe"] = json!({ "type": "https", "sni": "vm.test", "insecure": true });
        v["targets"][0]["paths"][0]["probe"] = json!({ "type": "tcp", "port": 22 });
    });
    assert_eq!(
        accepts(&text).targets[0].paths[0].probe.kind,
        ProbeKind::Tcp { port: 22 }
    );
    rejects_edit(
        |v| {
            v["targets"][0]["probe"] = json!({ "type": "https", "insecure": true });
            v["targets"][0]["paths"][0]["probe"] = json!({ "type": "tcp", "port": 22, "sni": "x" });
        },
        "targets[0].paths[0].probe.sni",
        "applies only to https probes, not tcp",
    );
    // And switching back to https starts from https's defaults, not the target's.
    let text = edited(|v| {
        v["targets"][0]["probe"] = json!({ "type": "tcp", "port": 22 });
        v["targets"][0]["paths"][0]["probe"] = json!({ "type": "https" });
    });
    assert_eq!(
        accepts(&text).targets[0].paths[0].probe.kind,
        ProbeKind::Https {
            port: 443,
            path: "/".into(),
            expect_status: 200,
            sni: None,
            trust: TlsTrust::System,
        }
    );
}

#[test]
fn https_fields_do_not_apply_to_other_probes() {
    for (field, value) in [
        ("sni", json!("vm.test")),
        ("ca_file", json!("/etc/lb/ca.pem")),
        ("insecure", json!(true)),
    ] {
        for ty in ["tcp", "http", "icmp"] {
            let mut probe = json!({ "type": ty });
            if ty == "tcp" {
                probe["port"] = json!(22);
            }
            probe[field] = value.clone();
            rejects(
                &with_target_probe(probe),
                &format!("targets[0].probe.{field}"),
                &format!("applies only to https probes, not {ty}"),
            );
        }
        // An override without a type is checked against the target's (tcp in the example).
        rejects_edit(
            |v| v["targets"][0]["paths"][0]["probe"][field] = value.clone(),
            &format!("targets[0].paths[0].probe.{field}"),
            "applies only to https probes, not tcp",
        );
    }
}

#[test]
fn https_probe_field_errors() {
    let at = "targets[0].probe";
    let https = |extra: Value| {
        let mut probe = json!({ "type": "https" });
        for (k, v) in extra.as_object().expect("an object") {
            probe[k] = v.clone();
        }
        with_target_probe(probe)
    };
    let pem = ca_pem();
    let ca = TempFile::new("https-errors-ca.pem", pem.as_bytes());
    rejects(
        &https(json!({ "ca_file": ca.path(), "insecure": true })),
        &format!("{at}.insecure"),
        "true together with ca_file",
    );
    // `insecure: false` beside a ca_file says nothing more.
    accepts(&https(json!({ "ca_file": ca.path(), "insecure": false })));
    rejects(
        &https(json!({ "ca_file": "/nonexistent/lb-ca.pem" })),
        &format!("{at}.ca_file"),
        "cannot read /nonexistent/lb-ca.pem: No such file or directory",
    );
    rejects(
        &https(json!({ "ca_file": "ca.pem" })),
        &format!("{at}.ca_file"),
        "\"ca.pem\" is not an absolute path",
    );
    let dir = std::env::temp_dir();
    rejects(
        &https(json!({ "ca_file": dir.to_str().expect("UTF-8") })),
        &format!("{at}.ca_file"),
        "is not a regular file",
    );
    let text = TempFile::new("https-errors-text.pem", b"just some text\n");
    rejects(
        &https(json!({ "ca_file": text.path() })),
        &format!("{at}.ca_file"),
        &format!("{}: no certificate in it", text.path()),
    );
    let bad = TempFile::new(
        "https-errors-bad.pem",
        b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    rejects(
        &https(json!({ "ca_file": bad.path() })),
        &format!("{at}.ca_file"),
        &format!("{}: not PEM", bad.path()),
    );
    let not_a_cert = TempFile::new(
        "https-errors-notcert.pem",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    );
    rejects(
        &https(json!({ "ca_file": not_a_cert.path() })),
        &format!("{at}.ca_file"),
        "certificate 1 of 1 is not one a TLS client can trust",
    );
    let open = TempFile::new("https-errors-open.pem", pem.as_bytes());
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    }
    rejects(
        &https(json!({ "ca_file": open.path() })),
        &format!("{at}.ca_file"),
        "is writable by every user (mode 666)",
    );
    rejects(
        &https(json!({ "sni": "not a name" })),
        &format!("{at}.sni"),
        "\"not a name\" is neither a DNS name nor an IP address",
    );
    // An address is taken: verified as an IP SAN, no SNI sent.
    accepts(&https(json!({ "sni": "192.0.2.70" })));
    rejects(
        &https(json!({ "port": 0 })),
        &format!("{at}.port"),
        "0 is not a port",
    );
    rejects(
        &https(json!({ "path": "health" })),
        &format!("{at}.path"),
        "does not start with '/'",
    );
    rejects(
        &https(json!({ "expect_status": 600 })),
        &format!("{at}.expect_status"),
        "600 is not an HTTP status",
    );
    rejects(
        &https(json!({ "insecure": "yes" })),
        at,
        "invalid type: string \"yes\", expected a boolean",
    );
}

#[test]
fn https_probe_text_names_sni_and_trust() {
    use lb_user::config::diff::probe_text;
    let pem = ca_pem();
    let ca = TempFile::new("https-text-ca.pem", pem.as_bytes());
    let probe = |p: Value| {
        accepts(&with_target_probe(p)).targets[0].paths[0]
            .probe
            .clone()
    };
    let text = probe_text(&probe(
        json!({ "type": "https", "sni": "vm.test", "ca_file": ca.path() }),
    ));
    let digest = CaCertificates::from_pem(pem.as_bytes())
        .expect("the CA")
        .digest();
    assert!(
        text.starts_with(&format!(
            "https port 443 GET / expect 200 sni vm.test ca_file {} (1 certificates, {digest}),",
            ca.path()
        )),
        "{text}"
    );
    let text = probe_text(&probe(json!({ "type": "https", "insecure": true })));
    assert!(
        text.starts_with("https port 443 GET / expect 200 insecure,"),
        "{text}"
    );
    let text = probe_text(&probe(json!({ "type": "https", "port": 8443 })));
    assert!(
        text.starts_with("https port 8443 GET / expect 200,"),
        "{text}"
    );
}

// ---- Rejected: interfaces. ----

#[test]
fn no_client_interface() {
    rejects_edit(
        |v| v["interfaces"]["clients"] = json!([]),
        "interfaces.clients",
        "at least one interface must face the clients",
    );
}

#[test]
fn no_path_interface_with_targets() {
    rejects_edit(
        |v| v["interfaces"]["paths"] = json!([]),
        "interfaces.paths",
        "targets need at least one interface facing the paths",
    );
}

#[test]
fn an_interface_in_both_lists() {
    rejects_edit(
        |v| v["interfaces"]["paths"][1] = json!("eth0"),
        "interfaces.paths[1]",
        r#""eth0" is also interfaces.clients[0]: an interface faces either the clients or the paths"#,
    );
}

#[test]
fn duplicate_interface_names() {
    rejects_edit(
        |v| v["interfaces"]["paths"][1] = json!("eth1"),
        "interfaces.paths[1]",
        r#"duplicate of interfaces.paths[0] ("eth1")"#,
    );
    rejects_edit(
        |v| v["interfaces"]["clients"] = json!(["eth0", "eth0"]),
        "interfaces.clients[1]",
        r#"duplicate of interfaces.clients[0] ("eth0")"#,
    );
}

#[test]
fn interface_names_the_kernel_would_refuse() {
    rejects_edit(
        |v| v["interfaces"]["clients"][0] = json!("a-very-long-name"),
        "interfaces.clients[0]",
        r#""a-very-long-name" is longer than 15 bytes"#,
    );
    rejects_edit(
        |v| v["targets"][0]["paths"][1]["interface"] = json!("a-very-long-name"),
        "targets[0].paths[1].interface",
        "is longer than 15 bytes",
    );
    for name in ["", "eth 0", "eth0:1", "a/b", ".."] {
        rejects_edit(
            |v| v["interfaces"]["paths"][0] = json!(name),
            "interfaces.paths[0]",
            "is not an interface name",
        );
    }
    // 15 bytes is fine.
    accepts(&edited(|v| {
        v["interfaces"]["clients"][0] = json!("a-15-bytes-name")
    }));
}

// ---- Rejected: capacities. ----

#[test]
fn too_many_targets() {
    let targets: Vec<Value> = (0..257)
        .map(|i| {
            json!({ "name": format!("t{i}"),
                    "paths": [{ "name": "p", "address": format!("10.0.{}.{}", i / 200, i % 200 + 1) }] })
        })
        .collect();
    let text = json!({ "interfaces": { "clients": ["eth0"], "paths": ["eth1"] },
                       "targets": targets })
    .to_string();
    rejects(
        &text,
        "targets",
        "257 targets, more than the datapath's capacity of 256",
    );
    // 256 fit.
    let mut v: Value = serde_json::from_str(&text).expect("JSON");
    v["targets"].as_array_mut().expect("an array").pop();
    assert_eq!(accepts(&v.to_string()).targets.len(), 256);
}

#[test]
fn too_many_paths() {
    // Four targets of 256 paths fill the table; one more path overflows it.
    let targets: Vec<Value> = (0..5)
        .map(|i| {
            let n = if i < 4 { 256 } else { 1 };
            let paths: Vec<Value> = (0..n)
                .map(|j| json!({ "name": format!("p{j}"), "address": format!("10.{i}.{}.{}", j / 200, j % 200 + 1) }))
                .collect();
            json!({ "name": format!("t{i}"), "paths": paths })
        })
        .collect();
    let text = json!({ "interfaces": { "clients": ["eth0"], "paths": ["eth1"] },
                       "targets": targets })
    .to_string();
    rejects(&text, "targets[4].paths[0]", "more than 1024 paths in all");
}

#[test]
fn too_many_vips() {
    let vips: Vec<Value> = (0..4097)
        .map(|i| json!({ "address": "203.0.113.1", "protocol": "tcp", "port": i + 1, "target": "t" }))
        .collect();
    rejects(
        &config_with(1, json!(vips)).to_string(),
        "vips",
        "4097 VIPs, more than the datapath's capacity of 4096",
    );
}

/// Each VIP of a target has its own column of traffic counters: 16 fit, the 17th does not
/// (and with it the reverse-NAT table can never overflow: 16 × 1024 paths is its size).
#[test]
fn too_many_vips_on_one_target() {
    let vips: Vec<Value> = (0..17)
        .map(|i| json!({ "address": "203.0.113.1", "protocol": "tcp", "port": i + 1, "target": "t" }))
        .collect();
    let mut sixteen = config_with(2, json!(vips));
    sixteen["vips"].as_array_mut().expect("a list").pop();
    accepts(&sixteen.to_string());
    rejects(
        &config_with(2, json!(vips)).to_string(),
        "vips[16]",
        "target \"t\" would serve more than 16 VIPs",
    );
}

#[test]
fn flow_table_size_out_of_range() {
    rejects_edit(
        |v| v["flow_table_size"] = json!(0),
        "flow_table_size",
        "0: the exception table needs room",
    );
    rejects_edit(
        |v| v["flow_table_size"] = json!((64u64 << 20) + 1),
        "flow_table_size",
        "67108865 is more than the maximum of 67108864",
    );
    let text = edited(|v| v["flow_table_size"] = json!(64u64 << 20));
    assert_eq!(accepts(&text).flow_table_size, Some(64 << 20));
}

// ---- Order, display, interfaces on the host. ----

#[test]
fn the_first_problem_in_file_order_is_reported() {
    rejects_edit(
        |v| {
            v["targets"][0]["paths"][1]["address"] = json!("nope");
            v["vips"][1]["target"] = json!("web");
        },
        "targets[0].paths[1].address",
        "is not an IP address",
    );
}

#[test]
fn invalid_displays_field_and_reason() {
    let e =
        Config::from_json(&edited(|v| v["vips"][1]["target"] = json!("web"))).expect_err("invalid");
    assert_eq!(e.to_string(), r#"vips[1].target: unknown target "web""#);
}

#[test]
fn check_interfaces_with_a_fake_host() {
    let config = accepts(EXAMPLE);
    let host = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
    config
        .check_interfaces(host(&["eth0", "eth1", "eth2"]))
        .expect("all there");
    let e = config
        .check_interfaces(host(&["eth0", "eth1"]))
        .expect_err("eth2 missing");
    assert_eq!(
        e.to_string(),
        r#"interfaces.paths[1]: unknown interface "eth2""#
    );
    let e = config
        .check_interfaces(host(&["eth1", "eth2"]))
        .expect_err("eth0 missing");
    assert_eq!(
        e.to_string(),
        r#"interfaces.clients[0]: unknown interface "eth0""#
    );

    // A path's probe interface, checked after the lists.
    let config = accepts(&edited(|v| {
        v["targets"][0]["paths"][1]["interface"] = json!("eth9")
    }));
    let e = config
        .check_interfaces(host(&["eth0", "eth1", "eth2"]))
        .expect_err("eth9 missing");
    assert!(
        matches!(&e, ConfigError::Invalid { field, reason }
            if field == "targets[0].paths[1].interface" && reason == r#"unknown interface "eth9""#),
        "{e:?}"
    );
}

#[test]
fn interface_exists_asks_the_kernel() {
    assert!(interface_exists("lo"), "every network namespace has lo");
    assert!(!interface_exists("lb-no-such-if"));
    assert!(!interface_exists("nul\0inside"));
}

#[test]
fn a_world_writable_file_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join(format!("lb-config-{}.json", std::process::id()));
    std::fs::write(&path, EXAMPLE).expect("writing a temporary file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let err = Config::load(&path).expect_err("a world-writable file");
    let text = err.to_string();
    assert!(
        matches!(err, ConfigError::WorldWritable { mode: 0o666, .. })
            && text.contains("writable by every user")
            && text.contains(&format!("chmod o-w {}", path.display())),
        "{text}"
    );
    // Group-writable is the operator's business; only "everyone" is refused.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o664)).expect("chmod");
    let loaded = Config::load(&path);
    std::fs::remove_file(&path).ok();
    loaded.expect("a file only root's group can write");
}

// ---- Announcements (`announce`). ----

#[test]
fn announce_is_off_without_its_section_and_defaults_to_table_200_protocol_250() {
    let config = accepts(EXAMPLE);
    assert_eq!(config.announce, None);
    assert!(
        config.vips.iter().all(|v| v.announce),
        "VIPs count by default"
    );
    let config = accepts(&edited(|v| v["announce"] = json!({})));
    assert_eq!(
        config.announce,
        Some(Announce {
            table: 200,
            protocol: 250
        })
    );
    assert_eq!(config.settle_max, Duration::from_secs(10));
    let config = accepts(&edited(|v| {
        v["announce"] = json!({ "table": 4_000_000_000u64, "protocol": 99, "settle_max_s": 0 });
        v["vips"][1]["announce"] = json!(false);
    }));
    assert_eq!(
        config.announce,
        Some(Announce {
            table: 4_000_000_000,
            protocol: 99
        })
    );
    assert_eq!(config.settle_max, Duration::ZERO);
    assert!(config.vips[0].announce && !config.vips[1].announce);
}

#[test]
fn announce_refuses_tables_and_protocols_others_own() {
    for (table, phrase) in [
        (0u64, "no table"),
        (253, "default table"),
        (254, "main table"),
        (255, "local table"),
        (1 << 32, "not a routing table number"),
    ] {
        rejects_edit(
            |v| v["announce"] = json!({ "table": table }),
            "announce.table",
            phrase,
        );
    }
    for (protocol, phrase) in [
        (0u64, "the kernel's or `ip route`'s own"),
        (2, "the kernel's or `ip route`'s own"),
        (4, "the kernel's or `ip route`'s own"),
        (11, "FRR's own"),
        (12, "BIRD's own"),
        (186, "FRR's own"),
        (198, "FRR's own"),
        (256, "not a route protocol number"),
    ] {
        rejects_edit(
            |v| v["announce"] = json!({ "protocol": protocol }),
            "announce.protocol",
            phrase,
        );
    }
    rejects_edit(
        |v| v["announce"] = json!({ "settle_max_s": 3601 }),
        "announce.settle_max_s",
        "longer than 3600 s",
    );
    rejects_edit(
        |v| v["announce"] = json!({ "tabel": 200 }),
        "announce",
        "unknown field `tabel`",
    );
    rejects_edit(
        |v| v["vips"][0]["announce"] = json!("no"),
        "vips[0]",
        "expected a boolean",
    );
}

#[test]
fn announce_warns_of_history_dependent_choices_and_shared_addresses() {
    assert!(
        accepts(EXAMPLE).warnings().is_empty(),
        "no announce section"
    );
    let config = accepts(&edited(|v| {
        v["announce"] = json!({});
        v["targets"][0]["preempt"] = json!(false);
    }));
    let w = config.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("preempt: false") && w[0].contains("web-vm"),
        "{w:?}"
    );

    // The example with target `db` and a UDP service of its on 203.0.113.11, beside web-vm's.
    let shared = |db_vip: Value| {
        accepts(&edited(|v| {
            v["announce"] = json!({});
            push(
                &mut v["targets"],
                json!({ "name": "db", "paths": [{ "name": "a", "address": "192.0.2.9" }] }),
            );
            push(&mut v["vips"], db_vip);
        }))
    };
    let config =
        shared(json!({ "address": "203.0.113.11", "protocol": "udp", "port": 53, "target": "db" }));
    let w = config.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].contains("203.0.113.11") && w[0].contains("web-vm, db"),
        "{w:?}"
    );
    // Opting the other target's VIP out removes the coupling.
    let config = shared(
        json!({ "address": "203.0.113.11", "protocol": "udp", "port": 53,
                                "target": "db", "announce": false }),
    );
    assert!(config.warnings().is_empty());
}

// ---- IPv6. ----

/// A configuration of both families: an IPv4 target and an IPv6 one, each with VIPs of its own
/// family (the documentation ranges 192.0.2.0/24, 203.0.113.0/24 and 2001:db8::/32).
fn dual() -> Value {
    json!({
        "interfaces": { "clients": ["eth0"], "paths": ["eth1"] },
        "targets": [
            { "name": "web", "paths": [
                { "name": "nn1", "address": "192.0.2.70" },
                { "name": "nn2", "address": "192.0.2.100" } ] },
            { "name": "web6", "paths": [
                { "name": "nn1", "address": "2001:db8:1::70", "source": "2001:db8:1::1" },
                { "name": "nn2", "address": "2001:DB8:2:0:0:0:0:70", "interface": "eth1" } ] }
        ],
        "vips": [
            { "address": "203.0.113.10", "target": "web" },
            { "address": "2001:db8:ff::10", "target": "web6" },
            { "address": "2001:db8:ff::11", "protocol": "tcp", "port": 443, "target": "web6",
              "target_port": 8443 }
        ]
    })
}

fn dual_edited(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = dual();
    edit(&mut v);
    v.to_string()
}

#[test]
fn ipv6_addresses_parse_into_the_model() {
    let config = accepts(&dual().to_string());
    let ip = |text: &str| text.parse::<std::net::IpAddr>().expect("an address");
    let web6 = config.target("web6").expect("web6");
    assert_eq!(web6.paths[0].address, ip("2001:db8:1::70"));
    assert_eq!(web6.paths[0].source, Some(ip("2001:db8:1::1")));
    // Any spelling, the one address (shown canonical).
    assert_eq!(web6.paths[1].address, ip("2001:db8:2::70"));
    assert_eq!(web6.paths[1].address.to_string(), "2001:db8:2::70");
    assert_eq!(config.vips[1].address, ip("2001:db8:ff::10"));
    assert_eq!(
        config.vips[2].service,
        Some(Service {
            protocol: Protocol::Tcp,
            port: 443,
            target_port: Some(8443),
        })
    );
    // IPv4 stays IPv4.
    assert_eq!(config.vips[0].address, ip("203.0.113.10"));
    assert!(config.vips[0].address.is_ipv4());
    // Unique local addresses and addresses outside the documentation ranges are hosts' too.
    accepts(&dual_edited(|v| {
        v["targets"][1]["paths"][0]["address"] = json!("fd00::70");
        v["targets"][1]["paths"][0]["source"] = json!("fd00::1");
        v["vips"][1]["address"] = json!("2a01:4f8::10");
    }));
}

/// The datapath writes the chosen path's address over the VIP's, so a VIP is served by its
/// target's paths of its family: a VIP whose target has none is refused, naming the VIP, the
/// target and the family. A target may hold paths of both families and VIPs of both.
#[test]
fn a_vip_needs_a_path_of_its_family() {
    rejects(
        &dual_edited(|v| v["vips"][1]["target"] = json!("web")),
        "vips[1].address",
        r#"2001:db8:ff::10 is an IPv6 VIP, but its target "web" (targets[0]) has no IPv6 path: a VIP is served by its target's paths of its family"#,
    );
    rejects(
        &dual_edited(|v| v["vips"][0]["target"] = json!("web6")),
        "vips[0].address",
        r#"203.0.113.10 is an IPv4 VIP, but its target "web6" (targets[1]) has no IPv4 path"#,
    );
    // A target with paths of both families serves VIPs of both.
    let mixed = |v: &mut Value| {
        push(
            &mut v["targets"][0]["paths"],
            json!({ "name": "nn3", "address": "2001:db8:3::70" }),
        )
    };
    let config = accepts(&dual_edited(|v| {
        mixed(v);
        v["vips"][1]["target"] = json!("web");
    }));
    assert_eq!(config.vips[0].target, "web");
    assert_eq!(config.vips[1].target, "web");
    let web = config.target("web").expect("web");
    assert_eq!(
        web.families(),
        [lb_user::config::Family::V4, lb_user::config::Family::V6]
    );
    // And one of its families without VIPs is valid too (probed, decided and shown).
    accepts(&dual_edited(mixed));
}

/// Replies from a target's paths of one family are translated back to its VIPs of that family
/// only: a whole-address VIP of each family (or the same service in both) is no ambiguity,
/// two of one family still are.
#[test]
fn reply_ambiguity_is_judged_per_family() {
    let mixed = |v: &mut Value| {
        push(
            &mut v["targets"][0]["paths"],
            json!({ "name": "nn3", "address": "2001:db8:3::70" }),
        );
        v["vips"][1]["target"] = json!("web");
        v["vips"][2]["target"] = json!("web");
    };
    // 203.0.113.10 and 2001:db8:ff::10 whole, 2001:db8:ff::11 tcp/443 → 8443: all on web.
    accepts(&dual_edited(mixed));
    accepts(&dual_edited(|v| {
        mixed(v);
        push(
            &mut v["vips"],
            json!({ "address": "203.0.113.11", "protocol": "tcp", "port": 443, "target": "web",
                    "target_port": 8443 }),
        );
    }));
    rejects(
        &dual_edited(|v| {
            mixed(v);
            push(
                &mut v["vips"],
                json!({ "address": "2001:db8:ff::12", "target": "web" }),
            );
        }),
        "vips[3]",
        r#"target "web" already has the whole-address VIP vips[1] (2001:db8:ff::10)"#,
    );
}

/// The datapath has 256 target ids; a target with paths of both families takes two.
#[test]
fn a_target_of_both_families_takes_two_target_ids() {
    let target = |i: usize, dual: bool| {
        let mut paths =
            vec![json!({ "name": "p", "address": format!("10.0.{}.{}", i / 250, i % 250 + 1) })];
        if dual {
            paths.push(json!({ "name": "q", "address": format!("2001:db8::{:x}", i + 1) }));
        }
        json!({ "name": format!("t{i}"), "paths": paths })
    };
    // `all` targets, the first `dual` of them with paths of both families.
    let config = |all: usize, dual: usize| {
        let targets: Vec<Value> = (0..all).map(|i| target(i, i < dual)).collect();
        json!({
            "interfaces": { "clients": ["eth0"], "paths": ["eth1"] },
            "targets": targets,
            "vips": [],
        })
        .to_string()
    };
    // 128 targets of both families and one more: 257 ids.
    let (field, reason) = invalid(&config(129, 128));
    assert_eq!(field, "targets[128]");
    assert!(
        reason.contains("more than 256 target ids in all (the datapath's capacity): a target with paths of both families takes one per family"),
        "{reason}"
    );
    // 128 of both: 256; 1 of both and 254 of one: 256.
    accepts(&config(128, 128));
    accepts(&config(255, 1));
}

#[test]
fn a_probe_source_is_of_its_paths_family() {
    rejects(
        &dual_edited(|v| v["targets"][1]["paths"][0]["source"] = json!("198.51.100.1")),
        "targets[1].paths[0].source",
        "198.51.100.1 is IPv4, the path's address 2001:db8:1::70 IPv6: the probes go from an address of the path's family",
    );
    rejects_edit(
        |v| v["targets"][0]["paths"][1]["source"] = json!("2001:db8::1"),
        "targets[0].paths[1].source",
        "2001:db8::1 is IPv6, the path's address 192.0.2.100 IPv4",
    );
}

/// Duplicates are found by address, not by spelling.
#[test]
fn ipv6_duplicates_whatever_the_spelling() {
    rejects(
        &dual_edited(|v| {
            v["targets"][1]["paths"][1]["address"] =
                json!("2001:0db8:0001:0000:0000:0000:0000:0070")
        }),
        "targets[1].paths[1].address",
        "2001:db8:1::70 is already the address of targets[1].paths[0]",
    );
    rejects(
        &dual_edited(|v| v["vips"][1]["address"] = json!("2001:db8:1:0::70")),
        "vips[1].address",
        "2001:db8:1::70 is also the address of targets[1].paths[0]",
    );
    rejects(
        &dual_edited(|v| {
            push(
                &mut v["vips"],
                json!({ "address": "2001:DB8:FF::11", "protocol": "tcp", "port": 443,
                        "target": "web6" }),
            )
        }),
        "vips[3]",
        "duplicate of vips[2] (2001:db8:ff::11 tcp/443)",
    );
}

#[test]
fn notify_hooks_take_an_absolute_command_and_a_bounded_timeout() {
    let with = |notify: &str| {
        format!(
            r#"{{ "interfaces": {{ "clients": ["c0"], "paths": ["p0"] }},
              "targets": [ {{ "name": "web", "notify": {notify},
                "paths": [ {{ "name": "nn1", "address": "192.0.2.1" }} ] }} ],
              "vips": [] }}"#
        )
    };
    let c =
        Config::from_json(&with(r#"{ "command": ["/usr/local/bin/n", "-v"] }"#)).expect("valid");
    let n = c.targets[0].notify.as_ref().expect("a hook");
    assert_eq!(n.command, ["/usr/local/bin/n", "-v"]);
    assert_eq!(n.timeout, lb_user::config::DEFAULT_NOTIFY_TIMEOUT);
    for (notify, field, says) in [
        (
            r#"{ "command": [] }"#,
            "targets[0].notify.command",
            "needs a program",
        ),
        (
            r#"{ "command": ["notify.sh"] }"#,
            "targets[0].notify.command[0]",
            "not an absolute path",
        ),
        (
            r#"{ "command": ["/x"], "timeout_ms": 0 }"#,
            "targets[0].notify.timeout_ms",
            "not within",
        ),
        (
            r#"{ "command": ["/x"], "timeout_ms": 600001 }"#,
            "targets[0].notify.timeout_ms",
            "not within",
        ),
        (
            r#"{ "command": ["/x"], "every": 1 }"#,
            "targets[0]",
            "unknown field `every`",
        ),
    ] {
        let e = Config::from_json(&with(notify))
            .expect_err(notify)
            .to_string();
        assert!(e.contains(field) && e.contains(says), "{notify}: {e}");
    }
}
