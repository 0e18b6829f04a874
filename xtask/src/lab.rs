//! `cargo xtask lab [story|scale-out|up|down]`: the dual-path lab in network namespaces, and
//! the two-edge one. Builds `lb` and the `lb-lab` driver (tests crate), then runs the driver as
//! root (through sudo when needed).

use anyhow::{Context as _, Result};

use crate::{setup, util};

#[derive(clap::Parser)]
pub struct Options {
    /// `story` (default): bring the lab up, walk through a failure and its heal with timed
    /// output, tear it down. `scale-out`: two edges with BIRD behind an ECMP router, one edge
    /// failing three ways under traffic. `up`: keep the lab running for exploring. `down`:
    /// remove it.
    #[arg(value_parser = ["story", "scale-out", "up", "down"], default_value = "story")]
    action: String,
}

pub fn run(opts: Options) -> Result<()> {
    let Options { action } = opts;
    let toolchain = setup::ensure_toolchain()?;
    if util::is_root() {
        setup::ensure_apt()?;
    }
    let mut build = toolchain.cargo();
    build.args([
        "build", "-p", "lb-user", "--bin", "lb", "-p", "lb-tests", "--bin", "lb-lab",
    ]);
    util::run(&mut build).context("building lb and the lab driver")?;
    let target = util::workspace_root().join("target").join("debug");
    let mut lab = util::as_root(&target.join("lb-lab"));
    lab.arg(&action).env("LB_BIN", target.join("lb"));
    util::run(&mut lab).with_context(|| format!("the lab ({action})"))
}
