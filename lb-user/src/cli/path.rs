//! `lb path disable|enable`: administrative drain of a path.

use anyhow::{Context as _, anyhow};
use lb_user::{tables::apply, view};

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
    let mut maps = pin.open()?;
    let (mut model, tables) = view::model(&maps)?;
    let id = *model
        .ids
        .paths
        .get(&(target.clone(), path.clone()))
        .ok_or_else(|| anyhow!("no path {path} in target {target} (see `lb status`)"))?;
    maps.set_admin_disabled(id, disabled)
        .context("writing the drain state")?;
    let daemon = view::daemon(&maps)?;
    let verb = if disabled { "disabled" } else { "enabled" };
    if let (true, Some(pid)) = (daemon.running, daemon.pid) {
        // The daemon owns the decisions while it runs: tell it to pick the change up.
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(pid as i32, libc::SIGUSR1) } != 0 {
            return Err(std::io::Error::last_os_error())
                .context(format!("signalling the daemon (pid {pid})"));
        }
        println!("{target}/{path} {verb}; the daemon (pid {pid}) applies it");
        return Ok(());
    }
    // No daemon: decide here, with the same policy code, from what the maps record.
    if let Some(s) = model.paths.get_mut(&id) {
        s.disabled = disabled;
        s.changed = std::time::SystemTime::now();
    }
    model.decide(&target);
    apply(&mut maps, &tables, &model.tables()).context("writing the maps")?;
    println!("{target}/{path} {verb} (no daemon running: applied directly)");
    Ok(())
}
