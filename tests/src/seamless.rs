//! A path failure under established TCP connections, with or without the guest agent (`lb guest
//! run`) in the VM: the scenario of issue 16, shared by the lab tests (`tests/tests/lab.rs`:
//! with the agent none is reset; without it, all are) and the bench (`seamless.*`).
//!
//! On a fresh lab with the daemon (failover, nn1 preferred, probes 50 ms × 3) and the VM's
//! servers, once nn1 carries the VIP:
//!
//! - `chatty` connections to the echo server exchange 8 bytes each every 20 ms
//!   ([`TcpChatter`]: a request/response stream);
//! - `idle` connections each echo once, then say nothing until after the failover;
//! - one paced transfer: [`Options::transfer_bytes`] bytes written in 16 KiB chunks every 5 ms
//!   to the echo server and read back, every byte compared with what was sent; the longest
//!   time the echo made no progress is the transfer's **stall**;
//! - one bulk iperf3 transfer (client → VM, [`Options::iperf_secs`]) through the VIP;
//! - one connected UDP socket in the VM (bound to nn1's address, connected to the client's
//!   socket, as a QUIC server's per-connection sockets are), echoing what the client sends it
//!   through the VIP: one exchange before the failure, after the failover and after the
//!   failback.
//!
//! Then nn1 is blackholed ([`Failure::Blackhole`]), the daemon moves the VIP to nn2, every idle
//! connection echoes once; nn1 heals, the daemon sees it up (with `preempt`, new connections go
//! back to nn1; established ones stay on nn2 while it is up), every idle connection echoes
//! again; the transfers end and the chatter stops. A connection that failed anywhere counts as
//! reset, with what happened to it. Every wait is bounded.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, ensure};

use crate::{
    lab::{self, ECHO_PORT, Failure, HTTP_PORT, Lab, NN1, NN2, PORTS, VIP, Veths},
    lb::{Daemon, GuestAgent, active, path_state},
    netns::Netns,
    servers,
    traffic::{Iperf, TcpChatter, http_get, iperf3},
};

/// The port of the scenario's iperf3 server in the VM.
pub const IPERF_PORT: u16 = 5201;

const T: Duration = Duration::from_secs(2);
const INTERVAL_MS: u32 = 50;
const FALL: u32 = 3;

/// What the scenario runs.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub veths: Veths,
    pub preempt: bool,
    /// The guest agent runs in the VM.
    pub agent: bool,
    pub chatty: usize,
    pub idle: usize,
    pub transfer_bytes: usize,
    pub iperf_secs: u32,
}

impl Options {
    /// The scenario: 40 chatty and 10 idle connections, an 8 MiB paced transfer and 4 s
    /// of iperf3 (53 connections: iperf3 has a control connection beside its data one).
    pub fn new(veths: Veths, preempt: bool, agent: bool) -> Options {
        Options {
            veths,
            preempt,
            agent,
            chatty: 40,
            idle: 10,
            transfer_bytes: 8 << 20,
            iperf_secs: 4,
        }
    }

    /// Established connections the scenario watches (iperf3's two counted as one transfer, the
    /// connected UDP socket as one).
    pub fn connections(&self) -> usize {
        self.chatty + self.idle + 3
    }
}

/// What the paced transfer saw.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Transfer {
    pub sent: usize,
    /// Bytes echoed back equal to what was sent, in order.
    pub echoed: usize,
    /// The longest time without echo progress.
    pub longest_stall: Duration,
    /// How it failed, if it did.
    pub error: Option<String>,
}

/// What happened.
#[derive(Debug)]
pub struct Report {
    pub options: Options,
    /// Connections watched ([`Options::connections`]).
    pub connections: usize,
    /// The connections that failed: which, and how.
    pub reset: Vec<String>,
    pub transfer: Transfer,
    pub iperf: Result<Iperf, String>,
    /// Request/response rounds in which every chatty connection answered.
    pub chatter_rounds: u64,
    /// The agent's counters at its stop (`None`: no agent).
    pub agent_counters: Option<serde_json::Value>,
    /// Who served a new connection after the failback.
    pub new_after_failback: String,
}

