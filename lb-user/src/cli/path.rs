//! `lb path drain|disable|enable`: an operator's say over a path.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, anyhow};
use lb_user::{
    datapath::lock::{self, PinLock, Role},
    datapath::maps::Admin,
    datapath::tables::apply,
    view,
};

use super::PinArgs;

/// Take a path out of service gracefully (drain), at once (disable), or bring it back
/// (enable). The state is pinned: it survives a daemon restart.
#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Graceful: the path takes no new flows, but established TCP connections keep it until
    /// they end or the timeout passes; then the path is disabled. UDP flows move at once
    /// (there is no handshake to tell old from new).
    Drain {
        target: String,
        path: String,
        /// How long established connections may keep the path (e.g. `30s`, `10m`).
        #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// The hard switch: the path takes no new flows and its flows move (as if down).
    Disable { target: String, path: String },
    /// Undo a drain or a disable.
    Enable { target: String, path: String },
}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options { action } = opts;
    let (admin, target, path) = match action {
        Action::Drain {
            target,
            path,
            timeout,
        } => {
            let until = SystemTime::now()
                .checked_add(timeout)
                .filter(|_| timeout <= MAX_DRAIN)
                .ok_or_else(|| {
                    anyhow!(
                        "--timeout {timeout:?}: at most {}",
                        humantime::format_duration(MAX_DRAIN)
                    )
                })?;
            (Admin::Draining { until }, target, path)
        }
        Action::Disable { target, path } => (Admin::Disabled, target, path),
        Action::Enable { target, path } => (Admin::Enabled, target, path),
    };
    let verb = match admin {
        Admin::Draining { until } => format!(
            "draining until {} (then disabled)",
            humantime::format_rfc3339_seconds(until)
        ),
        Admin::Disabled => "disabled".into(),
        Admin::Enabled => "enabled".into(),
    };
    let mut maps = pin.open()?;
    // Who decides is who holds the pin directory's lock: the daemon, or this command when no
    // daemon runs (a daemon starting meanwhile waits for it, then adopts the change).
    let deadline = Instant::now() + WAIT;
    loop {
        let lock = match PinLock::acquire(&pin.pin_dir, Role::Command, Duration::ZERO) {
            Ok(lock) => lock,
            Err(lock::Error::HeldByDaemon { holder, .. }) if holder.pid != 0 => {
                let id = path_id(&maps, &target, &path)?;
                maps.set_admin(id, admin)
                    .context("writing the drain state")?;
                // The daemon owns the decisions while it runs: tell it to pick the change up.
                // SAFETY: kill has no memory-safety preconditions.
                if unsafe { libc::kill(holder.pid as i32, libc::SIGUSR1) } == 0 {
                    println!(
                        "{target}/{path} {verb}; the daemon (pid {}) applies it",
                        holder.pid
                    );
                    return Ok(());
                }
                // It stopped between the two steps: decide here (the drain state is written).
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(lock::Error::HeldByCommand { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // No daemon: decide here, with the same policy code, from what the maps record.
        let (mut model, tables) = view::model(&maps)?;
        let id = path_id(&maps, &target, &path)?;
        maps.set_admin(id, admin)
            .context("writing the drain state")?;
        if let Some(s) = model.paths.get_mut(&id) {
            s.apply_admin(admin);
            s.changed = SystemTime::now();
        }
        model.decide(&target);
        apply(&mut maps, &tables, &model.tables()).context("writing the maps")?;
        drop(lock);
        println!("{target}/{path} {verb} (no daemon running: applied directly)");
        if matches!(admin, Admin::Draining { .. }) {
            println!(
                "note: a drain ends (the path is disabled) by a running daemon: with none, the \
                 path stays draining until one runs"
            );
        }
        return Ok(());
    }
}

/// The longest drain taken: a day.
const MAX_DRAIN: Duration = Duration::from_secs(86_400);

/// How long a command waits for another command that holds the pin directory.
const WAIT: Duration = Duration::from_secs(5);

fn path_id(maps: &lb_user::datapath::maps::Maps, target: &str, path: &str) -> anyhow::Result<u32> {
    let (model, _) = view::model(maps)?;
    model
        .ids
        .paths
        .get(&(target.to_owned(), path.to_owned()))
        .copied()
        .ok_or_else(|| anyhow!("no path {path} in target {target} (see `lb status`)"))
}
