//! The health probes (TCP connect, HTTP status, ICMP echo): async, cheap, each bounded by its
//! timeout.
//!
//! One [`Prober`] serves the whole daemon. Probes run every few milliseconds on dozens of paths,
//! so none of them costs a thread or a socket of its own beyond what it must:
//!
//! - **TCP and HTTP** open one connection each (that is the probe) and close it with a reset:
//!   `SO_LINGER` 0. HAProxy closes its health checks the same way. The prober closes first, so an
//!   orderly close would leave a `TIME_WAIT` socket on this host for 60 s per probe: at a 10 ms
//!   interval that is 6000 sockets per path, and with a bound source address (which takes the
//!   ephemeral port at `bind` time) the ports run out. The reset costs the backend an aborted
//!   connection in its logs at worst. With a source address the socket also sets
//!   `IP_BIND_ADDRESS_NO_PORT`, so the port is chosen at `connect` per destination.
//! - **ICMP** shares one raw socket (`SOCK_RAW`/`IPPROTO_ICMP`, needs `CAP_NET_RAW`) and one
//!   receive task. Each echo request carries the prober's identifier, a sequence number and a
//!   token (the prober's random nonce plus the probe's number) in its payload; the receive task
//!   hands a reply to the probe waiting for that sequence number only when the identifier, the
//!   replying address and the token all match, and ignores everything else: other processes'
//!   pings, replies to probes that timed out (their waiter is removed when the probe future is
//!   dropped), echo requests and other ICMP (the kernel filters those out with `ICMP_FILTER`
//!   already; the parser checks again). A probe with a `source` or an `interface` needs a socket
//!   bound accordingly; those sockets are opened on first use and kept, one per (source,
//!   interface).
//!
//! Without `CAP_NET_RAW` the prober still works for TCP and HTTP; ICMP probes then fail with a
//! detail saying why ([`Prober::icmp_unavailable`]).
//!
//! A result that arrives after the timeout is a timeout even when tokio's timer (1 ms
//! granularity) had not fired yet: `ok` implies `rtt <= timeout`.
//!
//! **Times are the kernel's.** A probe judges the path, not this process: a thread that was
//! descheduled for a while (a loaded host, a VM's stolen time) must not turn an answer that
//! came in time into a timeout. An echo reply carries the time the kernel received it
//! (`SO_TIMESTAMPNS`; the kernel switches its receive timestamps on a moment after the first
//! socket asks, so the prober's first replies may be timed when read), and when a probe's
//! deadline passes, the socket is read once more before
//! it is called a timeout, so a reply that waited there is still counted. A TCP handshake's
//! round trip is the kernel's measure of it (`TCP_INFO`), not the time until this thread saw
//! the connection complete.

use std::{
    collections::HashMap,
    hash::BuildHasher,
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::csum;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::{TcpSocket, TcpStream},
    sync::oneshot,
    task::AbortHandle,
};

use crate::config::{Path, Probe, ProbeKind};
/// The outcome of one probe, shared with the health monitor.
pub use crate::health::ProbeResult;

/// The least timeout of a passive trigger's burst probes (`health::Cause::Trigger`): they
/// follow each other within milliseconds, so a host that stalls for a moment would otherwise
/// fail them all at once.
pub const BURST_TIMEOUT_FLOOR: Duration = Duration::from_millis(3);

/// What one probe checks, and how long it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    /// The address probed (the VM's address on the path).
    pub address: Ipv4Addr,
    /// Source address the probe is sent from (`None`: chosen by routing).
    pub source: Option<Ipv4Addr>,
    /// Interface the probe is bound to (`SO_BINDTODEVICE`, needs `CAP_NET_RAW`).
    pub interface: Option<String>,
    /// The whole probe (connection, request, answer) must complete within this.
    pub timeout: Duration,
}

impl ProbeSpec {
    /// The probe of a configured path.
    pub fn for_path(path: &Path) -> Self {
        let Path {
            name: _,
            address,
            priority: _,
            weight: _,
            probe,
            source,
            interface,
        } = path;
        let Probe {
            kind,
            interval,
            timeout,
            rise: _,
            fall: _,
            passive: _,
        } = probe;
        Self {
            kind: kind.clone(),
            address: *address,
            source: *source,
            interface: interface.clone(),
            timeout: ProbeTimeout::new(*timeout, *interval).current(),
        }
    }
}