/// Runs the scenario (see the module docs).
pub fn run(opts: Options) -> anyhow::Result<Report> {
    let lab = Lab::with_veths(opts.veths)?;
    let _srv = servers::start(&lab.vm, PORTS, [NN1, NN2])?;
    let hook: &[&str] = match opts.veths {
        Veths::Tuned => lab::XDP_HOOK,
        Veths::Plain => &[],
    };
    let d = Daemon::start(
        &lab.edge,
        &lab::config(INTERVAL_MS, INTERVAL_MS - 10, 2, FALL, opts.preempt),
        hook,
    )?;
    d.wait_status(T, |s| active(s, "web-vm").as_deref() == Some("nn1"))?;
    let mut agent = if opts.agent {
        Some(GuestAgent::start(&lab.vm, &[NN1, NN2], &[])?)
    } else {
        None
    };
    let first = http_get(&lab.client, VIP, HTTP_PORT, "/", T).context("the first request")?;
    ensure!(first == NN1.to_string(), "first request served by {first}");

    let echo = SocketAddr::from((VIP, ECHO_PORT));
    let chatter = TcpChatter::start(
        &lab.client,
        vec![echo],
        opts.chatty,
        Duration::from_millis(20),
    )
    .context("opening the chatty connections")?;
    let mut idle = Vec::with_capacity(opts.idle);
    for i in 0..opts.idle {
        let mut c = connect(&lab, echo).with_context(|| format!("idle connection {i}"))?;
        echo_once(&mut c, format!("idle {i} before").as_bytes())
            .with_context(|| format!("idle connection {i} before the failure"))?;
        idle.push(Some(c));
    }
    let iperf = {
        let (client, vm) = (
            Netns::existing(lab.client.name()),
            Netns::existing(lab.vm.name()),
        );
        let secs = opts.iperf_secs;
        std::thread::spawn(move || iperf3(&client, &vm, VIP, IPERF_PORT, false, secs))
    };
    let transfer = paced_transfer(&lab, echo, opts.transfer_bytes);
    let udp = ConnectedUdp::start(&lab)?;
    let mut udp_ok = udp
        .exchange("before the failure")
        .context("the connected UDP socket")?;
    // Traffic flows over nn1 for a moment before the failure.
    std::thread::sleep(Duration::from_millis(700));

    let mut reset = Vec::new();
    lab.fail(1, Failure::Blackhole)?;
    d.wait_status(T, |s| active(s, "web-vm").as_deref() == Some("nn2"))
        .context("the failover")?;
    std::thread::sleep(Duration::from_millis(300));
    idle_round(&mut idle, "after the failover", &mut reset);
    udp_round(&udp, &mut udp_ok, "after the failover", &mut reset);

    lab.heal(1, Failure::Blackhole)?;
    d.wait_status(T, |s| {
        path_state(s, "web-vm", "nn1").as_deref() == Some("up")
    })
    .context("nn1 back up")?;
    // Time for a preempting daemon to move new flows back.
    std::thread::sleep(Duration::from_millis(300));
    idle_round(&mut idle, "after the failback", &mut reset);
    udp_round(&udp, &mut udp_ok, "after the failback", &mut reset);
    drop(udp);
    let new_after_failback = http_get(&lab.client, VIP, HTTP_PORT, "/", T)
        .context("a new connection after the failback")?;

    let transfer = transfer
        .join()
        .map_err(|_| anyhow!("the transfer thread panicked"))??;
    if let Some(e) = &transfer.error {
        reset.push(format!("the paced transfer: {e}"));
    }
    let iperf = iperf
        .join()
        .map_err(|_| anyhow!("the iperf3 thread panicked"))?
        .map_err(|e| format!("{e:#}"));
    if let Err(e) = &iperf {
        reset.push(format!("iperf3: {e}"));
    }
    let chat = chatter.finish()?;
    for (i, why) in &chat.failed {
        reset.push(format!("chatty connection {i}: {why}"));
    }
    let agent_counters = match agent.as_mut() {
        Some(a) => Some(a.stop()?),
        None => None,
    };
    Ok(Report {
        options: opts,
        connections: opts.connections(),
        reset,
        transfer,
        iperf,
        chatter_rounds: chat.rounds,
        agent_counters,
        new_after_failback,
    })
}

