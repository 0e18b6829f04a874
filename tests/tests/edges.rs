//! Several edges end to end (`lb_tests::edges`): two edges run `lb` with one configuration and
//! BIRD, announce the VIPs they can serve over BGP with BFD, and the upstream spreads flows over
//! them by ECMP. Veths as a user builds them, `lb run`'s default hook.
//!
//! - Both edges carry flows; when one fails (its uplink, the whole host, or the host frozen with
//!   its links up, which only BFD detects), its flows move to
//!   the other, whose datapath makes the same choice: no established TCP connection is reset
//!   (to the failover and to the active/active target), a UDP stream's outage stays within BFD's
//!   detection time plus a margin; the edge comes back and the connections still live.
//! - A target with every path down on one edge is withdrawn by that edge only, and its VIP
//!   keeps working through the other; a daemon restart withdraws nothing.
//!
//! Run one: `cargo test -p lb-tests --test edges -- uplink`.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, ensure};
use lb_tests::{
    edges::{BFD_DETECTION, EdgeFailure, Edges, NN1, NN2, VIP, VIP_SPREAD, config},
    lab::{ECHO_PORT, HTTP_PORT, PORTS, UDP_PORT},
    lb::Daemon,
    servers,
    traffic::{TcpChatter, http_get, udp_streams},
};

/// How long the BGP sessions, BFD and the first announcements may take after a start.
const CONVERGE: Duration = Duration::from_secs(20);
/// What a UDP stream's outage may exceed BFD's detection time by: the routers' reaction (BIRD
/// rewrites the ECMP route; the path routers their return route) and a loaded CI machine.
const OUTAGE_MARGIN: Duration = Duration::from_millis(300);

/// The topology with `lb` on both edges, both edges announcing both VIPs. Fields drop in
/// order: the daemons, the VM's servers, then the namespaces.
struct Rig {
    lbs: [Daemon; 2],
    _srv: servers::Server,
    net: Edges,
}

impl Rig {
    fn new() -> anyhow::Result<Rig> {
        let net = Edges::new()?;
        let srv = servers::start(&net.vm, PORTS, [NN1, NN2])?;
        let cfg = config(HTTP_PORT);
        let lbs = [
            Daemon::start(&net.edges[0], &cfg, &[])?,
            Daemon::start(&net.edges[1], &cfg, &[])?,
        ];
        let rig = Rig {
            lbs,
            _srv: srv,
            net,
        };
        for vip in [VIP, VIP_SPREAD] {
            rig.net
                .wait_edges(vip, &[1, 2], CONVERGE)
                .with_context(|| rig.logs())?;
        }
        Ok(rig)
    }

    /// Packets edge `n`'s datapath translated toward the VM so far.
    fn translated(&self, n: usize) -> anyhow::Result<u64> {
        let s = self.lbs[n - 1].json(&["stats"])?;
        s["counters"]["nat_ingress"]
            .as_u64()
            .context("nat_ingress in lb stats")
    }

    /// Both daemons' logs and the routers' sessions, for a failure's report.
    fn logs(&self) -> String {
        format!(
            "edge1 lb:\n{}\nedge2 lb:\n{}\n{}",
            self.lbs[0].log_text(),
            self.lbs[1].log_text(),
            self.net.routing_report()
        )
    }
}

/// Connections to both VIPs' echo port.
fn echo_addrs() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from((VIP, ECHO_PORT)),
        SocketAddr::from((VIP_SPREAD, ECHO_PORT)),
    ]
}

/// Edge 1 fails as `kind` says while 64 TCP connections (half to each target) are busy and 16
/// UDP flows stream; then it comes back.
fn edge_failure(kind: EdgeFailure) -> anyhow::Result<()> {
    let rig = Rig::new()?;
    let chatter = TcpChatter::start(&rig.net.client, echo_addrs(), 64, Duration::from_millis(50))?;
    // 16 flows, one datagram a millisecond each, for 4 s.
    let udp = udp_streams(
        &rig.net.client,
        VIP,
        UDP_PORT,
        16,
        4000,
        Duration::from_millis(1),
        Duration::from_millis(500),
    );
    std::thread::sleep(Duration::from_millis(1000));
    let before = [rig.translated(1)?, rig.translated(2)?];
    ensure!(
        before[0] > 0 && before[1] > 0,
        "both edges carry flows: translated {before:?}"
    );

    let failed_at = Instant::now();
    rig.net.fail(1, kind)?;
    let took = rig
        .net
        .wait_edges(VIP, &[2], Duration::from_secs(3))
        .with_context(|| rig.logs())?;
    eprintln!(
        "edge 1 ({}) left the ECMP group after {took:?}",
        kind.name()
    );
    let reports = udp
        .join()
        .map_err(|_| anyhow::anyhow!("the stream thread panicked"))??;
    let worst = reports
        .iter()
        .map(|r| r.longest_gap)
        .max()
        .unwrap_or_default();
    let moved = reports.iter().filter(|r| !r.lost.is_empty()).count();
    eprintln!(
        "UDP: worst outage {worst:?} over 16 flows, {moved} of them through edge 1 (lost something)"
    );
    ensure!(
        worst <= BFD_DETECTION + OUTAGE_MARGIN,
        "a UDP flow's outage was {worst:?} (BFD detects in {BFD_DETECTION:?}): {reports:?}\n{}",
        rig.logs()
    );
    ensure!(
        moved > 0,
        "no UDP flow went through edge 1 (16 flows, ECMP by 5-tuple): {reports:?}"
    );
    ensure!(rig.translated(2)? > before[1], "edge 2 took over the flows");

    // Edge 1 comes back; the flows spread again, and the connections still live.
    rig.net.heal(1, kind)?;
    let back = rig
        .net
        .wait_edges(VIP, &[1, 2], CONVERGE)
        .with_context(|| rig.logs())?;
    rig.net
        .wait_edges(VIP_SPREAD, &[1, 2], CONVERGE)
        .with_context(|| rig.logs())?;
    eprintln!(
        "edge 1 back in the ECMP group {back:?} after the heal ({:?} since the failure)",
        failed_at.elapsed()
    );
    let again = rig.translated(1)?;
    std::thread::sleep(Duration::from_millis(1000));
    ensure!(
        rig.translated(1)? > again,
        "edge 1 carries flows again after it came back"
    );
    let report = chatter.finish()?;
    ensure!(
        report.failed.is_empty(),
        "{} of {} established TCP connections failed across the {} failure and the return: {:?}\n{}",
        report.failed.len(),
        report.connections,
        kind.name(),
        report.failed,
        rig.logs()
    );
    ensure!(report.rounds > 10, "the connections were busy: {report:?}");
    Ok(())
}

