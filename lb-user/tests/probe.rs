//! The health probes against local servers: TCP and HTTP on 127.0.0.1 and ::1, HTTPS on
//! 127.0.0.1 (a rustls server with certificates made here by rcgen: a CA's, and self-signed),
//! ICMP echo to 127.0.0.0/8 and ICMPv6 echo to ::1.
//!
//! Nothing leaves the machine. The ICMP tests and those binding to an interface need
//! `CAP_NET_RAW`: without it they print why and pass, unless `CI=true`, where they fail.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_user::{
    config::{CaCertificates, ProbeKind, TlsTrust},
    probe::{ProbeResult, ProbeSpec, Prober},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const TIMEOUT: Duration = Duration::from_secs(2);

fn spec(kind: ProbeKind, timeout: Duration) -> ProbeSpec {
    ProbeSpec {
        kind,
        address: LOCALHOST.into(),
        source: None,
        interface: None,
        timeout,
    }
}

fn http_kind(port: u16, expect_status: u16) -> ProbeKind {
    ProbeKind::Http {
        port,
        path: "/healthz".into(),
        expect_status,
    }
}

/// Whether this process may open raw sockets and bind to devices; if not, says why the test
/// skips (or fails the test under CI: `lb_testkit::ci::skip`).
fn privileged(prober: &Prober, test: &str) -> bool {
    let Some(why) = prober.icmp_unavailable() else {
        return true;
    };
    lb_testkit::ci::skip(lb_testkit::ci::Skip::Test { name: test.into() }, why);
    false
}

fn assert_ok(result: &ProbeResult) {
    assert!(result.ok, "probe failed: {result:?}");
    assert!(result.rtt.is_some(), "no rtt: {result:?}");
}

fn assert_failed(result: &ProbeResult, detail: &str) {
    assert!(!result.ok, "probe succeeded: {result:?}");
    assert!(
        result.detail.contains(detail),
        "detail {:?} does not mention {detail:?}",
        result.detail
    );
}

/// A port on 127.0.0.1 with nothing listening: bound, then closed.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    listener.local_addr().unwrap().port()
}

/// A server on 127.0.0.1 that reads each request (up to its blank line), then writes `answer`
/// if there is one and closes, or keeps the connection open and silent. Every request it read
/// goes to the channel.
async fn http_server(
    answer: Option<&'static [u8]>,
) -> (u16, mpsc::UnboundedReceiver<String>, JoinHandle<()>) {
    http_server_on(LOCALHOST.into(), answer).await
}

/// [`http_server`] on `address`.
async fn http_server_on(
    address: IpAddr,
    answer: Option<&'static [u8]>,
) -> (u16, mpsc::UnboundedReceiver<String>, JoinHandle<()>) {
    let listener = TcpListener::bind((address, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let request = read_request(&stream).await;
                let _ = tx.send(request);
                match answer {
                    Some(answer) => write_all(&stream, answer).await,
                    // Holds the connection open until the test ends.
                    None => std::future::pending().await,
                }
            });
        }
    });
    (port, rx, server)
}

