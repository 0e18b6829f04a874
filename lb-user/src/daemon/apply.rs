//! Applying a model: the tables, the probe tasks, the hooks and the redirect targets; and reloads.

use std::{
    collections::BTreeMap,
    time::{Instant, SystemTime},
};

use anyhow::{Context as _, anyhow};
use lb_common::maps::{ControlMeta, LAYOUT};
use log::{error, info, warn};
use tokio::sync::mpsc;

use crate::{
    config::HookSetting,
    control::{
        health::HealthTracker,
        model::Model,
        monitor::{Cause, Schedule, monitor},
    },
    daemon::{Daemon, ProbeTask, load_config},
    datapath::{
        Hook, HookChoice, RedirectTarget, Role, choose_hook, sync_redirect_target,
        tables::{Tables, apply},
    },
    probe::{PathProbe, ProbeSpec},
};

impl Daemon {
    /// Applies `next` (attachments, maps, probes), or changes nothing and fails.
    pub(super) fn switch_to(&mut self, next: Model) -> anyhow::Result<()> {
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
                .set_admin(id, crate::datapath::maps::Admin::Enabled)
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
        self.record_hooks(&new, &next.config.vips)?;
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
        self.notifiers.configure(
            next.config
                .targets
                .iter()
                .map(|t| (t.name.as_str(), t.notify.as_ref())),
            &tokio::runtime::Handle::current(),
        );
        self.model = next;
        self.publish();
        Ok(())
    }