fn connect(lab: &Lab, to: SocketAddr) -> anyhow::Result<TcpStream> {
    lab.client
        .spawn(move || {
            let s = TcpStream::connect_timeout(&to, T)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.set_nodelay(true)?;
            Ok(s)
        })
        .join()
        .map_err(|_| anyhow!("client thread"))?
}

fn echo_once(s: &mut TcpStream, what: &[u8]) -> anyhow::Result<()> {
    s.write_all(what)?;
    let mut back = vec![0u8; what.len()];
    s.read_exact(&mut back)?;
    ensure!(back == what, "echo {back:?} for {what:?}");
    Ok(())
}

/// One echo on each idle connection still alive; a failed one is noted and dropped.
fn idle_round(idle: &mut [Option<TcpStream>], when: &str, reset: &mut Vec<String>) {
    for (i, slot) in idle.iter_mut().enumerate() {
        let Some(c) = slot else { continue };
        if let Err(e) = echo_once(c, format!("idle {i} {when}").as_bytes()) {
            reset.push(format!("idle connection {i} {when}: {e:#}"));
            *slot = None;
        }
    }
}

/// The UDP port of the VM's connected socket, and the client's.
const UDP_VM_PORT: u16 = 9100;
const UDP_CLIENT_PORT: u16 = 40_999;