/// The timeout of one path's probes: the configured one, or one adapted to the path's round
/// trip as TCP adapts its retransmission timeout (RFC 6298: `srtt + 4 × rttvar`, from the RTTs
/// of successful probes), kept within [1 ms, interval − 1 ms]. Until the first success it is
/// that maximum. A path whose round trip grows keeps up (the variance term widens the
/// timeout); the hold timer, not the timeout, bounds how long a dead path goes unnoticed.
///
/// Either way it ends a millisecond before the next probe is due: a timeout of the whole
/// interval fires at or just past the next tick (timers have a millisecond's granularity), the
/// late tick restarts the grid from there, and the schedule drifts by a little every probe of
/// a dead path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeTimeout {
    fixed: Option<Duration>,
    max: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl ProbeTimeout {
    const MIN: Duration = Duration::from_millis(1);

    /// `fixed`: the configured timeout (`None`: adaptive); `interval`: the probe interval.
    pub fn new(fixed: Option<Duration>, interval: Duration) -> Self {
        Self {
            fixed,
            max: interval.saturating_sub(Self::MIN).max(Self::MIN),
            srtt: None,
            rttvar: Duration::ZERO,
        }
    }

    /// The timeout for the next probe.
    pub fn current(&self) -> Duration {
        if let Some(fixed) = self.fixed {
            return fixed.min(self.max);
        }
        match self.srtt {
            None => self.max,
            Some(srtt) => (srtt + 4 * self.rttvar).clamp(Self::MIN, self.max),
        }
    }

    /// Takes the RTT of a successful probe.
    pub fn sample(&mut self, rtt: Duration) {
        self.srtt = Some(match self.srtt {
            None => {
                self.rttvar = rtt / 2;
                rtt
            }
            Some(srtt) => {
                self.rttvar = (3 * self.rttvar + srtt.abs_diff(rtt)) / 4;
                (7 * srtt + rtt) / 8
            }
        });
    }
}

/// What the probes share: the ICMP sockets and their receive tasks. Create one per daemon,
/// inside a tokio runtime with I/O and time enabled; dropping it stops its receive tasks.
pub struct Prober {
    /// The shared ICMP socket for probes without source or interface, or why there is none.
    icmp: Result<Arc<IcmpChannel>, String>,
    /// Sockets bound to a source address and/or an interface, opened on first use.
    bound: Mutex<Vec<BoundChannel>>,
    /// The ICMP identifier of this prober's echo requests.
    ident: u16,
    /// Random per prober: a reply's token must be `nonce + probe number`.
    nonce: u64,
    /// Numbers the ICMP probes (the low 16 bits are the sequence number).
    counter: AtomicU64,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("ident", &self.ident)
            .field("icmp_unavailable", &self.icmp_unavailable())
            .field("icmp_in_flight", &self.icmp_in_flight())
            .finish_non_exhaustive()
    }
}

impl Prober {
    /// Opens the shared ICMP socket and starts its receive task. Missing privileges for it are
    /// not an error (ICMP probes then fail, saying why); any other failure is.
    pub fn new() -> io::Result<Prober> {
        // `AsyncFd` and `tokio::spawn` panic outside a runtime; say so instead.
        tokio::runtime::Handle::try_current()
            .map_err(|e| io::Error::other(format!("the prober needs a tokio runtime: {e}")))?;
        // Like ping, the identifier is the pid; further probers in the same process (tests) get
        // the next ones, so they need not even look at each other's replies.
        static PROBERS: AtomicU16 = AtomicU16::new(0);
        let ident =
            (std::process::id() as u16).wrapping_add(PROBERS.fetch_add(1, Ordering::Relaxed));
        // SipHash with fresh random keys: random enough to tell probers and restarts apart.
        let nonce = std::collections::hash_map::RandomState::new().hash_one(ident);
        let icmp = match IcmpChannel::open(ident, None, None) {
            Ok(channel) => Ok(Arc::new(channel)),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Err(icmp_open_detail(&e)),
            Err(e) => return Err(io::Error::new(e.kind(), format!("icmp probe socket: {e}"))),
        };
        Ok(Prober {
            icmp,
            bound: Mutex::new(Vec::new()),
            ident,
            nonce,
            counter: AtomicU64::new(0),
        })
    }

    /// Why ICMP probes cannot run (`None`: they can). For a warning at start-up.
    pub fn icmp_unavailable(&self) -> Option<&str> {
        self.icmp.as_ref().err().map(String::as_str)
    }

