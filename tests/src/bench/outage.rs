//! Failover outage of a UDP stream through the lab, and the losses across a daemon restart and
//! a reload.
//!
//! Method. For each probe profile, a fresh lab ([`Lab::new`]) with the VM's servers and the
//! daemon on [`lab::config`] (tcp probes, failover with nn1 preferred). Once nn1 carries the
//! VIP, a client thread in the client namespace sends a paced UDP stream to the whole-address
//! VIP (one datagram every `every`, each numbered) and records, per datagram, when it was sent,
//! and for each echo when it came back and over which path (the VM's echo server appends the
//! address it was reached at: nn1's or nn2's). After a warm-up the nn1 router is blackholed
//! ([`Failure::Blackhole`]: link up, every packet silently dropped, the realistic failure).
//!
//! - **outage**: from the sending of the first datagram lost after the failure to the sending
//!   of the first datagram answered over nn2, both on the client's clock (so the echo's round
//!   trip does not enter); **lost**: datagrams of the whole stream never answered;
//! - **detect**: from that first lost datagram to the daemon's decision, whose wall-clock time
//!   the daemon writes into the path's meta entry (`LB_PATH_META.changed_ns`, nanoseconds),
//!   read from the pinned map and placed on the client's clock through a (monotonic,
//!   wall-clock) pair taken when the stream starts;
//! - **decision → map write**: what the daemon logs for the nn1 down transition;
//! - **budget**: `interval × fall`, the usual way detection is quoted (BFD 3 × 50 ms). With the
//!   daemon's hold timer (a path is down `fall × interval` after its last successful probe was
//!   sent), the detection lies between `(fall − 1) × interval` and `fall × interval`, depending
//!   on where the failure falls between two probes: the budget is the worst case.
//!
//! A profile fails nn1 20 times (`quick`: 3) on one lab: before each failure the path is healed,
//! nn1 carries the VIP again, and a random wait of up to one interval puts the failure at a
//! random phase of the probe grid. It reports the **worst** and the **median** outage (and the
//! other figures of the median run; all runs are in `runs`). Every run checks that the stream
//! went over nn1 before the failure and only over nn2 after its first nn2 echo.
//!
//! The probe-only profiles turn the passive trigger off (`passive_ms: 0`): the stream would
//! otherwise trigger it, and the figure would not be the probes'. The **passive** profile is
//! the default one with the trigger on, as deployed: the stream's unanswered datagrams make the
//! daemon probe nn1 at once.
//!
//! Restart and reload: one more lab with the default profile; a stream (1 ms) runs across
//! `Daemon::restart` (stop, start, adopt the pinned state), and another across a reload adding
//! a VIP (a service, `write_config`, `lb reload`, until `lb status` shows it). Lost datagrams are
//! counted (expected: none).
//!
//! The timeline SVG shows the aggressive profile's reported run: datagrams received per
//! millisecond over each path, around the failure (x = 0: the first lost datagram).
//!
//! Every stream is bounded in count, and every wait in time.

use std::{
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    sync::mpsc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail, ensure};
use lb_common::maps::{MAX_PATHS, decode_name};
use lb_user::datapath::PinDir;
use rand::{Rng as _, SeedableRng as _};
use serde::Serialize;

use crate::{
    lab::{self, Failure, Lab},
    lb::{Daemon, active, path_state},
    netns::Netns,
    servers::{self, Server},
};

/// One probe profile's figures (those of its median run).
#[derive(Clone, Debug, Serialize)]
pub struct Profile {
    pub name: String,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub fall: u32,
    /// The passive trigger was on.
    pub passive: bool,
    pub traffic: Traffic,
    /// The worst and the median outage over the runs.
    pub worst_outage_ms: f64,
    pub median_outage_ms: f64,
    /// `interval × fall`.
    pub budget_ms: f64,
    /// The stream's pacing: one datagram every this many microseconds.
    pub every_us: u64,
    pub outage_ms: f64,
    pub lost: u64,
    /// From the first lost datagram to the daemon's decision.
    pub detect_ms: f64,
    pub decision_to_write_us: f64,
    /// Every run (the figures above are the run with the median outage).
    pub runs: Vec<Run>,
}

