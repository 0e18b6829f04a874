//! The `lb run` daemon: loads (or adopts) the datapath, applies the configuration, probes every
//! path, and rewrites the maps the moment a decision changes. Reload on SIGHUP; an operator's
//! drain (`lb path`) is picked up on SIGUSR1. Its shutdown signal is an argument, so tests can
//! drive it (mini-redis' shape).

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use log::{info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    config::{Config, interface_exists},
    control::{health::Event, model::Model},
    datapath::{
        AttachMode, Dataplane, Hook, HookChoice, LoadOptions, Origin, PinDir, RedirectTarget, Role,
        lock::{PinLock, Role as LockRole},
        tables::Tables,
    },
    metrics,
    probe::{
        ProbeSpec, Prober,
        thread::{ProbeStats, ProbeThread},
    },
};

/// `lb run`'s options.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: PathBuf,
    pub pin_dir: PathBuf,
    /// Which hook the programs run at (per interface under `auto`).
    pub hook: HookChoice,
    /// With the XDP hook: native, or generic by name.
    pub xdp_mode: AttachMode,
    pub metrics: Option<SocketAddr>,
    /// Discard pinned state of another layout instead of refusing to start.
    pub replace: bool,
    /// Remove everything (programs, pins) on exit instead of leaving the datapath forwarding.
    pub detach_on_exit: bool,
}

/// A path's last probe report, as the daemon took it.
#[derive(Clone, Debug)]
pub(crate) struct LastReport {
    /// `None`: the hold timer expired (no probe result came with the report).
    result: Option<crate::control::health::ProbeResult>,
    at: std::time::SystemTime,
    history: String,
    streak: u32,
}

pub(crate) struct ProbeTask {
    spec: ProbeSpec,
    interval: Duration,
    /// The configured timeout (`None`: adaptive).
    timeout: Option<Duration>,
    rise: u32,
    fall: u32,
    /// Tags its events: those of a task a reload replaced are told apart and dropped.
    epoch: u64,
    handle: JoinHandle<()>,
}

struct Daemon {
    opts: Options,
    dp: Dataplane,
    model: Model,
    /// What the maps hold (as far as the control plane writes them).
    current: Tables,
    prober: Arc<Prober>,
    probes: BTreeMap<u32, ProbeTask>,
    events: mpsc::UnboundedSender<Event>,
    /// Probes per path and their scheduling lag, for the metrics.
    probe_stats: Arc<ProbeStats>,
    /// Each probe task's passive-trigger channel, for the ring buffer's reader.
    triggers: crate::probe::passive::Triggers,
    /// What the metrics thread reads: [`Daemon::snap`] as last published.
    shared: metrics::Shared,
    snap: metrics::Snapshot,
    /// Path meta (RTTs) waits for the next flush; state changes are written at once.
    dirty: bool,
    /// Attachments this daemon made or adopted (and updated to its programs).
    attached: std::collections::BTreeSet<(Role, Hook, String)>,
    /// The hook of each configured interface and why, as last logged.
    hooks: BTreeMap<String, (Hook, String)>,
    /// Whether each configured interface takes XDP redirects, as last logged.
    redirects: BTreeMap<String, RedirectTarget>,
    /// The interface each path's replies must arrive on, as written to `LB_PATH_IFACES`.
    arrivals: BTreeMap<u32, u32>,
    /// The index of each configured interface as last attached: a link event for another
    /// index is another device of that name.
    ifindexes: BTreeMap<String, u32>,
    /// When the exception tables were last swept.
    swept: Instant,
    /// The maps handle the sweep uses on its blocking thread, while it is not away.
    sweep_maps: Option<crate::datapath::maps::Maps>,
    /// The epoch of the next probe task started.
    next_epoch: u64,
    /// Keeps the servable VIPs' host routes (`announce`).
    announcer: crate::announce::Announcer,
    /// What `lb events` follows.
    log: rpc::EventLog,
    /// Each path's last probe report, for `lb status`.
    last: BTreeMap<u32, LastReport>,
    /// The targets' notify hooks.
    notifiers: hooks::Hooks,
    /// Where the probe tasks run (last: it stops them when the daemon is dropped).
    probe_thread: ProbeThread,
}

/// A sweep of the exception tables running on a blocking thread: the maps handle comes back
/// with the result. Walking a table of a few hundred thousand exceptions takes a syscall per
/// entry; the daemon's loop (probes, map writes) never waits for it.
pub(crate) type Sweep = tokio::task::JoinHandle<(
    crate::datapath::maps::Maps,
    crate::control::model::TargetIds,
    Result<crate::datapath::exceptions::Swept, crate::datapath::Error>,
    Duration,
)>;