    /// ICMP probes waiting for their reply, over all sockets (for statistics and tests).
    pub fn icmp_in_flight(&self) -> usize {
        let shared = self.icmp.as_ref().map_or(0, |c| c.waiters.len());
        let bound: usize = lock(&self.bound)
            .iter()
            .map(|b| b.channel.waiters.len())
            .sum();
        shared + bound
    }

    /// Runs one probe; never takes (much) longer than `spec.timeout`.
    ///
    /// The RTT (on success only) is the TCP handshake for TCP, from the start of the connection
    /// to the complete status line for HTTP, and the echo round trip for ICMP.
    pub async fn probe(&self, spec: &ProbeSpec) -> ProbeResult {
        let run = async {
            match &spec.kind {
                ProbeKind::Tcp { port } => tcp(spec, *port).await,
                ProbeKind::Http {
                    port,
                    path,
                    expect_status,
                } => http(spec, *port, path, *expect_status).await,
                ProbeKind::Icmp => self.icmp(spec).await,
            }
        };
        if spec.kind == ProbeKind::Icmp {
            // It keeps its own deadline, measured on the kernel's clock.
            return run.await;
        }
        match tokio::time::timeout(spec.timeout, run).await {
            Ok(result) if result.rtt.is_none_or(|rtt| rtt <= spec.timeout) => result,
            _ => timed_out(spec.timeout),
        }
    }

    async fn icmp(&self, spec: &ProbeSpec) -> ProbeResult {
        let channel = match self.icmp_channel(spec.source, spec.interface.as_deref()) {
            Ok(channel) => channel,
            Err(detail) => return failed(detail),
        };
        let Some((registration, reply)) =
            channel
                .waiters
                .register(&self.counter, self.nonce, spec.address)
        else {
            return failed("too many icmp probes in flight");
        };
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let request = echo_request(self.ident, registration.seq, registration.token, stamp);
        let to = SockAddr::from(SocketAddrV4::new(spec.address, 0));
        let sent = Instant::now();
        let send = channel
            .socket
            .async_io(Interest::WRITABLE, |s| s.send_to(&request, &to))
            .await;
        if let Err(e) = send {
            return failed(format!("send echo request: {e}"));
        }
        let mut reply = reply;
        let received = tokio::select! {
            biased;
            got = &mut reply => match got {
                Ok(at) => Some(at),
                // The receive task ended (it only does when the prober is dropped).
                Err(_) => return failed("icmp receive task stopped"),
            },
            () = tokio::time::sleep_until((sent + spec.timeout).into()) => {
                // A reply the kernel took in time may wait in the socket while this thread
                // was held up: read it before calling the probe a timeout.
                channel.drain(self.ident);
                reply.try_recv().ok()
            }
        };
        match received.map(|at| at.saturating_duration_since(sent)) {
            Some(rtt) if rtt <= spec.timeout => {
                succeeded(rtt, format!("echo reply from {}", spec.address))
            }
            _ => timed_out(spec.timeout),
        }
        // `registration` drops here, or earlier with the future on timeout: either way no waiter
        // is left behind.
    }

    /// The socket for an ICMP probe from `source` on `interface`.
    fn icmp_channel(
        &self,
        source: Option<Ipv4Addr>,
        interface: Option<&str>,
    ) -> Result<Arc<IcmpChannel>, String> {
        if source.is_none() && interface.is_none() {
            return self.icmp.clone();
        }
        // A few entries at most (one per distinct source/interface in the configuration): a
        // linear search, and no key to allocate per probe.
        let mut bound = lock(&self.bound);
        if let Some(b) = bound
            .iter()
            .find(|b| b.source == source && b.interface.as_deref() == interface)
        {
            return Ok(Arc::clone(&b.channel));
        }
        // Not cached on failure: a missing interface may appear later.
        let channel = IcmpChannel::open(self.ident, source, interface)
            .map(Arc::new)
            .map_err(|e| icmp_open_detail(&e))?;
        bound.push(BoundChannel {
            source,
            interface: interface.map(str::to_owned),
            channel: Arc::clone(&channel),
        });
        Ok(channel)
    }
}

fn icmp_open_detail(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::PermissionDenied {
        format!("icmp probes need CAP_NET_RAW: {e}")
    } else {
        format!("icmp socket: {e}")
    }
}

fn succeeded(rtt: Duration, detail: impl Into<String>) -> ProbeResult {
    ProbeResult {
        ok: true,
        rtt: Some(rtt),
        detail: detail.into(),
    }
}