/// One failover.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub sent: u64,
    pub outage_ms: f64,
    pub lost: u64,
    pub detect_ms: f64,
    pub decision_to_write_us: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outage {
    pub profiles: Vec<Profile>,
    pub restart_lost: u64,
    pub reload_lost: u64,
    /// Datagrams sent across the restart and across the reload.
    pub restart_sent: u64,
    pub reload_sent: u64,
    /// How long the restart took (`Daemon::restart`: stop, start, configuration applied), and
    /// the reload (from `lb reload` until `lb status` shows the new VIP), in milliseconds.
    pub restart_ms: f64,
    pub reload_ms: f64,
}

/// A probe profile and the stream that measures it.
struct Spec {
    name: &'static str,
    interval_ms: u32,
    /// 0: none in the configuration (adaptive).
    timeout_ms: u32,
    fall: u32,
    passive: bool,
    traffic: Traffic,
    every: Duration,
}

/// What the client sends through the VIP while a path fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Traffic {
    /// A paced stream of numbered datagrams to the VM's UDP echo.
    Udp,
    /// A paced series of new TCP connections to the VM's HTTP server, one request each.
    Tcp,
}

const PROFILES: [Spec; 4] = [
    Spec {
        name: "default",
        interval_ms: 100,
        timeout_ms: 80,
        fall: 3,
        passive: false,
        traffic: Traffic::Udp,
        every: Duration::from_millis(1),
    },
    Spec {
        name: "aggressive",
        interval_ms: 10,
        timeout_ms: 8,
        fall: 3,
        passive: false,
        traffic: Traffic::Udp,
        every: Duration::from_micros(500),
    },
    // The configuration's own timeout (adaptive): a burst of three 80 ms timeouts would cost
    // what the trigger saves.
    Spec {
        name: "passive",
        interval_ms: 100,
        timeout_ms: 0,
        fall: 3,
        passive: true,
        traffic: Traffic::Udp,
        every: Duration::from_millis(1),
    },
    // The same with TCP: the trigger sees SYNs go out without a SYN-ACK coming back.
    Spec {
        name: "passive-tcp",
        interval_ms: 100,
        timeout_ms: 0,
        fall: 3,
        passive: true,
        traffic: Traffic::Tcp,
        every: Duration::from_millis(1),
    },
];

/// Failures per profile.
const FAILURES: usize = 20;
const QUICK_FAILURES: usize = 3;

/// Rise of every profile (failback is not measured here).
const RISE: u32 = 2;
/// How long the client keeps listening after its last datagram.
const GRACE: Duration = Duration::from_millis(300);
/// The VIP the reload adds: a service (tcp/7, the VM's echo), since a target has at most one
/// whole-address VIP.
const NEW_VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);

