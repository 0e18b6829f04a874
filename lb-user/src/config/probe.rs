//! A probe section, resolved and checked.

use std::time::Duration;

use crate::config::{
    ConfigError, DEFAULT_EXPECT_STATUS, DEFAULT_FALL, DEFAULT_HTTP_PATH, DEFAULT_HTTP_PORT,
    DEFAULT_INTERVAL, DEFAULT_RISE, MAX_RISE_FALL, MIN_INTERVAL_MS, Passive, Probe, ProbeKind,
    raw::{RawProbe, RawProbeType},
    validate::{invalid, port_number},
};

/// A probe section resolved against what it inherits: the defaults for a target's probe
/// (`base` is `None`), the target's probe for a path's overrides.
///
/// The type-specific fields (`port`, `path`, `expect_status`) are inherited only while the
/// type stays the same. A timeout that is not given (a default or an inherited one) never
/// exceeds the interval; a given one must not.
pub(crate) fn check_probe(
    at: &str,
    raw: RawProbe,
    base: Option<&Probe>,
) -> Result<Probe, ConfigError> {
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
