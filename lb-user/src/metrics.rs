//! `--metrics [ADDR:]PORT`: the OpenMetrics exposition (prometheus-client) of the datapath's
//! counters, per VIP and per path traffic, path states, probe RTTs, transitions and reloads,
//! served over HTTP/1.1 (hyper) on `/metrics`.
//!
//! The server keeps out of the daemon's way: it runs on a thread and runtime of its own, so a
//! scrape never runs where probes and map writes do; it reads the daemon's state from a
//! lock-free snapshot ([`Snapshot`], published through `arc-swap`), so no probe result ever
//! waits for a scrape; it opens the pinned maps once and reads only what it exports (never the
//! 65,536 address-filter slots). It bounds what a client can hold: [`MAX_CONNECTIONS`] at
//! once (more are closed at once), [`REQUEST_TIMEOUT`] for a whole request, one request per
//! connection; an accept error is logged once and waited out, never spun on.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, service::service_fn};
use lb_common::Counter;
use log::{error, info, warn};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    control::{health::Health, model::Model},
    datapath::{PinDir, maps::Maps},
    probe::thread::ProbeStats,
};

/// Connections served at once; more are closed as soon as they are accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// The longest a connection may take, from accept to the last byte of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// What the daemon publishes for the scrape: its model and its own counters.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub model: Option<Arc<Model>>,
    /// State transitions per path id since the daemon started.
    pub transitions: BTreeMap<u32, u64>,
    pub reloads: u64,
    pub reload_failures: u64,
    /// Exceptions per target id as the last sweep left them (`docs/DATAPATH.md`, "Stateless by
    /// default"); a target without an entry has none.
    pub exceptions: BTreeMap<u32, usize>,
    /// With `announce`: every address with a VIP whose state counts, and whether the daemon
    /// wants it announced.
    pub announced: Option<BTreeMap<std::net::IpAddr, bool>>,
    /// What became of the notify hooks.
    pub hooks: HookCounts,
}

/// What became of the notify hooks (`lb_notify_total{result}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HookCounts {
    /// Ran and exited 0.
    pub ok: u64,
    /// Could not start, or exited non-zero.
    pub failed: u64,
    /// Killed at `notify.timeout_ms`.
    pub timed_out: u64,
    /// Not run: the target's queue was full.
    pub dropped: u64,
}

/// The daemon's side: it stores, the scrape loads, neither waits.
pub type Shared = Arc<ArcSwap<Snapshot>>;

/// A metric family: name (counters get `_total` on their samples), help, type.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
}

const fn family(name: &'static str, help: &'static str, kind: MetricType) -> Family {
    Family { name, help, kind }
}