fn timed_out(timeout: Duration) -> ProbeResult {
    failed(format!("timeout after {}", millis(timeout)))
}

fn failed(detail: impl Into<String>) -> ProbeResult {
    ProbeResult {
        ok: false,
        rtt: None,
        detail: detail.into(),
    }
}

/// `250 ms`, or `0.001 ms` below a whole millisecond.
fn millis(d: Duration) -> String {
    if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.3} ms", d.as_secs_f64() * 1e3)
    }
}

/// A poisoned lock only means another probe panicked while holding it; the data (a table of
/// waiters or sockets) is still consistent, so carry on rather than spread the panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn setsockopt_u32(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: u32,
) -> io::Result<()> {
    let fd = socket.as_fd();
    // SAFETY: `fd` is an open socket borrowed for the duration of the call, and the option value
    // points to a live `u32` whose exact size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---------------------------------------------------------------------------------------------
// TCP and HTTP

async fn tcp(spec: &ProbeSpec, port: u16) -> ProbeResult {
    match connect(spec, port).await {
        // Dropped at once: closed with a reset (`SO_LINGER` 0, see the module notes).
        Ok((_stream, rtt)) => succeeded(rtt, "connected"),
        Err(detail) => failed(detail),
    }
}

/// A connection to `spec.address:port` from `spec.source` on `spec.interface`, and the time the
/// handshake took.
async fn connect(spec: &ProbeSpec, port: u16) -> Result<(TcpStream, Duration), String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("tcp socket: {e}"))?;
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
        // among all ports free for every destination.
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

/// How much of the answer is read looking for the status line.
const STATUS_LINE_MAX: usize = 1024;
/// How much of a bad status line goes into the detail.
const QUOTE_MAX: usize = 64;
const HTTP_PREFIX: &[u8] = b"HTTP/1.";

async fn http(spec: &ProbeSpec, port: u16, path: &str, expect_status: u16) -> ProbeResult {
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
    // RFC 9110 7.2: the port is part of Host unless it is the scheme's default.
    let host = if port == 80 {
        spec.address.to_string()
    } else {
        format!("{}:{port}", spec.address)
    };
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
fn quote(bytes: &[u8]) -> String {
    let cut = bytes.get(..QUOTE_MAX).unwrap_or(bytes);
    let mut quoted = cut.escape_ascii().to_string();
    if cut.len() < bytes.len() {
        quoted.push_str("...");
    }
    quoted
}

// ---------------------------------------------------------------------------------------------
// ICMP

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// linux/icmp.h: a `u32` at level `SOL_RAW` with a bit set for every ICMP type to drop.
const ICMP_FILTER: libc::c_int = 1;
/// The echo header (8) and payload: the token (8) and a send timestamp (8, ns since the epoch,
/// for whoever reads a capture; the RTT is measured with the monotonic clock).
const ECHO_LEN: usize = 24;
/// Receive buffer: the largest IPv4 header (60) and our echo reply fit many times over; longer
/// packets are truncated, and so cannot pass the checksum, and are not ours anyway.
const RECV_BUF: usize = 512;
/// How many probe numbers [`Waiters::register`] tries when sequence numbers are taken.
const REGISTER_TRIES: usize = 16;

/// A raw ICMP socket, the probes waiting for replies on it, and the task receiving them.
struct IcmpChannel {
    socket: Arc<AsyncFd<Socket>>,
    waiters: Arc<Waiters>,
    receiver: AbortHandle,
}

impl Drop for IcmpChannel {
    fn drop(&mut self) {
        self.receiver.abort();
    }
}

struct BoundChannel {
    source: Option<Ipv4Addr>,
    interface: Option<String>,
    channel: Arc<IcmpChannel>,
}

impl IcmpChannel {
    fn open(ident: u16, source: Option<Ipv4Addr>, interface: Option<&str>) -> io::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
        socket.set_nonblocking(true)?;
        // Every ICMP packet reaching the host is copied to every raw ICMP socket: keep only echo
        // replies, in the kernel (the parser checks the type again).
        setsockopt_u32(&socket, libc::SOL_RAW, ICMP_FILTER, !(1 << ICMP_ECHO_REPLY))
            .map_err(|e| io::Error::new(e.kind(), format!("set ICMP_FILTER: {e}")))?;
        // Each reply with the time the kernel received it.
        setsockopt_u32(&socket, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
            .map_err(|e| io::Error::new(e.kind(), format!("set SO_TIMESTAMPNS: {e}")))?;
        if let Some(interface) = interface {
            socket
                .bind_device(Some(interface.as_bytes()))
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("bind to interface {interface}: {e}"))
                })?;
        }
        if let Some(source) = source {
            socket
                .bind(&SocketAddrV4::new(source, 0).into())
                .map_err(|e| io::Error::new(e.kind(), format!("bind to source {source}: {e}")))?;
        }
        // SAFETY: `Socket` owns its descriptor (an `OwnedFd`), which stays open, and is the one
        // `as_raw_fd` returns, until the `AsyncFd` that now owns the `Socket` is dropped.
        let socket = Arc::new(unsafe { AsyncFd::register(socket) }?);
        let waiters = Arc::new(Waiters::default());
        let receiver =
            tokio::spawn(receive(Arc::clone(&socket), Arc::clone(&waiters), ident)).abort_handle();
        Ok(Self {
            socket,
            waiters,
            receiver,
        })
    }
}

