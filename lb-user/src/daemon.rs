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
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};
use lb_common::maps::{ControlMeta, LAYOUT};
use log::{debug, error, info, warn};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    task::JoinHandle,
};

use crate::{
    config::{Config, HookSetting, interface_exists},
    dataplane::{
        AttachMode, Dataplane, Hook, HookChoice, LoadOptions, Origin, PinDir, RedirectTarget, Role,
        choose_hook, sync_redirect_target,
    },
    health::{Event, Health, HealthTracker, Verdict},
    lock::{PinLock, Role as LockRole},
    metrics,
    model::Model,
    policy::Decision,
    probe::{ProbeSpec, ProbeTimeout, Prober},
    probe_thread::{ProbeStats, ProbeThread},
    tables::{Tables, apply},
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

struct ProbeTask {
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
    triggers: crate::passive::Triggers,
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
    sweep_maps: Option<crate::maps::Maps>,
    /// The epoch of the next probe task started.
    next_epoch: u64,
    /// Where the probe tasks run (last: it stops them when the daemon is dropped).
    probe_thread: ProbeThread,
}

/// A sweep of the exception tables running on a blocking thread: the maps handle comes back
/// with the result. Walking a table of a few hundred thousand exceptions takes a syscall per
/// entry; the daemon's loop (probes, map writes) never waits for it.
type Sweep = tokio::task::JoinHandle<(
    crate::maps::Maps,
    BTreeMap<String, u32>,
    Result<crate::exceptions::Swept, crate::dataplane::Error>,
    Duration,
)>;

/// How often the exception tables are swept (expiry, and the targets that have none left).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` completes (or SIGTERM/SIGINT when the caller passes them).
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if opts.xdp_mode == AttachMode::Skb {
        bail!("--xdp-mode skb: {}", crate::dataplane::GENERIC_XDP_REFUSED);
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
    let pinned = Model::from_tables(&current, |id| dp.maps.admin_disabled(id).unwrap_or(false));
    let model = Model::new(config, &pinned)
        .ok_or_else(|| anyhow!("the configuration does not fit the maps"))?;
    match origin {
        Origin::Adopted => info!(
            "adopted the datapath pinned in {} ({} targets, {} paths, {} VIPs): nothing detached",
            pin.root().display(),
            current.targets.len(),
            current.paths.len(),
            current.vips.len()
        ),
        Origin::Fresh => info!("installed a new datapath in {}", pin.root().display()),
    }

    // Before the first attachment, so an interface that goes during start-up is seen.
    let mut links = crate::links::watch().context("watching interfaces over rtnetlink")?;
    let (events, mut rx) = mpsc::unbounded_channel();
    let shared: metrics::Shared = Default::default();
    let probe_stats: Arc<ProbeStats> = Default::default();
    let probe_thread = ProbeThread::start().context("starting the probe thread")?;
    let triggers = crate::passive::Triggers::default();
    let prober = {
        // Its sockets, and the passive trigger's reader, belong to the probe thread.
        let _on = probe_thread.handle().enter();
        let ring = dp
            .take_events()
            .context("opening the passive trigger's ring buffer")?;
        crate::passive::listen(ring, Arc::clone(&triggers), Arc::clone(&probe_stats))
            .context("reading the passive trigger's ring buffer")?;
        Arc::new(Prober::new().context("starting the prober")?)
    };
    if let Some(why) = prober.icmp_unavailable() {
        warn!("{why}");
    }
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

    if let Some(addr) = opts.metrics {
        metrics::start(addr, pin.clone(), shared.clone(), probe_stats)
            .with_context(|| format!("starting the metrics endpoint on {addr}"))?;
    }

    let mut flush = tokio::time::interval(Duration::from_secs(1));
    let mut sweeping: Option<Sweep> = None;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(ev) = rx.recv() => d.on_event(ev),
            Some(link) = links.recv() => d.on_link(link),
            _ = hup.recv() => d.reload(),
            _ = usr1.recv() => d.refresh_admin(),
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

    for task in d.probes.values() {
        task.handle.abort();
    }
    d.flush();
    if opts.detach_on_exit {
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

fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    config.check_interfaces(interface_exists)?;
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

impl Daemon {
    /// Applies `next` (attachments, maps, probes), or changes nothing and fails.
    fn switch_to(&mut self, next: Model) -> anyhow::Result<()> {
        let roles: Vec<(Role, String)> = next
            .config
            .interfaces
            .clients
            .iter()
            .map(|i| (Role::Ingress, i.clone()))
            .chain(
                next.config
                    .interfaces
                    .paths
                    .iter()
                    .map(|i| (Role::Return, i.clone())),
            )
            .collect();
        let mut wanted: Vec<(Role, Hook, String)> = Vec::new();
        let mut auto = std::collections::BTreeSet::new();
        for (role, iface) in roles {
            // `interfaces.hooks` first, then `--hook`.
            let (choice, by) = match next.config.interfaces.hooks.get(&iface) {
                Some(HookSetting::Auto) => (HookChoice::Auto, "interfaces.hooks: "),
                Some(HookSetting::Xdp) => (HookChoice::Xdp, "interfaces.hooks: "),
                Some(HookSetting::Tc) => (HookChoice::Tc, "interfaces.hooks: "),
                None => (self.opts.hook, ""),
            };
            if choice == HookChoice::Auto {
                auto.insert(iface.clone());
            }
            let (hook, why) = choose_hook(choice, &iface);
            let why = format!("{by}{why}");
            if self.hooks.get(&iface).map(|(h, _)| *h) != Some(hook) {
                info!("{iface}: {hook} hook ({why})");
            }
            self.hooks.insert(iface.clone(), (hook, why));
            wanted.push((role, hook, iface));
        }
        let pin = self
            .dp
            .pin_dir()
            .cloned()
            .ok_or_else(|| anyhow!("the daemon runs pinned"))?;
        let attached = pin.attachments()?;

        // Maps first, so the first packet of a new attachment finds the configuration; undone
        // if an attachment fails, so a rejected configuration leaves nothing behind.
        let desired = next.tables();
        let previous = self.current.clone();
        let t0 = Instant::now();
        let writes = self
            .write_tables(desired.clone())
            .context("writing the maps")?;
        let removed_paths: Vec<u32> = previous
            .path_meta
            .keys()
            .filter(|id| !desired.path_meta.contains_key(id))
            .copied()
            .collect();
        let mut new = Vec::new();
        for want in wanted.iter_mut() {
            let (role, hook, iface) = (want.0, want.1, want.2.clone());
            if self.attached.contains(&(role, hook, iface.clone())) {
                // Attached (or adopted and updated) by this daemon already.
                continue;
            }
            if crate::ifindex(&iface).is_none() {
                // Gone since the configuration was checked: attached when it is back
                // (`on_link`); the other interfaces are served meanwhile.
                warn!("{iface}: no such interface now; {role} is attached when it appears");
                continue;
            }
            let mut result = self.dp.attach(role, hook, &iface, self.opts.xdp_mode);
            if let Err(e) = &result
                && hook == Hook::Xdp
                && auto.contains(&iface)
            {
                // The driver refused native XDP after all: TC serves every interface.
                warn!("{iface}: native XDP failed ({e:#}); using the tc hook");
                self.hooks.insert(
                    iface.clone(),
                    (Hook::Tc, "native XDP failed when attaching".into()),
                );
                want.1 = Hook::Tc;
                result = self.dp.attach(role, Hook::Tc, &iface, self.opts.xdp_mode);
            }
            match result {
                Ok(a) => {
                    self.attached.insert((a.role, a.hook, a.iface.clone()));
                    new.push(a);
                }
                Err(e) => {
                    for a in &new {
                        // Links this round adopted stay (they were there before); new ones go.
                        if a.mode.is_some() {
                            let _ = pin.detach(a.role, a.hook, &a.iface);
                        }
                        self.attached.remove(&(a.role, a.hook, a.iface.clone()));
                    }
                    if let Err(undo) = self.write_tables(previous) {
                        error!("undoing the map writes of the configuration failed: {undo:#}");
                    }
                    return Err(e).context(format!("attaching {role} to {iface}"));
                }
            }
        }
        // A removed path's drain goes with it: its id may be given to another path later.
        for id in removed_paths {
            self.dp
                .maps
                .set_admin_disabled(id, false)
                .context("clearing a removed path's drain")?;
            self.dp
                .maps
                .clear_path_seen(id)
                .context("clearing what the datapath saw of a removed path")?;
        }
        for (role, hook, iface) in attached.iter().filter(|a| !wanted.contains(a)) {
            pin.detach(*role, *hook, iface)?;
            self.attached.remove(&(*role, *hook, iface.clone()));
            let still = wanted.iter().any(|(r, _, i)| r == role && i == iface);
            if !still && let Some(i) = crate::ifindex(iface) {
                let _ = self.dp.maps.remove_tx_port(i);
            }
            if still {
                info!("{role} at {hook} detached from {iface} (it moved to another hook)");
            } else {
                info!("{role} at {hook} detached from {iface} (no longer configured)");
                self.dp
                    .maps
                    .remove_iface(iface)
                    .context("removing a detached interface's record")?;
            }
        }
        self.hooks
            .retain(|iface, _| wanted.iter().any(|(_, _, w)| w == iface));
        self.ifindexes = wanted
            .iter()
            .filter(|(role, hook, iface)| self.attached.contains(&(*role, *hook, iface.clone())))
            .filter_map(|(_, _, iface)| Some((iface.clone(), crate::ifindex(iface)?)))
            .collect();
        self.record_hooks(&new)?;
        self.redirects
            .retain(|iface, _| wanted.iter().any(|(_, _, w)| w == iface));
        self.sync_redirect_targets(wanted.iter().map(|(_, _, iface)| iface.clone()))?;
        for id in &removed_arrivals(&self.arrivals, &next) {
            self.dp
                .maps
                .set_path_iface(*id, 0)
                .context("clearing a removed path's interface")?;
            self.arrivals.remove(id);
        }
        info!(
            "configuration applied: {writes} map writes in {:?}",
            t0.elapsed()
        );

        self.restart_probes(&next);
        self.model = next;
        self.publish();
        Ok(())
    }

    /// Starts probes for new paths or changed probe settings, stops those of removed paths.
    fn restart_probes(&mut self, next: &Model) {
        let mut wanted = BTreeMap::new();
        for t in &next.config.targets {
            for p in &t.paths {
                if let Some(id) = next.ids.paths.get(&(t.name.clone(), p.name.clone())) {
                    wanted.insert(
                        *id,
                        (
                            ProbeSpec::for_path(p),
                            p.probe.interval,
                            p.probe.rise,
                            p.probe.fall,
                            p.probe.timeout,
                        ),
                    );
                }
            }
        }
        self.probes.retain(|id, task| {
            // Anything the probe task was started with: a reload that changes only rise or fall
            // restarts it too (its tracker starts from the path's known state).
            let keep = wanted
                .get(id)
                .is_some_and(|(spec, interval, rise, fall, timeout)| {
                    (spec, *interval, *rise, *fall, *timeout)
                        == (
                            &task.spec,
                            task.interval,
                            task.rise,
                            task.fall,
                            task.timeout,
                        )
                });
            if !keep {
                task.handle.abort();
            }
            keep
        });
        {
            let live = &self.probes;
            self.triggers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|id, _| live.contains_key(id));
        }
        for (id, (spec, interval, rise, fall, configured)) in wanted {
            if self.probes.contains_key(&id) {
                continue;
            }
            let initial = next.paths.get(&id).and_then(|s| s.health);
            let tracker = HealthTracker::new(rise, fall, initial);
            let prober = self.prober.clone();
            let probe_spec = spec.clone();
            let timeout = Arc::new(std::sync::Mutex::new(ProbeTimeout::new(
                configured, interval,
            )));
            let probe = move |cause: crate::health::Cause| {
                let prober = prober.clone();
                let timeout = Arc::clone(&timeout);
                let mut spec = probe_spec.clone();
                spec.timeout = timeout.lock().map_or(spec.timeout, |t| t.current());
                if cause == crate::health::Cause::Trigger {
                    // Back to back: one hiccup of the host must not fail them all.
                    spec.timeout = spec
                        .timeout
                        .max(crate::probe::BURST_TIMEOUT_FLOOR)
                        .min(interval.saturating_sub(Duration::from_millis(1)));
                }
                async move {
                    let result = prober.probe(&spec).await;
                    if let (true, Some(rtt)) = (result.ok, result.rtt)
                        && let Ok(mut t) = timeout.lock()
                    {
                        t.sample(rtt);
                    }
                    result
                }
            };
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            let (trigger_tx, trigger_rx) = mpsc::channel(1);
            self.triggers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, trigger_tx);
            // Probes go out a little more often than every interval, so that `fall` of them
            // fit in the hold time with their timeouts (an adaptive one is taken as at most a
            // quarter of the interval).
            let lead = configured.unwrap_or(interval / 4).min(interval / 2) / fall.max(1);
            let handle = self.probe_thread.handle().spawn(crate::health::monitor(
                crate::health::Schedule::new(id, epoch, interval, lead),
                probe,
                tracker,
                trigger_rx,
                self.events.clone(),
            ));
            self.probes.insert(
                id,
                ProbeTask {
                    spec,
                    interval,
                    timeout: configured,
                    rise,
                    fall,
                    epoch,
                    handle,
                },
            );
        }
    }

    fn on_event(&mut self, ev: Event) {
        let current = self.probes.get(&ev.path_id()).map(|t| t.epoch);
        let known = self.model.paths.get(&ev.path_id()).and_then(|s| s.health);
        let verdict = crate::health::judge(&ev, current, known);
        let Event::Probe {
            path_id,
            result,
            lag,
            history,
            ..
        } = ev;
        if verdict == Verdict::Stale {
            debug!("path {path_id}: a result of a replaced probe task, ignored");
            return;
        }
        if result.is_some() {
            self.probe_stats.record(path_id, lag, Instant::now());
        }
        let Some(s) = self.model.paths.get_mut(&path_id) else {
            return;
        };
        if let Some(rtt) = result.as_ref().filter(|r| r.ok).and_then(|r| r.rtt) {
            s.rtt = Some(rtt);
            self.dirty = true;
        }
        let Verdict::Change(transition) = verdict else {
            return;
        };
        let decided = Instant::now();
        s.health = Some(transition.to);
        s.changed = SystemTime::now();
        let (target, path) = match self.model.path_name(path_id) {
            Some((t, p)) => (t.to_string(), p.to_string()),
            None => return,
        };
        let changed = self.model.decide(&target);
        let desired = self.model.tables();
        if let Err(e) = self.write_tables(desired) {
            error!(
                "writing the maps after {target}/{path} changed: {e:#}; retrying at the next flush"
            );
            self.dirty = true;
        }
        let written = decided.elapsed();
        let from = transition
            .from
            .map_or("unknown".to_string(), |h| h.to_string());
        let decision = match changed.and_then(|id| self.model.decisions.get(&id)) {
            Some(d) => format!("; {target}: new flows → {}", self.describe(d)),
            None => String::new(),
        };
        info!(
            "{target}/{path}: {from} → {} ({}; probe: {}; history {history}){decision}; decision to map write {written:?}",
            transition.to,
            transition.reason,
            result
                .as_ref()
                .map_or("none answered", |r| r.detail.as_str())
        );
        *self.snap.transitions.entry(path_id).or_default() += 1;
        self.publish();
    }

    /// Follows a configured interface going and coming back: its programs go with the device,
    /// and the device that comes back under its name (a new index) gets them again, with its
    /// redirect entry and the paths' arrival interface.
    fn on_link(&mut self, ev: crate::links::LinkEvent) {
        use crate::links::LinkEvent;
        let ifaces = &self.model.config.interfaces;
        let configured = |name: &str| {
            ifaces
                .clients
                .iter()
                .chain(&ifaces.paths)
                .any(|i| i == name)
        };
        match ev {
            LinkEvent::Gone { name, ifindex } if configured(&name) => {
                if self.ifindexes.get(&name) != Some(&ifindex) {
                    return;
                }
                warn!(
                    "{name} is gone (ifindex {ifindex}): its programs went with it; they are attached again when it comes back"
                );
                self.forget_iface(&name, ifindex);
            }
            LinkEvent::New { name, ifindex } if configured(&name) => {
                match self.ifindexes.get(&name).copied() {
                    // A change of flags or addresses of the device served.
                    Some(known) if known == ifindex => return,
                    // The deletion was not seen (the socket overran): the old device is gone.
                    Some(old) => self.forget_iface(&name, old),
                    None => {}
                }
                info!("{name} is here (ifindex {ifindex}): attaching");
                let model = self.model.clone();
                match self.switch_to(model) {
                    Ok(()) => self.sync_arrivals(),
                    Err(e) => error!("{name}: attaching failed: {e:#}"),
                }
            }
            _ => {}
        }
    }

    /// Drops what this daemon knows of interface `name` (index `ifindex`), whose device is
    /// gone: its link pins (dead links) and its redirect entry.
    fn forget_iface(&mut self, name: &str, ifindex: u32) {
        let gone: Vec<(Role, Hook, String)> = self
            .attached
            .iter()
            .filter(|(_, _, iface)| iface == name)
            .cloned()
            .collect();
        if let Some(pin) = self.dp.pin_dir().cloned() {
            for (role, hook, iface) in &gone {
                if let Err(e) = pin.detach(*role, *hook, iface) {
                    warn!("{iface}: removing the pin of a dead link: {e}");
                }
            }
        }
        for a in &gone {
            self.attached.remove(a);
        }
        let _ = self.dp.maps.remove_tx_port(ifindex);
        self.ifindexes.remove(name);
        self.redirects.remove(name);
    }

    fn describe(&self, d: &Decision) -> String {
        match d {
            Decision::None => "dropped (no usable path)".into(),
            Decision::Single(p) => self
                .model
                .path_name(*p)
                .map_or(format!("path {p}"), |(_, n)| n.to_string()),
            Decision::Ring(ring) => {
                let mut shares: BTreeMap<u32, usize> = BTreeMap::new();
                for p in ring.iter() {
                    *shares.entry(*p).or_default() += 1;
                }
                shares
                    .iter()
                    .map(|(p, n)| {
                        let name = self
                            .model
                            .path_name(*p)
                            .map_or(p.to_string(), |(_, n)| n.to_string());
                        format!(
                            "{name} {:.0}%",
                            *n as f64 * 100.0 / ring.len().max(1) as f64
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        }
    }

    fn reload(&mut self) {
        info!("reloading {}", self.opts.config.display());
        let result = load_config(&self.opts.config).and_then(|config| {
            let size = config
                .flow_table_size
                .unwrap_or(lb_common::maps::FLOW_TABLE_SIZE);
            if let Ok(pinned) = self.dp.maps.flow_capacity()
                && pinned != size
            {
                warn!(
                    "flow_table_size {size} is not applied by a reload: the exception table keeps its size {pinned} (a map's size is fixed when it is created; restart with --replace to apply it)"
                );
            }
            let next = Model::new(config, &self.model)
                .ok_or_else(|| anyhow!("the configuration does not fit the maps"))?;
            self.switch_to(next)
        });
        match result {
            Ok(()) => self.snap.reloads += 1,
            Err(e) => {
                self.snap.reload_failures += 1;
                error!("reload rejected, the running configuration stays: {e:#}");
            }
        }
        self.publish();
    }

    /// Picks up drains written by `lb path disable/enable`.
    fn refresh_admin(&mut self) {
        let mut changed = false;
        for (id, s) in self.model.paths.iter_mut() {
            let disabled = self.dp.maps.admin_disabled(*id).unwrap_or(s.disabled);
            if disabled != s.disabled {
                s.disabled = disabled;
                s.changed = SystemTime::now();
                changed = true;
            }
        }
        if changed {
            let ids = self.model.decide_all();
            let desired = self.model.tables();
            if let Err(e) = self.write_tables(desired) {
                error!(
                    "writing the maps after an operator change: {e:#}; retrying at the next flush"
                );
                self.dirty = true;
            }
            for id in ids {
                if let Some(d) = self.model.decisions.get(&id) {
                    let name = self.model.target_name(id).map(str::to_string);
                    info!(
                        "{}: new flows → {} (operator change)",
                        name.unwrap_or_default(),
                        self.describe(d)
                    );
                }
            }
            self.publish();
        }
    }

    /// Every configured interface is a redirect target when frames can be redirected into it
    /// (attached now or before), and kept out when they would be dropped; a change is logged.
    /// Records each interface's hook, mode and reason in `LB_IFACES` for `lb status`, and
    /// warns about interfaces the kernel does not forward on (the datapath then hands their
    /// VIP traffic to the kernel untranslated, which drops it).
    fn record_hooks(&mut self, new: &[crate::dataplane::Attached]) -> anyhow::Result<()> {
        for (iface, (hook, why)) in &self.hooks {
            let fresh = new.iter().find(|a| &a.iface == iface);
            let mode = match (fresh.and_then(|a| a.mode), hook) {
                (Some("tc"), _) | (None, Hook::Tc) => "tcx",
                (Some(mode), _) => mode,
                (None, Hook::Xdp) => "native",
            };
            let meta = lb_common::maps::IfaceMeta {
                hook: match hook {
                    Hook::Xdp => lb_common::maps::IFACE_HOOK_XDP,
                    Hook::Tc => lb_common::maps::IFACE_HOOK_TC,
                },
                _pad: [0; 7],
                mode: lb_common::maps::encode_str(mode),
                why: lb_common::maps::encode_str(why),
            };
            self.dp
                .maps
                .set_iface(iface, meta)
                .with_context(|| format!("recording the hook of {iface}"))?;
            if fresh.is_some() && crate::netdev::ipv4_forwarding(iface) == Some(false) {
                warn!(
                    "{iface}: IPv4 forwarding is off, so the datapath hands its VIP traffic to \
                     the kernel untranslated, which does not forward it (counted \
                     pass_forwarding_off); `sysctl -w net.ipv4.conf.{iface}.forwarding=1`"
                );
            }
        }
        Ok(())
    }

    /// Writes, for every path, the interface its replies must arrive on: the path's
    /// `interface` when configured, else the one the kernel routes its address through. The
    /// return program drops replies from the path's address that arrive elsewhere. A path
    /// without a route gets 0 (any), with one log line: its replies could come from anywhere.
    fn sync_arrivals(&mut self) {
        let mut want = BTreeMap::new();
        for t in &self.model.config.targets {
            for p in &t.paths {
                let Some(&id) = self.model.ids.paths.get(&(t.name.clone(), p.name.clone())) else {
                    continue;
                };
                let ifindex = match &p.interface {
                    Some(name) => crate::ifindex(name),
                    None => crate::netdev::route_oif(p.address).ok().flatten(),
                };
                want.insert(id, (ifindex.unwrap_or(0), format!("{}/{}", t.name, p.name)));
            }
        }
        for (id, (ifindex, name)) in want {
            if self.arrivals.get(&id) == Some(&ifindex) {
                continue;
            }
            if let Err(e) = self.dp.maps.set_path_iface(id, ifindex) {
                error!("writing the arrival interface of {name}: {e:#}");
                continue;
            }
            if ifindex == 0 {
                warn!(
                    "{name}: no route to its address, so its replies are accepted on any \
                     path-facing interface until there is one"
                );
            } else {
                info!(
                    "{name}: replies accepted on {} only",
                    crate::ifname(ifindex).unwrap_or_else(|| ifindex.to_string())
                );
            }
            self.arrivals.insert(id, ifindex);
        }
    }

    fn sync_redirect_targets(
        &mut self,
        ifaces: impl IntoIterator<Item = String>,
    ) -> anyhow::Result<()> {
        for iface in ifaces {
            let Some(ifindex) = crate::ifindex(&iface) else {
                continue;
            };
            let now = sync_redirect_target(&mut self.dp.maps, &iface, ifindex)
                .with_context(|| format!("updating the redirect map for {iface}"))?;
            if self.redirects.get(&iface) != Some(&now) {
                match &now {
                    RedirectTarget::Yes => info!("{iface}: takes XDP redirects"),
                    RedirectTarget::No { why } => warn!(
                        "{iface}: frames cannot be XDP-redirected into it ({why}); traffic \
                         toward it goes through the kernel instead (counted pass_no_tx_port)"
                    ),
                }
                self.redirects.insert(iface, now);
            }
        }
        Ok(())
    }

    /// Writes what changed without a decision (probe RTTs) once a second, and follows the
    /// interfaces' ability to take redirects.
    /// Flags each up path whose probes succeed while a client's TCP handshake toward it has
    /// gone unanswered for `datapath_suspect` (from the datapath's `LB_PATH_SEEN`), and clears
    /// the flag at the next answer; a change is logged and reaches status and metrics.
    fn check_datapath(&mut self) {
        let window = self.model.config.datapath_suspect;
        let now = monotonic_coarse_ns();
        let names: BTreeMap<u32, (String, String)> = self
            .model
            .ids
            .paths
            .iter()
            .map(|(name, id)| (*id, name.clone()))
            .collect();
        for (id, state) in self.model.paths.iter_mut() {
            let seen = match self.dp.maps.path_seen(*id) {
                Ok(seen) => seen,
                Err(e) => {
                    error!("reading what the datapath saw of path {id}: {e:#}");
                    continue;
                }
            };
            let waited = seen.unanswered_ns(now).map(Duration::from_nanos);
            let suspect = state.health == Some(Health::Up)
                && !state.disabled
                && waited.is_some_and(|w| w >= window);
            if suspect == state.suspect {
                continue;
            }
            let (target, path) = names.get(id).cloned().unwrap_or_default();
            if suspect {
                warn!(
                    "{target}/{path}: datapath suspect: probes succeed, but a client's TCP \
                     handshake toward it has gone unanswered for {:?} (datapath_suspect_ms {})",
                    waited.unwrap_or_default(),
                    window.as_millis()
                );
            } else {
                info!("{target}/{path}: datapath suspect cleared");
            }
            state.suspect = suspect;
            self.dirty = true;
        }
    }

    fn flush(&mut self) {
        // A veth's peer may switch GRO or XDP on and off at any time: follow it.
        let ifaces: Vec<String> = self.redirects.keys().cloned().collect();
        if let Err(e) = self.sync_redirect_targets(ifaces) {
            error!("{e:#}");
        }
        self.sync_arrivals();
        self.check_datapath();
        if !self.dirty {
            return;
        }
        let desired = self.model.tables();
        match self.write_tables(desired) {
            Ok(_) => self.dirty = false,
            Err(e) => error!("writing path state: {e:#}"),
        }
        self.publish();
    }

    /// Ends the transitions older than `flows.tcp_idle`, and starts a sweep of the exception
    /// tables on a blocking thread (see [`Sweep`]); `None` when the maps cannot be opened.
    fn start_sweep(&mut self) -> Option<Sweep> {
        let flows = self.model.config.flows;
        let ended = self
            .model
            .end_transitions(SystemTime::now(), flows.tcp_idle);
        for id in ended {
            let name = self
                .model
                .target_name(id)
                .map_or(id.to_string(), str::to_string);
            info!(
                "{name}: transition ended ({:?} after the change): the previous decision is dropped",
                flows.tcp_idle
            );
            self.dirty = true;
        }
        let mut maps = match self.sweep_maps.take() {
            Some(m) => m,
            None => match PinDir::new(&self.opts.pin_dir).open() {
                Ok(m) => m,
                Err(e) => {
                    error!("opening the maps to sweep the exception tables: {e:#}");
                    return None;
                }
            },
        };
        let model = Arc::new(self.model.clone());
        let vips: BTreeMap<u32, u32> = self
            .current
            .vips
            .iter()
            .map(|(id, v)| (*id, v.target))
            .collect();
        let ids = model.ids.targets.clone();
        Some(tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            let swept = crate::exceptions::sweep(
                &mut maps,
                ids.values().copied(),
                |vip| vips.get(&vip).copied(),
                |tid, key, value| model.rule_path(tid, key) == Some(value.path),
                monotonic_coarse_ns(),
                &flows,
            );
            (maps, ids, swept, t0.elapsed())
        }))
    }

    /// Takes a finished sweep's result: the exceptions left per target (metrics), and the
    /// bound that stops the datapath consulting the tables for targets with none left, for the
    /// targets that still have the id they had when the sweep began.
    fn finish_sweep(&mut self, done: <Sweep as Future>::Output) {
        let (maps, ids, swept, took) = match done {
            Ok(d) => d,
            Err(e) => {
                error!("the exception sweep failed: {e}");
                return;
            }
        };
        self.sweep_maps = Some(maps);
        let swept = match swept {
            Ok(s) => s,
            Err(e) => {
                error!("sweeping the exception tables: {e:#}");
                return;
            }
        };
        if swept.removed > 0 {
            debug!(
                "exceptions: {} removed, {} left, in {took:?}",
                swept.removed,
                swept.left.values().sum::<usize>(),
            );
        }
        if self.snap.exceptions != swept.left {
            self.snap.exceptions = swept.left.clone();
            self.publish();
        }
        for (id, clear) in swept.clear {
            let same = ids
                .iter()
                .any(|(name, v)| *v == id && self.model.ids.targets.get(name) == Some(&id));
            if same && self.model.exc_clear.get(&id) != Some(&clear) {
                self.model.exc_clear.insert(id, clear);
                self.dirty = true;
            }
        }
    }

    /// Writes `desired` into the maps (planned, then committed; undone on a failure) and keeps
    /// [`Daemon::current`] what the maps hold either way.
    fn write_tables(&mut self, desired: Tables) -> Result<usize, Box<crate::tables::ApplyError>> {
        match apply(&mut self.dp.maps, &self.current, &desired) {
            Ok(n) => {
                self.current = desired;
                Ok(n)
            }
            Err(e) => {
                self.current = e.holds.clone();
                Err(e)
            }
        }
    }

    /// Hands the metrics thread a fresh snapshot (it never waits for the daemon, nor the
    /// daemon for it).
    fn publish(&mut self) {
        self.snap.model = Some(Arc::new(self.model.clone()));
        self.shared.store(Arc::new(self.snap.clone()));
    }

    fn write_meta(&mut self, pid: u32) -> anyhow::Result<()> {
        let applied_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.dp
            .maps
            .set_meta(ControlMeta {
                layout: LAYOUT,
                daemon_pid: pid,
                _pad: 0,
                applied_ns,
            })
            .context("writing the daemon's pid")?;
        Ok(())
    }
}

/// Health as shown to people.
pub fn health_name(h: Option<Health>) -> &'static str {
    match h {
        Some(Health::Up) => "up",
        Some(Health::Down) => "down",
        None => "unknown",
    }
}

/// A capability a command needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// Load programs, create, read and write maps (`CAP_BPF`, 39).
    Bpf,
    /// Attach to interfaces (`CAP_NET_ADMIN`, 12).
    NetAdmin,
    /// ICMP probes (`CAP_NET_RAW`, 13).
    NetRaw,
    /// Mount and unmount a bpffs (`CAP_SYS_ADMIN`, 21).
    SysAdmin,
}

impl Cap {
    fn bit(self) -> u32 {
        match self {
            Cap::Bpf => 39,
            Cap::NetAdmin => 12,
            Cap::NetRaw => 13,
            Cap::SysAdmin => 21,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Cap::Bpf => "CAP_BPF",
            Cap::NetAdmin => "CAP_NET_ADMIN",
            Cap::NetRaw => "CAP_NET_RAW",
            Cap::SysAdmin => "CAP_SYS_ADMIN",
        }
    }
}

/// This process's effective capabilities (`CapEff` of /proc/self/status).
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Fails, before anything is touched, when this process lacks a capability `command` needs
/// to do `what`, naming the command, root and every missing capability.
pub fn require(command: &str, what: &str, caps: &[Cap]) -> anyhow::Result<()> {
    let have = effective_caps();
    // CAP_SYS_ADMIN stands in for CAP_BPF (kernels before 5.8 know only it).
    let has = |c: Cap| {
        have & (1 << c.bit()) != 0 || (c == Cap::Bpf && have & (1 << Cap::SysAdmin.bit()) != 0)
    };
    let missing: Vec<&str> = caps
        .iter()
        .filter(|c| !has(**c))
        .map(|c| c.name())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let all: Vec<&str> = caps.iter().map(|c| c.name()).collect();
    bail!(
        "lb {command} needs root (or {}) to {what}; this process lacks {}",
        all.join(" + "),
        missing.join(", ")
    );
}

/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock of the datapath's
/// `bpf_ktime_get_coarse_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Paths whose arrival interface was written but which `next` no longer has.
fn removed_arrivals(arrivals: &BTreeMap<u32, u32>, next: &Model) -> Vec<u32> {
    let live: std::collections::BTreeSet<u32> = next.ids.paths.values().copied().collect();
    arrivals
        .keys()
        .filter(|id| !live.contains(id))
        .copied()
        .collect()
}
