//! `cargo xtask build`: sets up the toolchain bits, then builds the workspace. (Named
//! `build_cmd` so nobody mistakes it for a build script.)

use anyhow::{Context as _, Result};

use crate::{setup, util};

#[derive(clap::Parser)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    release: bool,
}

pub fn run(opts: Options) -> Result<()> {
    let Options { release } = opts;
    let toolchain = setup::ensure_toolchain()?;
    let mut cmd = toolchain.cargo();
    cmd.arg("build").args(util::HOST_WORKSPACE);
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd).context("building the workspace")
}
