//! The command line: clap derive, one file per subcommand. The read commands open the pinned
//! maps directly, so they work while the daemon is down.

mod check;
mod down;
mod events;
mod flows;
mod generate;
mod guest;
mod path;
mod reload;
mod run;
mod stats;
mod status;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_user::{datapath::PinDir, datapath::maps::Maps};

/// XDP edge load balancer: one stable VIP for VMs reachable over redundant network paths.
///
/// Exit status: 0 done; 1 failed, with the reason on stderr (a rejected reload, a `guest check`
/// that found problems, no daemon, no pinned state, missing privileges); 2 a usage error.
#[derive(Parser)]
#[command(name = "lb", version = VERSION.as_str())]
struct Cli {
    #[command(flatten)]
    pin: PinArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Run(run::Options),
    Check(check::Options),
    Status(status::Options),
    Stats(stats::Options),
    Flows(flows::Options),
    Path(path::Options),
    Reload(reload::Options),
    Events(events::Options),
    Down(down::Options),
    Guest(guest::Options),
    #[command(hide = true)]
    Generate(generate::Options),
}

/// `lb --version`: the package version, the revision it was built from (`cargo xtask` builds
/// pass `LB_GIT_REV`), and the datapath layout its pins must have.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (git {}, datapath layout {})",
        env!("CARGO_PKG_VERSION"),
        option_env!("LB_GIT_REV").unwrap_or("unknown"),
        lb_common::maps::LAYOUT_VERSION
    )
});

/// Where an instance keeps its pinned state.
#[derive(clap::Args, Clone, Debug)]
pub struct PinArgs {
    /// Pin directory of the instance (on a bpffs; one per instance).
    #[arg(
        long,
        global = true,
        env = "LB_PIN_DIR",
        default_value = "/sys/fs/bpf/lb",
        value_name = "DIR"
    )]
    pub pin_dir: PathBuf,
}

impl PinArgs {
    pub fn dir(&self) -> PinDir {
        PinDir::new(&self.pin_dir)
    }

    /// The pinned maps (the command checked its privileges first, in [`main`]).
    pub fn open(&self) -> anyhow::Result<Maps> {
        Ok(self.dir().open()?)
    }
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cli { pin, command } = cli;
    // Before anything is touched: a clear message instead of an EPERM halfway through.
    use lb_user::daemon::{Cap, require};
    let needs: Option<(&str, &str, &[Cap])> = match &command {
        Command::Run(_) => Some((
            "run",
            "load and attach the programs and keep their maps",
            &[Cap::Bpf, Cap::NetAdmin],
        )),
        Command::Check(_) | Command::Generate(_) => None,
        Command::Status(_) => Some(("status", "read the pinned maps", &[Cap::Bpf])),
        Command::Stats(_) => Some(("stats", "read the pinned maps", &[Cap::Bpf])),
        Command::Flows(_) => Some(("flows", "read the pinned maps", &[Cap::Bpf])),
        Command::Path(_) => Some(("path", "write the pinned maps", &[Cap::Bpf])),
        // The control socket is root's (and the daemon's user's): its own error says so.
        Command::Reload(_) | Command::Events(_) => None,
        Command::Down(_) => Some((
            "down",
            "detach the programs and remove the pinned state",
            &[Cap::Bpf, Cap::NetAdmin],
        )),
        Command::Guest(o) if o.loads_programs() => Some((
            "guest run",
            "load and attach the agent's programs",
            &[Cap::Bpf, Cap::NetAdmin],
        )),
        // Prints a plan, or reads addresses, rules and routes: nothing privileged.
        Command::Guest(_) => None,
    };
    if let Some((name, what, caps)) = needs
        && let Err(e) = require(name, what, caps)
    {
        eprintln!("lb: {e}");
        return ExitCode::FAILURE;
    }
    let result = match command {
        Command::Run(o) => run::run(o, pin),
        Command::Check(o) => check::run(o),
        Command::Status(o) => status::run(o, pin),
        Command::Stats(o) => stats::run(o, pin),
        Command::Flows(o) => flows::run(o, pin),
        Command::Path(o) => path::run(o, pin),
        Command::Reload(o) => reload::run(o, pin),
        Command::Events(o) => events::run(o, pin),
        Command::Down(o) => down::run(o, pin),
        Command::Generate(o) => generate::run(o),
        Command::Guest(o) => guest::run(o),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