async fn read_request(stream: &TcpStream) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 512];
    while !request.ends_with(b"\r\n\r\n") && request.len() < 4096 {
        stream.readable().await.unwrap();
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("server read: {e}"),
        }
    }
    String::from_utf8_lossy(&request).into_owned()
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) {
    while !data.is_empty() {
        stream.writable().await.unwrap();
        match stream.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("server write: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TCP

#[tokio::test]
async fn tcp_connects_to_a_listener() {
    let prober = Prober::new().unwrap();
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();

    let result = prober.probe(&spec(ProbeKind::Tcp { port }, TIMEOUT)).await;
    assert_ok(&result);
    assert_eq!(result.detail, "connected");
    assert!(result.rtt.unwrap() <= TIMEOUT);

    // The probe's connection completed the handshake and was reset at once (SO_LINGER 0).
    let (stream, peer) = listener.accept().await.unwrap();
    assert_eq!(peer.ip(), LOCALHOST);
    let mut buf = [0u8; 1];
    stream.readable().await.unwrap();
    let read = stream.try_read(&mut buf);
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {read:?}"
    );
}

#[tokio::test]
async fn tcp_refused_on_a_closed_port() {
    let prober = Prober::new().unwrap();
    let port = closed_port().await;
    let result = prober.probe(&spec(ProbeKind::Tcp { port }, TIMEOUT)).await;
    assert_eq!(
        result,
        ProbeResult {
            ok: false,
            rtt: None,
            detail: "connection refused".into(),
            timed_out: false,
        }
    );
}

#[tokio::test]
async fn tcp_from_a_source_address() {
    let prober = Prober::new().unwrap();
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // 127.0.0.2 is local too (all of 127.0.0.0/8 is): the listener sees it as the peer.
    let source = Ipv4Addr::new(127, 0, 0, 2);
    let spec = ProbeSpec {
        source: Some(source.into()),
        ..spec(ProbeKind::Tcp { port }, TIMEOUT)
    };

    assert_ok(&prober.probe(&spec).await);
    let (_, peer) = listener.accept().await.unwrap();
    assert_eq!(peer.ip(), source);
}

#[tokio::test]
async fn tcp_from_a_foreign_source_address_fails_clearly() {
    let prober = Prober::new().unwrap();
    let port = closed_port().await;
    // Not an address of this host (bind fails before anything is sent).
    let spec = ProbeSpec {
        source: Some(Ipv4Addr::new(192, 0, 2, 1).into()),
        ..spec(ProbeKind::Tcp { port }, TIMEOUT)
    };
    assert_failed(&prober.probe(&spec).await, "bind to source 192.0.2.1");
}

#[tokio::test]
async fn tcp_bound_to_the_loopback_interface() {
    let prober = Prober::new().unwrap();
    if !privileged(&prober, "tcp_bound_to_the_loopback_interface") {
        return;
    }
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let on_lo = ProbeSpec {
        interface: Some("lo".into()),
        ..spec(ProbeKind::Tcp { port }, TIMEOUT)
    };
    assert_ok(&prober.probe(&on_lo).await);

    let nowhere = ProbeSpec {
        interface: Some("lb-no-such0".into()),
        ..spec(ProbeKind::Tcp { port }, TIMEOUT)
    };
    assert_failed(
        &prober.probe(&nowhere).await,
        "bind to interface lb-no-such0",
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP

#[tokio::test]
async fn http_expected_status() {
    let prober = Prober::new().unwrap();
    let (port, mut requests, _server) =
        http_server(Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).await;

    let result = prober.probe(&spec(http_kind(port, 200), TIMEOUT)).await;
    assert_ok(&result);
    assert_eq!(result.detail, "status 200");

    let request = requests.recv().await.unwrap();
    assert_eq!(
        request,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: lb-probe\r\n\
             Connection: close\r\n\r\n"
        )
    );
}

#[tokio::test]
async fn http_status_line_split_over_writes() {
    let prober = Prober::new().unwrap();
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        read_request(&stream).await;
        for piece in [&b"HTT"[..], b"P/1.0 2", b"04 No Content\r", b"\n\r\n"] {
            write_all(&stream, piece).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let result = prober.probe(&spec(http_kind(port, 204), TIMEOUT)).await;
    assert_ok(&result);
    assert_eq!(result.detail, "status 204");
}

#[tokio::test]
async fn http_unexpected_status() {
    let prober = Prober::new().unwrap();
    let (port, _requests, _server) =
        http_server(Some(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;
    let result = prober.probe(&spec(http_kind(port, 200), TIMEOUT)).await;
    assert_failed(&result, "503");
    assert_eq!(result.detail, "status 503, expected 200");
}

#[tokio::test]
async fn http_garbage_answer() {
    let prober = Prober::new().unwrap();
    let (port, _requests, _server) = http_server(Some(b"SSH-2.0-OpenSSH_9.6\r\n")).await;
    let result = prober.probe(&spec(http_kind(port, 200), TIMEOUT)).await;
    assert_failed(&result, "malformed status line \"SSH-2.0-OpenSSH_9.6\"");

    // Garbage with no line end at all, on a connection left open: rejected at once, not
    // after the timeout.
    let (port, _requests, _server) = http_server(Some(b"\x00\x01\x02")).await;
    let started = Instant::now();
    let result = prober.probe(&spec(http_kind(port, 200), TIMEOUT)).await;
    assert_failed(&result, "malformed status line \"\\x00\\x01\\x02\"");
    assert!(started.elapsed() < TIMEOUT / 2);

    // Not HTTP/1.x.
    let (port, _requests, _server) = http_server(Some(b"HTTP/1.1 2xx OK\r\n\r\n")).await;
    let result = prober.probe(&spec(http_kind(port, 200), TIMEOUT)).await;
    assert_failed(&result, "malformed status line");
}

#[tokio::test]
async fn http_closed_without_an_answer() {
    let prober = Prober::new().unwrap();
    let (port, _requests, _server) = http_server(Some(b"")).await;
    let result = prober.probe(&spec(http_kind(port, 200), TIMEOUT)).await;
    assert_failed(&result, "connection closed before the status line");
}

#[tokio::test]
async fn http_refused() {
    let prober = Prober::new().unwrap();
    let port = closed_port().await;
    let result = prober.probe(&spec(http_kind(port, 200), TIMEOUT)).await;
    assert_failed(&result, "connection refused");
}

/// The connection completes but nothing answers: the timeout fires while reading the status
/// line (the local stand-in for an unreachable host, which these tests may not use).
#[tokio::test]
async fn http_silent_server_times_out() {
    let prober = Prober::new().unwrap();
    let (port, mut requests, _server) = http_server(None).await;
    let timeout = Duration::from_millis(200);

    let started = Instant::now();
    let result = prober.probe(&spec(http_kind(port, 200), timeout)).await;
    let took = started.elapsed();
    assert_eq!(
        result,
        ProbeResult {
            ok: false,
            rtt: None,
            detail: "timeout after 200 ms".into(),
            timed_out: true,
        }
    );
    assert!(took >= timeout, "gave up early: {took:?}");
    assert!(took < timeout + Duration::from_millis(150), "took {took:?}");
    // The request was sent: the timeout is the server's silence.
    assert!(requests.recv().await.unwrap().starts_with("GET /healthz "));
}

#[tokio::test]
async fn http_path_cannot_inject_headers() {
    let prober = Prober::new().unwrap();
    let (port, _requests, _server) = http_server(Some(b"HTTP/1.1 200 OK\r\n\r\n")).await;
    let kind = ProbeKind::Http {
        port,
        path: "/ HTTP/1.1\r\nX-Evil: 1\r\n".into(),
        expect_status: 200,
    };
    assert_failed(
        &prober.probe(&spec(kind, TIMEOUT)).await,
        "not printable ascii",
    );
}

// ---------------------------------------------------------------------------------------------
// HTTPS

/// The name the test server's certificates are for (with the address 127.0.0.1).
const SERVER_NAME: &str = "vm.test";

/// A server's certificate chain and key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// A CA made for the test, and a certificate it signed for [`SERVER_NAME`] and 127.0.0.1.
struct Pki {
    ca_pem: String,
    server: Identity,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "lb probe test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server: Identity {
            chain: vec![server.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        },
    }
}

/// A self-signed certificate for [`SERVER_NAME`] and 127.0.0.1 (no CA anywhere trusts it).
fn self_signed() -> Identity {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Identity {
        chain: vec![cert.der().clone()],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    }
}

fn https_kind(port: u16, expect_status: u16, sni: Option<&str>, trust: TlsTrust) -> ProbeKind {
    ProbeKind::Https {
        port,
        path: "/healthz".into(),
        expect_status,
        sni: sni.map(str::to_owned),
        trust,
    }
}

fn ca_trust(pki: &Pki) -> TlsTrust {
    TlsTrust::CaFile {
        path: "/test/ca.pem".into(),
        certs: CaCertificates::from_pem(pki.ca_pem.as_bytes()).unwrap(),
    }
}

/// What the HTTPS server saw of one probe: the SNI it was sent and the request.
#[derive(Debug)]
struct Seen {
    sni: Option<String>,
    request: String,
}

/// A rustls server on 127.0.0.1 with `identity` that reads each request (up to its blank line),
/// writes `answer` and closes (with TLS's close_notify). What it saw of each completed handshake
/// goes to the channel; a client that gave up on the handshake is ignored.
async fn https_server(
    identity: Identity,
    answer: &'static [u8],
) -> (u16, mpsc::UnboundedReceiver<Seen>, JoinHandle<()>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(identity.chain, identity.key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                let mut request = Vec::new();
                let mut buf = [0u8; 512];
                while !request.ends_with(b"\r\n\r\n") && request.len() < 4096 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request).into_owned();
                let _ = tx.send(Seen { sni, request });
                let _ = tls.write_all(answer).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, rx, server)
}

const OK_200: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// (1) Verified against the probe's CA for its `sni`: sent as SNI, and as the `Host` header.
#[tokio::test]
async fn https_with_a_ca_file_and_sni() {
    let prober = Prober::new().unwrap();
    let pki = pki();
    let trust = ca_trust(&pki);
    let (port, mut seen, _server) = https_server(pki.server, OK_200).await;
    let result = prober
        .probe(&spec(
            https_kind(port, 200, Some(SERVER_NAME), trust),
            TIMEOUT,
        ))
        .await;
    assert_ok(&result);
    assert_eq!(result.detail, "status 200");
    let seen = seen.recv().await.unwrap();
    assert_eq!(seen.sni.as_deref(), Some(SERVER_NAME));
    assert_eq!(
        seen.request,
        format!(
            "GET /healthz HTTP/1.1\r\nHost: vm.test:{port}\r\nUser-Agent: lb-probe\r\n\
             Connection: close\r\n\r\n"
        )
    );
}

/// (2) Without `sni`: the certificate is verified for the path's address (its IP SAN), and no
/// SNI is sent.
#[tokio::test]
async fn https_without_sni_verifies_the_address() {
    let prober = Prober::new().unwrap();
    let pki = pki();
    let trust = ca_trust(&pki);
    let (port, mut seen, _server) = https_server(pki.server, OK_200).await;
    let result = prober
        .probe(&spec(https_kind(port, 200, None, trust), TIMEOUT))
        .await;
    assert_ok(&result);
    let seen = seen.recv().await.unwrap();
    assert_eq!(seen.sni, None);
    assert!(
        seen.request
            .contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")),
        "{seen:?}"
    );
}

/// (3) The host's roots do not know the test's CA: the detail names the certificate problem.
#[tokio::test]
async fn https_with_the_system_roots_refuses_an_unknown_ca() {
    let prober = Prober::new().unwrap();
    let (port, _seen, _server) = https_server(pki().server, OK_200).await;
    let result = prober
        .probe(&spec(
            https_kind(port, 200, Some(SERVER_NAME), TlsTrust::System),
            TIMEOUT,
        ))
        .await;
    assert!(!result.ok, "{result:?}");
    assert!(!result.timed_out, "{result:?}");
    // A host without any roots says that instead (and the probe fails all the same).
    assert!(
        result.detail == "TLS handshake failed: invalid peer certificate: UnknownIssuer"
            || result
                .detail
                .starts_with("no trusted root certificates on this host"),
        "{result:?}"
    );
}

/// (4) `insecure`: a self-signed certificate passes, with or without `sni`; verified, it fails.
#[tokio::test]
async fn https_insecure_takes_a_self_signed_certificate() {
    let prober = Prober::new().unwrap();
    let (port, mut seen, _server) = https_server(self_signed(), OK_200).await;
    for sni in [None, Some("anything.test")] {
        let result = prober
            .probe(&spec(
                https_kind(port, 200, sni, TlsTrust::Insecure),
                TIMEOUT,
            ))
            .await;
        assert_ok(&result);
        assert_eq!(result.detail, "status 200");
        assert_eq!(seen.recv().await.unwrap().sni.as_deref(), sni);
    }
    // The same server against a CA it was not signed by.
    let result = prober
        .probe(&spec(
            https_kind(port, 200, Some(SERVER_NAME), ca_trust(&pki())),
            TIMEOUT,
        ))
        .await;
    assert_failed(&result, "invalid peer certificate: UnknownIssuer");
}

/// (5) A name the certificate is not for: the detail names it, and those it is for.
#[tokio::test]
async fn https_wrong_sni_names_the_mismatch() {
    let prober = Prober::new().unwrap();
    let pki = pki();
    let trust = ca_trust(&pki);
    let (port, _seen, _server) = https_server(pki.server, OK_200).await;
    let result = prober
        .probe(&spec(
            https_kind(port, 200, Some("other.test"), trust),
            TIMEOUT,
        ))
        .await;
    assert_failed(
        &result,
        "TLS handshake failed: invalid peer certificate: certificate not valid for name \
         \"other.test\"; certificate is only valid for DnsName(\"vm.test\") or \
         IpAddress(127.0.0.1)",
    );
}

/// (6) The status is judged as the http probe judges it, with its words.
#[tokio::test]
async fn https_unexpected_status() {
    let prober = Prober::new().unwrap();
    let pki = pki();
    let trust = ca_trust(&pki);
    let (port, _seen, _server) =
        https_server(pki.server, b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
    let result = prober
        .probe(&spec(
            https_kind(port, 200, Some(SERVER_NAME), trust.clone()),
            TIMEOUT,
        ))
        .await;
    assert_failed(&result, "503");
    assert_eq!(result.detail, "status 503, expected 200");
    let result = prober
        .probe(&spec(
            https_kind(port, 503, Some(SERVER_NAME), trust),
            TIMEOUT,
        ))
        .await;
    assert_ok(&result);
    assert_eq!(result.detail, "status 503");
}

/// (7) Plain HTTP on the port: the handshake fails, saying the answer is not TLS.
#[tokio::test]
async fn https_against_plain_http() {
    let prober = Prober::new().unwrap();
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // What an HTTP server does with a TLS ClientHello: a 400, then it closes.
    let _server = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await;
        }
    });
    let result = prober
        .probe(&spec(
            https_kind(port, 200, None, TlsTrust::Insecure),
            TIMEOUT,
        ))
        .await;
    assert_failed(&result, "TLS handshake failed");
    assert_failed(&result, "not TLS");
}

/// (8) Nothing listening.
#[tokio::test]
async fn https_refused() {
    let prober = Prober::new().unwrap();
    let port = closed_port().await;
    let result = prober
        .probe(&spec(
            https_kind(port, 200, None, TlsTrust::Insecure),
            TIMEOUT,
        ))
        .await;
    assert_failed(&result, "connection refused");
}

/// A server that takes the connection and never answers the handshake: the probe's timeout,
/// as for http.
#[tokio::test]
async fn https_silent_server_times_out() {
    let prober = Prober::new().unwrap();
    let (port, _requests, _server) = http_server(None).await;
    let timeout = Duration::from_millis(200);
    let started = Instant::now();
    let result = prober
        .probe(&spec(
            https_kind(port, 200, None, TlsTrust::Insecure),
            timeout,
        ))
        .await;
    assert!(result.timed_out, "{result:?}");
    assert_eq!(result.detail, "timeout after 200 ms");
    assert!(started.elapsed() < timeout + Duration::from_millis(150));
}

/// The https probe goes from the path's source address too (the same connection as tcp's).
#[tokio::test]
async fn https_from_a_source_address() {
    let prober = Prober::new().unwrap();
    let pki = pki();
    let trust = ca_trust(&pki);
    let (port, _seen, _server) = https_server(pki.server, OK_200).await;
    let from = ProbeSpec {
        source: Some(Ipv4Addr::new(127, 0, 0, 2).into()),
        ..spec(https_kind(port, 200, Some(SERVER_NAME), trust), TIMEOUT)
    };
    assert_ok(&prober.probe(&from).await);
}

// ---------------------------------------------------------------------------------------------
// ICMP

#[tokio::test]
async fn icmp_echo_to_loopback() {
    let prober = Prober::new().unwrap();
    if !privileged(&prober, "icmp_echo_to_loopback") {
        return;
    }
    let result = prober.probe(&spec(ProbeKind::Icmp, TIMEOUT)).await;
    assert_ok(&result);
    assert_eq!(result.detail, "echo reply from 127.0.0.1");
    assert_eq!(prober.icmp_in_flight(), 0);
}

/// A thread held up past a probe's deadline (a loaded host) does not make a timeout of a reply
/// the kernel received in time: the reply carries the kernel's receive time, and the socket is
/// read once more when the deadline passes. The same for a TCP handshake, whose round trip is
/// the kernel's. (Both used to fail: the reply was timed when this thread got to it.)
#[tokio::test]
async fn a_held_up_thread_does_not_turn_answers_into_timeouts() {
    let prober = Prober::new().unwrap();
    if !privileged(
        &prober,
        "a_held_up_thread_does_not_turn_answers_into_timeouts",
    ) {
        return;
    }
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // The kernel turns receive timestamps on a moment after a socket first asks for them (a
    // deferred switch); until then it times a datagram when it is read. A daemon's prober has
    // been up long before.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let timeout = Duration::from_millis(10);
    for kind in [ProbeKind::Icmp, ProbeKind::Tcp { port }] {
        let spec = spec(kind.clone(), timeout);
        let probe = prober.probe(&spec);
        let hold_up = async {
            // Once the probe has sent (it runs first and then waits), the only thread of
            // this runtime stops for five timeouts.
            tokio::task::yield_now().await;
            std::thread::sleep(timeout * 5);
        };
        let (result, ()) = tokio::join!(probe, hold_up);
        assert!(result.ok, "{kind:?}: {result:?}");
        let rtt = result.rtt.expect("an rtt");
        assert!(
            rtt <= timeout,
            "{kind:?}: the kernel's round trip, not the wait: {rtt:?}"
        );
    }
    assert_eq!(prober.icmp_in_flight(), 0);
}

/// Without `CAP_NET_RAW` the prober still starts, and ICMP probes say what is missing.
#[tokio::test]
async fn icmp_without_privileges_says_why() {
    // Capabilities belong to a thread, and this test's runtime runs on this thread alone
    // (`current_thread`): without CAP_NET_RAW in its effective set, the thread opens sockets as
    // an unprivileged daemon would, whatever rights the process has (root, under CI).
    caps::drop(None, caps::CapSet::Effective, caps::Capability::CAP_NET_RAW)
        .expect("dropping CAP_NET_RAW from this thread's effective set");
    let prober = Prober::new().unwrap();
    let why = prober.icmp_unavailable().map(str::to_owned);
    assert!(
        why.as_deref().is_some_and(|w| w.contains("CAP_NET_RAW")),
        "without CAP_NET_RAW the prober says why icmp is unavailable: {why:?}"
    );
    let result = prober.probe(&spec(ProbeKind::Icmp, TIMEOUT)).await;
    assert_failed(&result, "icmp probes need CAP_NET_RAW");
    assert_eq!(prober.icmp_in_flight(), 0);
}

/// 50 probes at once from each of two probers (two sockets, each seeing every reply), each to
/// its own loopback address: every probe gets its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn icmp_concurrent_probes_each_get_their_reply() {
    let first = Prober::new().unwrap();
    if !privileged(&first, "icmp_concurrent_probes_each_get_their_reply") {
        return;
    }
    let second = Prober::new().unwrap();
    let specs: Vec<ProbeSpec> = (1..=50)
        .map(|i| ProbeSpec {
            address: Ipv4Addr::new(127, 0, 0, i).into(),
            ..spec(ProbeKind::Icmp, TIMEOUT)
        })
        .collect();

    let probes = specs
        .iter()
        .flat_map(|spec| [first.probe(spec), second.probe(spec)]);
    let results = futures_join_all(probes).await;

    for (i, result) in results.iter().enumerate() {
        assert_ok(result);
        let address = Ipv4Addr::new(127, 0, 0, (i / 2 + 1) as u8);
        assert_eq!(result.detail, format!("echo reply from {address}"));
    }
    assert_eq!(first.icmp_in_flight(), 0);
    assert_eq!(second.icmp_in_flight(), 0);
}

/// Probes that time out before their reply leave nothing behind, and their late replies
/// disturb nothing: the next probes succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icmp_replies_after_the_timeout_are_ignored() {
    let prober = Prober::new().unwrap();
    if !privileged(&prober, "icmp_replies_after_the_timeout_are_ignored") {
        return;
    }
    let hasty = spec(ProbeKind::Icmp, Duration::from_micros(1));
    let results = futures_join_all((0..20).map(|_| prober.probe(&hasty))).await;
    for result in &results {
        assert_eq!(
            *result,
            ProbeResult {
                ok: false,
                rtt: None,
                detail: "timeout after 0.001 ms".into(),
                timed_out: true,
            }
        );
    }
    assert_eq!(prober.icmp_in_flight(), 0);

    // The late replies arrive (or have arrived) at the receive task, which drops them.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..3 {
        let result = prober.probe(&spec(ProbeKind::Icmp, TIMEOUT)).await;
        assert_ok(&result);
    }
    assert_eq!(prober.icmp_in_flight(), 0);
}

