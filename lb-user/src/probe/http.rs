//! HTTP status probes: a GET over a TCP connection, judged by the status line. The exchange
//! itself ([`exchange`]) is the https probe's too, over its TLS stream.

use std::{io, time::Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use crate::probe::{ProbeResult, ProbeSpec, failed, succeeded, tcp::connect};

/// How much of the answer is read looking for the status line.
const STATUS_LINE_MAX: usize = 1024;
/// How much of a bad status line goes into the detail.
pub(crate) const QUOTE_MAX: usize = 64;
const HTTP_PREFIX: &[u8] = b"HTTP/1.";
/// The port the `Host` header leaves out for plain HTTP.
pub(crate) const HTTP_PORT: u16 = 80;

pub(crate) async fn http(
    spec: &ProbeSpec,
    port: u16,
    path: &str,
    expect_status: u16,
) -> ProbeResult {
    if let Err(detail) = check_path(path) {
        return failed(detail);
    }
    let start = Instant::now();
    let mut stream = match connect(spec, port).await {
        Ok((stream, _)) => stream,
        Err(detail) => return failed(detail),
    };
    let request = request(path, &host(spec.address, port, HTTP_PORT));
    exchange(&mut stream, start, &request, expect_status).await
    // The rest of the answer stays unread: dropping the stream resets the connection.
}

/// The path goes verbatim into the request line: nothing that could end it or add a header.
pub(crate) fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "http path {path:?} is not printable ascii without spaces"
        ));
    }
    Ok(())
}

/// The request of a probe: `GET path` for `host` (the `Host` header's value).
pub(crate) fn request(path: &str, host: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-probe\r\nConnection: close\r\n\r\n"
    )
}

/// Sends `request` on `stream` (connected at `start`) and judges the answer's status line:
/// the probe's result, its RTT from `start` to the complete status line.
pub(crate) async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    start: Instant,
    request: &str,
    expect_status: u16,
) -> ProbeResult {
    let sent = async {
        stream.write_all(request.as_bytes()).await?;
        // A TLS stream holds what it was given until flushed.
        stream.flush().await
    };
    if let Err(e) = sent.await {
        return failed(format!("send request: {e}"));
    }
    let mut buf = [0u8; STATUS_LINE_MAX];
    let line = match read_status_line(stream, &mut buf).await {
        Ok(line) => line,
        Err(detail) => return failed(detail),
    };
    let rtt = start.elapsed();
    match parse_status_line(line) {
        Some(status) if status == expect_status => succeeded(rtt, format!("status {status}")),
        Some(status) => failed(format!("status {status}, expected {expect_status}")),
        None => failed(format!("malformed status line \"{}\"", quote(line))),
    }
}

/// The `Host` header's value: RFC 9110 7.2, the port is part of it unless it is the scheme's
/// default (`default_port`: 80 for http, 443 for https); an IPv6 address in brackets (RFC
/// 3986's IP-literal).
pub(crate) fn host(address: std::net::IpAddr, port: u16, default_port: u16) -> String {
    match address {
        _ if port != default_port => std::net::SocketAddr::new(address, port).to_string(),
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// Reads until the first line of the answer is complete; returns it without its line end.
/// Gives up early when the answer cannot be HTTP/1.x.
async fn read_status_line<'b, S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &'b mut [u8; STATUS_LINE_MAX],
) -> Result<&'b [u8], String> {
    let mut len = 0;
    let end = loop {
        let got = buf.get(..len).unwrap_or_default();
        if let Some(end) = got.iter().position(|&b| b == b'\n') {
            break end;
        }
        let prefix = got.len().min(HTTP_PREFIX.len());
        if got.get(..prefix) != HTTP_PREFIX.get(..prefix) {
            return Err(format!("malformed status line \"{}\"", quote(got)));
        }
        if len == buf.len() {
            return Err(format!(
                "no status line in the first {STATUS_LINE_MAX} bytes"
            ));
        }
        let n = match stream.read(buf.get_mut(len..).unwrap_or_default()).await {
            Ok(n) => n,
            // A TLS stream says so when the connection ends without TLS's own close
            // (`close_notify`): closed all the same.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err("connection reset before the status line".into());
            }
            Err(e) => return Err(format!("read answer: {e}")),
        };
        if n == 0 {
            if len == 0 {
                return Err("connection closed before the status line".into());
            }
            let got = buf.get(..len).unwrap_or_default();
            return Err(format!(
                "connection closed inside the status line \"{}\"",
                quote(got)
            ));
        }
        len += n;
    };
    let line = buf.get(..end).unwrap_or_default();
    Ok(line.strip_suffix(b"\r").unwrap_or(line))
}

/// The status code of `HTTP/1.x NNN[ reason]` (public for the fuzz targets).
pub fn parse_status_line(line: &[u8]) -> Option<u16> {
    let rest = line.strip_prefix(HTTP_PREFIX)?;
    let [minor, b' ', d0, d1, d2, after @ ..] = rest else {
        return None;
    };
    if !minor.is_ascii_digit() || !matches!(after, [] | [b' ', ..]) {
        return None;
    }
    let mut status = 0u16;
    for d in [d0, d1, d2] {
        if !d.is_ascii_digit() {
            return None;
        }
        status = status * 10 + u16::from(d - b'0');
    }
    Some(status)
}

/// The start of `bytes`, printable.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let cut = bytes.get(..QUOTE_MAX).unwrap_or(bytes);
    let mut quoted = cut.escape_ascii().to_string();
    if cut.len() < bytes.len() {
        quoted.push_str("...");
    }
    quoted
}