/// How often the daemon checks whether a target that came back has settled.
const SETTLE_CHECK: Duration = Duration::from_millis(50);

/// How often the exception tables are swept (expiry, and the targets that have none left).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` completes (or SIGTERM/SIGINT when the caller passes them).
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if opts.xdp_mode == AttachMode::Skb {
        bail!("--xdp-mode skb: {}", crate::datapath::GENERIC_XDP_REFUSED);
    }
    // Before anything is touched: a SIGHUP or SIGUSR1 during start-up waits for the loop (their
    // default action would kill the daemon mid-apply). The caller installs SIGTERM's and
    // SIGINT's the same way, before calling.
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut usr1 = signal(SignalKind::user_defined1()).context("installing the SIGUSR1 handler")?;
    // One daemon per pin directory, and no command changing it beside the daemon: held until
    // the daemon returns. A command holding it briefly is waited for.
    let _lock = PinLock::acquire(&opts.pin_dir, LockRole::Daemon, Duration::from_secs(5))?;
    let config = load_config(&opts.config)?;
    let pin = PinDir::new(&opts.pin_dir);
    let (mut dp, origin) = Dataplane::install(
        &pin,
        &LoadOptions {
            flow_table_size: config.flow_table_size,
        },
        opts.replace,
    )
    .with_context(|| format!("installing the datapath in {}", pin.root().display()))?;
    spawn_ebpf_logger(&mut dp);

    let current = match origin {
        Origin::Adopted => dp.maps.read_tables().context("reading the pinned state")?,
        Origin::Fresh => Tables::default(),
    };
    // Where an earlier run kept its routes: they move if the configuration says elsewhere.
    let recorded = match origin {
        Origin::Adopted => dp.maps.meta().ok().and_then(|m| recorded_announce(&m)),
        Origin::Fresh => None,
    };
    let pinned = Model::from_tables(&current, |id| {
        dp.maps
            .admin(id)
            .unwrap_or(crate::datapath::maps::Admin::Enabled)
    });
    let model = Model::new(config, &pinned)
        .ok_or_else(|| anyhow!("the configuration does not fit the maps"))?;
    match origin {
        Origin::Adopted => info!(
            "adopted the datapath pinned in {} ({} targets, {} paths, {} VIPs): nothing detached",
            pin.root().display(),
            pinned.config.targets.len(),
            current.paths.len(),
            current.vips.len()
        ),
        Origin::Fresh => info!("installed a new datapath in {}", pin.root().display()),
    }

    // Before the first attachment, so an interface that goes during start-up is seen.
    let mut links =
        crate::datapath::links::watch().context("watching interfaces over rtnetlink")?;
    let (events, mut rx) = mpsc::unbounded_channel();
    let shared: metrics::Shared = Default::default();
    let probe_stats: Arc<ProbeStats> = Default::default();
    let probe_thread = ProbeThread::start().context("starting the probe thread")?;
    let triggers = crate::probe::passive::Triggers::default();
    let prober = {
        // Its sockets, and the passive trigger's reader, belong to the probe thread.
        let _on = probe_thread.handle().enter();
        let ring = dp
            .take_events()
            .context("opening the passive trigger's ring buffer")?;
        crate::probe::passive::listen(ring, Arc::clone(&triggers), Arc::clone(&probe_stats))
            .context("reading the passive trigger's ring buffer")?;
        Arc::new(Prober::new().context("starting the prober")?)
    };
    if let Some(why) = prober.icmp_unavailable() {
        warn!("{why}");
    }
    let announcer = crate::announce::Announcer::start(recorded)
        .context("opening a netlink socket for the VIPs' routes")?;
    let mut d = Daemon {
        opts: opts.clone(),
        dp,
        model: Model::empty(),
        current,
        prober,
        probes: BTreeMap::new(),
        events,
        probe_stats: Arc::clone(&probe_stats),
        triggers,
        shared: shared.clone(),
        snap: metrics::Snapshot::default(),
        dirty: false,
        attached: Default::default(),
        redirects: BTreeMap::new(),
        hooks: BTreeMap::new(),
        arrivals: BTreeMap::new(),
        ifindexes: BTreeMap::new(),
        swept: Instant::now(),
        sweep_maps: None,
        next_epoch: 1,
        announcer,
        log: rpc::EventLog::default(),
        last: BTreeMap::new(),
        notifiers: Default::default(),
        probe_thread,
    };
    if let Err(e) = d.switch_to(model) {
        // A fresh install that cannot be completed leaves nothing behind; adopted state stays
        // as it was found (switch_to undoes its own map writes).
        if origin == Origin::Fresh {
            let _ = pin.remove();
        }
        return Err(e.context("applying the configuration"));
    }
    d.write_meta(std::process::id())?;
    // Once the configuration is applied: a reload asked before then would find none.
    let (asked_tx, mut asked) = mpsc::channel(16);
    let socket = rpc::listen(&opts.pin_dir, asked_tx).context("opening the control socket")?;
    d.log.emit(
        None,
        "started",
        Default::default(),
        format!(
            "daemon started (pid {}), {} applied",
            std::process::id(),
            opts.config.display()
        ),
    );
    notify::ready(&d.summary());
    let watchdog_every = notify::watchdog_every();
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));

    if let Some(addr) = opts.metrics {
        metrics::start(addr, pin.clone(), shared.clone(), probe_stats)
            .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
    }

    let mut flush = tokio::time::interval(Duration::from_secs(1));
    // Targets that came back settle in a few probe intervals: checked at a finer grain.
    let mut settle = tokio::time::interval(SETTLE_CHECK);
    let mut sweeping: Option<Sweep> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(ev) = rx.recv() => d.on_event(ev),
            Some(link) = links.recv() => d.on_link(link),
            _ = hup.recv() => {
                d.reload(false);
            }
            Some(a) = asked.recv() => d.answer(a),
            _ = usr1.recv() => d.refresh_admin(),
            _ = settle.tick() => d.settle(),
            _ = watchdog.tick(), if watchdog_every.is_some() => notify::watchdog(),
            _ = flush.tick() => {
                d.flush();
                if sweeping.is_none() && d.swept.elapsed() >= SWEEP_EVERY {
                    d.swept = Instant::now();
                    sweeping = d.start_sweep();
                }
            }
            done = async { sweeping.as_mut().expect("guarded").await }, if sweeping.is_some() => {
                sweeping = None;
                d.finish_sweep(done);
            }
            () = &mut shutdown => break,
        }
    }

    notify::stopping();
    for task in d.probes.values() {
        task.handle.abort();
    }
    d.flush();
    d.log.emit(
        None,
        "stopping",
        Default::default(),
        "daemon stopping".into(),
    );
    // The followers get the events left, then the end of the stream.
    drop(std::mem::take(&mut d.log));
    socket.drain(Duration::from_secs(1)).await;
    let announce = d.model.config.announce;
    // The routes stay with the datapath: a stopped daemon's edge still forwards.
    d.announcer.stop();
    if opts.detach_on_exit {
        // Nothing is announced that nothing serves: routes first, then the datapath.
        if let Some(a) = announce {
            let routes = crate::announce::Routes::connect()?;
            for vip in routes
                .remove_all(a)
                .await
                .context("withdrawing the VIPs (--detach-on-exit)")?
            {
                info!("withdrew {vip} (--detach-on-exit)");
            }
        }
        pin.remove()
            .context("removing the datapath (--detach-on-exit)")?;
        info!("datapath removed (--detach-on-exit)");
    } else {
        d.write_meta(0)?;
        info!(
            "stopping; the datapath keeps forwarding with the last decisions (`lb down` removes it)"
        );
    }
    Ok(())
}

