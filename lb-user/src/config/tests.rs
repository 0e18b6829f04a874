use serde_json::Value;

use super::*;
use crate::config::{
    probe::check_probe,
    raw::{RawProbe, bare_message, locate},
};

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

/// https's own fields (`sni`, the trust) follow the same rule as `port` and `path`.
#[test]
fn https_fields_are_inherited_only_by_https() {
    let base = probe(
        r#"{"type": "https", "sni": "vm.test", "insecure": true}"#,
        None,
    )
    .expect("valid");
    let same = probe(r#"{"port": 8443}"#, Some(&base)).expect("valid");
    assert_eq!(
        same.kind,
        ProbeKind::Https {
            port: 8443,
            path: "/".into(),
            expect_status: 200,
            sni: Some("vm.test".into()),
            trust: TlsTrust::Insecure,
        }
    );
    let http = probe(r#"{"type": "http"}"#, Some(&base)).expect("valid");
    assert_eq!(
        http.kind,
        ProbeKind::Http {
            port: 80,
            path: "/".into(),
            expect_status: 200
        }
    );
    let refused = probe(r#"{"type": "http", "insecure": true}"#, Some(&base));
    assert!(
        matches!(refused, Err(ConfigError::Invalid { ref field, ref reason })
            if field == "p.insecure" && reason == "applies only to https probes, not http"),
        "{refused:?}"
    );
}

#[test]
fn ca_certificates_from_pem() {
    let e = CaCertificates::from_pem(b"").expect_err("empty");
    assert!(e.starts_with("no certificate in it"), "{e}");
    // Other sections (a key) are skipped, not errors; with no certificate beside them, none.
    let e =
        CaCertificates::from_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .expect_err("a key only");
    assert!(e.starts_with("no certificate in it"), "{e}");
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
