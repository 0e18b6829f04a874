//! The health probes (TCP connect, HTTP and HTTPS status, ICMP echo): async, cheap, each
//! bounded by its timeout.
//!
//! One [`Prober`] serves the whole daemon. Probes run every few milliseconds on dozens of paths,
//! so none of them costs a thread or a socket of its own beyond what it must:
//!
//! - **TCP, HTTP and HTTPS** open one connection each (that is the probe) and close it with a
//!   reset: `SO_LINGER` 0. HAProxy closes its health checks the same way. The prober closes
//!   first, so an orderly close would leave a `TIME_WAIT` socket on this host for 60 s per probe:
//!   at a 10 ms interval that is 6000 sockets per path, and with a bound source address (which
//!   takes the ephemeral port at `bind` time) the ports run out. The reset costs the backend an
//!   aborted connection in its logs at worst. With a source address the socket also sets
//!   `IP_BIND_ADDRESS_NO_PORT`, so the port is chosen at `connect` per destination.
//! - **HTTPS** is HTTP over TLS (rustls, the ring provider) on that connection; the prober keeps
//!   one TLS client configuration per trust (the host's roots, read once; a `ca_file`'s
//!   certificates; none), made on first use, outside the probe's timeout (`https` module).
//! - **ICMP** shares one raw socket (`SOCK_RAW`/`IPPROTO_ICMP`, needs `CAP_NET_RAW`) and one
//!   receive task; IPv6 paths share another (`IPPROTO_ICMPV6`, ICMPv6 echo), opened on the
//!   first probe of an IPv6 path. Each echo request carries the prober's identifier, a sequence number and a
//!   token (the prober's random nonce plus the probe's number) in its payload; the receive task
//!   hands a reply to the probe waiting for that sequence number only when the identifier, the
//!   replying address and the token all match, and ignores everything else: other processes'
//!   pings, replies to probes that timed out (their waiter is removed when the probe future is
//!   dropped), echo requests and other ICMP (the kernel filters those out with `ICMP_FILTER`
//!   already; the parser checks again). A probe with a `source` or an `interface` needs a socket
//!   bound accordingly; those sockets are opened on first use and kept, one per (family,
//!   source, interface).
//!
//! Without `CAP_NET_RAW` the prober still works for TCP, HTTP and HTTPS; ICMP probes then fail
//! with a detail saying why ([`Prober::icmp_unavailable`]).
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
    hash::BuildHasher,
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU16, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use socket2::SockAddr;
use tokio::io::Interest;

use self::icmp::{BoundChannel, Family, IcmpChannel};
use crate::{
    config::{Path, Probe, ProbeKind},
    control::monitor::Cause,
};

/// For the fuzz targets.
pub use self::{http::parse_status_line, icmp::EchoReply};
/// The outcome of one probe, shared with the health monitor.
pub use crate::control::health::ProbeResult;

/// The least timeout of a passive trigger's burst probes (`health::Cause::Trigger`): they
/// follow each other within milliseconds, so a host that stalls for a moment would otherwise
/// fail them all at once.
pub const BURST_TIMEOUT_FLOOR: Duration = Duration::from_millis(3);

/// What one probe checks, and how long it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub kind: ProbeKind,
    /// The address probed (the VM's address on the path), IPv4 or IPv6.
    pub address: IpAddr,
    /// Source address the probe is sent from, of `address`'s family (`None`: chosen by
    /// routing).
    pub source: Option<IpAddr>,
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

/// One path's probe as its monitor runs it ([`crate::control::monitor::monitor`]'s closure):
/// `spec` with the path's timeout, adaptive unless configured (each success's RTT feeds it),
/// and for a trigger's burst at least [`BURST_TIMEOUT_FLOOR`].
#[derive(Clone)]
pub struct PathProbe {
    prober: Arc<Prober>,
    spec: ProbeSpec,
    interval: Duration,
    timeout: Arc<Mutex<ProbeTimeout>>,
}

impl PathProbe {
    /// `configured`: the configuration's timeout (`None`: adaptive).
    pub fn new(
        prober: Arc<Prober>,
        spec: ProbeSpec,
        interval: Duration,
        configured: Option<Duration>,
    ) -> Self {
        Self {
            prober,
            spec,
            interval,
            timeout: Arc::new(Mutex::new(ProbeTimeout::new(configured, interval))),
        }
    }

    /// Runs the probe once.
    pub fn probe(&self, cause: Cause) -> impl Future<Output = ProbeResult> + Send + use<> {
        let prober = Arc::clone(&self.prober);
        let timeout = Arc::clone(&self.timeout);
        let mut spec = self.spec.clone();
        spec.timeout = lock(&timeout).current();
        if cause == Cause::Trigger {
            // Quick succession: one hiccup of the host must not fail them all.
            spec.timeout = spec
                .timeout
                .max(BURST_TIMEOUT_FLOOR)
                .min(self.interval.saturating_sub(Duration::from_millis(1)));
        }
        async move {
            let result = prober.probe(&spec).await;
            if let (true, Some(rtt)) = (result.ok, result.rtt) {
                lock(&timeout).sample(rtt);
            }
            result
        }
    }
}

