//! Client-side traffic for end-to-end tests, run from a thread inside the client namespace:
//! one HTTP request (which path answered), and a paced UDP stream whose echoes are counted.
//! Every loop is bounded in count and time.

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::netns::Netns;

/// `GET path` to `addr:port` from `ns`; the response body (the servers answer with the address
/// they were reached at). Fails on timeout or a non-200 status.
/// How a request failed when it failed to connect: the kind of the connect error (`None` for
/// success or any later failure), so a test that expects "nothing listens there" does not
/// pass on some other error.
pub fn connect_failure(result: &anyhow::Result<String>) -> Option<std::io::ErrorKind> {
    let err = result.as_ref().err()?;
    if !err.to_string().starts_with("connecting to ") {
        return None;
    }
    err.chain()
        .find_map(|cause| cause.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind)
}

pub fn http_get(
    ns: &Netns,
    addr: impl Into<IpAddr>,
    port: u16,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let path = path.to_string();
    let addr: IpAddr = addr.into();
    ns.spawn(move || {
        let to = SocketAddr::from((addr, port));
        let mut s = TcpStream::connect_timeout(&to, timeout)
            .with_context(|| format!("connecting to {to}"))?;
        s.set_read_timeout(Some(timeout))?;
        let host = match addr {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )
        .with_context(|| format!("sending to {to}"))?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .with_context(|| format!("reading from {to}"))?;
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{to}{path}: {head}");
        Ok(body.trim().to_string())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// What a UDP stream saw.
#[derive(Debug, Clone)]
pub struct StreamReport {
    pub sent: u64,
    pub received: u64,
    /// Sequence numbers never echoed.
    pub lost: Vec<u64>,
    /// The longest run of consecutive lost datagrams, in milliseconds of sending time.
    pub longest_gap: Duration,
    /// The stream's source port (its flow).
    pub local_port: u16,
}

/// Sends `count` datagrams to `addr:port`, one every `every`, and counts the echoes (waiting up
/// to `grace` after the last send for late ones).
pub fn udp_stream(
    ns: &Netns,
    addr: impl Into<IpAddr>,
    port: u16,
    count: u64,
    every: Duration,
    grace: Duration,
) -> std::thread::JoinHandle<anyhow::Result<StreamReport>> {
    let streams = udp_streams(ns, addr, port, 1, count, every, grace);
    std::thread::spawn(move || {
        let mut reports = streams
            .join()
            .map_err(|_| anyhow::anyhow!("the stream thread panicked"))??;
        reports.pop().context("one stream")
    })
}

/// [`udp_stream`] over `flows` sockets at once (each its own source port: its own flow, which
/// an ECMP router hashes on its own), from one thread: each sends `count` datagrams, one every
/// `every`. A report per flow.
pub fn udp_streams(
    ns: &Netns,
    addr: impl Into<IpAddr>,
    port: u16,
    flows: usize,
    count: u64,
    every: Duration,
    grace: Duration,
) -> std::thread::JoinHandle<anyhow::Result<Vec<StreamReport>>> {
    let addr: IpAddr = addr.into();
    ns.spawn(move || {
        let mut sockets = Vec::with_capacity(flows);
        for _ in 0..flows {
            let s = UdpSocket::bind(if addr.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })?;
            s.connect((addr, port))?;
            s.set_nonblocking(true)?;
            sockets.push(s);
        }
        let mut got = vec![BTreeSet::new(); flows];
        let mut buf = [0u8; 64];
        let start = Instant::now();
        let mut drain = |got: &mut [BTreeSet<u64>]| {
            for (s, got) in sockets.iter().zip(got.iter_mut()) {
                while let Ok(n) = s.recv(&mut buf) {
                    if n >= 8 {
                        got.insert(u64::from_be_bytes(buf[..8].try_into().unwrap_or_default()));
                    }
                }
            }
        };
        for seq in 0..count {
            let due = start + every * seq as u32;
            while Instant::now() < due {
                drain(&mut got);
                std::thread::sleep(Duration::from_micros(100));
            }
            let mut payload = [0u8; 32];
            payload[..8].copy_from_slice(&seq.to_be_bytes());
            for s in &sockets {
                let _ = s.send(&payload);
            }
        }
        let end = Instant::now() + grace;
        while Instant::now() < end && got.iter().any(|g| (g.len() as u64) < count) {
            drain(&mut got);
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(got
            .iter()
            .zip(&sockets)
            .map(|(got, socket)| {
                let lost: Vec<u64> = (0..count).filter(|s| !got.contains(s)).collect();
                let mut longest = 0u64;
                let mut run = 0u64;
                let mut prev = None;
                for l in &lost {
                    run = if prev.is_some_and(|p: u64| p + 1 == *l) {
                        run + 1
                    } else {
                        1
                    };
                    longest = longest.max(run);
                    prev = Some(*l);
                }
                StreamReport {
                    sent: count,
                    received: got.len() as u64,
                    lost,
                    longest_gap: every * longest as u32,
                    local_port: socket.local_addr().map_or(0, |a| a.port()),
                }
            })
            .collect())
    })
}

/// Established TCP connections kept busy: each sends 8 bytes and reads the echo back, round
/// after round, until [`TcpChatter::finish`]. A connection that fails (reset, closed, no echo
/// within 5 s) is noted and not used again.
pub struct TcpChatter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<ChatterReport>>,
}

/// What [`TcpChatter`] saw.
#[derive(Clone, Debug)]
pub struct ChatterReport {
    pub connections: usize,
    /// Rounds in which every live connection echoed.
    pub rounds: u64,
    /// The connections that failed: index, and how.
    pub failed: Vec<(usize, String)>,
}

impl TcpChatter {
    /// Opens `n` connections from `ns` to `addrs` (round robin) and starts the rounds, one
    /// every `every`. Fails if a connection cannot be opened.
    pub fn start(
        ns: &Netns,
        addrs: Vec<SocketAddr>,
        n: usize,
        every: Duration,
    ) -> anyhow::Result<TcpChatter> {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = ns.spawn(move || {
            let mut conns = Vec::with_capacity(n);
            for i in 0..n {
                let to = addrs[i % addrs.len()];
                let c = TcpStream::connect_timeout(&to, Duration::from_secs(3));
                let c = match c {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("connection {i} to {to}: {e}")));
                        return Err(anyhow::anyhow!("connection {i} to {to}: {e}"));
                    }
                };
                c.set_read_timeout(Some(Duration::from_secs(5)))?;
                c.set_nodelay(true)?;
                conns.push(Some(c));
            }
            let _ = ready_tx.send(Ok(()));
            let mut failed = Vec::new();
            let mut rounds = 0u64;
            // Bounded: the caller stops it; two minutes at most regardless.
            let end = Instant::now() + Duration::from_secs(120);
            loop {
                let last = flag.load(Ordering::Relaxed) || Instant::now() > end;
                let mut all = true;
                for (i, slot) in conns.iter_mut().enumerate() {
                    let Some(c) = slot else { continue };
                    let msg = (rounds * n as u64 + i as u64).to_be_bytes();
                    let mut back = [0u8; 8];
                    let r = c.write_all(&msg).and_then(|()| c.read_exact(&mut back));
                    let why = match r {
                        Ok(()) if back == msg => None,
                        Ok(()) => Some(format!("echo {back:?} for {msg:?}")),
                        Err(e) => Some(format!("{:?}: {e}", e.kind())),
                    };
                    if let Some(why) = why {
                        failed.push((i, why));
                        *slot = None;
                        all = false;
                    }
                }
                if all {
                    rounds += 1;
                }
                if last {
                    break;
                }
                std::thread::sleep(every);
            }
            Ok(ChatterReport {
                connections: n,
                rounds,
                failed,
            })
        });
        match ready_rx.recv_timeout(Duration::from_secs(10) + Duration::from_secs(3) * n as u32) {
            Ok(Ok(())) => Ok(TcpChatter { stop, thread }),
            Ok(Err(e)) => Err(anyhow::anyhow!(e)),
            Err(_) => Err(anyhow::anyhow!("the connections did not open")),
        }
    }

    /// Stops the rounds after one more; the report.
    pub fn finish(self) -> anyhow::Result<ChatterReport> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the chatter thread panicked"))?
    }
}

