//! HTTP status probes: a GET over a TCP connection, judged by the status line.

use std::{io, time::Instant};

use tokio::net::TcpStream;

use crate::probe::{ProbeResult, ProbeSpec, failed, succeeded, tcp::connect};

/// How much of the answer is read looking for the status line.
const STATUS_LINE_MAX: usize = 1024;
/// How much of a bad status line goes into the detail.
pub(crate) const QUOTE_MAX: usize = 64;
const HTTP_PREFIX: &[u8] = b"HTTP/1.";

pub(crate) async fn http(
    spec: &ProbeSpec,
    port: u16,
    path: &str,
    expect_status: u16,
) -> ProbeResult {
    // The path goes verbatim into the request line: nothing that could end it or add a header.
    if path.is_empty() || !path.bytes().all(|b| b.is_ascii_graphic()) {
        return failed(format!(
            "http path {:?} is not printable ascii without spaces",
            path
        ));
    }
    let start = Instant::now();
    let stream = match connect(spec, port).await {
        Ok((stream, _)) => stream,
        Err(detail) => return failed(detail),
    };
    let host = host(spec.address, port);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lb-probe\r\nConnection: close\r\n\r\n"
    );
    if let Err(e) = write_all(&stream, request.as_bytes()).await {
        return failed(format!("send request: {e}"));
    }
    let mut buf = [0u8; STATUS_LINE_MAX];
    let line = match read_status_line(&stream, &mut buf).await {
        Ok(line) => line,
        Err(detail) => return failed(detail),
    };
    let rtt = start.elapsed();
    // The rest of the answer stays unread: dropping the stream resets the connection.
    match parse_status_line(line) {
        Some(status) if status == expect_status => succeeded(rtt, format!("status {status}")),
        Some(status) => failed(format!("status {status}, expected {expect_status}")),
        None => failed(format!("malformed status line \"{}\"", quote(line))),
    }
}

/// The `Host` header's value: RFC 9110 7.2, the port is part of it unless it is the scheme's
/// default; an IPv6 address in brackets (RFC 3986's IP-literal).
pub(crate) fn host(address: std::net::IpAddr, port: u16) -> String {
    match (address, port) {
        (std::net::IpAddr::V4(a), 80) => a.to_string(),
        (std::net::IpAddr::V6(a), 80) => format!("[{a}]"),
        (a, port) => std::net::SocketAddr::new(a, port).to_string(),
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = data.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until the first line of the answer is complete; returns it without its line end.
/// Gives up early when the answer cannot be HTTP/1.x.
async fn read_status_line<'b>(
    stream: &TcpStream,
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
        stream
            .readable()
            .await
            .map_err(|e| format!("read answer: {e}"))?;
        match stream.try_read(buf.get_mut(len..).unwrap_or_default()) {
            Ok(0) if len == 0 => return Err("connection closed before the status line".into()),
            Ok(0) => {
                let got = buf.get(..len).unwrap_or_default();
                return Err(format!(
                    "connection closed inside the status line \"{}\"",
                    quote(got)
                ));
            }
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err("connection reset before the status line".into());
            }
            Err(e) => return Err(format!("read answer: {e}")),
        }
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
