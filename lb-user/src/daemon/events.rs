//! What the daemon does between applies: probe events, link events, drains, datapath checks,
//! exception sweeps and the metrics snapshot.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use log::{debug, error, info, warn};

use crate::{
    control::{
        health::{Event, Health, Verdict},
        policy::Decision,
    },
    daemon::{Daemon, Sweep, rpc::Subject},
    datapath::{Hook, PinDir, Role, maps::Admin, monotonic_coarse_ns},
};

impl Daemon {
    pub(super) fn on_event(&mut self, ev: Event) {
        let current = self.probes.get(&ev.path_id()).map(|t| t.epoch);
        let known = self.model.paths.get(&ev.path_id()).and_then(|s| s.health);
        let verdict = crate::control::health::judge(&ev, current, known);
        let Event::Probe {
            path_id,
            result,
            lag,
            history,
            streak,
            ..
        } = ev;
        if verdict == Verdict::Stale {
            debug!("path {path_id}: a result of a replaced probe task, ignored");
            return;
        }
        if result.is_some() {
            self.probe_stats.record(path_id, lag, Instant::now());
        }
        self.last.insert(
            path_id,
            super::LastReport {
                result: result.clone(),
                at: SystemTime::now(),
                history: history.clone(),
                streak,
            },
        );
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
        // One id at most: a path's change moves only its family's decision.
        let decision: String = changed
            .iter()
            .filter_map(|id| {
                let d = self.model.decisions.get(id)?;
                Some(format!(
                    "; {}: new flows → {}",
                    self.model.target_label(*id),
                    self.describe(d)
                ))
            })
            .collect();
        let probe = result
            .as_ref()
            .map_or("none answered", |r| r.detail.as_str());
        tracing::info!(
            kind = "transition",
            target_name = %target,
            path = %path,
            from = %from,
            to = %transition.to,
            reason = %transition.reason,
            probe,
            history = %history,
            write_us = written.as_micros() as u64,
            "{target}/{path}: {from} → {} ({}; probe: {probe}; history {history}){decision}; decision to map write {written:?}",
            transition.to,
            transition.reason,
        );
        self.log.emit(
            None,
            "transition",
            Subject {
                target: Some(&target),
                path: Some(&path),
                from: Some(&from),
                to: Some(&transition.to.to_string()),
            },
            format!(
                "{target}/{path}: {from} → {} ({}; probe: {probe})",
                transition.to, transition.reason
            ),
        );
        for id in &changed {
            if let Some(d) = self.model.decisions.get(id) {
                let label = self.model.target_label(*id);
                let message = format!("{label}: new flows → {}", self.describe(d));
                self.log.emit(
                    None,
                    "decision",
                    Subject {
                        target: Some(&target),
                        ..Default::default()
                    },
                    message,
                );
            }
        }
        let mut vars = super::hooks::base("transition", &target);
        let address = self
            .model
            .address_of(path_id)
            .map_or(String::new(), |a| a.to_string());
        let new_flows: Vec<String> = changed
            .iter()
            .filter_map(|id| Some(self.describe(self.model.decisions.get(id)?)))
            .collect();
        vars.extend([
            ("LB_PATH", path.clone()),
            ("LB_PATH_ADDRESS", address),
            ("LB_FROM", from.clone()),
            ("LB_TO", transition.to.to_string()),
            ("LB_REASON", transition.reason.clone()),
            ("LB_PROBE", probe.to_string()),
            // Empty when the transition moved no new flows (a standby path).
            ("LB_NEW_FLOWS", new_flows.join("; ")),
        ]);
        self.notifiers.notify(&target, vars);
        *self.snap.transitions.entry(path_id).or_default() += 1;
        super::notify::status(&self.summary());
        self.publish();
    }

