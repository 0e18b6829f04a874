//! Forwarding throughput on the veth lab: lb against kernel forwarding with nftables DNAT and
//! against a bare XDP redirect, measured side by side in one run.
//!
//! Method. One lab ([`Lab::new`]), four edge configurations one after the other:
//!
//! - **lb**: the real daemon (`lb run --hook xdp` on [`lab::config`]), `lb_ingress` on `e0`
//!   translating 203.0.113.10 to nn1's address and redirecting to `e1`, `lb_return` on the path
//!   side;
//! - **lb at tc**: the same with `--hook tc` (`lb_ingress_tc`, `bpf_redirect`); GRO on `e0`
//!   so that frames sent into it without XDP there are taken (as for nftables);
//! - **nftables**: no XDP on the edge at all (what an nftables edge runs), kernel forwarding,
//!   `ip daddr 203.0.113.10 dnat to 192.0.2.70` in a nat prerouting chain (conntrack). Frames
//!   redirected into a veth need a NAPI context on the receiving end: GRO is switched on on
//!   `e0` (rather than an XDP_PASS program, which would put XDP on the nftables edge);
//! - **redirect**: `bench_redirect` on `e0`, every frame to `e1` through the devmap: the rig's
//!   ceiling, the cost of the veth hops with no work at the edge;
//! - **lb, IPv6**: the daemon on the dual-stack configuration ([`lab::config_dual`]), the same
//!   traffic as 72-byte IPv6/UDP frames from 2001:db8:51::10 to the IPv6 VIP (the
//!   UDP checksum kept right as the generator varies the port: IPv6 forbids none).
//!
//! Traffic: `bench_gen` run with `BPF_PROG_TEST_RUN` in live-frames mode (batches of
//! [`BATCH`]) as if received on the client's `c0`: each frame gets the next of [`FLOWS`]
//! source ports and leaves `c0` (XDP_TX) toward the edge: 64-byte UDP frames from
//! 198.51.100.10 to the VIP, UDP checksum 0. Counted by `bench_sink` (count and drop) on nn1's
//! `up0`, the veth that receives what the edge sends toward nn1. The generator thread is pinned
//! to CPU 0; the veths' NAPI polls run in the softirq the generator raises when each batch is
//! flushed, on the same CPU, so the whole chain (generator, edge, sink) runs on one vCPU, like
//! the reference rig of ANCHORS.md.
//!
//! A round sends `packets` frames; its time runs from the `BPF_PROG_TEST_RUN` call to its
//! return, or to the sink's last count if frames were still arriving after it (polled every
//! millisecond, bounded). pps = frames the sink counted / that time: what leaves the edge,
//! whatever the generator offered. A warm-up round (flows, conntrack entries, caches) is not
//! counted; the figure is the median over `rounds`, with min and max. Checks: every round
//! delivers at least [`MIN_DELIVERED`] of what it sent (the share is reported); the edge has no
//! route to the VIP, so what reaches `up0` was translated; in the lb configuration
//! `nat_ingress` and `xdp_redirect` (`lb stats --json`) grew by at least the sink's count (the
//! frames were translated and forwarded by XDP, not by the kernel).
//!
//! Live frames reuse their pages (the kernel's page pool) without restoring their content:
//! only the data pointers are reset. A frame the edge rewrote in place (lb's DNAT, nftables'
//! DNAT, a TTL decrement, new MACs) comes back as it left at the next pass through the pool,
//! so `bench_gen` must copy the template back before it sets the source port. When it does
//! not, lb sees its own output again (`pass_not_for_us` grows) and the run stops, saying so.
//!
//! The sink is on `up0` only during a configuration's rounds: it also drops the daemon's
//! probes through nn1. The daemon probes at its default interval (1 s) with fall 100, so nn1
//! stays up through the rounds (checked after them).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, XdpMode},
};
use lb_common::maps::{
    BENCH, BENCH_SINK, BENCH_VARY_NONE, BenchTemplate, PROG_BENCH_GEN, PROG_BENCH_REDIRECT,
    PROG_BENCH_SINK,
};
use lb_user::datapath::{Dataplane, LoadOptions};
use serde::Serialize;