/// What the probes share: the ICMP sockets and their receive tasks. Create one per daemon,
/// inside a tokio runtime with I/O and time enabled; dropping it stops its receive tasks.
pub struct Prober {
    /// The shared ICMP socket for IPv4 probes without source or interface, or why there is
    /// none.
    icmp: Result<Arc<IcmpChannel>, String>,
    /// The other sockets: the shared ICMPv6 one, and those bound to a source address and/or an
    /// interface; opened on first use.
    bound: Mutex<Vec<BoundChannel>>,
    /// The ICMP identifier of this prober's echo requests.
    ident: u16,
    /// Random per prober: a reply's token must be `nonce + probe number`.
    nonce: u64,
    /// Numbers the ICMP probes (the low 16 bits are the sequence number).
    counter: AtomicU64,
    /// The https probes' TLS client configurations.
    tls: https::TlsConfigs,
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
        let icmp = match IcmpChannel::open(ident, Family::V4, None, None) {
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
            tls: https::TlsConfigs::default(),
        })
    }

    /// Why ICMP probes cannot run (`None`: they can). For a warning at start-up. (Said of the
    /// IPv4 socket; an ICMPv6 socket needs the same privilege.)
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
    /// to the complete status line for HTTP and HTTPS (the TLS handshake included), and the echo
    /// round trip for ICMP.
    ///
    /// An https probe's TLS configuration is made before its timeout starts, the first time
    /// (reading the host's roots is no fault of the path's).
    pub async fn probe(&self, spec: &ProbeSpec) -> ProbeResult {
        let tls = match &spec.kind {
            ProbeKind::Https { trust, .. } => match self.tls.get(trust).await {
                Ok(config) => Some(config),
                Err(detail) => return failed(detail),
            },
            _ => None,
        };
        let run = async {
            match &spec.kind {
                ProbeKind::Tcp { port } => tcp::tcp(spec, *port).await,
                ProbeKind::Http {
                    port,
                    path,
                    expect_status,
                } => http::http(spec, *port, path, *expect_status).await,
                ProbeKind::Https {
                    port,
                    path,
                    expect_status,
                    sni,
                    trust: _,
                } => match tls {
                    Some(tls) => {
                        https::https(spec, tls, *port, path, *expect_status, sni.as_deref()).await
                    }
                    None => failed("https probe without its TLS configuration"),
                },
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
        let family = Family::of(spec.address);
        let channel = match self.icmp_channel(family, spec.source, spec.interface.as_deref()) {
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
        let request = family.request(self.ident, registration.seq, registration.token, stamp);
        let to = SockAddr::from(SocketAddr::new(spec.address, 0));
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

    /// The socket for an ICMP probe of `family` from `source` on `interface`.
    fn icmp_channel(
        &self,
        family: Family,
        source: Option<IpAddr>,
        interface: Option<&str>,
    ) -> Result<Arc<IcmpChannel>, String> {
        if family == Family::V4 && source.is_none() && interface.is_none() {
            return self.icmp.clone();
        }
        // A few entries at most (one per distinct family/source/interface in the
        // configuration): a linear search, and no key to allocate per probe.
        let mut bound = lock(&self.bound);
        if let Some(b) = bound.iter().find(|b| {
            b.family == family && b.source == source && b.interface.as_deref() == interface
        }) {
            return Ok(Arc::clone(&b.channel));
        }
        // Not cached on failure: a missing interface may appear later (and a host's IPv6 be
        // switched on).
        let channel = IcmpChannel::open(self.ident, family, source, interface)
            .map(Arc::new)
            .map_err(|e| icmp_open_detail(&e))?;
        bound.push(BoundChannel {
            family,
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

pub(crate) fn succeeded(rtt: Duration, detail: impl Into<String>) -> ProbeResult {
    ProbeResult {
        ok: true,
        rtt: Some(rtt),
        detail: detail.into(),
        timed_out: false,
    }
}

fn timed_out(timeout: Duration) -> ProbeResult {
    ProbeResult {
        timed_out: true,
        ..failed(format!("timeout after {}", millis(timeout)))
    }
}

pub(crate) fn failed(detail: impl Into<String>) -> ProbeResult {
    ProbeResult {
        ok: false,
        rtt: None,
        detail: detail.into(),
        timed_out: false,
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
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn setsockopt_u32(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: u32,
) -> io::Result<()> {
    setsockopt(socket, level, name, &value)
}

/// `setsockopt` with an option value of plain old data (integers, arrays of them).
pub(crate) fn setsockopt<T: Copy>(
    socket: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    let fd = socket.as_fd();
    // SAFETY: `fd` is an open socket borrowed for the duration of the call, and the option value
    // points to a live `T` whose exact size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const *value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

mod http;
mod https;
mod icmp;
pub mod passive;
mod tcp;
pub mod thread;

#[cfg(test)]
mod tests;
