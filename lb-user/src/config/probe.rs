//! A probe section, resolved and checked; an https probe's trust (its `ca_file` read here).

use std::{
    fmt,
    io::Read as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject as _},
};

use crate::config::{
    ConfigError, DEFAULT_EXPECT_STATUS, DEFAULT_FALL, DEFAULT_HTTP_PATH, DEFAULT_HTTP_PORT,
    DEFAULT_HTTPS_PORT, DEFAULT_INTERVAL, DEFAULT_RISE, MAX_RISE_FALL, MIN_INTERVAL_MS, Passive,
    Probe, ProbeKind,
    raw::{RawProbe, RawProbeType},
    validate::{invalid, port_number},
};

/// What an https probe verifies the server's certificate against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsTrust {
    /// The host's trusted roots, as `rustls-native-certs` finds them (the distribution's
    /// bundle, or `SSL_CERT_FILE` / `SSL_CERT_DIR`), read by the prober once.
    System,
    /// The certificates of `ca_file`, read when the configuration was loaded (a reload reads
    /// the file again).
    CaFile {
        path: PathBuf,
        certs: CaCertificates,
    },
    /// Nothing: any certificate is taken (`insecure: true`). Still TLS, and the handshake's
    /// signatures are still checked.
    Insecure,
}

/// The certificates of a `ca_file`, each one usable as a trust anchor. Equal when their DER
/// bytes are: a reload of a changed file is a changed probe.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCertificates(Arc<[CertificateDer<'static>]>);

/// The most of a `ca_file` read: a bundle of every public root is a few hundred KiB.
const CA_FILE_MAX: u64 = 4 << 20;

impl CaCertificates {
    /// The certificates of the PEM file at `path`; the error says what is wrong with it.
    /// Refuses a file every user may write (the daemon runs as root; such a file would let
    /// anyone make the probes trust their server).
    pub fn read(path: &Path) -> Result<CaCertificates, String> {
        use std::os::unix::fs::MetadataExt as _;
        let shown = path.display();
        let io = |e: std::io::Error| format!("cannot read {shown}: {e}");
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(format!("{shown} is not a regular file"));
        }
        if meta.mode() & 0o002 != 0 {
            return Err(format!(
                "{shown} is writable by every user (mode {:o}): anyone could make the probes \
                 trust their server (`chmod o-w {shown}`)",
                meta.mode() & 0o7777
            ));
        }
        let mut pem = Vec::new();
        file.take(CA_FILE_MAX + 1)
            .read_to_end(&mut pem)
            .map_err(io)?;
        if pem.len() as u64 > CA_FILE_MAX {
            return Err(format!(
                "{shown} is larger than {} MiB: not a CA file",
                CA_FILE_MAX >> 20
            ));
        }
        CaCertificates::from_pem(&pem).map_err(|e| format!("{shown}: {e}"))
    }

    /// The `CERTIFICATE` sections of `pem` (other sections are skipped), each checked to be a
    /// certificate rustls can take as a trust anchor.
    pub fn from_pem(pem: &[u8]) -> Result<CaCertificates, String> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no certificate in it (no -----BEGIN CERTIFICATE----- section)".into());
        }
        let mut roots = RootCertStore::empty();
        for (i, cert) in certs.iter().enumerate() {
            roots.add(cert.clone()).map_err(|e| {
                format!(
                    "certificate {} of {} is not one a TLS client can trust: {e}",
                    i + 1,
                    certs.len()
                )
            })?;
        }
        Ok(CaCertificates(certs.into()))
    }

    /// The certificates, DER.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.0
    }

    /// A short hash of the certificates (FNV-1a, 64 bits), so that `lb reload` can say a file
    /// changed; not a security measure.
    pub fn digest(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for cert in self.0.iter() {
            for &b in cert.as_ref() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{h:016x}")
    }
}

impl fmt::Debug for CaCertificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CaCertificates({} certificates, {})",
            self.0.len(),
            self.digest()
        )
    }
}