const PACKETS: Family = family(
    "lb_packets",
    "Datapath packets by verdict, reason and event (see docs/DATAPATH.md).",
    MetricType::Counter,
);
const VIP_PACKETS: Family = family(
    "lb_vip_packets",
    "Translated packets per VIP; in: toward the VM.",
    MetricType::Counter,
);
const VIP_BYTES: Family = family(
    "lb_vip_bytes",
    "Translated bytes per VIP; in: toward the VM.",
    MetricType::Counter,
);
const PATH_UP: Family = family(
    "lb_path_up",
    "1 when the path is up and not disabled.",
    MetricType::Gauge,
);
const PATH_DISABLED: Family = family(
    "lb_path_disabled",
    "1 when an operator disabled the path (or its drain ended).",
    MetricType::Gauge,
);
const PATH_DRAINING: Family = family(
    "lb_path_draining",
    "1 while an operator's drain runs: no new flows, established TCP connections stay.",
    MetricType::Gauge,
);
const PATH_SUSPECT: Family = family(
    "lb_path_datapath_suspect",
    "1 when the path's probes succeed while its clients' TCP handshakes go unanswered.",
    MetricType::Gauge,
);
const PATH_RTT: Family = family(
    "lb_path_probe_rtt_seconds",
    "Round-trip time of the path's last successful probe.",
    MetricType::Gauge,
);
const PATH_TRANSITIONS: Family = family(
    "lb_path_transitions",
    "Up/down transitions of the path since the daemon started.",
    MetricType::Counter,
);
const PATH_PROBES: Family = family(
    "lb_path_probes",
    "Probe results of the path since the daemon started.",
    MetricType::Counter,
);
const PATH_TRIGGERS: Family = family(
    "lb_path_passive_triggers",
    "Times the datapath saw the path's client traffic go unanswered and the daemon probed it at once.",
    MetricType::Counter,
);
const PROBE_LAG: Family = family(
    "lb_probe_lag_seconds",
    "How late probes were sent after they were due, over the last 10 s; quantile 1 is the worst.",
    MetricType::Gauge,
);
const PATH_PACKETS: Family = family(
    "lb_path_packets",
    "Translated packets per path; in: toward the VM.",
    MetricType::Counter,
);
const PATH_BYTES: Family = family(
    "lb_path_bytes",
    "Translated bytes per path; in: toward the VM.",
    MetricType::Counter,
);
const TARGET_EXCEPTIONS: Family = family(
    "lb_target_exceptions",
    "Flows of the target pinned away from its decision (exceptions), as of the last sweep; 0: the target is stateless.",
    MetricType::Gauge,
);
const TARGET_TRANSITION: Family = family(
    "lb_target_in_transition",
    "1 while the target keeps its previous decision for connections older than its last change.",
    MetricType::Gauge,
);
const VIP_ANNOUNCED: Family = family(
    "lb_vip_announced",
    "1 while the daemon keeps the VIP address's host route for the routing daemon to announce (announce), 0 while it is withdrawn.",
    MetricType::Gauge,
);
const RELOADS: Family = family(
    "lb_reloads",
    "Configuration reloads by result (ok, rejected).",
    MetricType::Counter,
);
const NOTIFY: Family = family(
    "lb_notify",
    "Notify hooks by result (ok, failed, timeout, dropped).",
    MetricType::Counter,
);

/// Every family exported (README lists each).
pub const FAMILIES: &[Family] = &[
    PACKETS,
    VIP_PACKETS,
    VIP_BYTES,
    PATH_UP,
    PATH_DISABLED,
    PATH_DRAINING,
    PATH_SUSPECT,
    PATH_RTT,
    PATH_TRANSITIONS,
    PATH_PROBES,
    PATH_TRIGGERS,
    PROBE_LAG,
    PATH_PACKETS,
    PATH_BYTES,
    TARGET_EXCEPTIONS,
    TARGET_TRANSITION,
    VIP_ANNOUNCED,
    RELOADS,
    NOTIFY,
];

/// `--metrics`' value: `PORT` (on 127.0.0.1) or `ADDR:PORT`.
pub fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    text.parse::<SocketAddr>()
        .map_err(|_| format!("{text:?} is neither a port nor an address:port"))
}

/// Binds `addr` and serves on a thread of its own; the bind error is the caller's.
pub fn start(
    addr: SocketAddr,
    pin: PinDir,
    shared: Shared,
    probes: Arc<ProbeStats>,
) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let collector = Scrape {
        pin,
        shared,
        probes,
        maps: Mutex::new(None),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let registry = Arc::new(registry);
    std::thread::Builder::new()
        .name("lb-metrics".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    error!("metrics: no runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => serve(listener, registry).await,
                    Err(e) => error!("metrics: {e}"),
                }
            });
        })?;
    info!("metrics on http://{addr}/metrics");
    Ok(())
}

async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut accept_failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                accept_failing = false;
                stream
            }
            Err(e) => {
                // Out of descriptors, say: say it once, wait, and try again.
                if !accept_failing {
                    warn!("metrics: accepting a connection: {e}");
                    accept_failing = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: this one is closed at once; the ones holding slots time out.
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&registry, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A whole request, not each read: a slow client cannot hold a slot for long.
            let _ = tokio::time::timeout(REQUEST_TIMEOUT, conn).await;
        });
    }
}

fn answer<B>(registry: &Registry, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    if !matches!(req.uri().path(), "/metrics" | "/") {
        return reply(StatusCode::NOT_FOUND, "text/plain", "try /metrics\n".into());
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            body,
        ),
        Err(_) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            "the exposition could not be encoded (see the daemon's log)\n".into(),
        ),
    }
}

