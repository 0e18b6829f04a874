//! `lb run`: the daemon.

use std::{net::SocketAddr, path::PathBuf};

use lb_user::{
    daemon::logs::LogFormat,
    datapath::{AttachMode, HookChoice},
};

use super::PinArgs;

/// Run the daemon: load (or adopt) the datapath, attach it, probe the paths, keep the maps
/// current. SIGHUP reloads the configuration; SIGTERM/SIGINT stop the daemon and leave the
/// datapath forwarding with the last decisions.
#[derive(clap::Args)]
pub struct Options {
    /// Configuration file.
    #[arg(long, default_value = "/etc/lb/lb.json", value_name = "FILE")]
    config: PathBuf,
    /// Where the programs run: auto picks per interface (XDP where the driver runs it natively
    /// and senders are not local, TC on veths and everywhere else); xdp or tc for every
    /// interface. The choice and its reason are logged; `lb status` shows each interface's.
    #[arg(long, value_enum, default_value_t = HookChoice::Auto)]
    hook: HookChoice,
    /// With the XDP hook: native (auto, native). Generic (skb) is refused, saying why.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    xdp_mode: AttachMode,
    /// Serve Prometheus metrics on this port of 127.0.0.1 (`9109`), or on an address given
    /// with it (`0.0.0.0:9109`).
    #[arg(long, value_name = "[ADDR:]PORT", value_parser = lb_user::metrics::parse_listen)]
    metrics: Option<SocketAddr>,
    /// Discard pinned state of another layout (its flows are lost) instead of refusing to start.
    #[arg(long)]
    replace: bool,
    /// Remove the programs and pinned maps on exit (default: leave the datapath forwarding).
    #[arg(long)]
    detach_on_exit: bool,
    /// How to log: auto (journald when stderr is the journal, else human), human, json, or
    /// journald. `RUST_LOG` filters (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options {
        config,
        hook,
        xdp_mode,
        metrics,
        replace,
        detach_on_exit,
        log_format,
    } = opts;
    lb_user::daemon::logs::init(log_format)?;
    let opts = lb_user::daemon::Options {
        config,
        pin_dir: pin.pin_dir,
        hook,
        xdp_mode,
        metrics,
        replace,
        detach_on_exit,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use anyhow::Context as _;
        use tokio::signal::unix::{SignalKind, signal};
        // Installed now, not when the daemon's loop first waits on them: a SIGTERM during
        // start-up lets the start-up finish, then stops the daemon cleanly.
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => log::info!("SIGTERM"),
                _ = int.recv() => log::info!("SIGINT"),
            }
        };
        lb_user::daemon::run(opts, shutdown).await
    })
}