pub fn run(quick: bool, svg: &Path) -> anyhow::Result<Outage> {
    let reps = if quick { QUICK_FAILURES } else { FAILURES };
    let mut profiles = Vec::new();
    let mut timeline = None;
    for spec in &PROFILES {
        let rig = Rig::new(spec)?;
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut runs = Vec::new();
        for i in 0..reps {
            if i > 0 {
                rig.lab.heal(1, Failure::Blackhole)?;
                rig.daemon
                    .wait_status(Duration::from_secs(10), |s| {
                        active(s, "web-vm").as_deref() == Some("nn1")
                    })
                    .with_context(|| format!("profile {}: nn1 back before run {i}", spec.name))?;
            }
            // A random phase of the probe grid.
            let phase = rng.random_range(0..spec.interval_ms.max(1));
            std::thread::sleep(Duration::from_millis(u64::from(phase)));
            runs.push(
                failover(&rig, spec, quick)
                    .with_context(|| format!("profile {}, run {i}", spec.name))?,
            );
        }
        let all: Vec<Run> = runs.iter().map(|r| r.run.clone()).collect();
        let mut order: Vec<usize> = (0..runs.len()).collect();
        order.sort_by(|&a, &b| runs[a].run.outage_ms.total_cmp(&runs[b].run.outage_ms));
        let worst_outage_ms = order.last().map_or(0.0, |&i| runs[i].run.outage_ms);
        let median = runs.swap_remove(order[order.len() / 2]);
        let Run {
            outage_ms,
            lost,
            detect_ms,
            decision_to_write_us,
            ..
        } = median.run.clone();
        profiles.push(Profile {
            name: spec.name.to_string(),
            interval_ms: spec.interval_ms,
            timeout_ms: spec.timeout_ms,
            fall: spec.fall,
            passive: spec.passive,
            traffic: spec.traffic,
            worst_outage_ms,
            median_outage_ms: outage_ms,
            budget_ms: f64::from(spec.interval_ms * spec.fall),
            every_us: spec.every.as_micros() as u64,
            outage_ms,
            lost,
            detect_ms,
            decision_to_write_us,
            runs: all,
        });
        if spec.name == "aggressive" {
            timeline = Some((median, spec));
        }
    }
    let ((restart, restart_took), (reload, reload_took)) =
        restart_and_reload(quick).context("restart and reload")?;
    if let Some((t, spec)) = &timeline {
        plot(svg, t, spec).with_context(|| format!("writing {}", svg.display()))?;
    }
    Ok(Outage {
        profiles,
        restart_lost: restart.lost(),
        reload_lost: reload.lost(),
        restart_sent: restart.sent(),
        reload_sent: reload.sent(),
        restart_ms: restart_took.as_secs_f64() * 1000.0,
        reload_ms: reload_took.as_secs_f64() * 1000.0,
    })
}

/// A run and what its timeline needs.
struct Measured {
    run: Run,
    /// Echoes: receive time relative to the first lost datagram (ms), path (1 or 2).
    echoes: Vec<(f64, u8)>,
}

/// The lab with its servers and daemon.
struct Rig {
    // Dropped in this order: the daemon, the servers, then the namespaces.
    daemon: Daemon,
    _servers: Server,
    lab: Lab,
}

impl Rig {
    fn new(spec: &Spec) -> anyhow::Result<Self> {
        let lab = Lab::new()?;
        let servers = servers::start(&lab.vm, lab::PORTS, [lab::NN1, lab::NN2])?;
        let Spec {
            interval_ms,
            timeout_ms,
            fall,
            ..
        } = *spec;
        let mut config = lab::config(interval_ms, timeout_ms, RISE, fall, true);
        if timeout_ms == 0 {
            let adaptive = config.replacen(&format!("\"timeout_ms\": {timeout_ms}, "), "", 1);
            ensure!(
                adaptive != config,
                "no probe timeout in the lab's configuration"
            );
            config = adaptive;
        }
        if !spec.passive {
            let probe_end = format!("\"fall\": {fall} }}");
            let off = config.replacen(
                &probe_end,
                &format!("\"fall\": {fall}, \"passive_ms\": 0 }}"),
                1,
            );
            ensure!(off != config, "no probe in the lab's configuration");
            config = off;
        }
        let daemon = Daemon::start(&lab.edge, &config, lab::XDP_HOOK)?;
        daemon.wait_status(Duration::from_secs(10), |s| {
            active(s, "web-vm").as_deref() == Some("nn1")
        })?;
        Ok(Self {
            daemon,
            _servers: servers,
            lab,
        })
    }
}