use super::Spread;
use crate::{
    lab::{self, EDGE_CLIENTS, EDGE_NN1, Lab},
    lb::{Daemon, active},
    netns::Netns,
    packet::Pkt,
    servers,
};

/// Source ports the generator cycles through: 64 k flows, so the stateful references
/// (nftables' conntrack) and lb are measured over as many flows as an edge sees, not a handful.
pub const FLOWS: u32 = 65536;
/// Frames per live-frames batch (the kernel's default, `NAPI_POLL_WEIGHT`): a batch is flushed
/// into a veth ring of 256 frames.
pub const BATCH: u32 = 64;
/// The share of the frames sent that the sink must count in every round: enough to tell a
/// working rig from a broken one. The generator outruns an edge that takes skbs (TC, the
/// kernel), whose backlog then drops what it cannot take: on a slow day (2026-12-04: the empty
/// program at 25 ns), lb at TC delivered 45 % of 1 M frames in a round.
pub const MIN_DELIVERED: f64 = 0.25;
/// The CPU the generator (and with it the whole chain) runs on.
pub const CPU: usize = 0;

/// The destination port of the generated frames: any port of the whole-address VIP but one a
/// service of the same VM answers from (the lab's UDP service answers from 9000). Traffic to
/// such a port is one of the exceptions the datapath keeps state for (`LB_SHADOWED`, to tell
/// the replies of the two VIPs apart): with 64 k flows it paid a table insert on most packets
/// (about 450 ns; lb's row was 1.44 Mpps on 2026-12-03 with port 9000), which is that corner's
/// cost, not forwarding's.
const DPORT: u16 = 5001;
/// nn1's address on its link to the edge (the next hop for 192.0.2.64/26).
const NN1_UP: &str = "198.51.100.66";
const NN1_UP6: &str = "2001:db8:e1::2";

/// Packets per second where they leave the edge, per edge configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Throughput {
    /// Frames sent per round.
    pub packets: u64,
    pub flows: u32,
    /// Median pps of lb (the daemon's `lb_ingress`, XDP hook).
    pub xdp_pps: f64,
    /// Median pps of lb at the TC hook (`lb_ingress_tc`; GRO on `e0` to take the frames).
    pub tc_pps: f64,
    /// Median pps of kernel forwarding with nftables DNAT.
    pub nft_pps: f64,
    /// Median pps of the bare redirect.
    pub redirect_pps: f64,
    /// Median pps of lb forwarding IPv6 (XDP hook).
    pub xdp6_pps: f64,
    /// Counted rounds per configuration (after one warm-up round).
    pub rounds: u32,
    /// pps over the rounds, per configuration.
    pub xdp: Spread,
    pub tc: Spread,
    pub nft: Spread,
    pub redirect: Spread,
    pub xdp6: Spread,
    /// The smallest share of the frames sent that the sink counted in a round, per
    /// configuration (lb, nftables, redirect).
    pub delivered: [f64; 3],
    /// The CPU everything ran on.
    pub cpu: usize,
}

/// One configuration's rounds.
struct Measured {
    pps: Vec<f64>,
    /// Frames the sink counted over the counted rounds.
    sunk: u64,
    min_share: f64,
}

/// The generator, the sink and the redirect, loaded from the object, and the lab around them.
struct Rig {
    dp: Dataplane,
    template: Array<MapData, BenchTemplate>,
    sink: PerCpuArray<MapData, u64>,
    frame: Vec<u8>,
    /// The IPv6 frame the IPv6 rounds send instead.
    frame6: Vec<u8>,
    /// `ifindex` of `c0` in the client namespace, `e1` in the edge namespace.
    c0: u32,
    e1: u32,
    packets: u32,
    rounds: u32,
}

pub fn run(quick: bool) -> anyhow::Result<Throughput> {
    let (packets, rounds) = if quick {
        (1_000_000, 5)
    } else {
        (5_000_000, 5)
    };
    // The rig moves its thread between namespaces (attaching, running the generator): a thread
    // of its own, so the caller's stays where it is.
    std::thread::spawn(move || measure_all(packets, rounds))
        .join()
        .map_err(|_| anyhow::anyhow!("the throughput thread panicked"))?
}