/// The announcement settings pinned state records (`None`: its daemon kept no routes).
fn recorded_announce(meta: &lb_common::maps::ControlMeta) -> Option<crate::config::Announce> {
    (meta.announce_protocol != 0).then_some(crate::config::Announce {
        table: meta.announce_table,
        protocol: meta.announce_protocol,
    })
}

pub(crate) fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    config.check_interfaces(interface_exists)?;
    for w in config.warnings() {
        warn!("{}: {w}", path.display());
    }
    Ok(config)
}

/// Forwards the programs' aya-log records (internal faults only) to the log.
fn spawn_ebpf_logger(dp: &mut Dataplane) {
    match aya_log::EbpfLogger::init(dp.ebpf_mut()) {
        Ok(logger) => {
            tokio::spawn(async move {
                // SAFETY: the logger owns its ring buffer's fd, which stays open and the same
                // for as long as the `AsyncFd` (which owns the logger) lives.
                let registered = unsafe {
                    tokio::io::unix::AsyncFd::register_with_interest(
                        logger,
                        tokio::io::Interest::READABLE,
                    )
                };
                let Ok(mut fd) = registered else { return };
                while let Ok(mut guard) = fd.readable_mut().await {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => warn!("datapath log records will not be shown: {e}"),
    }
}

mod apply;
mod caps;
mod events;
mod hooks;
pub mod logs;
mod notify;
mod rpc;

pub use caps::{Cap, require};