/// A connected UDP socket in the VM on nn1's address echoing the client's datagrams, and the
/// client's socket connected to the VIP. Stopped on drop.
struct ConnectedUdp {
    client: std::net::UdpSocket,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    server: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl ConnectedUdp {
    fn start(lab: &Lab) -> anyhow::Result<ConnectedUdp> {
        use std::sync::{Arc, atomic::AtomicBool};
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let server = lab.vm.spawn(move || {
            let s = std::net::UdpSocket::bind((NN1, UDP_VM_PORT))?;
            s.connect((lab::CLIENT, UDP_CLIENT_PORT))?;
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            let _ = ready_tx.send(());
            let mut buf = [0u8; 512];
            // Bounded: the guard stops it; two minutes at most regardless.
            let end = Instant::now() + Duration::from_secs(120);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                match s.recv(&mut buf) {
                    Ok(n) => {
                        let _ = s.send(&buf[..n]);
                    }
                    // Timeouts, and the port unreachable of an echo that found no client.
                    Err(_) => continue,
                }
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the VM's connected UDP socket")?;
        let client = lab
            .client
            .spawn(|| {
                let c = std::net::UdpSocket::bind((lab::CLIENT, UDP_CLIENT_PORT))?;
                c.connect((VIP, UDP_VM_PORT))?;
                c.set_read_timeout(Some(Duration::from_millis(500)))?;
                Ok(c)
            })
            .join()
            .map_err(|_| anyhow!("client thread"))??;
        Ok(ConnectedUdp {
            client,
            stop,
            server: Some(server),
        })
    }

    /// One datagram echoed back, in up to 4 tries of 500 ms (a datagram may be lost while the
    /// path fails): the error of the last try otherwise.
    fn exchange(&self, when: &str) -> anyhow::Result<bool> {
        let msg = format!("connected udp {when}");
        let mut last = None;
        for _ in 0..4 {
            let mut buf = [0u8; 512];
            let r = self
                .client
                .send(msg.as_bytes())
                .and_then(|_| self.client.recv(&mut buf));
            match r {
                Ok(n) if &buf[..n] == msg.as_bytes() => return Ok(true),
                Ok(n) => last = Some(format!("echo {:?}", String::from_utf8_lossy(&buf[..n]))),
                Err(e) => last = Some(format!("{:?}: {e}", e.kind())),
            }
        }
        anyhow::bail!("no echo {when}: {}", last.unwrap_or_default())
    }
}

impl Drop for ConnectedUdp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.server.take() {
            let _ = t.join();
        }
    }
}

fn udp_round(udp: &ConnectedUdp, ok: &mut bool, when: &str, reset: &mut Vec<String>) {
    if !*ok {
        return;
    }
    if let Err(e) = udp.exchange(when) {
        reset.push(format!("the connected UDP socket: {e:#}"));
        *ok = false;
    }
}

/// Byte `i` of the paced transfer: not periodic over a chunk, so a lost or repeated chunk shows.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// Starts the paced transfer to `to` from the client (16 KiB every 5 ms); joined for its
/// [`Transfer`]. Bounded: the socket's reads time out after 5 s without data, the writes after
/// 5 s blocked.
fn paced_transfer(
    lab: &Lab,
    to: SocketAddr,
    total: usize,
) -> std::thread::JoinHandle<anyhow::Result<Transfer>> {
    const CHUNK: usize = 16 << 10;
    lab.client.spawn(move || {
        let mut report = Transfer {
            sent: 0,
            echoed: 0,
            longest_stall: Duration::ZERO,
            error: None,
        };
        let run = (|| -> anyhow::Result<()> {
            let s = TcpStream::connect_timeout(&to, T)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.set_write_timeout(Some(Duration::from_secs(5)))?;
            let mut w = s.try_clone()?;
            let writer = std::thread::spawn(move || -> std::io::Result<usize> {
                let mut sent = 0;
                let mut chunk = vec![0u8; CHUNK];
                while sent < total {
                    let n = CHUNK.min(total - sent);
                    for (j, b) in chunk[..n].iter_mut().enumerate() {
                        *b = pattern(sent + j);
                    }
                    w.write_all(&chunk[..n])?;
                    sent += n;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(sent)
            });
            let mut r = s;
            let mut buf = vec![0u8; 64 << 10];
            let mut last = Instant::now();
            while report.echoed < total {
                let n = match r.read(&mut buf) {
                    Ok(0) => {
                        report.error = Some(format!("closed after {} bytes", report.echoed));
                        break;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        report.error =
                            Some(format!("{:?} after {} bytes: {e}", e.kind(), report.echoed));
                        break;
                    }
                };
                let now = Instant::now();
                report.longest_stall = report.longest_stall.max(now - last);
                last = now;
                if let Some(j) = (0..n).find(|&j| buf[j] != pattern(report.echoed + j)) {
                    report.error = Some(format!("byte {} differs", report.echoed + j));
                    break;
                }
                report.echoed += n;
            }
            // The writer ends (done, or its socket failed) within its write timeout.
            match writer.join() {
                Ok(Ok(sent)) => report.sent = sent,
                Ok(Err(e)) => {
                    if report.error.is_none() {
                        report.error = Some(format!("writing: {e}"));
                    }
                }
                Err(_) => report.error = Some("the writer panicked".into()),
            }
            Ok(())
        })();
        if let Err(e) = run {
            report.error = Some(format!("{e:#}"));
        }
        Ok(report)
    })
}

/// The bench's and the tests' one-line account of a report.
pub fn describe(r: &Report) -> String {
    format!(
        "agent {}, preempt {}, {:?} veths: {} of {} connections reset; transfer {} of {} bytes \
         echoed intact, longest stall {:?}; iperf3 {}; {} chatter rounds; new connection after \
         the failback served by {}; agent counters {}",
        r.options.agent,
        r.options.preempt,
        r.options.veths,
        r.reset.len(),
        r.connections,
        r.transfer.echoed,
        r.options.transfer_bytes,
        r.transfer.longest_stall,
        match &r.iperf {
            Ok(i) => format!("{} bytes received", i.bytes),
            Err(e) => format!("failed: {e}"),
        },
        r.chatter_rounds,
        r.new_after_failback,
        r.agent_counters
            .as_ref()
            .map_or_else(|| "-".to_string(), |c| c.to_string()),
    )
}