fn failover(rig: &Rig, spec: &Spec, quick: bool) -> anyhow::Result<Measured> {
    let worst = Duration::from_millis(u64::from(spec.interval_ms * spec.fall + spec.timeout_ms));
    let (warm, tail) = if quick {
        (
            Duration::from_millis(300),
            (worst * 3).max(Duration::from_millis(300)),
        )
    } else {
        (Duration::from_secs(1), worst * 3 + Duration::from_secs(1))
    };
    let count = ((warm + tail).as_micros() / spec.every.as_micros()) as u64;
    let stream = Stream::start(&rig.lab.client, count, spec.every, spec.traffic)?;
    sleep_until(stream.start + warm);
    let failed_at = stream.start.elapsed();
    rig.lab.fail(1, Failure::Blackhole)?;
    rig.daemon
        .wait_status(worst + Duration::from_secs(2), |s| {
            path_state(s, "web-vm", "nn1").as_deref() == Some("down")
        })
        .context("nn1 did not go down")?;
    let decided_ns = changed_ns(&rig.daemon, "nn1")?;
    let log = rig.daemon.log_text();
    let rec = stream.join()?;

    let sent_after = |seq: usize| rec.sent[seq].is_some_and(|t| t >= failed_at);
    let first_lost = (0..rec.sent.len())
        .find(|&s| sent_after(s) && rec.echo[s].is_none())
        .context("no datagram was lost after the failure: did the blackhole take?")?;
    let first_new = (first_lost..rec.sent.len())
        .find(|&s| rec.echo[s].is_some_and(|(_, p)| p == 2))
        .context("no datagram was answered over nn2 after the failure")?;
    for (s, e) in rec.echo.iter().enumerate() {
        if let Some((_, p)) = e {
            ensure!(
                (s < first_lost && *p == 1) || (s > first_lost && (s < first_new || *p == 2)),
                "datagram {s} was answered over nn{p} (first lost {first_lost}, first over nn2 {first_new})"
            );
        }
    }
    let t0 = rec.sent[first_lost].unwrap_or_default();
    let t_new = rec.sent[first_new].unwrap_or_default();
    let decided = Duration::from_nanos(decided_ns.saturating_sub(rec.start_unix_ns));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let run = Run {
        sent: rec.sent.iter().flatten().count() as u64,
        outage_ms: ms(t_new - t0),
        lost: rec.lost(),
        detect_ms: ms(decided) - ms(t0),
        decision_to_write_us: decision_to_write(&log, "nn1")
            .context("no 'decision to map write' logged for nn1 going down")?
            .as_secs_f64()
            * 1e6,
    };
    let echoes = rec
        .echo
        .iter()
        .flatten()
        .map(|(at, p)| (ms(*at) - ms(t0), *p))
        .collect();
    Ok(Measured { run, echoes })
}

/// Streams across a restart, then across a reload that adds a VIP.
/// Each stream's record, and how long the operation took.
fn restart_and_reload(quick: bool) -> anyhow::Result<((Record, Duration), (Record, Duration))> {
    let [default, ..] = &PROFILES;
    let mut rig = Rig::new(default)?;
    // The stream must outlast the operation, and a restart on a loaded or slow machine took
    // 1.9 s (CI, stop 22), once 3.8 s (a fresh clone's first bench, stop 25): the quick run
    // keeps a short lead, not a short stream, and the stream lasts 8 s.
    let lead = if quick {
        Duration::from_millis(200)
    } else {
        Duration::from_millis(500)
    };
    let length = Duration::from_secs(8);
    let count = (length.as_micros() / default.every.as_micros()) as u64;

    let stream = Stream::start(&rig.lab.client, count, default.every, Traffic::Udp)?;
    sleep_until(stream.start + lead);
    let began = Instant::now();
    rig.daemon.restart(&[])?;
    let restart_took = began.elapsed();
    let done = stream.start.elapsed();
    ensure!(
        done < length,
        "the restart ended {done:?} into the stream, after its end ({length:?})"
    );
    let restart = stream.join()?;

    let config = lab::config(
        default.interval_ms,
        default.timeout_ms,
        RISE,
        default.fall,
        true,
    );
    let more = config.replacen(
        "\"vips\": [",
        &format!(
            "\"vips\": [\n    {{ \"address\": \"{NEW_VIP}\", \"protocol\": \"tcp\", \"port\": {}, \"target\": \"web-vm\" }},",
            lab::ECHO_PORT
        ),
        1,
    );
    ensure!(more != config, "no VIP list in the lab's configuration");
    let stream = Stream::start(&rig.lab.client, count, default.every, Traffic::Udp)?;
    sleep_until(stream.start + lead);
    rig.daemon.write_config(&more)?;
    let began = Instant::now();
    rig.daemon.lb(&["reload"])?;
    rig.daemon.wait_status(Duration::from_secs(5), |s| {
        s["vips"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["address"] == NEW_VIP.to_string()))
    })?;
    let reload_took = began.elapsed();
    let done = stream.start.elapsed();
    ensure!(
        done < length,
        "the reload ended {done:?} into the stream, after its end ({length:?})"
    );
    let reload = stream.join()?;
    Ok(((restart, restart_took), (reload, reload_took)))
}

