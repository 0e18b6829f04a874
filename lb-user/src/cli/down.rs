//! `lb down`: remove everything.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lb_user::datapath::lock::{self, PinLock, Role};

use super::PinArgs;

/// Stop the daemon if it runs, withdraw the VIPs' host routes (`announce`), detach the programs
/// and remove the pinned maps. Traffic to the VIPs is no longer translated afterwards.
#[derive(clap::Args)]
pub struct Options {}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options {} = opts;
    let dir = pin.dir();
    let lock = match PinLock::acquire(&pin.pin_dir, Role::Command, Duration::from_secs(5)) {
        Ok(lock) => lock,
        Err(lock::Error::HeldByDaemon { holder, .. }) => {
            let pid = holder.pid;
            // SAFETY: kill has no memory-safety preconditions.
            if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .context(format!("stopping the daemon (pid {pid})"));
            }
            // It lets go of the lock when it has stopped.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match PinLock::acquire(&pin.pin_dir, Role::Command, Duration::from_secs(5)) {
                    Ok(lock) => break lock,
                    Err(lock::Error::HeldByDaemon { .. }) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(lock::Error::HeldByDaemon { .. }) => {
                        bail!("the daemon (pid {pid}) did not stop within 10 s")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    // The routes first: nothing may be announced that nothing serves.
    let meta = dir.open().ok().and_then(|maps| maps.meta().ok());
    if let Some(meta) = meta
        && meta.announce_protocol != 0
    {
        let announce = lb_user::config::Announce {
            table: meta.announce_table,
            protocol: meta.announce_protocol,
        };
        let gone = lb_user::announce::remove_all_blocking(announce).with_context(|| {
            format!(
                "withdrawing the VIPs' host routes from table {} (nothing was removed)",
                announce.table
            )
        })?;
        for vip in gone {
            println!("withdrew {vip} (table {})", announce.table);
        }
    }
    dir.remove()
        .with_context(|| format!("removing {}", pin.pin_dir.display()))?;
    lock.remove();
    println!("removed everything pinned in {}", pin.pin_dir.display());
    Ok(())
}