#[tokio::test]
async fn icmp_from_a_source_on_an_interface() {
    let prober = Prober::new().unwrap();
    if !privileged(&prober, "icmp_from_a_source_on_an_interface") {
        return;
    }
    for (source, interface) in [
        (Some(LOCALHOST), None),
        (None, Some("lo")),
        (Some(Ipv4Addr::new(127, 0, 0, 3)), Some("lo")),
    ] {
        let spec = ProbeSpec {
            source: source.map(IpAddr::V4),
            interface: interface.map(str::to_owned),
            ..spec(ProbeKind::Icmp, TIMEOUT)
        };
        // Twice: the second probe reuses the bound socket opened by the first.
        for _ in 0..2 {
            let result = prober.probe(&spec).await;
            assert!(result.ok, "{source:?} on {interface:?}: {result:?}");
        }
    }
    assert_eq!(prober.icmp_in_flight(), 0);

    let nowhere = ProbeSpec {
        interface: Some("lb-no-such0".into()),
        ..spec(ProbeKind::Icmp, TIMEOUT)
    };
    assert_failed(
        &prober.probe(&nowhere).await,
        "bind to interface lb-no-such0",
    );
}

// ---------------------------------------------------------------------------------------------
// IPv6: the same probes to ::1

/// Whether this host has IPv6 on its loopback (`::1` can be bound); if not, says why the test
/// skips (or fails it under CI).
fn ipv6_loopback(test: &str) -> bool {
    match std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        Ok(_) => true,
        Err(e) => {
            lb_testkit::ci::skip(
                lb_testkit::ci::Skip::Test { name: test.into() },
                &format!("no IPv6 on lo: binding [::1] failed: {e}"),
            );
            false
        }
    }
}

