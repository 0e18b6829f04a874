//! `lb path disable|enable`: administrative drain of a path.

use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use lb_user::{
    datapath::lock::{self, PinLock, Role},
    datapath::tables::apply,
    view,
};

use super::PinArgs;

/// Drain a path (it takes no new flows and its flows move, as if down) or bring it back. The
/// state is pinned: it survives a daemon restart.
#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Drain the path.
    Disable { target: String, path: String },
    /// Undo a drain.
    Enable { target: String, path: String },
}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options { action } = opts;
    let (disabled, target, path) = match action {
        Action::Disable { target, path } => (true, target, path),
        Action::Enable { target, path } => (false, target, path),
    };
    let verb = if disabled { "disabled" } else { "enabled" };
    let mut maps = pin.open()?;
    // Who decides is who holds the pin directory's lock: the daemon, or this command when no
    // daemon runs (a daemon starting meanwhile waits for it, then adopts the change).
    let deadline = Instant::now() + WAIT;
    loop {
        let lock = match PinLock::acquire(&pin.pin_dir, Role::Command, Duration::ZERO) {
            Ok(lock) => lock,
            Err(lock::Error::HeldByDaemon { holder, .. }) if holder.pid != 0 => {
                let id = path_id(&maps, &target, &path)?;
                maps.set_admin_disabled(id, disabled)
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
        maps.set_admin_disabled(id, disabled)
            .context("writing the drain state")?;
        if let Some(s) = model.paths.get_mut(&id) {
            s.disabled = disabled;
            s.changed = std::time::SystemTime::now();
        }
        model.decide(&target);
        apply(&mut maps, &tables, &model.tables()).context("writing the maps")?;
        drop(lock);
        println!("{target}/{path} {verb} (no daemon running: applied directly)");
        return Ok(());
    }
}

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