/// Reads what a scrape exports: the counters and traffic from the pinned maps (opened once,
/// reopened after an error), the rest from the daemon's snapshot.
#[derive(Debug)]
struct Scrape {
    pin: PinDir,
    shared: Shared,
    probes: Arc<ProbeStats>,
    maps: Mutex<Option<Maps>>,
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Only the metrics thread takes this lock.
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        if maps.is_none() {
            match self.pin.open() {
                Ok(m) => *maps = Some(m),
                Err(e) => error!("metrics: opening the pinned maps: {e:#}"),
            }
        }
        let snap = self.shared.load();
        let result = encode_all(&mut encoder, maps.as_ref(), &snap, &self.probes);
        if let Err(e) = &result {
            error!("metrics: reading the maps: {e:#}");
            // A map error drops the handles; the next scrape opens them again.
            *maps = None;
        }
        Ok(())
    }
}

/// A sample's labels, in order.
type Labels = Vec<(&'static str, String)>;
/// Samples by family name.
type Rows<N> = BTreeMap<&'static str, Vec<(Labels, N)>>;

/// Rows of one gauge family.
fn gauge<N>(
    enc: &mut DescriptorEncoder<'_>,
    f: &Family,
    rows: &[(Labels, N)],
) -> Result<(), std::fmt::Error>
where
    N: prometheus_client::encoding::EncodeGaugeValue + Copy + std::fmt::Debug,
{
    let mut fam = enc.encode_descriptor(f.name, f.help, None, f.kind)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(fam.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes every family; a map read error ends the exposition early (what was encoded
/// stays).
fn encode_all(
    encoder: &mut DescriptorEncoder<'_>,
    maps: Option<&Maps>,
    snap: &Snapshot,
    probes: &ProbeStats,
) -> anyhow::Result<()> {
    let counter = |enc: &mut DescriptorEncoder<'_>,
                   f: &Family,
                   rows: &[(Labels, u64)]|
     -> Result<(), std::fmt::Error> {
        let mut fam = enc.encode_descriptor(f.name, f.help, None, f.kind)?;
        for (labels, v) in rows {
            ConstCounter::new(*v).encode(fam.encode_family(labels)?)?;
        }
        Ok(())
    };
    let Some(maps) = maps else {
        return Ok(());
    };
    let rows: Vec<_> = maps
        .counters()?
        .into_iter()
        .map(|(c, v)| (vec![("counter", Counter::name(c).to_owned())], v))
        .collect();
    counter(encoder, &PACKETS, &rows)?;
    let Some(model) = &snap.model else {
        return Ok(());
    };

    let (mut packets, mut bytes) = (Vec::new(), Vec::new());
    for v in &model.config.vips {
        if !model
            .ids
            .vips
            .contains_key(&crate::control::model::vip_key(v))
        {
            continue;
        }
        let s = crate::view::vip_traffic(maps, model, v)?;
        let service = crate::view::service_label(
            v.service.map(|s| s.protocol.name()),
            v.service.map(|s| s.port),
        );
        let labels = |direction: &str| {
            vec![
                ("vip", v.address.to_string()),
                ("service", service.clone()),
                ("target", v.target.clone()),
                ("direction", direction.to_owned()),
            ]
        };
        packets.push((labels("in"), s.in_packets));
        packets.push((labels("out"), s.out_packets));
        bytes.push((labels("in"), s.in_bytes));
        bytes.push((labels("out"), s.out_bytes));
    }
    counter(encoder, &VIP_PACKETS, &packets)?;
    counter(encoder, &VIP_BYTES, &bytes)?;

    let mut flags: Rows<i64> = BTreeMap::new();
    let mut rtts: Vec<(Labels, f64)> = Vec::new();
    let mut counts: Rows<u64> = BTreeMap::new();
    let probed = probes.probes();
    let triggered = probes.triggers();
    for ((target, path), id) in &model.ids.paths {
        let Some(s) = model.paths.get(id) else {
            continue;
        };
        let labels = vec![("target", target.clone()), ("path", path.clone())];
        let with_dir = |d: &str| {
            let mut l = labels.clone();
            l.push(("direction", d.to_owned()));
            l
        };
        let up = s.health == Some(Health::Up) && !s.disabled;
        let mut g = |f: &Family, v: bool| {
            flags
                .entry(f.name)
                .or_default()
                .push((labels.clone(), v.into()))
        };
        g(&PATH_UP, up);
        g(&PATH_DISABLED, s.disabled);
        g(&PATH_DRAINING, s.draining.is_some());
        g(&PATH_SUSPECT, s.suspect);
        if let Some(rtt) = s.rtt {
            rtts.push((labels.clone(), rtt.as_secs_f64()));
        }
        let t = maps.path_stats(*id)?;
        let mut c = |f: &Family, l: Labels, v: u64| {
            counts.entry(f.name).or_default().push((l, v));
        };
        c(
            &PATH_TRANSITIONS,
            labels.clone(),
            snap.transitions.get(id).copied().unwrap_or(0),
        );
        c(
            &PATH_PROBES,
            labels.clone(),
            probed.get(id).copied().unwrap_or(0),
        );
        c(
            &PATH_TRIGGERS,
            labels.clone(),
            triggered.get(id).copied().unwrap_or(0),
        );
        c(&PATH_PACKETS, with_dir("in"), t.in_packets);
        c(&PATH_PACKETS, with_dir("out"), t.out_packets);
        c(&PATH_BYTES, with_dir("in"), t.in_bytes);
        c(&PATH_BYTES, with_dir("out"), t.out_bytes);
    }
    for f in [&PATH_UP, &PATH_DISABLED, &PATH_DRAINING, &PATH_SUSPECT] {
        gauge(encoder, f, flags.get(f.name).map_or(&[], Vec::as_slice))?;
    }
    gauge(encoder, &PATH_RTT, &rtts)?;
    for f in [
        &PATH_TRANSITIONS,
        &PATH_PROBES,
        &PATH_TRIGGERS,
        &PATH_PACKETS,
        &PATH_BYTES,
    ] {
        counter(encoder, f, counts.get(f.name).map_or(&[], Vec::as_slice))?;
    }
    let lag: Vec<(Labels, f64)> = probes
        .lag(std::time::Instant::now())
        .map(|lag| {
            [("0.5", lag.p50), ("0.99", lag.p99), ("1", lag.max)]
                .into_iter()
                .map(|(q, v)| (vec![("quantile", q.to_owned())], v.as_secs_f64()))
                .collect()
        })
        .unwrap_or_default();
    gauge(encoder, &PROBE_LAG, &lag)?;
    let (mut exceptions, mut transition) = (Vec::new(), Vec::new());
    // By target: the two ids of a target with paths of both families (one per family) count
    // as one, their exceptions summed, in transition while either is.
    let mut names: Vec<&str> = model
        .ids
        .targets
        .iter()
        .map(|((n, _), _)| n.as_str())
        .collect();
    names.dedup();
    for name in names {
        let ids: Vec<u32> = model.ids.targets.of(name).map(|(_, id)| id).collect();
        let labels = vec![("target", name.to_owned())];
        let n: usize = ids
            .iter()
            .map(|id| snap.exceptions.get(id).copied().unwrap_or(0))
            .sum();
        let moving = ids.iter().any(|id| model.transitions.contains_key(id));
        exceptions.push((labels.clone(), n as i64));
        transition.push((labels, i64::from(moving)));
    }
    gauge(encoder, &TARGET_EXCEPTIONS, &exceptions)?;
    gauge(encoder, &TARGET_TRANSITION, &transition)?;
    if let Some(announced) = &snap.announced {
        let rows: Vec<(Labels, i64)> = announced
            .iter()
            .map(|(a, on)| (vec![("vip", a.to_string())], i64::from(*on)))
            .collect();
        gauge(encoder, &VIP_ANNOUNCED, &rows)?;
    }
    counter(
        encoder,
        &RELOADS,
        &[
            (vec![("result", "ok".to_owned())], snap.reloads),
            (
                vec![("result", "rejected".to_owned())],
                snap.reload_failures,
            ),
        ],
    )?;
    let h = snap.hooks;
    let result = |r: &str| vec![("result", r.to_owned())];
    counter(
        encoder,
        &NOTIFY,
        &[
            (result("ok"), h.ok),
            (result("failed"), h.failed),
            (result("timeout"), h.timed_out),
            (result("dropped"), h.dropped),
        ],
    )?;
    Ok(())
}