impl IcmpChannel {
    /// Hands every reply waiting in the socket to its probe, now, without waiting for more.
    fn drain(&self, ident: u16) {
        let mut buf = [0u8; RECV_BUF];
        while let Ok((n, at)) = recv_stamped(self.socket.get_ref(), &mut buf) {
            self.waiters
                .deliver(ident, buf.get(..n).unwrap_or_default(), at);
        }
    }
}

/// Receives one datagram without waiting: its length and when the kernel received it (from
/// `SO_TIMESTAMPNS`, as an [`Instant`]; now, when the kernel gave no time).
fn recv_stamped(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, Instant)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one `SCM_TIMESTAMPNS` (a timespec) and its header, 8-byte aligned.
    let mut control = [0u64; 8];
    // SAFETY: `msghdr` is plain old data; all zeros is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: `msg` points to a live iovec over `buf` and to `control`, with their sizes; the
    // kernel writes within them.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let (now, wall) = (Instant::now(), SystemTime::now());
    let mut at = now;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within
    // `msg_controllen`; a timestamp's data is a `timespec`, read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                let kernel = UNIX_EPOCH
                    + Duration::new(
                        ts.tv_sec.max(0) as u64,
                        ts.tv_nsec.clamp(0, 999_999_999) as u32,
                    );
                // Its age on the wall clock, taken off the monotonic one.
                let age = wall.duration_since(kernel).unwrap_or_default();
                at = now.checked_sub(age).unwrap_or(now);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, at))
}