/// Sends one datagram per socket (each socket a flow, see [`udp_sockets`]) to `addr:port`, and
/// returns, per flow, the VM address that answered (the lab's echo server appends it), or
/// `None` for no answer within `timeout`.
pub fn udp_flows(
    addr: Ipv4Addr,
    port: u16,
    sockets: &[UdpSocket],
    timeout: Duration,
) -> anyhow::Result<Vec<Option<Ipv4Addr>>> {
    for (i, s) in sockets.iter().enumerate() {
        s.send_to(&(i as u64).to_be_bytes(), (addr, port))?;
        // Paced: a veth takes XDP-redirected frames into a 256-frame ring, which a burst of
        // hundreds of datagrams overflows (a property of the rig, not of lb).
        if i % 32 == 31 {
            std::thread::sleep(Duration::from_micros(500));
        }
    }
    let mut out = vec![None; sockets.len()];
    let end = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    while Instant::now() < end && out.iter().any(Option::is_none) {
        for (i, s) in sockets.iter().enumerate() {
            if out[i].is_none()
                && let Ok(n) = s.recv(&mut buf)
                && n >= 12
            {
                out[i] = Some(Ipv4Addr::new(
                    buf[n - 4],
                    buf[n - 3],
                    buf[n - 2],
                    buf[n - 1],
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(out)
}

/// Sends one datagram from `ns` to `[addr]:port` and returns the IPv6 VM address that answered
/// (the lab's echo server appends it), or `None` for no answer within `timeout`.
pub fn udp_path6(
    ns: &Netns,
    addr: std::net::Ipv6Addr,
    port: u16,
    timeout: Duration,
) -> anyhow::Result<Option<std::net::Ipv6Addr>> {
    ns.spawn(move || {
        let s = UdpSocket::bind("[::]:0")?;
        s.set_read_timeout(Some(timeout))?;
        s.send_to(b"lab6", (addr, port))?;
        let mut buf = [0u8; 64];
        Ok(match s.recv(&mut buf) {
            Ok(n) if n >= 4 + 16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&buf[n - 16..n]);
                Some(std::net::Ipv6Addr::from(a))
            }
            _ => None,
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

/// `n` non-blocking UDP sockets bound in `ns` (each its own source port: its own flow).
pub fn udp_sockets(ns: &Netns, n: usize) -> anyhow::Result<std::sync::Arc<Vec<UdpSocket>>> {
    ns.spawn(move || {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_nonblocking(true)?;
            v.push(s);
        }
        Ok(std::sync::Arc::new(v))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("socket thread panicked"))?
}

/// What an iperf3 TCP run reported (`-J`).
#[derive(Clone, Debug)]
pub struct Iperf {
    /// Bytes the receiving side got.
    pub bytes: u64,
    pub bits_per_second: f64,
    /// TCP retransmissions of the sender, when iperf3 reports them (its client knows them when
    /// it sends; with `-R` the server's count comes back only sometimes).
    pub retransmits: Option<u64>,
}

/// A bounded iperf3 TCP run from `client` to `addr:port`, served by a one-shot iperf3 server in
/// `server` (`reverse`: the server sends). `secs` of traffic; the whole run, server included,
/// is cut off after `secs + 15` seconds.
pub fn iperf3(
    client: &Netns,
    server: &Netns,
    addr: Ipv4Addr,
    port: u16,
    reverse: bool,
    secs: u32,
) -> anyhow::Result<Iperf> {
    let limit = (secs + 15).to_string();
    let port_arg = port.to_string();
    let mut srv = std::process::Command::new("ip")
        .args(["netns", "exec", server.name(), "timeout", &limit])
        .args(["iperf3", "-s", "-1", "-p", &port_arg])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the iperf3 server")?;
    let time = secs.to_string();
    let host = addr.to_string();
    let mut args = vec![
        "--foreground",
        limit.as_str(),
        "iperf3",
        "-c",
        host.as_str(),
        "-p",
        port_arg.as_str(),
        "-t",
        time.as_str(),
        "-J",
    ];
    if reverse {
        args.push("-R");
    }
    // The server needs a moment to listen: a refused connection is retried, a few times.
    let mut last = None;
    let mut out = None;
    for _ in 0..50 {
        let run = std::process::Command::new("ip")
            .args(["netns", "exec", client.name(), "timeout"])
            .args(&args)
            .output()
            .context("running the iperf3 client")?;
        let text = String::from_utf8_lossy(&run.stdout).into_owned();
        // A refused connection (the server not listening yet) is retried, whatever the exit
        // status says.
        let refused = text.contains("Connection refused");
        if run.status.success() && !refused {
            out = Some(text);
            break;
        }
        last = Some(text);
        if !refused {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The one-shot server exits after its test: wait for it (bounded), so that the next run's
    // server is the one that answers. Killing `timeout` would leave iperf3 running.
    let deadline = Instant::now() + Duration::from_secs(5);
    while srv.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = srv.kill();
    let _ = srv.wait();
    let text = out.with_context(|| format!("iperf3 failed: {}", last.unwrap_or_default()))?;
    let json: serde_json::Value = serde_json::from_str(&text).context("iperf3's JSON")?;
    if let Some(error) = json["error"].as_str() {
        anyhow::bail!("iperf3: {error}");
    }
    let end = &json["end"];
    Ok(Iperf {
        bytes: end["sum_received"]["bytes"].as_u64().unwrap_or(0),
        bits_per_second: end["sum_received"]["bits_per_second"]
            .as_f64()
            .unwrap_or(0.0),
        retransmits: end["sum_sent"]["retransmits"].as_u64(),
    })
}

/// Sends each of `frames` (whole Ethernet frames, a VLAN tag included if they carry one) out
/// of `iface` in the calling thread's namespace through an `AF_PACKET` socket: traffic no
/// local socket could send, such as tagged frames where the kernel has no VLAN devices.
pub fn send_frames(iface: &str, frames: &[Vec<u8>]) -> anyhow::Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let ifindex = crate::sys::ifindex(iface).with_context(|| format!("no interface {iface}"))?;
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    anyhow::ensure!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for frame in frames {
        // SAFETY: all-zero is a valid `sockaddr_ll`; the fields that matter are set below.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        // SAFETY: `frame` and `to` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        anyhow::ensure!(
            n == frame.len() as isize,
            "sending a frame on {iface}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