/// What a stream saw, per datagram (index = sequence number).
struct Record {
    start_unix_ns: u64,
    /// When each datagram was sent (since the start); `None` if the send failed.
    sent: Vec<Option<Duration>>,
    /// When its echo came back, and over which path (1: nn1, 2: nn2).
    echo: Vec<Option<(Duration, u8)>>,
}

impl Record {
    /// An empty record of `n` exchanges starting now, and the instant it starts at.
    fn start(n: usize) -> anyhow::Result<(Self, Instant)> {
        let start = Instant::now();
        let start_unix_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)?
            .as_nanos()
            .try_into()?;
        let rec = Record {
            start_unix_ns,
            sent: vec![None; n],
            echo: vec![None; n],
        };
        Ok((rec, start))
    }

    fn sent(&self) -> u64 {
        self.sent.iter().flatten().count() as u64
    }

    fn lost(&self) -> u64 {
        self.sent
            .iter()
            .zip(&self.echo)
            .filter(|(s, e)| s.is_some() && e.is_none())
            .count() as u64
    }
}

/// A stream running on a thread in the client namespace.
struct Stream {
    start: Instant,
    thread: std::thread::JoinHandle<anyhow::Result<Record>>,
}

impl Stream {
    /// Starts `count` exchanges of `traffic` through the VIP, one every `every`. Returns once
    /// the first is due.
    fn start(
        client: &Netns,
        count: u64,
        every: Duration,
        traffic: Traffic,
    ) -> anyhow::Result<Self> {
        match traffic {
            Traffic::Udp => Self::udp(client, count, every),
            Traffic::Tcp => Self::tcp(client, count, every),
        }
    }