fn measure_all(packets: u32, rounds: u32) -> anyhow::Result<Throughput> {
    pin_to(CPU)?;
    let lab = Lab::new()?;
    let mut rig = Rig::new(&lab, packets, rounds)?;

    // The bare redirect first: it leaves nothing behind.
    let redirect = {
        lab.edge.enter()?;
        let e0 = lb_user::ifindex(EDGE_CLIENTS).context("no e0 in the edge namespace")?;
        rig.dp
            .maps
            .add_tx_port(rig.e1)
            .context("adding e1 to the devmap")?;
        let prog = rig.dp.program_mut(PROG_BENCH_REDIRECT)?;
        let link = prog
            .attach_to_if_index(e0, XdpMode::Driver)
            .context("attaching bench_redirect to e0")?;
        let m = rig.rounds(&lab, "bare redirect")?;
        rig.dp.program_mut(PROG_BENCH_REDIRECT)?.detach(link)?;
        rig.dp.maps.remove_tx_port(rig.e1)?;
        m
    };

    let xdp = lb_rounds(&lab, &mut rig, lab::XDP_HOOK, "lb")?;
    let xdp6 = {
        std::mem::swap(&mut rig.frame, &mut rig.frame6);
        rig.set_template()?;
        let m = lb_rounds(&lab, &mut rig, lab::XDP_HOOK, "lb, IPv6");
        std::mem::swap(&mut rig.frame, &mut rig.frame6);
        rig.set_template()?;
        m?
    };
    // TC on e0 leaves e0 without XDP: frames the generator sends into it need GRO there, as for
    // nftables below.
    lab.edge
        .exec("ethtool", &["-K", EDGE_CLIENTS, "gro", "on"])?;
    let tc = lb_rounds(&lab, &mut rig, &["--hook", "tc"], "lb at tc")?;
    lab.edge
        .exec("ethtool", &["-K", EDGE_CLIENTS, "gro", "off"])?;

    let nft = {
        lab.edge
            .exec("ethtool", &["-K", EDGE_CLIENTS, "gro", "on"])?;
        lab.edge.nft(&format!(
            "table ip lb_bench {{\n chain pre {{ type nat hook prerouting priority dstnat; ip daddr {} dnat to {}; }}\n}}\n",
            lab::VIP,
            lab::NN1
        ))?;
        let m = rig.rounds(&lab, "nftables")?;
        lab.edge
            .exec("nft", &["delete", "table", "ip", "lb_bench"])?;
        m
    };

    let spread = |m: &Measured| Spread::of(&m.pps);
    Ok(Throughput {
        packets: u64::from(packets),
        flows: FLOWS,
        xdp_pps: spread(&xdp).median,
        tc_pps: spread(&tc).median,
        nft_pps: spread(&nft).median,
        redirect_pps: spread(&redirect).median,
        xdp6_pps: spread(&xdp6).median,
        rounds,
        xdp: spread(&xdp),
        tc: spread(&tc),
        nft: spread(&nft),
        redirect: spread(&redirect),
        xdp6: spread(&xdp6),
        delivered: [xdp.min_share, nft.min_share, redirect.min_share],
        cpu: CPU,
    })
}

