//! `lb reload`: ask the running daemon to re-read its configuration.

use anyhow::{Context as _, bail};
use lb_user::view;

use super::PinArgs;

/// Make the running daemon re-read and apply its configuration file (SIGHUP). An invalid file
/// is rejected by the daemon, which keeps its running state (see its log).
#[derive(clap::Args)]
pub struct Options {}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options {} = opts;
    let d = view::daemon(&pin.pin_dir, &pin.open()?)?;
    let (true, Some(pid)) = (d.running, d.pid) else {
        bail!("no daemon is running for {}", pin.pin_dir.display());
    };
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context(format!("signalling the daemon (pid {pid})"));
    }
    println!("reload requested (daemon pid {pid}); its log says whether the file was accepted");
    Ok(())
}