/// A probe section resolved against what it inherits: the defaults for a target's probe
/// (`base` is `None`), the target's probe for a path's overrides.
///
/// The type-specific fields (`port`, `path`, `expect_status`, and https's `sni`, `ca_file`,
/// `insecure`) are inherited only while the type stays the same. A timeout that is not given
/// (a default or an inherited one) never exceeds the interval; a given one must not.
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
        sni,
        ca_file,
        insecure,
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

    let tls_fields = |applies_to: &str| {
        not_for("sni", sni.is_some(), applies_to)?;
        not_for("ca_file", ca_file.is_some(), applies_to)?;
        not_for("insecure", insecure.is_some(), applies_to)
    };

    let kind = match ty {
        RawProbeType::Icmp => {
            not_for("port", port.is_some(), "tcp, http and https")?;
            not_for("path", path.is_some(), "http and https")?;
            not_for("expect_status", expect_status.is_some(), "http and https")?;
            tls_fields("https")?;
            ProbeKind::Icmp
        }
        RawProbeType::Tcp => {
            not_for("path", path.is_some(), "http and https")?;
            not_for("expect_status", expect_status.is_some(), "http and https")?;
            tls_fields("https")?;
            let port = match (port, inherited) {
                (Some(port), _) => port_number(&field("port"), port)?,
                (None, Some(&ProbeKind::Tcp { port })) => port,
                (None, _) => return Err(invalid(field("port"), "a tcp probe needs a port")),
            };
            ProbeKind::Tcp { port }
        }
        RawProbeType::Http => {
            tls_fields("https")?;
            let base = match inherited {
                Some(ProbeKind::Http {
                    port,
                    path,
                    expect_status,
                }) => (*port, path.as_str(), *expect_status),
                _ => (DEFAULT_HTTP_PORT, DEFAULT_HTTP_PATH, DEFAULT_EXPECT_STATUS),
            };
            let (port, path, expect_status) =
                http_fields(&field, (port, path, expect_status), base)?;
            ProbeKind::Http {
                port,
                path,
                expect_status,
            }
        }
        RawProbeType::Https => {
            let (base, base_sni, base_trust) = match inherited {
                Some(ProbeKind::Https {
                    port,
                    path,
                    expect_status,
                    sni,
                    trust,
                }) => (
                    (*port, path.as_str(), *expect_status),
                    sni.clone(),
                    trust.clone(),
                ),
                _ => (
                    (DEFAULT_HTTPS_PORT, DEFAULT_HTTP_PATH, DEFAULT_EXPECT_STATUS),
                    None,
                    TlsTrust::System,
                ),
            };
            let (port, path, expect_status) =
                http_fields(&field, (port, path, expect_status), base)?;
            let sni = match sni {
                Some(name) => Some(check_sni(&field("sni"), name)?),
                None => base_sni,
            };
            let trust = match (ca_file, insecure) {
                (Some(_), Some(true)) => {
                    return Err(invalid(
                        field("insecure"),
                        "true together with ca_file: a probe either verifies the server's \
                         certificate against ca_file or does not verify it at all",
                    ));
                }
                (Some(file), _) => check_ca_file(&field("ca_file"), file)?,
                (None, Some(true)) => TlsTrust::Insecure,
                // Verification back on: an inherited ca_file stays, else the host's roots.
                (None, Some(false)) => match base_trust {
                    TlsTrust::Insecure => TlsTrust::System,
                    trust => trust,
                },
                (None, None) => base_trust,
            };
            ProbeKind::Https {
                port,
                path,
                expect_status,
                sni,
                trust,
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

/// The fields http and https share: `port`, `path`, `expect_status` as given (`raw`), or else
/// from `base` (inherited, or the type's defaults).
fn http_fields(
    field: &impl Fn(&str) -> String,
    raw: (Option<u16>, Option<String>, Option<u16>),
    base: (u16, &str, u16),
) -> Result<(u16, String, u16), ConfigError> {
    let (port, path, expect_status) = raw;
    let (base_port, base_path, base_status) = base;
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
    Ok((port, path, expect_status))
}

/// A DNS name (sent as SNI, and verified) or an IP address (verified as an IP SAN; TLS sends
/// no SNI for an address).
fn check_sni(at: &str, name: String) -> Result<String, ConfigError> {
    match ServerName::try_from(name.as_str()) {
        Ok(_) => Ok(name),
        Err(_) => Err(invalid(
            at,
            format!("{name:?} is neither a DNS name nor an IP address"),
        )),
    }
}

/// The CA certificates of `file`, read now: a missing or bad file is the configuration's error.
fn check_ca_file(at: &str, file: String) -> Result<TlsTrust, ConfigError> {
    let path = PathBuf::from(&file);
    // The daemon's working directory is not the configuration's (systemd starts it in /).
    if !path.is_absolute() {
        return Err(invalid(
            at,
            format!("{file:?} is not an absolute path (the daemon does not run where the file is)"),
        ));
    }
    let certs = CaCertificates::read(&path).map_err(|reason| invalid(at, reason))?;
    Ok(TlsTrust::CaFile { path, certs })
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