/// lb's rounds with the daemon run with `hook`: the frames must have been translated and
/// redirected by lb (its counters grew by what the sink counted).
fn lb_rounds(lab: &Lab, rig: &mut Rig, hook: &[&str], name: &str) -> anyhow::Result<Measured> {
    let _server = servers::start_dual(
        &lab.vm,
        lab::PORTS,
        [lab::NN1, lab::NN2],
        [lab::NN1_6, lab::NN2_6],
    )?;
    // Probes that never change anything during a round (fall 100 at 1 s), and no passive
    // trigger: the generator's one-way flood goes unanswered by design and saturates nn1's
    // link, so a trigger's burst would lose its probes and take nn1 down mid-round.
    let config = lab::config_dual(1000, 500, 1, 100, true);
    let quiet = config.replace("\"fall\": 100 }", "\"fall\": 100, \"passive_ms\": 0 }");
    ensure!(quiet != config, "no probe in the lab's configuration");
    let daemon = Daemon::start(&lab.edge, &quiet, hook)?;
    daemon.wait_status(Duration::from_secs(10), |s| {
        active(s, "web-vm").as_deref() == Some("nn1")
            && active(s, "web-vm6").as_deref() == Some("nn1")
    })?;
    let before = daemon.json(&["stats"])?;
    let m = rig.rounds(lab, name);
    let after = daemon.json(&["stats"])?;
    let grew = |c: &str| {
        let at = |s: &serde_json::Value| s["counters"][c].as_u64().unwrap_or(0);
        at(&after).saturating_sub(at(&before))
    };
    // The warm-up round counts too: the counters cover every round.
    let sent = u64::from(rig.packets) * u64::from(rig.rounds) + u64::from(warmup(rig.packets));
    if grew("pass_not_for_us") > sent / 10 {
        bail!(
            "{name}: {} of the frames reached e0 no longer addressed to the VIP: the generator sent frames lb had already rewritten (live frames reuse their pages without restoring the data; bench_gen must copy the template back)",
            grew("pass_not_for_us")
        );
    }
    let m = m?;
    for c in ["nat_ingress", "xdp_redirect"] {
        ensure!(
            grew(c) >= m.sunk && grew(c) <= sent,
            "{name}: {c} grew by {} while the sink counted {} of {sent} frames: the frames were not translated and redirected by lb_ingress",
            grew(c),
            m.sunk
        );
    }
    let s = daemon.json(&["status"])?;
    ensure!(
        active(&s, "web-vm").as_deref() == Some("nn1"),
        "{name}: nn1 stopped being the active path during the measurement: {s:#}"
    );
    // Dropping the guard stops the daemon and removes its programs (`lb down`).
    drop(daemon);
    Ok(m)
}

/// Frames in the warm-up round.
fn warmup(packets: u32) -> u32 {
    (packets / 10).max(10 * FLOWS)
}

impl Rig {
    fn new(lab: &Lab, packets: u32, rounds: u32) -> anyhow::Result<Self> {
        let (c0, c0_mac) = link(&lab.client, "c0")?;
        let (_, e0_mac) = link(&lab.edge, EDGE_CLIENTS)?;
        let (e1, _) = link(&lab.edge, EDGE_NN1)?;
        let (_, up0_mac) = link(&lab.nn1, "up0")?;
        // A permanent neighbour for the next hop: no resolution during a round, for the kernel
        // and for lb's FIB lookups alike.
        lab.edge.ip(&format!(
            "neigh replace {NN1_UP} lladdr {} dev {EDGE_NN1} nud permanent",
            mac_text(up0_mac)
        ))?;
        lab.edge.ip(&format!(
            "-6 neigh replace {NN1_UP6} lladdr {} dev {EDGE_NN1} nud permanent",
            mac_text(up0_mac)
        ))?;

        let mut dp = Dataplane::load(&LoadOptions::default()).context("loading the object")?;
        for p in [PROG_BENCH_GEN, PROG_BENCH_REDIRECT, PROG_BENCH_SINK] {
            dp.program_mut(p).with_context(|| format!("loading {p}"))?;
        }
        let template = Array::try_from(dp.ebpf_mut().take_map(BENCH).context("the bench map")?)?;
        let sink =
            PerCpuArray::try_from(dp.ebpf_mut().take_map(BENCH_SINK).context("the sink map")?)?;

        let mut f = Pkt::udp(lab::CLIENT, 0, lab::VIP, DPORT)
            .eth(c0_mac, e0_mac)
            .zero_udp_checksum()
            .payload(&[0x5a; 22])
            .bytes();
        f.resize(64, 0);
        // 72 bytes (the template is copied 8 at a time), a checksum of its own.
        let mut frame6 = Vec::new();
        etherparse::PacketBuilder::ethernet2(c0_mac, e0_mac)
            .ipv6(lab::CLIENT6.octets(), lab::VIP6.octets(), 64)
            .udp(0, DPORT)
            .write(&mut frame6, &[0x5a; 10])?;
        let mut rig = Self {
            dp,
            template,
            sink,
            frame: f,
            frame6,
            c0,
            e1,
            packets,
            rounds,
        };
        rig.set_template()?;
        Ok(rig)
    }