    /// Sends `count` datagrams to the VIP's UDP echo, one every `every`, and listens until
    /// [`GRACE`] after the last one.
    fn udp(client: &Netns, count: u64, every: Duration) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = client.spawn(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect((lab::VIP, lab::UDP_PORT))?;
            s.set_nonblocking(true)?;
            let n = usize::try_from(count)?;
            let (mut rec, start) = Record::start(n)?;
            let _ = tx.send(start);
            let mut buf = [0u8; 64];
            let mut drain = |rec: &mut Record| {
                // Bounded: at most one echo per datagram sent, and the socket is non-blocking.
                for _ in 0..n {
                    let Ok(len) = s.recv(&mut buf) else { break };
                    let at = start.elapsed();
                    if len < 12 {
                        continue;
                    }
                    let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
                    let from =
                        Ipv4Addr::new(buf[len - 4], buf[len - 3], buf[len - 2], buf[len - 1]);
                    let path = path_of(from);
                    if let Some(slot) = usize::try_from(seq).ok().and_then(|i| rec.echo.get_mut(i))
                    {
                        *slot = Some((at, path));
                    }
                }
            };
            for seq in 0..n {
                let due = start + every * seq as u32;
                while Instant::now() < due {
                    drain(&mut rec);
                    std::thread::sleep(Duration::from_micros(50));
                }
                let mut payload = [0u8; 32];
                payload[..8].copy_from_slice(&(seq as u64).to_be_bytes());
                let at = start.elapsed();
                if s.send(&payload).is_ok() {
                    rec.sent[seq] = Some(at);
                }
            }
            let end = Instant::now() + GRACE;
            while Instant::now() < end && rec.echo.iter().flatten().count() < rec.sent() as usize {
                drain(&mut rec);
                std::thread::sleep(Duration::from_micros(200));
            }
            Ok(rec)
        });
        let start = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the client stream did not start"))?;
        Ok(Self { start, thread })
    }

    /// Opens `count` TCP connections to the VIP's HTTP port, one every `every`, each sending
    /// one request and reading the answer (the VM's address the request reached: the path).
    /// All of it on one thread with non-blocking sockets, so the pacing holds while connections
    /// hang: one that is not answered within [`TCP_GIVE_UP`] is dropped (lost).
    fn tcp(client: &Netns, count: u64, every: Duration) -> anyhow::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let thread = client.spawn(move || {
            let n = usize::try_from(count)?;
            let (mut rec, start) = Record::start(n)?;
            let _ = tx.send(start);
            let mut open: Vec<Exchange> = Vec::new();
            let mut next = 0usize;
            let end_by = start + every * count as u32 + TCP_GIVE_UP;
            // Bounded: every connection is given up after TCP_GIVE_UP, and the loop after the
            // last one's.
            while (next < n || !open.is_empty()) && Instant::now() < end_by {
                if next < n && Instant::now() >= start + every * next as u32 {
                    let at = start.elapsed();
                    if let Ok(x) = Exchange::open(next, at) {
                        rec.sent[next] = Some(at);
                        open.push(x);
                    }
                    next += 1;
                }
                open.retain_mut(|x| match x.poll() {
                    Poll::Pending if start.elapsed() - x.opened < TCP_GIVE_UP => true,
                    Poll::Pending | Poll::Failed => false,
                    Poll::Answered(from) => {
                        rec.echo[x.seq] = Some((start.elapsed(), path_of(from)));
                        false
                    }
                });
                std::thread::sleep(Duration::from_micros(50));
            }
            Ok(rec)
        });
        let start = rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("the client connections did not start"))?;
        Ok(Self { start, thread })
    }

    fn join(self) -> anyhow::Result<Record> {
        self.thread
            .join()
            .map_err(|_| anyhow!("the client stream panicked"))?
    }
}

/// How long a TCP exchange may take before it counts as lost (the lab's round trip is well
/// under a millisecond; a SYN's first retransmission would come after a second).
const TCP_GIVE_UP: Duration = Duration::from_millis(150);

/// One TCP exchange of [`Stream::tcp`], driven by polling.
struct Exchange {
    seq: usize,
    opened: Duration,
    socket: socket2::Socket,
    sent_request: bool,
    answer: Vec<u8>,
}

enum Poll {
    Pending,
    Failed,
    /// The VM's address the answer names.
    Answered(Ipv4Addr),
}

impl Exchange {
    fn open(seq: usize, opened: Duration) -> std::io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        match socket.connect(&std::net::SocketAddr::from((lab::VIP, lab::HTTP_PORT)).into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(Self {
            seq,
            opened,
            socket,
            sent_request: false,
            answer: Vec::new(),
        })
    }

