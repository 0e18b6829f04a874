//! The command line: clap derive, one file per subcommand. The read commands open the pinned
//! maps directly, so they work while the daemon is down.

mod check;
mod down;
mod flows;
mod path;
mod reload;
mod run;
mod stats;
mod status;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_user::{dataplane::PinDir, maps::Maps};

/// XDP edge load balancer: one stable VIP for VMs reachable over redundant network paths.
#[derive(Parser)]
#[command(name = "lb", version)]
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
    Down(down::Options),
}

/// Where an instance keeps its pinned state.
#[derive(clap::Args, Clone, Debug)]
pub struct PinArgs {
    /// Pin directory of the instance (on a bpffs; one per instance).
    #[arg(
        long,
        global = true,
        default_value = "/sys/fs/bpf/lb",
        value_name = "DIR"
    )]
    pub pin_dir: PathBuf,
}

impl PinArgs {
    pub fn dir(&self) -> PinDir {
        PinDir::new(&self.pin_dir)
    }

    /// The pinned maps, after checking for root (a clear message instead of EPERM).
    pub fn open(&self) -> anyhow::Result<Maps> {
        lb_user::daemon::ensure_root()?;
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
    let result = match command {
        Command::Run(o) => run::run(o, pin),
        Command::Check(o) => check::run(o),
        Command::Status(o) => status::run(o, pin),
        Command::Stats(o) => stats::run(o, pin),
        Command::Flows(o) => flows::run(o, pin),
        Command::Path(o) => path::run(o, pin),
        Command::Reload(o) => reload::run(o, pin),
        Command::Down(o) => down::run(o, pin),
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
