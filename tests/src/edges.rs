//! The scale-out topology: two edges running `lb` with the same configuration and BIRD, an
//! upstream router spreading flows over them by ECMP, the two path routers and the VM, in
//! network namespaces; the edge failures it can inject. Used by `cargo xtask lab scale-out`
//! (the `lb-lab` driver), the end-to-end tests (`tests/tests/edges.rs`) and the bench.
//! Documentation ranges only; veths as a user builds them (no ethtool anywhere).
//!
//! ```text
//!                               198.51.100.128/30   198.51.100.64/28         192.0.2.64/26
//!                              ┌ u1 .129 ── .130 up0 edge1 p1 .65 ── .66 e1 nn1 down0 .65 ── .70 eth0 ┐
//!  client ── u0 .1 upstream ───┤                        p2 .69 ── .70 e1 nn2                           ├ vm
//!  .10 c0   198.51.100.0/26    └ u2 .133 ── .134 up0 edge2 p1 .73 ── .74 e2 nn1                        │ (.71 on eth0,
//!                               198.51.100.132/30       p2 .77 ── .78 e2 nn2 down0 .97 ── .100 eth1 ┘  .101 on eth1)
//!                                                                             192.0.2.96/27
//! ```
//!
//! Routing is BGP with BFD everywhere, BIRD in every router, from the configurations in
//! `examples/bird/` (edge 1's, the upstream's and nn1's as they are; edge 2's and nn2's by
//! their addresses):
//! - each edge's `lb` keeps a host route per servable VIP in table 200; its BIRD announces them
//!   to the upstream, which merges the equal routes into one ECMP route (L4 hash);
//! - the upstream passes the clients' prefix to the edges, and each edge passes it on to both
//!   path routers, which send the VM's replies back over the edges by ECMP too. An edge that
//!   loses its uplink loses that prefix and stops attracting replies.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::{Netns, unique, veth};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The failover target `web` behind [`VIP`]: the VM's addresses on nn1 and nn2.
pub const NN1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 70);
pub const NN2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
/// The active/active target `spread` behind [`VIP_SPREAD`]: the VM's second addresses.
pub const NN1_SPREAD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 71);
pub const NN2_SPREAD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP_SPREAD: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
/// The table and protocol of `lb`'s routes (its defaults, which the BIRD configurations name).
pub const TABLE: u32 = 200;
pub const PROTOCOL: u8 = 250;
/// BFD's detection time in the BIRD configurations: interval 100 ms × multiplier 3.
pub const BFD_DETECTION: Duration = Duration::from_millis(300);

/// Each edge's address toward the upstream, and the upstream's toward it.
const UPLINKS: [(Ipv4Addr, Ipv4Addr); 2] = [
    (
        Ipv4Addr::new(198, 51, 100, 130),
        Ipv4Addr::new(198, 51, 100, 129),
    ),
    (
        Ipv4Addr::new(198, 51, 100, 134),
        Ipv4Addr::new(198, 51, 100, 133),
    ),
];
/// Per edge, per path router: (the edge's address, the router's address) on their /30.
const PATH_LINKS: [[(&str, &str); 2]; 2] = [
    [
        ("198.51.100.65", "198.51.100.66"),
        ("198.51.100.69", "198.51.100.70"),
    ],
    [
        ("198.51.100.73", "198.51.100.74"),
        ("198.51.100.77", "198.51.100.78"),
    ],
];
/// The VM's networks behind nn1 and nn2.
const VM_NETS: [&str; 2] = ["192.0.2.64/26", "192.0.2.96/27"];
const CLIENT_NET: &str = "198.51.100.0/26";

/// The edge's interfaces, the same on both (one configuration serves both).
pub const EDGE_UPLINK: &str = "up0";
pub const EDGE_PATHS: [&str; 2] = ["p1", "p2"];

/// Ways an edge fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeFailure {
    /// Its link toward the upstream goes down; it still reaches the paths.
    Uplink,
    /// The host dies: every link of its namespace goes down.
    Host,
    /// The host freezes: its links stay up (carrier and all) but nothing passes them, as with
    /// a hung kernel or a dead switch port that keeps its link. Only BFD can tell.
    Silent,
}