    fn poll(&mut self) -> Poll {
        use std::io::Read as _;
        if !self.sent_request {
            if let Ok(Some(_)) | Err(_) = self.socket.take_error() {
                return Poll::Failed;
            }
            if self.socket.peer_addr().is_err() {
                return Poll::Pending; // still connecting
            }
            match self.socket.send(b"GET / HTTP/1.0\r\n\r\n") {
                Ok(_) => self.sent_request = true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(_) => return Poll::Failed,
            }
        }
        let mut buf = [0u8; 512];
        loop {
            match (&self.socket).read(&mut buf) {
                Ok(0) => break,
                Ok(k) if self.answer.len() + k <= 4096 => self.answer.extend_from_slice(&buf[..k]),
                Ok(_) => return Poll::Failed,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(_) => return Poll::Failed,
            }
        }
        // The body is the address the request reached, on its own line.
        let text = String::from_utf8_lossy(&self.answer);
        match text
            .rsplit("\r\n\r\n")
            .next()
            .map(str::trim)
            .and_then(|b| b.parse().ok())
        {
            Some(from) => Poll::Answered(from),
            None => Poll::Failed,
        }
    }
}

/// The path a VM address belongs to: 1 (nn1), 2 (nn2), or 0.
fn path_of(vm_address: Ipv4Addr) -> u8 {
    if vm_address == lab::NN1 {
        1
    } else if vm_address == lab::NN2 {
        2
    } else {
        0
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// The wall-clock time (Unix ns) at which the daemon last changed path `name`'s state, from the
/// pinned path meta.
fn changed_ns(daemon: &Daemon, name: &str) -> anyhow::Result<u64> {
    let maps = PinDir::new(&daemon.pin).open()?;
    for id in 0..MAX_PATHS {
        let m = maps.path_meta(id)?;
        if m.used != 0 && decode_name(&m.name) == name {
            return Ok(m.changed_ns);
        }
    }
    bail!("no path {name} in the pinned path meta")
}

/// The "decision to map write" the daemon logged for `path` going down.
fn decision_to_write(log: &str, path: &str) -> Option<Duration> {
    // The latest: a profile fails the path again and again on one daemon.
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(&format!("web-vm/{path}: up → down")))?;
    let (_, tail) = line.split_once("decision to map write ")?;
    parse_debug_duration(tail.split_whitespace().next()?)
}

/// A `Duration` as its `Debug` prints it: `218.635µs`, `1.2ms`, `950ns`, `2.5s`.
fn parse_debug_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (num, unit) = s.split_at(split);
    let v: f64 = num.parse().ok()?;
    let secs = match unit {
        "ns" => v * 1e-9,
        "µs" | "us" => v * 1e-6,
        "ms" => v * 1e-3,
        "s" => v,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// The timeline: datagrams received per millisecond over each path, around the failure.
fn plot(svg: &Path, m: &Measured, spec: &Spec) -> anyhow::Result<()> {
    use plotters::prelude::*;

    if let Some(dir) = svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let outage = m.run.outage_ms;
    // Where the hold timer can decide, depending on where the failure falls between two
    // probes: from (fall − 1) × interval to fall × interval after it.
    let (i, f) = (f64::from(spec.interval_ms), f64::from(spec.fall));
    let window = ((f - 1.0) * i, f * i);
    let x0 = -40.0f64;
    let x1 = (outage.max(m.run.detect_ms).max(window.1) + 60.0).ceil();
    // Bins of BIN ms per path, as datagrams per ms: single milliseconds alternate between
    // one and three echoes of a 0.5 ms stream (the client's polling), which hides the shape.
    const BIN: f64 = 2.0;
    let bins = ((x1 - x0) / BIN).ceil() as usize;
    let mut counts = [vec![0u32; bins], vec![0u32; bins]];
    for (t, p) in &m.echoes {
        let b = ((t - x0) / BIN).floor();
        if (1..=2).contains(p) && b >= 0.0 && (b as usize) < bins {
            counts[usize::from(*p - 1)][b as usize] += 1;
        }
    }
    let peak = counts.iter().flatten().copied().max().unwrap_or(1) as f64 / BIN;
    // Room above the lines for the legend.
    let ymax = (peak * 1.8).max(peak + 1.0);
    // Steps: each bin's rate held over its width.
    let line = |c: &[u32]| -> Vec<(f64, f64)> {
        c.iter()
            .enumerate()
            .flat_map(|(i, n)| {
                let x = x0 + i as f64 * BIN;
                let y = f64::from(*n) / BIN;
                [(x, y), (x + BIN, y)]
            })
            .collect()
    };

    let root = SVGBackend::new(svg, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "Failover of a UDP stream through lb: nn1 blackholed (probes {} ms × fall {}, timeout {} ms; 1 datagram / {} µs)",
        spec.interval_ms,
        spec.fall,
        spec.timeout_ms,
        spec.every.as_micros()
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("time since the failure (ms; 0 = first datagram lost)")
        .y_desc("datagrams received per ms (2 ms bins)")
        .y_labels(6)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()?;
    let shade = RGBColor(0xbb, 0xbb, 0xbb);
    chart
        .draw_series(std::iter::once(Rectangle::new(
            [(window.0, 0.0), (window.1, ymax)],
            shade.mix(0.25).filled(),
        )))?
        .label(format!(
            "where the hold timer can decide ({:.0}–{:.0} ms)",
            window.0, window.1
        ))
        .legend(move |(x, y)| {
            Rectangle::new([(x, y - 5), (x + 20, y + 5)], shade.mix(0.25).filled())
        });
    let nn1 = RGBColor(0x1f, 0x77, 0xb4);
    let nn2 = RGBColor(0xd6, 0x27, 0x28);
    chart
        .draw_series(LineSeries::new(line(&counts[0]), nn1.stroke_width(2)))?
        .label("over nn1 (192.0.2.70)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], nn1.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(line(&counts[1]), nn2.stroke_width(2)))?
        .label("over nn2 (192.0.2.100)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], nn2.stroke_width(2)));
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 0.0), (0.0, ymax)],
            BLACK.stroke_width(1),
        )))?
        .label("failure (first datagram lost)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    let d = m.run.detect_ms;
    let grey = RGBColor(0x55, 0x55, 0x55);
    chart
        .draw_series(DashedLineSeries::new(
            vec![(d, 0.0), (d, ymax)],
            6,
            4,
            grey.stroke_width(1),
        ))?
        .label(format!("decision: nn1 down (+{d:.1} ms)"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1)));
    chart.draw_series(std::iter::once(Text::new(
        format!("outage {outage:.1} ms, {} lost", m.run.lost),
        (outage / 2.0 - 12.0, peak * 0.5),
        ("sans-serif", 14),
    )))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_durations() {
        assert_eq!(
            parse_debug_duration("218.635µs"),
            Some(Duration::from_nanos(218_635))
        );
        assert_eq!(
            parse_debug_duration("1.5ms"),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(
            parse_debug_duration("950ns"),
            Some(Duration::from_nanos(950))
        );
        assert_eq!(parse_debug_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_debug_duration("12h"), None);
    }

    #[test]
    fn finds_the_down_transition() {
        let log = "web-vm/nn1: unknown → up (first probe succeeded); decision to map write 19.559µs\n\
                   web-vm/nn1: up → down (3 consecutive failures (fall 3); probe: timeout after 8 ms; history +++---); web-vm: new flows → nn2; decision to map write 61.2µs\n";
        assert_eq!(
            decision_to_write(log, "nn1"),
            Some(Duration::from_nanos(61_200))
        );
        let held = "web-vm/nn1: up → down (no successful probe for 30ms (fall 3 × interval 10ms); probe: none answered; history +++--); web-vm: new flows → nn2; decision to map write 48.2µs\n";
        assert_eq!(
            decision_to_write(held, "nn1"),
            Some(Duration::from_nanos(48_200))
        );
    }
}
