//! `lb-lab`: the lab behind `cargo xtask lab`. Needs root; `cargo xtask lab` builds it and `lb`
//! and runs it.
//!
//! - `lb-lab story`: builds the dual-path topology, runs `lb`, and walks through a failure and
//!   its heal with timed output, then tears everything down (also on failure or Ctrl-C).
//! - `lb-lab scale-out`: two edges running `lb` and BIRD behind an upstream router (BGP, BFD,
//!   ECMP): flows over both, edge 1 failing three ways and coming back while TCP connections
//!   stay busy, then everything torn down.
//! - `lb-lab up` / `lb-lab down`: keep the topology (namespaces `lbl-*`), the VM's servers and
//!   the daemon running for exploring, and remove them.
//! - `lb-lab serve --netns NS`: the VM's servers (HTTP, TCP echo, UDP echo), until SIGTERM.
//!
//! `LB_BIN` names the `lb` binary to run.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use lb_tests::{
    lab::{self, Failure, Lab, NN1, NN2, VIP},
    lb::{Daemon, active, path_state},
    netns::Netns,
    servers,
    traffic::{http_get, udp_stream},
};

const PREFIX: &str = "lbl";
const RUN_DIR: &str = "/run/lb-lab";
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// SIGINT/SIGTERM set a flag instead of killing the process, so the guards tear down.
fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn interrupted() -> anyhow::Result<()> {
    if STOP.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("lb-lab: needs root (network namespaces, XDP); run it through `cargo xtask lab`");
        return std::process::ExitCode::FAILURE;
    }
    catch_signals();
    let result = match args.first().map(String::as_str) {
        None | Some("story") => story(),
        Some("scale-out") => scale_out(),
        Some("up") => up(),
        Some("down") => down(),
        Some("serve") => serve(args.get(1..).unwrap_or_default()),
        Some(other) => Err(anyhow::anyhow!(
            "unknown command {other:?}: story | scale-out | up | down | serve --netns NS"
        )),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-lab: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

struct Clock(Instant);

impl Clock {
    /// Prints a timed line; stops the story (its guards tear down) once interrupted.
    fn say(&self, what: impl std::fmt::Display) -> anyhow::Result<()> {
        println!("[{:7.3}s] {what}", self.0.elapsed().as_secs_f64());
        interrupted()
    }
}

fn which_path(body: &str) -> &'static str {
    if body == NN1.to_string() {
        "nn1"
    } else if body == NN2.to_string() {
        "nn2"
    } else {
        "?"
    }
}

/// A request from the client through the VIP; says and returns which path answered.
fn request(lab: &Lab, t: &Clock) -> anyhow::Result<&'static str> {
    let body = http_get(
        &lab.client,
        VIP,
        lab::HTTP_PORT,
        "/",
        Duration::from_secs(2),
    )?;
    let path = which_path(&body);
    t.say(format!(
        "client → http://{VIP}:{}/ answered by {body} ({path})",
        lab::HTTP_PORT
    ))?;
    Ok(path)
}

fn ensure_no_lab() -> anyhow::Result<()> {
    if Path::new(&format!("/run/netns/{PREFIX}-edge")).exists() {
        bail!("a lab is up (namespaces {PREFIX}-*): `cargo xtask lab down` first");
    }
    Ok(())
}