    fn set_template(&mut self) -> anyhow::Result<()> {
        let mut t = BenchTemplate {
            len: self.frame.len() as u32,
            vary: BENCH_VARY_NONE,
            flows: FLOWS,
            port: self.e1,
            ..BenchTemplate::default()
        };
        t.frame[..self.frame.len()].copy_from_slice(&self.frame);
        self.template.set(0, t, 0)?;
        Ok(())
    }

    fn sunk(&self) -> anyhow::Result<u64> {
        Ok(self.sink.get(&0, 0)?.iter().sum())
    }

    /// A warm-up round, then the counted rounds.
    /// The sink is on `up0` only meanwhile: it also drops the daemon's probes through nn1.
    fn rounds(&mut self, lab: &Lab, what: &str) -> anyhow::Result<Measured> {
        lab.nn1.enter()?;
        let up0 = lb_user::ifindex("up0").context("no up0 in nn1")?;
        let link = self
            .dp
            .program_mut(PROG_BENCH_SINK)?
            .attach_to_if_index(up0, XdpMode::Driver)
            .context("attaching bench_sink to nn1's up0")?;
        lab.client.enter()?;
        let m = self.measure(what);
        self.dp.program_mut(PROG_BENCH_SINK)?.detach(link)?;
        m
    }

    fn measure(&mut self, what: &str) -> anyhow::Result<Measured> {
        self.round(warmup(self.packets))
            .with_context(|| format!("{what}: warm-up round"))?;
        let mut m = Measured {
            pps: Vec::new(),
            sunk: 0,
            min_share: 1.0,
        };
        for i in 0..self.rounds {
            let (sunk, time) = self
                .round(self.packets)
                .with_context(|| format!("{what}: round {i}"))?;
            let share = sunk as f64 / f64::from(self.packets);
            ensure!(
                share >= MIN_DELIVERED,
                "{what}: the sink counted {sunk} of {} frames in round {i}",
                self.packets
            );
            m.pps.push(sunk as f64 / time.as_secs_f64());
            m.sunk += sunk;
            m.min_share = m.min_share.min(share);
        }
        Ok(m)
    }

    /// Sends `n` frames from `c0` (the calling thread is in the client namespace); the frames
    /// the sink counted and the time they took.
    fn round(&mut self, n: u32) -> anyhow::Result<(u64, Duration)> {
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(self.frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.c0.to_ne_bytes());
        let before = self.sunk()?;
        let frame = self.frame.clone();
        let generator = self.dp.program_mut(PROG_BENCH_GEN)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = n;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
        let start = Instant::now();
        generator
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN bench_gen (live frames)")?;
        let returned = start.elapsed();
        // Frames still on their way (a softirq deferred to ksoftirqd) end the round later.
        let mut last = (self.sunk()?, returned);
        let mut quiet = 0;
        while quiet < 20 && start.elapsed() < returned + Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(1));
            let now = self.sunk()?;
            if now != last.0 {
                last = (now, start.elapsed());
                quiet = 0;
            } else {
                quiet += 1;
            }
        }
        let (after, time) = last;
        Ok((after - before, time))
    }
}

/// `dev`'s ifindex and MAC address in `ns`.
fn link(ns: &Netns, dev: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-o", "link", "show", "dev", dev])
        .output()
        .context("running ip link show")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let parse = || -> Option<(u32, [u8; 6])> {
        let index = text.split(':').next()?.trim().parse().ok()?;
        let mut words = text.split_whitespace();
        words.find(|w| *w == "link/ether")?;
        let mut mac = [0u8; 6];
        let mut parts = words.next()?.split(':');
        for b in &mut mac {
            *b = u8::from_str_radix(parts.next()?, 16).ok()?;
        }
        Some((index, mac))
    };
    match parse() {
        Some(v) => Ok(v),
        None => bail!("no ifindex and MAC for {dev} in {}: {text:?}", ns.name()),
    }
}

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// Keeps the calling thread on `cpu`.
fn pin_to(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}
