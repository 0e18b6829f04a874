//! TCP connect probes, and the connection the HTTP probe makes.

use std::{
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use tokio::net::{TcpSocket, TcpStream};

use crate::probe::{ProbeResult, ProbeSpec, failed, setsockopt_u32, succeeded};

pub(super) async fn tcp(spec: &ProbeSpec, port: u16) -> ProbeResult {
    match connect(spec, port).await {
        // Dropped at once: closed with a reset (`SO_LINGER` 0, see the module notes).
        Ok((_stream, rtt)) => succeeded(rtt, "connected"),
        Err(detail) => failed(detail),
    }
}

/// A connection to `spec.address:port` from `spec.source` on `spec.interface`, and the time the
/// handshake took.
pub(super) async fn connect(spec: &ProbeSpec, port: u16) -> Result<(TcpStream, Duration), String> {
    let socket = match spec.address {
        std::net::IpAddr::V4(_) => TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("tcp socket: {e}"))?;
    socket
        .set_zero_linger()
        .map_err(|e| format!("set SO_LINGER: {e}"))?;
    if let Some(interface) = &spec.interface {
        socket
            .bind_device(Some(interface.as_bytes()))
            .map_err(|e| bind_detail(&format!("interface {interface}"), &e))?;
    }
    if let Some(source) = spec.source {
        // The port is then picked at connect time for this destination, not at bind time
        // among all ports free for every destination. An `IPPROTO_IP` option, which the
        // kernel takes on IPv6 sockets too (`ipv6_setsockopt` hands `SOL_IP` on).
        setsockopt_u32(&socket, libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, 1)
            .map_err(|e| format!("set IP_BIND_ADDRESS_NO_PORT: {e}"))?;
        socket
            .bind(SocketAddr::from((source, 0)))
            .map_err(|e| bind_detail(&format!("source {source}"), &e))?;
    }
    let start = Instant::now();
    let stream = socket
        .connect(SocketAddr::from((spec.address, port)))
        .await
        .map_err(|e| connect_detail(&e))?;
    let seen = start.elapsed();
    // The kernel's round trip of the handshake; this thread may have seen the completion late.
    let rtt = handshake_rtt(&stream).map_or(seen, |rtt| rtt.min(seen));
    Ok((stream, rtt))
}

/// The kernel's smoothed round-trip time of a connection (`TCP_INFO`): right after the
/// handshake, the handshake's. `None` when the kernel has none.
fn handshake_rtt(stream: &TcpStream) -> Option<Duration> {
    // SAFETY: `tcp_info` is plain old data; all zeros is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is an open TCP socket borrowed for the call; `info` and `len`
    // point to live values and `len` holds `info`'s size, which the kernel does not exceed.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    (rc == 0 && info.tcpi_rtt != 0).then(|| Duration::from_micros(u64::from(info.tcpi_rtt)))
}

fn bind_detail(what: &str, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::PermissionDenied {
        format!("bind to {what}: {e} (needs CAP_NET_RAW)")
    } else {
        format!("bind to {what}: {e}")
    }
}

fn connect_detail(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        _ => format!("connect: {e}"),
    }
}
