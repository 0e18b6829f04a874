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

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use lb_tests::{
    edges::{BFD_DETECTION, CONVERGE, EdgeFailure, Edges, ScaleOut, VIP, VIP_SPREAD},
    lab::HTTP_PORT,
    traffic::http_get,
};

/// What a UDP stream's outage may exceed BFD's detection time by: the routers' reaction (BIRD
/// rewrites the ECMP route; the path routers their return route) and a loaded CI machine.
const OUTAGE_MARGIN: Duration = Duration::from_millis(200);

/// Edge 1 fails as `kind` says while 64 TCP connections (half to each target) are busy and 16
/// UDP flows stream; then it comes back.
fn edge_failure(kind: EdgeFailure) -> anyhow::Result<()> {
    let rig = ScaleOut::start(Edges::new()?)?;
    let r = rig.failure_round(kind, 64, 16)?;
    eprintln!("{r:?}");
    ensure!(
        r.translated_before[0] > 0 && r.translated_before[1] > 0,
        "both edges carry flows: translated {:?}",
        r.translated_before
    );
    ensure!(
        r.udp_worst_outage_ms <= (BFD_DETECTION + OUTAGE_MARGIN).as_secs_f64() * 1000.0,
        "a UDP flow's outage was {} ms (BFD detects in {BFD_DETECTION:?}): {r:?}\n{}",
        r.udp_worst_outage_ms,
        rig.logs()
    );
    ensure!(
        r.udp_flows_via_edge1 > 0,
        "no UDP flow went through edge 1 ({} flows, ECMP by 5-tuple): {r:?}",
        r.udp_flows
    );
    ensure!(r.edge1_carries_again, "edge 1 carries flows again: {r:?}");
    ensure!(
        r.tcp_failed.is_empty(),
        "{} of {} established TCP connections failed across the {} failure and the return: {:?}\n{}",
        r.tcp_failed.len(),
        r.tcp_connections,
        r.failure,
        r.tcp_failed,
        rig.logs()
    );
    ensure!(r.tcp_rounds > 10, "the connections were busy: {r:?}");
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
    let rig = ScaleOut::start(Edges::new()?)?;
    rig.net.edges[0].nft(
        "table inet probes {\n chain out { type filter hook output priority 0; \
         ip daddr 192.0.2.0/24 drop; }\n}\n",
    )?;
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
    let mut rig = rig;
    rig.lbs[1].restart(&[])?;
    let gaps = watch
        .join()
        .map_err(|_| anyhow::anyhow!("the watch thread panicked"))??;
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

/// A failback on both edges leaves a transition (new flows → nn1, older connections keep
/// nn2). New connections opened then must not be reset, although the VM's SYN-ACK comes back
/// through whichever edge nn1's ECMP picks, often not the one that carried the SYN: the SYN's
/// pin on its own edge keeps the client's next segments on nn1.
fn new_connections_during_a_transition_are_not_reset() -> anyhow::Result<()> {
    let rig = ScaleOut::start(Edges::new()?)?;
    // Transitions that last (the rig's configuration ends them after 1 s).
    for d in &rig.lbs {
        d.write_config(
            &lb_tests::edges::config(HTTP_PORT)
                .replace(r#""tcp_idle_s": 1"#, r#""tcp_idle_s": 600"#),
        )?;
        d.reload()?;
    }
    // nn1's router drops what goes to web's nn1 address: both edges fail web over to nn2.
    rig.net.routers[0].nft(
        "table inet t {\n chain f { type filter hook forward priority -300; \
         ip daddr 192.0.2.70 drop; }\n}\n",
    )?;
    let active = |s: &serde_json::Value, want: &str, transition: bool| {
        lb_tests::lb::active(s, "web").as_deref() == Some(want)
            && s["targets"].as_array().is_some_and(|ts| {
                ts.iter()
                    .any(|t| t["name"] == "web" && t["transition"].is_null() != transition)
            })
    };
    for d in &rig.lbs {
        d.wait_status(Duration::from_secs(5), |s| {
            lb_tests::lb::active(s, "web").as_deref() == Some("nn2")
        })?;
    }
    // Healed: both fail back to nn1 and keep nn2 for older connections.
    rig.net.routers[0].exec("nft", &["delete", "table", "inet", "t"])?;
    for d in &rig.lbs {
        d.wait_status(Duration::from_secs(5), |s| active(s, "nn1", true))?;
    }
    let chatter = lb_tests::traffic::TcpChatter::start(
        &rig.net.client,
        vec![std::net::SocketAddr::from((VIP, lb_tests::lab::ECHO_PORT))],
        64,
        Duration::from_millis(50),
    )?;
    std::thread::sleep(Duration::from_millis(1000));
    let r = chatter.finish()?;
    let pins: Vec<u64> = rig
        .lbs
        .iter()
        .map(|d| {
            d.json(&["stats"])
                .map(|s| s["counters"]["exception_pinned"].as_u64().unwrap_or(0))
        })
        .collect::<anyhow::Result<_>>()?;
    ensure!(
        r.failed.is_empty(),
        "{} of {} connections opened during the transition failed: {:?} (pins per edge {pins:?})\n{}",
        r.failed.len(),
        r.connections,
        r.failed,
        rig.logs()
    );
    ensure!(
        pins.iter().sum::<u64>() >= 64,
        "every connection's SYN pinned it on its edge: {pins:?}"
    );
    ensure!(r.rounds > 5, "the connections were busy: {r:?}");
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
            (
                "new_connections_during_a_transition_are_not_reset",
                new_connections_during_a_transition_are_not_reset,
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
