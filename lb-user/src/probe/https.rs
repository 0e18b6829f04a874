//! HTTPS status probes: the HTTP probe's GET and status line ([`http::exchange`]) over TLS
//! (rustls with the ring provider) on the probe's own TCP connection ([`connect`]: the same
//! source address, interface and reset on close as the other probes).
//!
//! The server's certificate is verified every probe, as the probe's [`TlsTrust`] says, for its
//! `sni` (sent, and verified) or else for the path's address (an IP SAN; TLS sends no SNI for
//! an address). Sessions are not resumed: a resumed session skips the certificate, and a probe
//! that took an expired or replaced certificate for good until the ticket ran out would judge
//! the path on old news. A full handshake costs a few hundred microseconds of CPU.
//!
//! Building a client configuration is not done per probe: [`TlsConfigs`] keeps one per trust.
//! The host's roots are read once, on tokio's blocking pool, the first time a probe needs them.

use std::{
    io,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tokio_rustls::TlsConnector;

use crate::{
    config::{CaCertificates, TlsTrust},
    probe::{ProbeResult, ProbeSpec, failed, http, lock, tcp::connect},
};

/// The port the `Host` header leaves out for https.
pub(crate) const HTTPS_PORT: u16 = 443;
/// Client configurations kept for `ca_file` and `insecure` probes: one per distinct trust in
/// the running configuration; reloads that change CA files add more, so the oldest go.
const KEPT_CONFIGS: usize = 64;

/// The TLS client configurations of the https probes, one per trust, made on first use.
#[derive(Default)]
pub(crate) struct TlsConfigs {
    /// The host's roots (not kept when there are none: they may be installed later).
    system: tokio::sync::OnceCell<Arc<ClientConfig>>,
    /// `ca_file` and `insecure` trusts, oldest first.
    other: Mutex<Vec<(TlsTrust, Arc<ClientConfig>)>>,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfigs")
            .field("system", &self.system.initialized())
            .field("other", &lock(&self.other).len())
            .finish()
    }
}

impl TlsConfigs {
    /// The client configuration for `trust`; the error is a probe's detail.
    pub(crate) async fn get(&self, trust: &TlsTrust) -> Result<Arc<ClientConfig>, String> {
        let certs = match trust {
            TlsTrust::System => {
                return self
                    .system
                    .get_or_try_init(|| async {
                        let roots = tokio::task::spawn_blocking(system_roots)
                            .await
                            .map_err(|e| format!("reading the host's root certificates: {e}"))??;
                        verified(roots)
                    })
                    .await
                    .cloned();
            }
            TlsTrust::CaFile { certs, .. } => Some(certs),
            TlsTrust::Insecure => None,
        };
        let mut kept = lock(&self.other);
        if let Some((_, config)) = kept.iter().find(|(t, _)| t == trust) {
            return Ok(Arc::clone(config));
        }
        let config = match certs {
            Some(certs) => verified(ca_roots(certs)?)?,
            None => unverified()?,
        };
        if kept.len() >= KEPT_CONFIGS {
            kept.remove(0);
        }
        kept.push((trust.clone(), Arc::clone(&config)));
        Ok(config)
    }
}

/// One https probe: `GET path` on `spec.address:port` over TLS with `tls`, for `sni` (or the
/// address), answered with `expect_status`.
pub(crate) async fn https(
    spec: &ProbeSpec,
    tls: Arc<ClientConfig>,
    port: u16,
    path: &str,
    expect_status: u16,
    sni: Option<&str>,
) -> ProbeResult {
    if let Err(detail) = http::check_path(path) {
        return failed(detail);
    }
    let server_name = match sni {
        // Checked when the configuration was loaded.
        Some(name) => match ServerName::try_from(name.to_owned()) {
            Ok(name) => name,
            Err(e) => return failed(format!("sni {name:?}: {e}")),
        },
        None => ServerName::IpAddress(spec.address.into()),
    };
    let start = Instant::now();
    let tcp = match connect(spec, port).await {
        Ok((stream, _)) => stream,
        Err(detail) => return failed(detail),
    };
    let mut stream = match TlsConnector::from(tls).connect(server_name, tcp).await {
        Ok(stream) => stream,
        Err(e) => return failed(handshake_detail(&e)),
    };
    // Virtual hosts are told apart by the `Host` header as by SNI: the same name in both.
    let host = match sni {
        Some(name) => match name.parse::<IpAddr>() {
            Ok(address) => http::host(address, port, HTTPS_PORT),
            Err(_) if port == HTTPS_PORT => name.to_owned(),
            Err(_) => format!("{name}:{port}"),
        },
        None => http::host(spec.address, port, HTTPS_PORT),
    };
    http::exchange(
        &mut stream,
        start,
        &http::request(path, &host),
        expect_status,
    )
    .await
    // Dropped without TLS's close_notify: the TCP connection is reset (SO_LINGER 0), as the
    // http probe's is.
}

/// Why the handshake failed, for an operator: rustls's reason (`invalid peer certificate:
/// UnknownIssuer`, `certificate not valid for name …`, `received fatal alert: …`), or what the
/// connection did.
pub(crate) fn handshake_detail(e: &io::Error) -> String {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        // The first bytes back were no TLS record: an "HTTP/1.1 400" begins with 'H'.
        Some(e @ rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType)) => {
            format!("TLS handshake failed: {e} (the answer is not TLS: plain HTTP on this port?)")
        }
        Some(e) => format!("TLS handshake failed: {e}"),
        None => match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                "TLS handshake failed: the server closed the connection".into()
            }
            io::ErrorKind::ConnectionReset => {
                "TLS handshake failed: the server reset the connection".into()
            }
            _ => format!("TLS handshake failed: {e}"),
        },
    }
}

/// The ring provider, named rather than taken from a process default (none is installed, and
/// two providers compiled in would make the default ambiguous).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn verified(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(finish(config))
}

fn unverified() -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
        .with_no_client_auth();
    Ok(finish(config))
}

/// What every probe's configuration shares: HTTP/1.1 said in ALPN (what the probe speaks), no
/// resumption (see the module notes).
fn finish(mut config: ClientConfig) -> Arc<ClientConfig> {
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = Resumption::disabled();
    Arc::new(config)
}

fn ca_roots(certs: &CaCertificates) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs.certs() {
        // Checked when the configuration was loaded.
        roots
            .add(cert.clone())
            .map_err(|e| format!("ca_file certificate: {e}"))?;
    }
    Ok(roots)
}

/// The host's trusted roots (`rustls-native-certs`: the distribution's bundle, or
/// `SSL_CERT_FILE` / `SSL_CERT_DIR`). Blocking: reads files.
fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or(String::new(), |e| format!(" ({e})"));
        return Err(format!(
            "no trusted root certificates on this host{why}: install them (ca-certificates) or \
             give the probe a ca_file"
        ));
    }
    Ok(roots)
}

/// `insecure: true`: takes any certificate for any name, but still checks that the server
/// holds the key of the certificate it sent (the handshake's signatures), so the connection is
/// TLS with whoever answered.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
