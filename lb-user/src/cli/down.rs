//! `lb down`: remove everything.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lb_user::view;

use super::PinArgs;

/// Stop the daemon if it runs, detach the programs and remove the pinned maps. Traffic to the
/// VIPs is no longer translated afterwards.
#[derive(clap::Args)]
pub struct Options {}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options {} = opts;
    let dir = pin.dir();
    if let Ok(maps) = dir.open() {
        let d = view::daemon(&maps)?;
        if let (true, Some(pid)) = (d.running, d.pid) {
            // SAFETY: kill has no memory-safety preconditions.
            if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .context(format!("stopping the daemon (pid {pid})"));
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                if Instant::now() > deadline {
                    bail!("the daemon (pid {pid}) did not stop within 10 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    dir.remove()
        .with_context(|| format!("removing {}", pin.pin_dir.display()))?;
    println!("removed everything pinned in {}", pin.pin_dir.display());
    Ok(())
}
