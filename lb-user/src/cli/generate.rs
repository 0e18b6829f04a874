//! `lb generate`: what packaging installs beside the binary, made from the same definitions
//! the binary uses (the clap command, the configuration's types). Hidden from `lb --help`;
//! `cargo xtask dist` runs it.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::CommandFactory as _;

/// Generate man pages, shell completions or the configuration's JSON Schema.
#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Man pages, `lb.1` and one per subcommand (`lb-status.1`, …), into DIR.
    Man { dir: PathBuf },
    /// The completion script for SHELL, on stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The JSON Schema of the configuration file, on stdout.
    Schema,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let Options { what } = opts;
    let cmd = super::Cli::command();
    match what {
        What::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("writing the man pages into {}", dir.display()))?;
        }
        What::Completions { shell } => {
            let mut cmd = cmd;
            clap_complete::generate(shell, &mut cmd, "lb", &mut std::io::stdout());
        }
        What::Schema => super::print_json(&lb_user::config::schema())?,
    }
    Ok(())
}