impl EdgeFailure {
    pub const ALL: [EdgeFailure; 3] = [EdgeFailure::Uplink, EdgeFailure::Host, EdgeFailure::Silent];

    pub fn name(self) -> &'static str {
        match self {
            EdgeFailure::Uplink => "uplink",
            EdgeFailure::Host => "host",
            EdgeFailure::Silent => "silent",
        }
    }

    /// The edge's links that go down.
    fn links(self) -> &'static [&'static str] {
        match self {
            EdgeFailure::Uplink => &[EDGE_UPLINK],
            EdgeFailure::Host => &[EDGE_UPLINK, EDGE_PATHS[0], EDGE_PATHS[1]],
            EdgeFailure::Silent => &[],
        }
    }
}

/// A BIRD instance in a namespace, stopped on drop.
pub struct Bird {
    child: Child,
    pub ctl: PathBuf,
    pub log: PathBuf,
}

impl Bird {
    /// Starts `bird -f` in `ns` with `config` (written to `dir`).
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> anyhow::Result<Bird> {
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config)?;
        let ctl = dir.join("bird.ctl");
        let log = dir.join("bird.log");
        let out = std::fs::File::create(&log)?;
        let child = ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&ctl)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdout(Stdio::from(out.try_clone()?))
            .stderr(Stdio::from(out))
            .spawn()
            .context("starting bird (`cargo xtask setup` installs bird2)")?;
        Ok(Bird { child, ctl, log })
    }

    /// `birdc show protocols`, for failure reports.
    pub fn protocols(&self) -> String {
        Command::new("birdc")
            .arg("-s")
            .arg(&self.ctl)
            .args(["show", "protocols"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("birdc: {e}"))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The topology. Fields drop in order: the routing daemons before the namespaces.
pub struct Edges {
    birds: Vec<(String, Bird)>,
    pub client: Netns,
    pub upstream: Netns,
    /// Edge 1 and edge 2.
    pub edges: [Netns; 2],
    /// nn1 and nn2.
    pub routers: [Netns; 2],
    pub vm: Netns,
    dir: PathBuf,
    keep_dir: bool,
}

impl Edges {
    /// Namespaces with unique names (tests run side by side), BIRD started everywhere.
    pub fn new() -> anyhow::Result<Edges> {
        Self::named(|role| unique(&role[..1]))
    }

    /// Namespaces `<prefix>-client`, `<prefix>-upstream`, `<prefix>-edge1`, ... (the lab).
    pub fn with_prefix(prefix: &str) -> anyhow::Result<Edges> {
        Self::named(|role| format!("{prefix}-{role}"))
    }

    fn named(name: impl Fn(&str) -> String) -> anyhow::Result<Edges> {
        let client = Netns::new(&name("client"))?;
        let dir = std::env::temp_dir().join(format!("{}-bgp", client.name()));
        let e = Edges {
            birds: Vec::new(),
            upstream: Netns::new(&name("upstream"))?,
            edges: [Netns::new(&name("edge1"))?, Netns::new(&name("edge2"))?],
            routers: [Netns::new(&name("nn1"))?, Netns::new(&name("nn2"))?],
            vm: Netns::new(&name("vm"))?,
            client,
            dir,
            keep_dir: false,
        };
        e.wire()?;
        let mut e = e;
        e.start_birds()?;
        Ok(e)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let Self {
            client,
            upstream,
            edges,
            routers,
            vm,
            ..
        } = self;
        veth(upstream, "u0", client, "c0")?;
        client.ip("addr add 198.51.100.10/26 dev c0")?;
        client.ip("route add 203.0.113.0/24 via 198.51.100.1")?;
        upstream.ip("addr add 198.51.100.1/26 dev u0")?;
        for (i, edge) in edges.iter().enumerate() {
            let (mine, theirs) = UPLINKS[i];
            veth(upstream, &format!("u{}", i + 1), edge, EDGE_UPLINK)?;
            upstream.ip(&format!("addr add {theirs}/30 dev u{}", i + 1))?;
            edge.ip(&format!("addr add {mine}/30 dev {EDGE_UPLINK}"))?;
            for (j, router) in routers.iter().enumerate() {
                let (e_addr, r_addr) = PATH_LINKS[i][j];
                veth(edge, EDGE_PATHS[j], router, &format!("e{}", i + 1))?;
                router.ip(&format!("addr add {r_addr}/30 dev e{}", i + 1))?;
                edge.ip(&format!("addr add {e_addr}/30 dev {}", EDGE_PATHS[j]))?;
            }
            self.edge_routes(i + 1)?;
        }
        for (j, router) in routers.iter().enumerate() {
            veth(router, "down0", vm, &format!("eth{j}"))?;
        }
        routers[0].ip("addr add 192.0.2.65/26 dev down0")?;
        routers[1].ip("addr add 192.0.2.97/27 dev down0")?;
        vm.ip("addr add 192.0.2.70/26 dev eth0")?;
        vm.ip("addr add 192.0.2.71/26 dev eth0")?;
        vm.ip("addr add 192.0.2.100/27 dev eth1")?;
        vm.ip("addr add 192.0.2.101/27 dev eth1")?;
        // A reply leaves by the interface its request came in on.
        for (from, table) in [
            ("192.0.2.70", 101),
            ("192.0.2.71", 101),
            ("192.0.2.100", 102),
            ("192.0.2.101", 102),
        ] {
            vm.ip(&format!("rule add from {from} lookup {table}"))?;
        }
        vm.ip("route add default via 192.0.2.65 dev eth0 table 101")?;
        vm.ip("route add default via 192.0.2.97 dev eth1 table 102")?;
        for key in ["all", "default", "eth0", "eth1"] {
            vm.exec(
                "sysctl",
                &["-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")],
            )?;
        }
        for ns in [upstream, &edges[0], &edges[1], &routers[0], &routers[1]] {
            ns.exec("sysctl", &["-qw", "net.ipv4.conf.all.forwarding=1"])?;
        }
        // ECMP by the 5-tuple, so the flows of one client spread.
        for ns in [upstream, &routers[0], &routers[1]] {
            ns.exec("sysctl", &["-qw", "net.ipv4.fib_multipath_hash_policy=1"])?;
        }
        Ok(())
    }

    /// Edge `n`'s static routes: the VM's networks through the path routers, the clients
    /// through the upstream. (A link that goes down takes its routes with it.)
    fn edge_routes(&self, n: usize) -> anyhow::Result<()> {
        let edge = &self.edges[n - 1];
        for j in 0..2 {
            let (_, r_addr) = PATH_LINKS[n - 1][j];
            edge.ip(&format!("route replace {} via {r_addr}", VM_NETS[j]))?;
        }
        edge.ip(&format!(
            "route replace {CLIENT_NET} via {}",
            UPLINKS[n - 1].1
        ))
    }

    fn start_birds(&mut self) -> anyhow::Result<()> {
        let routers: Vec<(String, &Netns, String)> = vec![
            ("upstream".into(), &self.upstream, upstream_bird()),
            ("edge1".into(), &self.edges[0], edge_bird(1)),
            ("edge2".into(), &self.edges[1], edge_bird(2)),
            ("nn1".into(), &self.routers[0], path_router_bird(1)),
            ("nn2".into(), &self.routers[1], path_router_bird(2)),
        ];
        let mut birds = Vec::new();
        for (name, ns, config) in routers {
            birds.push((
                name.clone(),
                Bird::start(ns, &self.dir.join(&name), &config)?,
            ));
        }
        self.birds = birds;
        Ok(())
    }

    /// Keeps the namespaces and BIRD's files after the guard drops (`lab up`); the BIRD
    /// processes are left running.
    pub fn keep(&mut self) {
        let [e1, e2] = &mut self.edges;
        let [n1, n2] = &mut self.routers;
        for ns in [
            &mut self.client,
            &mut self.upstream,
            e1,
            e2,
            n1,
            n2,
            &mut self.vm,
        ] {
            ns.keep();
        }
        self.keep_dir = true;
        for (_, b) in std::mem::take(&mut self.birds) {
            std::mem::forget(b);
        }
    }

    /// Every router's BGP sessions and the last lines of its log, for a failure's report.
    pub fn routing_report(&self) -> String {
        let mut out = String::new();
        for (name, b) in &self.birds {
            let log = b.log_text();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!(
                "--- {name}\n{}\n{}\n",
                b.protocols(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        out
    }

    /// The next hops of the upstream's route to `vip` (the edges its flows spread over).
    pub fn nexthops(&self, vip: Ipv4Addr) -> anyhow::Result<Vec<Ipv4Addr>> {
        let out = self
            .upstream
            .command("ip")
            .args(["-j", "-4", "route", "show"])
            .arg(format!("{vip}/32"))
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let routes: Vec<serde_json::Value> = if text.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&text).with_context(|| format!("parsing {text}"))?
        };
        let mut hops: Vec<Ipv4Addr> = Vec::new();
        for r in &routes {
            let one = r["gateway"].as_str().into_iter();
            let many = r["nexthops"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h["gateway"].as_str());
            hops.extend(one.chain(many).filter_map(|g| g.parse::<Ipv4Addr>().ok()));
        }
        hops.sort();
        Ok(hops)
    }

    /// The edge (1 or 2) the upstream sends a client's UDP flow from `sport` to `vip:dport`
    /// to, as its FIB answers for that 5-tuple (`ip route get … ipproto udp sport … dport …`).
    pub fn edge_of_udp_flow(
        &self,
        vip: Ipv4Addr,
        sport: u16,
        dport: u16,
    ) -> anyhow::Result<Option<usize>> {
        let out = self
            .upstream
            .command("ip")
            .args(["-j", "route", "get"])
            .arg(vip.to_string())
            .args(["from", &CLIENT.to_string(), "iif", "u0", "ipproto", "udp"])
            .args(["sport", &sport.to_string(), "dport", &dport.to_string()])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let routes: Vec<serde_json::Value> =
            serde_json::from_str(&text).with_context(|| format!("ip route get: {text}"))?;
        let via = routes
            .first()
            .and_then(|r| r["gateway"].as_str())
            .and_then(|g| g.parse::<Ipv4Addr>().ok());
        Ok((1..=2).find(|n| Some(Self::edge_address(*n)) == via))
    }

    /// The upstream's address of edge `n` (its next hop toward that edge).
    pub fn edge_address(n: usize) -> Ipv4Addr {
        UPLINKS[n - 1].0
    }

    /// Waits (bounded) until the upstream's route to `vip` goes through exactly the edges
    /// `edges` (1-based); how long it took.
    pub fn wait_edges(
        &self,
        vip: Ipv4Addr,
        edges: &[usize],
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let want: Vec<Ipv4Addr> = edges.iter().map(|n| Self::edge_address(*n)).collect();
        let start = Instant::now();
        loop {
            let have = self.nexthops(vip)?;
            if have == want {
                return Ok(start.elapsed());
            }
            if start.elapsed() > within {
                bail!(
                    "the upstream routes {vip} via {have:?}, not {want:?} (edges {edges:?}), \
                     after {within:?}\n{}",
                    self.routing_report()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Injects `failure` on edge `n` (1 or 2).
    pub fn fail(&self, n: usize, failure: EdgeFailure) -> anyhow::Result<()> {
        let edge = &self.edges[n - 1];
        for link in failure.links() {
            edge.ip(&format!("link set {link} down"))?;
        }
        if failure == EdgeFailure::Silent {
            // The neighbours' ends of its links drop everything, both ways: the edge's own
            // programs run before any filter of its own, so its side cannot be the one.
            for (ns, dev) in self.neighbours(n) {
                ns.nft(&format!(
                    "table inet lab_silent {{\n\
                     chain i {{ type filter hook input priority -300; iifname \"{dev}\" drop; }}\n\
                     chain f {{ type filter hook forward priority -300; iifname \"{dev}\" drop; oifname \"{dev}\" drop; }}\n\
                     chain o {{ type filter hook output priority -300; oifname \"{dev}\" drop; }}\n}}\n"
                ))?;
            }
        }
        Ok(())
    }

    /// Undoes `failure` on edge `n`: the links come up, and the routes they took with them are
    /// put back.
    pub fn heal(&self, n: usize, failure: EdgeFailure) -> anyhow::Result<()> {
        let edge = &self.edges[n - 1];
        for link in failure.links() {
            edge.ip(&format!("link set {link} up"))?;
        }
        if failure == EdgeFailure::Silent {
            for (ns, _) in self.neighbours(n) {
                ns.exec("nft", &["delete", "table", "inet", "lab_silent"])?;
            }
        }
        self.edge_routes(n)
    }

    /// The namespaces at the other end of edge `n`'s links, with their interface toward it.
    fn neighbours(&self, n: usize) -> [(&Netns, String); 3] {
        [
            (&self.upstream, format!("u{n}")),
            (&self.routers[0], format!("e{n}")),
            (&self.routers[1], format!("e{n}")),
        ]
    }
}

impl Drop for Edges {
    fn drop(&mut self) {
        self.birds.clear();
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The `lb` configuration both edges run: failover target `web` (nn1 preferred) behind
/// [`VIP`], active/active target `spread` behind [`VIP_SPREAD`], TCP probes on the HTTP port,
/// announcements on (table 200, protocol 250), transitions ended after 1 s (see
/// [`ScaleOut::start`]).
pub fn config(http_port: u16) -> String {
    let probe = format!(
        r#"{{ "type": "tcp", "port": {http_port}, "interval_ms": 100, "rise": 2, "fall": 5 }}"#
    );
    format!(
        r#"{{
  "interfaces": {{ "clients": ["{EDGE_UPLINK}"], "paths": ["{}", "{}"] }},
  "announce": {{ "table": {TABLE}, "protocol": {PROTOCOL} }},
  "flows": {{ "tcp_idle_s": 1 }},
  "targets": [
    {{ "name": "web", "mode": "failover", "paths": [
        {{ "name": "nn1", "address": "{NN1}" }},
        {{ "name": "nn2", "address": "{NN2}" }} ],
      "probe": {probe} }},
    {{ "name": "spread", "mode": "active-active", "paths": [
        {{ "name": "nn1", "address": "{NN1_SPREAD}" }},
        {{ "name": "nn2", "address": "{NN2_SPREAD}" }} ],
      "probe": {probe} }}
  ],
  "vips": [
    {{ "address": "{VIP}", "target": "web" }},
    {{ "address": "{VIP_SPREAD}", "target": "spread" }}
  ]
}}"#,
        EDGE_PATHS[0], EDGE_PATHS[1]
    )
}

// ---- The whole rig: the topology, the VM's servers, `lb` on both edges. ----

/// How long the BGP sessions, BFD and the first announcements may take after a start.
pub const CONVERGE: Duration = Duration::from_secs(20);

/// [`Edges`] with the VM's servers and `lb` on both edges, both announcing both VIPs. Fields
/// drop in order: the daemons, the servers, then the namespaces.
pub struct ScaleOut {
    pub lbs: [crate::lb::Daemon; 2],
    pub srv: crate::servers::Server,
    pub net: Edges,
}

/// One edge failure and its heal, under traffic ([`ScaleOut::failure_round`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Round {
    pub failure: &'static str,
    /// From the failure until the upstream's route no longer names the edge.
    pub left_ms: f64,
    /// The longest outage of any of the UDP flows (one datagram a millisecond each).
    pub udp_worst_outage_ms: f64,
    pub udp_flows: usize,
    /// Flows the upstream sent through edge 1 (as its FIB answers for their 5-tuples).
    pub udp_flows_via_edge1: usize,
    /// Flows that lost anything at all.
    pub udp_flows_lossy: usize,
    /// From the heal until the upstream's route names the edge again.
    pub back_ms: f64,
    /// Both edges translated packets before the failure, as their `lb stats` say.
    pub translated_before: [u64; 2],
    /// Established TCP connections kept busy through the failure and the return.
    pub tcp_connections: usize,
    /// Those that failed (reset, closed, no echo): index and how.
    pub tcp_failed: Vec<(usize, String)>,
    pub tcp_rounds: u64,
    /// Edge 1 translated packets again after it came back.
    pub edge1_carries_again: bool,
}

impl ScaleOut {
    /// Starts everything on `net` and waits (bounded) until both edges announce both VIPs.
    pub fn start(net: Edges) -> anyhow::Result<ScaleOut> {
        let srv = crate::servers::start(&net.vm, crate::lab::PORTS, [NN1, NN2])?;
        let cfg = config(crate::lab::HTTP_PORT);
        let lbs = [
            crate::lb::Daemon::start(&net.edges[0], &cfg, &[])?,
            crate::lb::Daemon::start(&net.edges[1], &cfg, &[])?,
        ];
        let rig = ScaleOut { lbs, srv, net };
        for vip in [VIP, VIP_SPREAD] {
            rig.net
                .wait_edges(vip, &[1, 2], CONVERGE)
                .with_context(|| rig.logs())?;
        }
        // From a steady state: every path up on both edges and no transition in force. A path
        // that rose after its target settled leaves a transition (the ring grew, or a failback),
        // during which new connections live on their SYN's pin (tested on its own:
        // `new_connections_during_a_transition_are_not_reset`). The rounds measure edge failures
        // alone, so they start where none is in force; `flows.tcp_idle_s` 1 (the configuration
        // below) ends a start-up transition within the next sweep.
        for d in &rig.lbs {
            d.wait_status(CONVERGE, |s| {
                s["targets"].as_array().is_some_and(|ts| {
                    ts.iter().all(|t| {
                        t["transition"].is_null()
                            && t["paths"]
                                .as_array()
                                .is_some_and(|ps| ps.iter().all(|p| p["state"] == "up"))
                    })
                })
            })
            .with_context(|| rig.logs())?;
        }
        Ok(rig)
    }

    /// Packets edge `n`'s datapath translated toward the VM so far.
    pub fn translated(&self, n: usize) -> anyhow::Result<u64> {
        let s = self.lbs[n - 1].json(&["stats"])?;
        s["counters"]["nat_ingress"]
            .as_u64()
            .context("nat_ingress in lb stats")
    }

    /// Both daemons' logs and the routers' sessions, for a failure's report.
    pub fn logs(&self) -> String {
        format!(
            "edge1 lb:\n{}\nedge2 lb:\n{}\n{}",
            self.lbs[0].log_text(),
            self.lbs[1].log_text(),
            self.net.routing_report()
        )
    }

    /// Edge 1 fails as `kind` says while `connections` TCP connections (half to each VIP's
    /// echo port) are busy and `flows` UDP flows stream to [`VIP`]; then it comes back. Fails
    /// only when the topology does not do what it should (a route that never changes); what
    /// the traffic saw is in the [`Round`], for the caller to judge.
    pub fn failure_round(
        &self,
        kind: EdgeFailure,
        connections: usize,
        flows: usize,
    ) -> anyhow::Result<Round> {
        use crate::traffic::{TcpChatter, udp_streams};
        let echo = crate::lab::ECHO_PORT;
        let chatter = TcpChatter::start(
            &self.net.client,
            vec![
                std::net::SocketAddr::from((VIP, echo)),
                std::net::SocketAddr::from((VIP_SPREAD, echo)),
            ],
            connections,
            Duration::from_millis(50),
        )?;
        // One datagram a millisecond per flow, for 4 s: the failure comes after 1 s.
        let udp = udp_streams(
            &self.net.client,
            VIP,
            crate::lab::UDP_PORT,
            flows,
            4000,
            Duration::from_millis(1),
            Duration::from_millis(500),
        );
        std::thread::sleep(Duration::from_millis(1000));
        let translated_before = [self.translated(1)?, self.translated(2)?];
        let failed_at = Instant::now();
        self.net.fail(1, kind)?;
        self.net
            .wait_edges(VIP, &[2], Duration::from_secs(3))
            .with_context(|| self.logs())?;
        let left = failed_at.elapsed();
        let reports = udp
            .join()
            .map_err(|_| anyhow::anyhow!("the stream thread panicked"))??;
        let healed_at = Instant::now();
        self.net.heal(1, kind)?;
        for vip in [VIP, VIP_SPREAD] {
            self.net
                .wait_edges(vip, &[1, 2], CONVERGE)
                .with_context(|| self.logs())?;
        }
        let back = healed_at.elapsed();
        // The same two next hops as before the failure: the same choice per flow.
        let mut via_edge1 = 0;
        for r in &reports {
            if self
                .net
                .edge_of_udp_flow(VIP, r.local_port, crate::lab::UDP_PORT)?
                == Some(1)
            {
                via_edge1 += 1;
            }
        }
        let again = self.translated(1)?;
        std::thread::sleep(Duration::from_millis(1000));
        let edge1_carries_again = self.translated(1)? > again;
        let report = chatter.finish()?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        Ok(Round {
            failure: kind.name(),
            left_ms: ms(left),
            udp_worst_outage_ms: ms(reports
                .iter()
                .map(|r| r.longest_gap)
                .max()
                .unwrap_or_default()),
            udp_flows: flows,
            udp_flows_via_edge1: via_edge1,
            udp_flows_lossy: reports.iter().filter(|r| !r.lost.is_empty()).count(),
            back_ms: ms(back),
            translated_before,
            tcp_connections: report.connections,
            tcp_failed: report.failed,
            tcp_rounds: report.rounds,
            edge1_carries_again,
        })
    }
}

// ---- BIRD's configurations: `examples/bird/`, as documented. ----

const EDGE_BIRD: &str = include_str!("../../examples/bird/edge.conf");
const UPSTREAM_BIRD: &str = include_str!("../../examples/bird/upstream.conf");
const PATH_ROUTER_BIRD: &str = include_str!("../../examples/bird/path-router.conf");

/// `text` with every address (or number) token that `map` names replaced, token by token (so
/// one replacement never feeds another).
fn rewrite(text: &str, map: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        let to = map
            .iter()
            .find(|(from, _)| *from == token.as_str())
            .map_or(token.as_str(), |(_, to)| *to);
        out.push_str(to);
        token.clear();
    };
    for c in text.chars() {
        if c.is_ascii_digit() || c == '.' {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

fn upstream_bird() -> String {
    UPSTREAM_BIRD.to_owned()
}

/// Edge `n`'s: the example is edge 1's.
fn edge_bird(n: usize) -> String {
    if n == 1 {
        return EDGE_BIRD.to_owned();
    }
    rewrite(
        EDGE_BIRD,
        &[
            ("198.51.100.130", "198.51.100.134"),
            ("198.51.100.129", "198.51.100.133"),
            ("198.51.100.65", "198.51.100.73"),
            ("198.51.100.66", "198.51.100.74"),
            ("198.51.100.69", "198.51.100.77"),
            ("198.51.100.70", "198.51.100.78"),
        ],
    )
}

/// nn`n`'s: the example is nn1's.
fn path_router_bird(n: usize) -> String {
    if n == 1 {
        return PATH_ROUTER_BIRD.to_owned();
    }
    rewrite(
        PATH_ROUTER_BIRD,
        &[
            ("198.51.100.66", "198.51.100.70"),
            ("65011", "65012"),
            ("198.51.100.65", "198.51.100.69"),
            ("198.51.100.73", "198.51.100.77"),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_replaces_whole_tokens_once() {
        let text = "local 198.51.100.65 as 65011; neighbor 198.51.100.650;";
        assert_eq!(
            rewrite(
                text,
                &[("198.51.100.65", "198.51.100.69"), ("198.51.100.69", "x")]
            ),
            "local 198.51.100.69 as 65011; neighbor 198.51.100.650;"
        );
    }

    #[test]
    fn edge2_and_nn2_configurations_name_their_own_addresses() {
        let e2 = edge_bird(2);
        for gone in ["198.51.100.130", "198.51.100.65", "198.51.100.66"] {
            assert!(!e2.contains(&format!("{gone};")), "{gone} in:\n{e2}");
            assert!(!e2.contains(&format!("{gone} ")), "{gone} in:\n{e2}");
        }
        assert!(e2.contains("router id 198.51.100.134;"));
        let nn2 = path_router_bird(2);
        assert!(nn2.contains("local as 65012;") && nn2.contains("router id 198.51.100.70;"));
        assert!(nn2.contains("neighbor 198.51.100.69 as 65001;"));
        assert!(nn2.contains("neighbor 198.51.100.77 as 65001;"));
    }
}