fn story() -> anyhow::Result<()> {
    ensure_no_lab()?;
    let (interval, fall, rise) = (50u32, 3u32, 2u32);
    let t = Clock(Instant::now());
    t.say(format!("building the lab: namespaces {PREFIX}-client, -edge, -nn1, -nn2, -vm (see tests/src/lab.rs)"))?;
    let lab = Lab::with_prefix(PREFIX)?;
    let _srv = servers::start(&lab.vm, lab::PORTS, [NN1, NN2])?;
    t.say(format!("vm serves HTTP :{} (answers with the address it was reached at), TCP echo :{}, UDP echo :{}", lab::HTTP_PORT, lab::ECHO_PORT, lab::UDP_PORT))?;
    let d = Daemon::start(
        &lab.edge,
        &lab::config(interval, interval - 10, rise, fall, true),
        &[],
    )?;
    t.say(format!("lb runs on the edge: VIP {VIP} → web-vm, nn1 preferred, tcp probes every {interval} ms, fall {fall}, rise {rise}"))?;
    d.wait_status(Duration::from_secs(3), |s| {
        active(s, "web-vm").as_deref() == Some("nn1")
    })?;
    interrupted()?;

    ensure!(request(&lab, &t)? == "nn1");

    let stream = udp_stream(
        &lab.client,
        VIP,
        lab::UDP_PORT,
        3000,
        Duration::from_millis(1),
        Duration::from_millis(500),
    );
    t.say(format!(
        "client starts a UDP stream to {VIP}:{}, one datagram a millisecond for 3 s",
        lab::UDP_PORT
    ))?;
    std::thread::sleep(Duration::from_millis(700));
    interrupted()?;

    lab.fail(1, Failure::Blackhole)?;
    t.say("path nn1 blackholed: its router silently drops everything")?;
    let took = d.wait_status(Duration::from_secs(5), |s| {
        active(s, "web-vm").as_deref() == Some("nn2")
    })?;
    t.say(format!("lb detected it and swapped: new flows → nn2, {} ms after the failure (budget fall × interval = {} ms)", took.as_millis(), fall * interval))?;
    ensure!(request(&lab, &t)? == "nn2");
    interrupted()?;

    let report = stream
        .join()
        .map_err(|_| anyhow::anyhow!("the stream thread panicked"))??;
    t.say(format!(
        "UDP stream: {} sent, {} lost, longest outage {} ms (its flow moved from nn1 to nn2 in the datapath)",
        report.sent,
        report.lost.len(),
        report.longest_gap.as_millis()
    ))?;

    lab.heal(1, Failure::Blackhole)?;
    t.say("path nn1 healed")?;
    let took = d.wait_status(Duration::from_secs(5), |s| {
        active(s, "web-vm").as_deref() == Some("nn1")
    })?;
    t.say(format!(
        "lb saw nn1 rise ({rise} good probes) after {} ms: new flows → nn1 again (preempt: true)",
        took.as_millis()
    ))?;
    ensure!(
        request(&lab, &t)? == "nn1",
        "failback: preempt brings new flows back to nn1"
    );

    println!("\n$ lb status");
    print!("{}", d.lb(&["status"])?);
    let s = d.json(&["status"])?;
    ensure!(path_state(&s, "web-vm", "nn1").as_deref() == Some("up"));
    println!("\nthe daemon's log:");
    for line in d
        .log_text()
        .lines()
        .filter(|l| l.contains("→") || l.contains("adopted") || l.contains("installed"))
    {
        println!("  {line}");
    }
    // The guards (daemon, servers, namespaces) tear down as they drop, in reverse order.
    println!(
        "[{:7.3}s] tearing the lab down",
        t.0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn scale_out() -> anyhow::Result<()> {
    use lb_tests::edges::{self, EdgeFailure, Edges, ScaleOut};
    const SO_PREFIX: &str = "lbs";
    if Path::new(&format!("/run/netns/{SO_PREFIX}-edge1")).exists() {
        bail!(
            "namespaces {SO_PREFIX}-* exist: an earlier run was interrupted; `ip netns del` them"
        );
    }
    let t = Clock(Instant::now());
    t.say(format!(
        "building the scale-out lab: namespaces {SO_PREFIX}-client, -upstream, -edge1, -edge2, -nn1, -nn2, -vm (see tests/src/edges.rs); BIRD in the five routers (examples/bird/)"
    ))?;
    let net = Edges::with_prefix(SO_PREFIX)?;
    t.say("lb starts on both edges with one configuration: VIP 203.0.113.10 → web (failover), 203.0.113.20 → spread (active/active), announce: table 200")?;
    let rig = ScaleOut::start(net)?;
    t.say(format!(
        "both edges announce both VIPs; the upstream's ECMP route: {}",
        rig.net
            .nexthops(edges::VIP)?
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(" and ")
    ))?;
    println!("\n$ lb status   (edge 1, announcements)");
    let status = rig.lbs[0].lb(&["status"])?;
    for line in status
        .lines()
        .skip_while(|l| !l.starts_with("announcements"))
    {
        println!("  {line}");
    }
    println!();
    for kind in EdgeFailure::ALL {
        interrupted()?;
        let what = match kind {
            EdgeFailure::Uplink => "its uplink goes down",
            EdgeFailure::Host => "the host dies: every link down",
            EdgeFailure::Silent => "the host freezes: links up, nothing passes (only BFD can tell)",
        };
        t.say(format!(
            "64 TCP connections busy (half to each VIP), 16 UDP flows to {}; edge 1 fails: {what}",
            edges::VIP
        ))?;
        let r = rig.failure_round(kind, 64, 16)?;
        t.say(format!(
            "before: edge 1 translated {} packets, edge 2 {}; edge 1 left the ECMP group after {:.0} ms; UDP worst outage {:.0} ms ({} of 16 flows went through edge 1)",
            r.translated_before[0], r.translated_before[1], r.left_ms, r.udp_worst_outage_ms, r.udp_flows_via_edge1
        ))?;
        t.say(format!(
            "edge 1 healed, back in the group after {:.0} ms (BGP up again; its paths risen and settled when they were down too); TCP: {} of {} connections reset, {} rounds of echoes",
            r.back_ms,
            r.tcp_failed.len(),
            r.tcp_connections,
            r.tcp_rounds
        ))?;
        ensure!(
            r.tcp_failed.is_empty(),
            "connections failed: {:?}",
            r.tcp_failed
        );
    }
    println!(
        "[{:7.3}s] tearing the lab down",
        t.0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn up() -> anyhow::Result<()> {
    ensure_no_lab()?;
    let run = PathBuf::from(RUN_DIR);
    std::fs::create_dir_all(&run)?;
    let mut lab = Lab::with_prefix(PREFIX)?;
    let me = std::env::current_exe()?;
    let serve = Command::new("setsid")
        .arg(&me)
        .args(["serve", "--netns", lab.vm.name()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(run.join("serve.log"))?)
        .stderr(std::fs::File::create(run.join("serve.err"))?)
        .spawn()
        .context("starting the vm's servers")?;
    std::fs::write(run.join("serve.pid"), serve.id().to_string())?;
    let config = run.join("lb.json");
    std::fs::write(&config, lab::config_dual(100, 80, 2, 3, true))?;
    let lb = std::env::var("LB_BIN")
        .map(PathBuf::from)
        .or_else(|_| lb_tests::lb::lb_bin())?;
    let daemon = Command::new("setsid")
        .arg("nsenter")
        .arg(format!("--net={}", lab.edge.path()))
        .arg("--")
        .arg(&lb)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--pin-dir")
        .arg(run.join("pins"))
        .arg("--metrics")
        .arg("127.0.0.1:9109")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(run.join("lb.log"))?)
        .stderr(std::fs::File::create(run.join("lb.err"))?)
        .spawn()
        .context("starting lb run")?;
    std::fs::write(run.join("lb.pid"), daemon.id().to_string())?;
    lab.keep();
    std::thread::sleep(Duration::from_millis(800));
    let lbs = lb.display();
    let pins = run.join("pins");
    let pins = pins.display();
    println!(
        "the lab is up: namespaces {PREFIX}-client, {PREFIX}-edge, {PREFIX}-nn1, {PREFIX}-nn2, {PREFIX}-vm

try:
  {lbs} --pin-dir {pins} status
  {lbs} --pin-dir {pins} stats --watch
  ip netns exec {PREFIX}-client curl http://{VIP}:{http}/          # which path answers
  ip netns exec {PREFIX}-client curl http://{svc}:80/              # a port-translated service
  ip netns exec {PREFIX}-client curl http://[{vip6}]:{http}/     # the same over IPv6
  ip netns exec {PREFIX}-nn1 ip link set up0 down                  # fail nn1 (back: ... up)
  ip netns exec {PREFIX}-edge curl -s http://127.0.0.1:9109/metrics
  nsenter --net=/run/netns/{PREFIX}-vm {lbs} guest run --addresses {nn1},{nn2}
                                    # the guest agent: connections survive failing nn1
logs: {RUN_DIR}/lb.log (daemon), {RUN_DIR}/serve.log
remove it: cargo xtask lab down",
        http = lab::HTTP_PORT,
        svc = lab::VIP_SVC,
        vip6 = lab::VIP6,
        nn1 = NN1,
        nn2 = NN2,
    );
    Ok(())
}

fn kill_pidfile(path: &Path) {
    if let Ok(pid) = std::fs::read_to_string(path).map(|p| p.trim().parse::<i32>().unwrap_or(0))
        && pid > 0
    {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(path);
}

fn down() -> anyhow::Result<()> {
    let run = PathBuf::from(RUN_DIR);
    kill_pidfile(&run.join("lb.pid"));
    kill_pidfile(&run.join("serve.pid"));
    if run.join("pins").exists() {
        let lb = std::env::var("LB_BIN")
            .map(PathBuf::from)
            .or_else(|_| lb_tests::lb::lb_bin())?;
        let out = Command::new(lb)
            .arg("--pin-dir")
            .arg(run.join("pins"))
            .arg("down")
            .output()?;
        if !out.status.success() {
            eprintln!("lb down: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    for role in ["client", "edge", "nn1", "nn2", "vm"] {
        let _ = Command::new("ip")
            .args(["netns", "del", &format!("{PREFIX}-{role}")])
            .output();
    }
    let _ = std::fs::remove_dir_all(&run);
    println!("the lab is down");
    Ok(())
}

fn serve(args: &[String]) -> anyhow::Result<()> {
    let ns = match args {
        [flag, name] if flag == "--netns" => Netns::existing(name),
        _ => bail!("usage: lb-lab serve --netns NS"),
    };
    let _srv = servers::start_dual(&ns, lab::PORTS, [NN1, NN2], [lab::NN1_6, lab::NN2_6])?;
    println!(
        "serving in {}: HTTP :{}, TCP echo :{}, UDP echo :{} on {NN1}, {NN2}, {} and {}",
        ns.name(),
        lab::HTTP_PORT,
        lab::ECHO_PORT,
        lab::UDP_PORT,
        lab::NN1_6,
        lab::NN2_6
    );
    while !STOP.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