    /// Starts probes for new paths or changed probe settings, stops those of removed paths.
    pub(super) fn restart_probes(&mut self, next: &Model) {
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
            let path_probe =
                PathProbe::new(self.prober.clone(), spec.clone(), interval, configured);
            let probe = move |cause: Cause| path_probe.probe(cause);
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            let (trigger_tx, trigger_rx) = mpsc::channel(1);
            self.triggers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, trigger_tx);
            let handle = self.probe_thread.handle().spawn(monitor(
                Schedule::for_probe(id, epoch, interval, configured, fall),
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

    /// Re-reads the configuration file and applies it (`dry_run`: only says what would
    /// change). A file that is not taken changes nothing; the reply says why.
    pub(super) fn reload(&mut self, dry_run: bool) -> crate::rpc::ReloadReply {
        let file = self.opts.config.display().to_string();
        if !dry_run {
            info!("reloading {file}");
            super::notify::reloading();
        }
        let mut reply = crate::rpc::ReloadReply {
            ok: false,
            error: None,
            dry_run,
            changes: Vec::new(),
            map_writes: 0,
            notes: Vec::new(),
        };
        let result = load_config(&self.opts.config).and_then(|config| {
            reply.notes = config.warnings();
            let size = config
                .flow_table_size
                .unwrap_or(lb_common::maps::FLOW_TABLE_SIZE);
            if let Ok(pinned) = self.dp.maps.flow_capacity()
                && pinned != size
            {
                let note = format!(
                    "flow_table_size {size} is not applied by a reload: the exception table keeps its size {pinned} (a map's size is fixed when it is created; restart with --replace to apply it)"
                );
                if !dry_run {
                    warn!("{note}");
                }
                reply.notes.push(note);
            }
            let next = Model::new(config, &self.model)
                .ok_or_else(|| anyhow!("the configuration does not fit the maps"))?;
            // The same comparison and the same table plan the switch below applies.
            reply.changes = crate::config::diff::diff(&self.model.config, &next.config);
            reply.map_writes = crate::datapath::tables::Plan::new(&self.current, &next.tables())
                .entries();
            if dry_run {
                return Ok(());
            }
            self.switch_to(next)
        });
        match result {
            Ok(()) => reply.ok = true,
            Err(e) => reply.error = Some(format!("{e:#}")),
        }
        if dry_run {
            return reply;
        }
        match &reply.error {
            None => {
                self.snap.reloads += 1;
                // Where the routes are kept may have changed: `lb status` and `lb down` read it.
                if let Err(e) = self.write_meta(std::process::id()) {
                    error!("{e:#}");
                }
                for c in &reply.changes {
                    info!("reload: {c}");
                }
                self.log.emit(
                    Some(tracing::Level::INFO),
                    "reload",
                    Default::default(),
                    format!(
                        "{file} applied: {} changes, {} map writes",
                        reply.changes.len(),
                        reply.map_writes
                    ),
                );
            }
            Some(e) => {
                self.snap.reload_failures += 1;
                self.log.emit(
                    Some(tracing::Level::ERROR),
                    "reload_rejected",
                    Default::default(),
                    format!("reload of {file} rejected, the running configuration stays: {e}"),
                );
            }
        }
        self.publish();
        super::notify::ready(&self.summary());
        reply
    }

    /// One line on what the daemon serves, for systemd's status (`systemctl status`).
    pub(super) fn summary(&self) -> String {
        let m = &self.model;
        let up = m
            .paths
            .values()
            .filter(|s| s.health == Some(crate::control::health::Health::Up) && !s.disabled)
            .count();
        let dark: Vec<String> = m
            .decisions
            .iter()
            .filter(|(_, d)| **d == crate::control::policy::Decision::None)
            .map(|(id, _)| m.target_label(*id))
            .collect();
        let mut line = format!(
            "{} VIPs, {} targets, {up} of {} paths up",
            m.config.vips.len(),
            m.config.targets.len(),
            m.paths.len()
        );
        if !dark.is_empty() {
            line.push_str(&format!("; no usable path: {}", dark.join(", ")));
        }
        line
    }

    /// Every configured interface is a redirect target when frames can be redirected into it
    /// (attached now or before), and kept out when they would be dropped; a change is logged.
    /// Records each interface's hook, mode and reason in `LB_IFACES` for `lb status`, and
    /// warns about interfaces the kernel does not forward on, for each family of `vips` (the
    /// datapath then hands their VIP traffic to the kernel untranslated, which drops it).
    pub(super) fn record_hooks(
        &mut self,
        new: &[crate::datapath::Attached],
        vips: &[crate::config::Vip],
    ) -> anyhow::Result<()> {
        // Each family's forwarding as far as VIPs of that family are configured (an edge with
        // no VIPs yet is warned about IPv4, as before IPv6 VIPs existed).
        let v6 = vips.iter().any(|v| v.address.is_ipv6());
        let v4 = vips.iter().any(|v| v.address.is_ipv4()) || !v6;
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
            if fresh.is_none() {
                continue;
            }
            if v4 && crate::datapath::netdev::ipv4_forwarding(iface) == Some(false) {
                warn!(
                    "{iface}: IPv4 forwarding is off, so the datapath hands its VIP traffic to \
                     the kernel untranslated, which does not forward it (counted \
                     pass_forwarding_off); `sysctl -w net.ipv4.conf.{iface}.forwarding=1`"
                );
            }
            if v6 && crate::datapath::netdev::ipv6_forwarding(iface) == Some(false) {
                warn!(
                    "{iface}: IPv6 forwarding is off, so the datapath hands its IPv6 VIP \
                     traffic to the kernel untranslated, which does not forward it (counted \
                     pass_forwarding_off); `sysctl -w net.ipv6.conf.all.forwarding=1` (or \
                     net.ipv6.conf.{iface}.forwarding)"
                );
            }
        }
        Ok(())
    }

    /// Writes, for every path, the interface its replies must arrive on: the path's
    /// `interface` when configured, else the one the kernel routes its address through. The
    /// return program drops replies from the path's address that arrive elsewhere. A path
    /// without a route gets 0 (any), with one log line: its replies could come from anywhere.
    pub(super) fn sync_arrivals(&mut self) {
        let mut want = BTreeMap::new();
        for t in &self.model.config.targets {
            for p in &t.paths {
                let Some(&id) = self.model.ids.paths.get(&(t.name.clone(), p.name.clone())) else {
                    continue;
                };
                let ifindex = match &p.interface {
                    Some(name) => crate::ifindex(name),
                    None => crate::datapath::netdev::route_oif(p.address).ok().flatten(),
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

    pub(super) fn sync_redirect_targets(
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

    /// Writes `desired` into the maps (planned, then committed; undone on a failure) and keeps
    /// [`Daemon::current`] what the maps hold either way.
    pub(super) fn write_tables(
        &mut self,
        desired: Tables,
    ) -> Result<usize, Box<crate::datapath::tables::ApplyError>> {
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

    pub(super) fn write_meta(&mut self, pid: u32) -> anyhow::Result<()> {
        let announce = self.model.config.announce;
        let applied_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        self.dp
            .maps
            .set_meta(ControlMeta {
                layout: LAYOUT,
                daemon_pid: pid,
                announce_table: announce.map_or(0, |a| a.table),
                applied_ns,
                announce_protocol: announce.map_or(0, |a| a.protocol),
                _pad: [0; 7],
            })
            .context("writing the daemon's pid")?;
        Ok(())
    }
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