fn uplink_failure_resets_no_connection() -> anyhow::Result<()> {
    edge_failure(EdgeFailure::Uplink)
}

fn host_failure_resets_no_connection() -> anyhow::Result<()> {
    edge_failure(EdgeFailure::Host)
}

fn silent_failure_resets_no_connection() -> anyhow::Result<()> {
    edge_failure(EdgeFailure::Silent)
}

/// On edge 1 only, the probes of every path fail (its own packets to the VM are dropped on
/// the way out; forwarded traffic is untouched): edge 1 withdraws the VIPs, edge 2 does not,
/// and the VIPs keep answering through edge 2. Then a daemon restart on edge 2 withdraws
/// nothing: the upstream's route keeps edge 2 throughout.
fn a_target_down_on_one_edge_is_withdrawn_there_only() -> anyhow::Result<()> {
    let rig = Rig::new()?;
    let drop_probes = "table inet probes {\n chain out { type filter hook output priority 0; \
                       ip daddr 192.0.2.0/24 drop; }\n}\n";
    let file = std::env::temp_dir().join(format!("{}-probes.nft", rig.net.edges[0].name()));
    std::fs::write(&file, drop_probes)?;
    rig.net.edges[0].exec("nft", &["-f", &file.to_string_lossy()])?;
    let _ = std::fs::remove_file(&file);
    for vip in [VIP, VIP_SPREAD] {
        rig.net
            .wait_edges(vip, &[2], Duration::from_secs(5))
            .with_context(|| rig.logs())?;
    }
    ensure!(
        rig.net.edges[0].host_routes(200, 250)?.is_empty(),
        "edge 1 withdrew both"
    );
    ensure!(
        rig.net.edges[1].host_routes(200, 250)? == [VIP, VIP_SPREAD],
        "edge 2 withdrew nothing"
    );
    let s = rig.lbs[0].json(&["status"])?;
    ensure!(
        s["announce"]["addresses"][0]["why"] == "no usable path for target web",
        "{s}"
    );
    // New connections, each its own flow: all served (through edge 2).
    for i in 0..20 {
        for vip in [VIP, VIP_SPREAD] {
            http_get(&rig.net.client, vip, HTTP_PORT, "/", Duration::from_secs(2))
                .with_context(|| format!("request {i} to {vip}\n{}", rig.logs()))?;
        }
    }

    // A restart of edge 2's daemon: its routes stay, so the upstream keeps it.
    let watch = {
        let up = rig.net.upstream.name().to_owned();
        std::thread::spawn(move || -> anyhow::Result<usize> {
            let ns = lb_tests::netns::Netns::existing(&up);
            let mut gaps = 0;
            let end = Instant::now() + Duration::from_secs(4);
            while Instant::now() < end {
                let out = ns
                    .command("ip")
                    .args(["-4", "route", "show", "203.0.113.10/32"])
                    .output()?;
                if String::from_utf8_lossy(&out.stdout).trim().is_empty() {
                    gaps += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(gaps)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut lb2 = rig.lbs;
    lb2[1].restart(&[])?;
    let gaps = watch
        .join()
        .map_err(|_| anyhow::anyhow!("the watch thread panicked"))??;
    let rig = Rig {
        lbs: lb2,
        _srv: rig._srv,
        net: rig.net,
    };
    ensure!(
        gaps == 0,
        "the upstream lost its route to {VIP} {gaps} times while edge 2's daemon restarted\n{}",
        rig.logs()
    );
    rig.net.wait_edges(VIP, &[2], Duration::from_secs(1))?;

    // Edge 1's probes pass again: it announces again (after settling).
    rig.net.edges[0].exec("nft", &["delete", "table", "inet", "probes"])?;
    for vip in [VIP, VIP_SPREAD] {
        rig.net
            .wait_edges(vip, &[1, 2], CONVERGE)
            .with_context(|| rig.logs())?;
    }
    Ok(())
}

fn main() {
    lb_tests::run_suite(
        "edges",
        &[
            (
                "uplink_failure_resets_no_connection",
                uplink_failure_resets_no_connection,
            ),
            (
                "host_failure_resets_no_connection",
                host_failure_resets_no_connection,
            ),
            (
                "silent_failure_resets_no_connection",
                silent_failure_resets_no_connection,
            ),
            (
                "a_target_down_on_one_edge_is_withdrawn_there_only",
                a_target_down_on_one_edge_is_withdrawn_there_only,
            ),
        ],
        // Timing (BFD, outages) that a neighbour's load would distort.
        &[
            "uplink_failure_resets_no_connection",
            "host_failure_resets_no_connection",
            "silent_failure_resets_no_connection",
        ],
    );
}