/// The receive task of one ICMP socket: hands each matching echo reply to its probe.
async fn receive(socket: Arc<AsyncFd<Socket>>, waiters: Arc<Waiters>, ident: u16) {
    let mut buf = [0u8; RECV_BUF];
    loop {
        let received = socket
            .async_io(Interest::READABLE, |s: &Socket| recv_stamped(s, &mut buf))
            .await;
        match received {
            Ok((n, at)) => {
                waiters.deliver(ident, buf.get(..n).unwrap_or_default(), at);
            }
            Err(e) => {
                // Nothing expected here (raw sockets report no ICMP errors unless asked); pause
                // so a persistent error cannot spin, and keep serving.
                log::warn!("icmp probe socket: receive failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A probe waiting for its echo reply, keyed by sequence number.
#[derive(Debug)]
struct Waiter {
    address: Ipv4Addr,
    token: u64,
    reply: oneshot::Sender<Instant>,
}

#[derive(Debug, Default)]
struct Waiters {
    map: Mutex<HashMap<u16, Waiter>>,
}

/// A waiter's place in [`Waiters`]; dropping it (the probe is done or timed out) removes the
/// waiter if it is still there, so a late reply finds nothing and nothing leaks.
#[derive(Debug)]
struct Registration<'w> {
    waiters: &'w Waiters,
    seq: u16,
    token: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut map = lock(&self.waiters.map);
        if map.get(&self.seq).is_some_and(|w| w.token == self.token) {
            map.remove(&self.seq);
        }
    }
}

impl Waiters {
    /// Takes the next free probe number from `counter`; `None` when all the sequence numbers
    /// tried are in use (thousands of probes in flight on one socket).
    fn register(
        &self,
        counter: &AtomicU64,
        nonce: u64,
        address: Ipv4Addr,
    ) -> Option<(Registration<'_>, oneshot::Receiver<Instant>)> {
        let mut map = lock(&self.map);
        for _ in 0..REGISTER_TRIES {
            let number = counter.fetch_add(1, Ordering::Relaxed);
            let seq = number as u16;
            if map.contains_key(&seq) {
                continue;
            }
            let token = nonce.wrapping_add(number);
            let (reply, received) = oneshot::channel();
            map.insert(
                seq,
                Waiter {
                    address,
                    token,
                    reply,
                },
            );
            let registration = Registration {
                waiters: self,
                seq,
                token,
            };
            return Some((registration, received));
        }
        None
    }

    /// Hands `packet` (an IPv4 datagram from the raw socket) to the probe waiting for it;
    /// returns whether one was. Anything else is ignored.
    fn deliver(&self, ident: u16, packet: &[u8], at: Instant) -> bool {
        let Some(reply) = EchoReply::parse(packet) else {
            return false;
        };
        if reply.ident != ident {
            return false;
        }
        let mut map = lock(&self.map);
        let ours = map
            .get(&reply.seq)
            .is_some_and(|w| w.address == reply.source && Some(w.token) == reply.token);
        if !ours {
            return false;
        }
        match map.remove(&reply.seq) {
            // A failed send means the probe timed out just now: nothing left to do.
            Some(waiter) => waiter.reply.send(at).is_ok(),
            None => false,
        }
    }

    fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

/// An echo request with its checksum.
fn echo_request(ident: u16, seq: u16, token: u64, stamp: u64) -> [u8; ECHO_LEN] {
    let mut message = [0u8; ECHO_LEN];
    let (header, payload) = message.split_at_mut(8);
    let [i0, i1] = ident.to_be_bytes();
    let [s0, s1] = seq.to_be_bytes();
    header.copy_from_slice(&[ICMP_ECHO_REQUEST, 0, 0, 0, i0, i1, s0, s1]);
    let (token_bytes, stamp_bytes) = payload.split_at_mut(8);
    token_bytes.copy_from_slice(&token.to_be_bytes());
    stamp_bytes.copy_from_slice(&stamp.to_be_bytes());
    let [c0, c1] = csum::checksum(0, &message);
    let [_, _, check0, check1, ..] = &mut message;
    *check0 = c0;
    *check1 = c1;
    message
}

/// The fields of an echo reply that matter for matching it to a probe (public for the fuzz
/// targets).
#[derive(Debug, PartialEq, Eq)]
pub struct EchoReply {
    pub source: Ipv4Addr,
    pub ident: u16,
    pub seq: u16,
    /// The first 8 payload bytes, if there are as many.
    pub token: Option<u64>,
}

impl EchoReply {
    /// Parses an IPv4 datagram as received on a raw socket: `None` unless it is an echo reply
    /// with a valid checksum.
    pub fn parse(packet: &[u8]) -> Option<Self> {
        let [version_ihl, ..] = packet else {
            return None;
        };
        let header_len = usize::from(version_ihl & 0x0f) * 4;
        if version_ihl >> 4 != 4 || header_len < 20 {
            return None;
        }
        let header = packet.get(..header_len)?;
        let [.., protocol, _, _, a, b, c, d] = header.get(..16)? else {
            return None;
        };
        if *protocol != 1 {
            return None;
        }
        let icmp = packet.get(header_len..)?;
        let [kind, code, _, _, i0, i1, s0, s1, payload @ ..] = icmp else {
            return None;
        };
        if *kind != ICMP_ECHO_REPLY || *code != 0 || csum::checksum(0, icmp) != [0, 0] {
            return None;
        }
        let token = payload
            .get(..8)
            .and_then(|t| <[u8; 8]>::try_from(t).ok())
            .map(u64::from_be_bytes);
        Some(Self {
            source: Ipv4Addr::new(*a, *b, *c, *d),
            ident: u16::from_be_bytes([*i0, *i1]),
            seq: u16::from_be_bytes([*s0, *s1]),
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 7);
    const IDENT: u16 = 0x1234;
    const NONCE: u64 = 0xdead_beef_0000_0000;

    const MS: Duration = Duration::from_millis(1);

    /// Guards the adaptive timeout (RFC 6298's estimator): the interval until a first success,
    /// then srtt + 4 × rttvar, which narrows towards the RTT while it is steady, widens at once
    /// when it jumps, and stays within [1 ms, interval]; a configured timeout never moves.
    #[test]
    fn probe_timeout_adapts_to_the_round_trip_within_bounds() {
        let interval = 100 * MS;
        let max = interval - MS;
        let mut t = ProbeTimeout::new(None, interval);
        assert_eq!(t.current(), max);
        t.sample(10 * MS);
        // srtt 10, rttvar 5.
        assert_eq!(t.current(), 30 * MS);
        for _ in 0..40 {
            t.sample(10 * MS);
        }
        let steady = t.current();
        assert!(steady >= 10 * MS && steady < 11 * MS, "{steady:?}");
        // A jump to 40 ms widens it past the new RTT at once.
        t.sample(40 * MS);
        assert!(t.current() > 40 * MS, "{:?}", t.current());
        // Bounds.
        let mut slow = ProbeTimeout::new(None, interval);
        slow.sample(90 * MS);
        assert_eq!(slow.current(), max);
        let mut fast = ProbeTimeout::new(None, interval);
        for _ in 0..40 {
            fast.sample(Duration::from_micros(50));
        }
        assert_eq!(fast.current(), MS);
        // Configured: fixed.
        let mut fixed = ProbeTimeout::new(Some(80 * MS), interval);
        fixed.sample(MS);
        assert_eq!(fixed.current(), 80 * MS);
    }

    /// Guards the schedule: a timeout of the whole interval (allowed by the configuration)
    /// ends a millisecond before the next probe is due, so that a dead path's timed-out probes
    /// do not push every next probe a little later.
    #[test]
    fn probe_timeout_ends_before_the_next_probe() {
        let interval = 100 * MS;
        assert_eq!(
            ProbeTimeout::new(Some(interval), interval).current(),
            99 * MS
        );
        assert_eq!(ProbeTimeout::new(None, interval).current(), 99 * MS);
        // A 1 ms interval (the least a configuration allows is more) still gets 1 ms.
        assert_eq!(ProbeTimeout::new(None, MS).current(), MS);
    }

    /// The reply a host sends to `request` (type 0, checksum recomputed) inside an IPv4 header
    /// from `from`, as a raw socket delivers it.
    fn reply_datagram(request: &[u8], from: Ipv4Addr) -> Vec<u8> {
        let mut icmp = request.to_vec();
        icmp[0] = ICMP_ECHO_REPLY;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let check = csum::checksum(0, &icmp);
        icmp[2..4].copy_from_slice(&check);
        datagram(&icmp, from)
    }

    fn datagram(icmp: &[u8], from: Ipv4Addr) -> Vec<u8> {
        let total = (20 + icmp.len()) as u16;
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip.extend_from_slice(&from.octets());
        ip.extend_from_slice(&[127, 0, 0, 1]);
        let check = csum::checksum(0, &ip);
        ip[10..12].copy_from_slice(&check);
        ip.extend_from_slice(icmp);
        ip
    }

    /// The daemon shares one prober between tasks and spawns its probes.
    #[test]
    fn prober_and_probes_can_be_shared_and_spawned() {
        fn shared<T: Send + Sync>() {}
        fn spawnable<T: Send>(_: &T) {}
        shared::<Prober>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let prober = Prober::new().unwrap();
        let spec = ProbeSpec {
            kind: ProbeKind::Icmp,
            address: PEER,
            source: None,
            interface: None,
            timeout: Duration::from_secs(1),
        };
        spawnable(&prober.probe(&spec));
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"HTTP/1.1 204"), Some(204));
        assert_eq!(parse_status_line(b"HTTP/1.1 200OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 20"), None);
        assert_eq!(parse_status_line(b"HTTP/2 200 OK"), None);
        assert_eq!(parse_status_line(b"HTTP/1.x 200 OK"), None);
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH_9.6"), None);
        assert_eq!(parse_status_line(b""), None);
    }

    #[test]
    fn quotes_are_short_and_printable() {
        assert_eq!(quote(b"ab\x00\r"), "ab\\x00\\r");
        let long = [b'x'; 100];
        assert_eq!(quote(&long), format!("{}...", "x".repeat(QUOTE_MAX)));
    }

    #[test]
    fn millis_formats() {
        assert_eq!(millis(Duration::from_millis(250)), "250 ms");
        assert_eq!(millis(Duration::from_micros(1)), "0.001 ms");
    }

    #[test]
    fn echo_request_checksum_verifies() {
        let request = echo_request(IDENT, 7, 42, 99);
        assert_eq!(csum::checksum(0, &request), [0, 0]);
        assert_eq!(request[0], ICMP_ECHO_REQUEST);
        assert_eq!(request[4..8], [0x12, 0x34, 0, 7]);
    }

    #[test]
    fn parses_a_reply_and_ignores_the_rest() {
        let request = echo_request(IDENT, 7, 42, 99);
        let reply = reply_datagram(&request, PEER);
        assert_eq!(
            EchoReply::parse(&reply),
            Some(EchoReply {
                source: PEER,
                ident: IDENT,
                seq: 7,
                token: Some(42),
            })
        );
        // The request itself, as the raw socket sees it on loopback.
        assert_eq!(EchoReply::parse(&datagram(&request, PEER)), None);
        // A corrupted reply.
        let mut bad = reply.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(EchoReply::parse(&bad), None);
        // Truncated anywhere.
        for len in 0..28 {
            assert_eq!(EchoReply::parse(&reply[..len]), None, "{len} bytes");
        }
        // Destination unreachable.
        let mut unreachable = vec![3, 1, 0, 0, 0, 0, 0, 0];
        let check = csum::checksum(0, &unreachable);
        unreachable[2..4].copy_from_slice(&check);
        assert_eq!(EchoReply::parse(&datagram(&unreachable, PEER)), None);
    }

    /// The request a registered probe would send.
    fn request_for(registration: &Registration<'_>) -> [u8; ECHO_LEN] {
        echo_request(IDENT, registration.seq, registration.token, 0)
    }

    #[test]
    fn delivers_only_the_matching_reply() {
        let waiters = Waiters::default();
        let counter = AtomicU64::new(0);
        let (first, mut first_rx) = waiters.register(&counter, NONCE, PEER).unwrap();
        let (second, mut second_rx) = waiters.register(&counter, NONCE, PEER).unwrap();
        assert_eq!(waiters.len(), 2);
        let now = Instant::now();

        // Another process's ping, another address, another token: all ignored.
        let other_ident = echo_request(IDENT + 1, first.seq, first.token, 0);
        assert!(!waiters.deliver(IDENT, &reply_datagram(&other_ident, PEER), now));
        let elsewhere = reply_datagram(&request_for(&first), Ipv4Addr::new(10, 0, 0, 8));
        assert!(!waiters.deliver(IDENT, &elsewhere, now));
        let stale = echo_request(IDENT, first.seq, first.token ^ 1, 0);
        assert!(!waiters.deliver(IDENT, &reply_datagram(&stale, PEER), now));
        assert_eq!(waiters.len(), 2);

        // The second probe's reply goes to the second probe only.
        assert!(waiters.deliver(IDENT, &reply_datagram(&request_for(&second), PEER), now));
        assert_eq!(second_rx.try_recv().unwrap(), now);
        assert!(first_rx.try_recv().is_err());
        // A duplicate reply finds nobody.
        assert!(!waiters.deliver(IDENT, &reply_datagram(&request_for(&second), PEER), now));
        drop(second);
        assert_eq!(waiters.len(), 1);
        drop(first);
        assert_eq!(waiters.len(), 0);
    }

    #[test]
    fn a_late_reply_is_ignored() {
        let waiters = Waiters::default();
        let counter = AtomicU64::new(0);
        let (registration, _rx) = waiters.register(&counter, NONCE, PEER).unwrap();
        let late = reply_datagram(&request_for(&registration), PEER);
        // The probe times out: its future, and so its registration, is dropped.
        drop(registration);
        assert_eq!(waiters.len(), 0);
        assert!(!waiters.deliver(IDENT, &late, Instant::now()));
        assert_eq!(waiters.len(), 0);
    }

    #[test]
    fn a_reply_racing_the_timeout_is_harmless() {
        let waiters = Waiters::default();
        let counter = AtomicU64::new(0);
        let (registration, rx) = waiters.register(&counter, NONCE, PEER).unwrap();
        let reply = reply_datagram(&request_for(&registration), PEER);
        // The receiver is gone (the probe future is being dropped) but the registration not yet.
        drop(rx);
        assert!(!waiters.deliver(IDENT, &reply, Instant::now()));
        drop(registration);
        assert_eq!(waiters.len(), 0);
    }

    #[test]
    fn sequence_numbers_in_use_are_skipped() {
        let waiters = Waiters::default();
        let counter = AtomicU64::new(0);
        let (old, _old_rx) = waiters.register(&counter, NONCE, PEER).unwrap();
        // 65536 probes later the sequence number comes round while the old one still waits.
        counter.store(1 << 16, Ordering::Relaxed);
        let (new, _new_rx) = waiters.register(&counter, NONCE, PEER).unwrap();
        assert_eq!(old.seq, 0);
        assert_eq!(new.seq, 1);
        assert_ne!(old.token, new.token);
    }
}