fn spec6(kind: ProbeKind, timeout: Duration) -> ProbeSpec {
    ProbeSpec {
        address: Ipv6Addr::LOCALHOST.into(),
        ..spec(kind, timeout)
    }
}

#[tokio::test]
async fn tcp_connects_over_ipv6() {
    if !ipv6_loopback("tcp_connects_over_ipv6") {
        return;
    }
    let prober = Prober::new().unwrap();
    let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let result = prober.probe(&spec6(ProbeKind::Tcp { port }, TIMEOUT)).await;
    assert_ok(&result);
    let (_, peer) = listener.accept().await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));

    // From a source address of the family (IP_BIND_ADDRESS_NO_PORT on an IPv6 socket).
    let from = ProbeSpec {
        source: Some(Ipv6Addr::LOCALHOST.into()),
        ..spec6(ProbeKind::Tcp { port }, TIMEOUT)
    };
    assert_ok(&prober.probe(&from).await);
    let (_, peer) = listener.accept().await.unwrap();
    assert_eq!(peer.ip(), IpAddr::V6(Ipv6Addr::LOCALHOST));

    let closed = closed_port().await;
    let nobody = prober
        .probe(&spec6(ProbeKind::Tcp { port: closed }, TIMEOUT))
        .await;
    assert_failed(&nobody, "connection refused");
}

