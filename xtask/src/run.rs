//! `cargo xtask run -- <lb args>`: build `lb` (release) and run it on this host, as root
//! (through sudo when needed). The edge host's command: `cargo xtask run -- run --config ...`.

use anyhow::{Context as _, Result};

use crate::{setup, util};

#[derive(clap::Parser)]
pub struct Options {
    /// Arguments for `lb`, after `--`: `cargo xtask run -- status --json`.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    let Options { args } = opts;
    let toolchain = setup::ensure_toolchain()?;
    let mut build = toolchain.cargo();
    build.args(["build", "--release", "-p", "lb-user", "--bin", "lb"]);
    util::run(&mut build).context("building lb")?;
    let bin = util::workspace_root()
        .join("target")
        .join("release")
        .join("lb");
    let mut lb = util::as_root(&bin);
    lb.args(&args);
    util::run(&mut lb).context("running lb")
}