    /// Follows a configured interface going and coming back: its programs go with the device,
    /// and the device that comes back under its name (a new index) gets them again, with its
    /// redirect entry and the paths' arrival interface.
    pub(super) fn on_link(&mut self, ev: crate::datapath::links::LinkEvent) {
        use crate::datapath::links::LinkEvent;
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
                let message = format!(
                    "{name} is gone (ifindex {ifindex}): its programs went with it; they are attached again when it comes back"
                );
                self.log.emit(
                    Some(tracing::Level::WARN),
                    "interface",
                    Default::default(),
                    message,
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
                self.log.emit(
                    Some(tracing::Level::INFO),
                    "interface",
                    Default::default(),
                    format!("{name} is here (ifindex {ifindex}): attaching"),
                );
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
    pub(super) fn forget_iface(&mut self, name: &str, ifindex: u32) {
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
        self.publish();
    }

    pub(super) fn describe(&self, d: &Decision) -> String {
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

    /// Picks up what `lb path drain|disable|enable` wrote.
    pub(super) fn refresh_admin(&mut self) {
        let now = SystemTime::now();
        let mut changes = Vec::new();
        for (id, s) in self.model.paths.iter_mut() {
            let admin = self.dp.maps.admin(*id).unwrap_or(s.admin());
            if admin != s.admin() {
                s.apply_admin(admin);
                s.changed = now;
                changes.push((*id, admin));
            }
        }
        self.admin_changed(changes, "by the operator");
    }

    /// Ends the drains whose time is up: their paths are disabled (their connections move).
    pub(super) fn end_drains(&mut self) {
        let now = SystemTime::now();
        let mut changes = Vec::new();
        for (id, s) in self.model.paths.iter_mut() {
            if s.draining.is_some_and(|until| until <= now) {
                if let Err(e) = self.dp.maps.set_admin(*id, Admin::Disabled) {
                    error!("ending the drain of path {id}: {e:#}; retrying in a second");
                    continue;
                }
                s.apply_admin(Admin::Disabled);
                s.changed = now;
                changes.push((*id, Admin::Disabled));
            }
        }
        self.admin_changed(changes, "at the end of its drain");
    }

    /// Decides again after the operator's word on some paths changed (`changes`), and says
    /// so, `how`.
    fn admin_changed(&mut self, changes: Vec<(u32, Admin)>, how: &str) {
        if changes.is_empty() {
            return;
        }
        let drains: Vec<(String, String, Admin)> = changes
            .into_iter()
            .filter_map(|(id, admin)| {
                let (t, p) = self.model.path_name(id)?;
                Some((t.to_string(), p.to_string(), admin))
            })
            .collect();
        {
            let ids = self.model.decide_all();
            let desired = self.model.tables();
            if let Err(e) = self.write_tables(desired) {
                error!(
                    "writing the maps after an operator change: {e:#}; retrying at the next flush"
                );
                self.dirty = true;
            }
            for (target, path, admin) in &drains {
                let verb = match admin {
                    Admin::Enabled => "enabled".to_string(),
                    Admin::Disabled => "disabled".to_string(),
                    Admin::Draining { until } => format!(
                        "draining until {} (no new flows; established TCP connections stay)",
                        humantime::format_rfc3339_seconds(*until)
                    ),
                };
                let message = format!("{target}/{path} {verb} {how}");
                let mut vars = super::hooks::base("drain", target);
                vars.extend([
                    ("LB_PATH", path.clone()),
                    (
                        "LB_ADMIN",
                        match admin {
                            Admin::Enabled => "enabled",
                            Admin::Disabled => "disabled",
                            Admin::Draining { .. } => "draining",
                        }
                        .to_string(),
                    ),
                    ("LB_REASON", how.to_string()),
                ]);
                if let Admin::Draining { until } = admin {
                    vars.push((
                        "LB_DRAIN_UNTIL",
                        humantime::format_rfc3339_seconds(*until).to_string(),
                    ));
                }
                self.notifiers.notify(target, vars);
                self.log.emit(
                    Some(tracing::Level::INFO),
                    "drain",
                    Subject {
                        target: Some(target),
                        path: Some(path),
                        ..Default::default()
                    },
                    message,
                );
            }
            for id in ids {
                if let Some(d) = self.model.decisions.get(&id) {
                    let message = format!(
                        "{}: new flows → {} (operator change)",
                        self.model.target_label(id),
                        self.describe(d)
                    );
                    let target = self
                        .model
                        .ids
                        .targets
                        .key_of(id)
                        .map(|(n, _)| n.to_string());
                    self.log.emit(
                        Some(tracing::Level::INFO),
                        "decision",
                        Subject {
                            target: target.as_deref(),
                            ..Default::default()
                        },
                        message,
                    );
                }
            }
            self.publish();
        }
    }

    /// Writes what changed without a decision (probe RTTs) once a second, and follows the
    /// interfaces' ability to take redirects.
    /// Flags each up path whose probes succeed while a client's TCP handshake toward it has
    /// gone unanswered for `datapath_suspect` (from the datapath's `LB_PATH_SEEN`), and clears
    /// the flag at the next answer; a change is logged and reaches status and metrics.
    pub(super) fn check_datapath(&mut self) {
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
            let (level, message) = if suspect {
                let m = format!(
                    "{target}/{path}: datapath suspect: probes succeed, but a client's TCP \
                     handshake toward it has gone unanswered for {:?} (datapath_suspect_ms {})",
                    waited.unwrap_or_default(),
                    window.as_millis()
                );
                (tracing::Level::WARN, m)
            } else {
                let m = format!("{target}/{path}: datapath suspect cleared");
                (tracing::Level::INFO, m)
            };
            self.log.emit(
                Some(level),
                "suspect",
                Subject {
                    target: Some(&target),
                    path: Some(&path),
                    ..Default::default()
                },
                message,
            );
            state.suspect = suspect;
            self.dirty = true;
        }
    }

    pub(super) fn flush(&mut self) {
        // A veth's peer may switch GRO or XDP on and off at any time: follow it.
        let ifaces: Vec<String> = self.redirects.keys().cloned().collect();
        if let Err(e) = self.sync_redirect_targets(ifaces) {
            error!("{e:#}");
        }
        self.sync_arrivals();
        self.end_drains();
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
    pub(super) fn start_sweep(&mut self) -> Option<Sweep> {
        let flows = self.model.config.flows;
        let ended = self
            .model
            .end_transitions(SystemTime::now(), flows.tcp_idle);
        for id in ended {
            let name = self.model.target_label(id);
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
            let swept = crate::datapath::exceptions::sweep_all(
                &mut maps,
                ids.values(),
                |vip| vips.get(&vip).copied(),
                |tid, key, value| model.rule_path(tid, key) == Some(value.path),
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
    pub(super) fn finish_sweep(&mut self, done: <Sweep as Future>::Output) {
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
            let same =
                ids.key_of(id).is_some() && ids.key_of(id) == self.model.ids.targets.key_of(id);
            if same && self.model.exc_clear.get(&id) != Some(&clear) {
                self.model.exc_clear.insert(id, clear);
                self.dirty = true;
            }
        }
    }

    /// Hands the metrics thread a fresh snapshot (it never waits for the daemon, nor the
    /// daemon for it).
    pub(super) fn publish(&mut self) {
        self.snap.model = Some(Arc::new(self.model.clone()));
        self.snap.hooks = *self
            .notifiers
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.announce();
        self.shared.store(Arc::new(self.snap.clone()));
    }

    /// Ends the settling of the targets that came back (see `Model::settle`): their addresses
    /// are announced, and a transition their paths' order of rising made is dropped.
    pub(super) fn settle(&mut self) {
        if self.model.settling.is_empty() {
            return;
        }
        let before: Vec<u32> = self.model.settling.keys().copied().collect();
        let dropped = self.model.settle(SystemTime::now());
        if !dropped.is_empty() {
            let desired = self.model.tables();
            if let Err(e) = self.write_tables(desired) {
                error!(
                    "writing the maps after a target settled: {e:#}; retrying at the next flush"
                );
                self.dirty = true;
            }
        }
        for tid in before
            .iter()
            .filter(|t| !self.model.settling.contains_key(t))
        {
            let name = self.model.target_label(*tid);
            let transition = if dropped.contains(tid) {
                " (the transition of its paths' rising dropped: no client came here under it)"
            } else {
                ""
            };
            let paths = if self.model.all_paths_up(*tid) {
                "every path up"
            } else {
                "not every path up within announce.settle_max_s"
            };
            let message = format!(
                "{name}: settled after coming back ({paths}); its VIPs may be announced{transition}"
            );
            self.log.emit(
                Some(tracing::Level::INFO),
                "settled",
                Default::default(),
                message,
            );
        }
        self.publish();
    }

    /// Hands the announcer the addresses this edge can serve now (see
    /// [`crate::control::announce`]); it acts only on a change.
    pub(super) fn announce(&mut self) {
        let clients = &self.model.config.interfaces.clients;
        let attached = clients.iter().all(|iface| {
            self.attached
                .iter()
                .any(|(role, _, i)| *role == Role::Ingress && i == iface)
        });
        let addresses = crate::control::announce::addresses(&self.model, attached);
        self.snap.announced = self
            .model
            .config
            .announce
            .map(|_| addresses.iter().map(|(a, r)| (*a, r.is_ok())).collect());
        self.announcer.want(crate::announce::Wanted {
            announce: self.model.config.announce,
            addresses: addresses
                .into_iter()
                .filter_map(|(a, r)| r.is_ok().then_some(a))
                .collect(),
        });
    }
}