/// The HTTP probe to an IPv6 address names it in brackets in `Host` (RFC 3986's IP-literal).
#[tokio::test]
async fn http_over_ipv6_sends_a_bracketed_host() {
    if !ipv6_loopback("http_over_ipv6_sends_a_bracketed_host") {
        return;
    }
    let prober = Prober::new().unwrap();
    let (port, mut requests, _server) =
        http_server_on(Ipv6Addr::LOCALHOST.into(), Some(b"HTTP/1.1 200 OK\r\n\r\n")).await;
    let result = prober.probe(&spec6(http_kind(port, 200), TIMEOUT)).await;
    assert_ok(&result);
    let request = requests.recv().await.unwrap();
    assert!(
        request.contains(&format!("\r\nHost: [::1]:{port}\r\n")),
        "{request:?}"
    );
}

/// ICMPv6 echo to ::1 over the prober's ICMPv6 socket (opened on the first IPv6 probe), alone,
/// side by side with IPv4 probes on the other socket, and bound to an interface and a source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icmpv6_echo_to_loopback() {
    let prober = Prober::new().unwrap();
    if !privileged(&prober, "icmpv6_echo_to_loopback") || !ipv6_loopback("icmpv6_echo_to_loopback")
    {
        return;
    }
    let result = prober.probe(&spec6(ProbeKind::Icmp, TIMEOUT)).await;
    assert_ok(&result);
    assert_eq!(result.detail, "echo reply from ::1");

    let v4 = spec(ProbeKind::Icmp, TIMEOUT);
    let v6 = spec6(ProbeKind::Icmp, TIMEOUT);
    let probes = (0..20).map(|i| {
        if i % 2 == 0 {
            prober.probe(&v4)
        } else {
            prober.probe(&v6)
        }
    });
    for (i, result) in futures_join_all(probes).await.iter().enumerate() {
        assert_ok(result);
        let from = if i % 2 == 0 { "127.0.0.1" } else { "::1" };
        assert_eq!(result.detail, format!("echo reply from {from}"));
    }

    for (source, interface) in [
        (Some(Ipv6Addr::LOCALHOST), None),
        (None, Some("lo")),
        (Some(Ipv6Addr::LOCALHOST), Some("lo")),
    ] {
        let spec = ProbeSpec {
            source: source.map(IpAddr::V6),
            interface: interface.map(str::to_owned),
            ..spec6(ProbeKind::Icmp, TIMEOUT)
        };
        for _ in 0..2 {
            let result = prober.probe(&spec).await;
            assert!(result.ok, "{source:?} on {interface:?}: {result:?}");
        }
    }
    assert_eq!(prober.icmp_in_flight(), 0);

    // Probes that time out leave nothing behind, and their late replies disturb nothing.
    let hasty = spec6(ProbeKind::Icmp, Duration::from_micros(1));
    for result in futures_join_all((0..10).map(|_| prober.probe(&hasty))).await {
        assert!(result.timed_out, "{result:?}");
    }
    assert_eq!(prober.icmp_in_flight(), 0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_ok(&prober.probe(&v6).await);
}

#[tokio::test]
async fn prober_needs_a_runtime() {
    let error = std::thread::spawn(Prober::new).join().unwrap().unwrap_err();
    assert!(error.to_string().contains("tokio runtime"), "{error}");
}

/// Runs the futures concurrently on this task and returns their outputs in order (what
/// `futures::future::join_all` does, without the dependency).
async fn futures_join_all<F: std::future::Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (future, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs.into_iter().map(|o| o.unwrap()).collect()
}

/// The fuzz targets (`fuzz/`, outside the workspace, built only by `cargo xtask fuzz`) call these
/// by these paths: a move that hides them fails here, not only there.
#[test]
fn the_fuzz_targets_entry_points_stay_public() {
    assert_eq!(
        lb_user::probe::parse_status_line(b"HTTP/1.1 200 OK"),
        Some(200)
    );
    assert!(lb_user::probe::EchoReply::parse(&[]).is_none());
}
