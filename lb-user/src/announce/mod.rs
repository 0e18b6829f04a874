//! Announcements: the host routes a routing daemon exports over BGP, one per servable VIP
//! address (the rule: `control::announce`), kept in a routing table of lb's own.
//!
//! [`Announcer`] is a task on the daemon's runtime: the daemon hands it the addresses it wants
//! announced whenever they may have changed, and the task brings the table there, then checks
//! it again every [`RESYNC`] (a route someone removed comes back; one left by an earlier run
//! goes). It never blocks the daemon's loop, and a failed netlink call is retried.
//!
//! A daemon that stops leaves the routes where they are: the datapath keeps forwarding, so the
//! edge still serves. `lb down` and `--detach-on-exit` remove them with the datapath.

use std::{collections::BTreeSet, net::IpAddr, time::Duration};

use log::{info, warn};
use tokio::{sync::watch, task::JoinHandle};

use crate::config::Announce;

pub mod routes;

pub use routes::{Error, Routes};

/// How often the table is checked against what is wanted when nothing changes.
pub const RESYNC: Duration = Duration::from_secs(10);
/// How long a failed change first waits before it is tried again; each failure in a row
/// doubles the wait, up to [`RESYNC`].
const RETRY: Duration = Duration::from_secs(1);

/// What the daemon wants the table to hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// Where the routes go (`None`: announcements are off; none are kept).
    pub announce: Option<Announce>,
    /// Of both families: `/32` routes for IPv4 addresses, `/128` for IPv6 ones.
    pub addresses: BTreeSet<IpAddr>,
}

/// The task keeping the routes; see the module's documentation.
pub struct Announcer {
    tx: watch::Sender<Option<Wanted>>,
    task: JoinHandle<()>,
}

impl Announcer {
    /// Starts the task on the current runtime. `recorded`: where an earlier run kept its
    /// routes (from the pinned state): when the wanted table or protocol differ, the routes
    /// there are removed. Nothing is changed before the first [`Announcer::want`].
    pub fn start(recorded: Option<Announce>) -> Result<Announcer, Error> {
        let routes = Routes::connect()?;
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(keep(routes, recorded, rx));
        Ok(Announcer { tx, task })
    }

    /// Wants `wanted`; the task acts on it at once (only on a change).
    pub fn want(&self, wanted: Wanted) {
        self.tx.send_if_modified(|w| {
            let changed = w.as_ref() != Some(&wanted);
            *w = Some(wanted);
            changed
        });
    }

    /// Stops the task, leaving the routes as they are.
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn keep(routes: Routes, recorded: Option<Announce>, mut rx: watch::Receiver<Option<Wanted>>) {
    let mut applied = recorded;
    let mut retry = RETRY;
    loop {
        let wanted = rx.borrow_and_update().clone();
        let next = match wanted {
            Some(wanted) => match reconcile(&routes, &mut applied, &wanted).await {
                Ok(()) => {
                    if retry > RETRY {
                        info!("announcements: the routes are as wanted again");
                    }
                    retry = RETRY;
                    RESYNC
                }
                Err(e) => {
                    warn!("announcements: {}; trying again in {retry:?}", chain(&e));
                    let wait = retry;
                    retry = (retry * 2).min(RESYNC);
                    wait
                }
            },
            None => RESYNC,
        };
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(next) => {}
        }
    }
}

/// `e` and its causes, `: `-separated (the netlink error names what the kernel refused).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Brings the routes to `wanted`: the wanted table first, then the table of `applied` when
/// the settings changed (so the routing daemon sees the new routes before the old go).
async fn reconcile(
    routes: &Routes,
    applied: &mut Option<Announce>,
    wanted: &Wanted,
) -> Result<(), Error> {
    if let Some(a) = wanted.announce {
        let have = routes.list(a).await?;
        for vip in wanted.addresses.difference(&have) {
            routes.add(a, *vip).await?;
            info!(
                "announcing {vip}: host route in table {} (protocol {})",
                a.table, a.protocol
            );
        }
        for vip in have.difference(&wanted.addresses) {
            routes.remove(a, *vip).await?;
            info!("withdrew {vip}: host route removed from table {}", a.table);
        }
    }
    if let Some(old) = *applied
        && Some(old) != wanted.announce
    {
        for vip in routes.remove_all(old).await? {
            info!(
                "withdrew {vip} from table {} (protocol {}): announcements moved or are off",
                old.table, old.protocol
            );
        }
    }
    *applied = wanted.announce;
    Ok(())
}

/// The addresses `announce`'s table holds routes for, from a command (no runtime of its own).
pub fn list_blocking(announce: Announce) -> Result<BTreeSet<IpAddr>, Error> {
    block_on(async move { Routes::connect()?.list(announce).await })
}

/// Removes every route of `announce`'s table and protocol, from a command; returns them.
pub fn remove_all_blocking(announce: Announce) -> Result<BTreeSet<IpAddr>, Error> {
    block_on(async move { Routes::connect()?.remove_all(announce).await })
}

fn block_on<T>(f: impl std::future::Future<Output = Result<T, Error>>) -> Result<T, Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(Error::Socket)?
        .block_on(f)
}
