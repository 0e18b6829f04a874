//! `cargo xtask bench [--quick] [--json FILE] [--svg FILE]`: builds `lb` and the `lb-bench`
//! driver (tests crate, release), then runs the driver as root (through sudo when needed). See
//! docs/BENCHMARKS.md for what each figure means.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::{setup, util};

#[derive(clap::Parser)]
pub struct Options {
    /// A smoke run (under two minutes): fewer iterations, shorter streams.
    #[arg(long)]
    quick: bool,
    /// Write every figure as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Where to write the failover timeline (SVG).
    #[arg(long, value_name = "FILE", default_value = "docs/failover.svg")]
    svg: PathBuf,
    /// Run one part only.
    #[arg(long, value_parser = ["cost", "throughput", "bulk", "outage", "scale", "scale-out", "seamless"])]
    only: Option<String>,
}

pub fn run(opts: Options) -> Result<()> {
    let Options {
        quick,
        json,
        svg,
        only,
    } = opts;
    let toolchain = setup::ensure_toolchain()?;
    if util::is_root() {
        setup::ensure_apt()?;
    }
    let mut build = toolchain.cargo();
    build.args([
        "build",
        "--release",
        "-p",
        "lb-user",
        "--bin",
        "lb",
        "-p",
        "lb-tests",
        "--bin",
        "lb-bench",
    ]);
    util::run(&mut build).context("building lb and the benchmark driver")?;
    let target = util::workspace_root().join("target").join("release");
    let mut bench = util::as_root(&target.join("lb-bench"));
    bench
        .current_dir(util::workspace_root())
        .env("LB_BIN", target.join("lb"));
    if quick {
        bench.arg("--quick");
    }
    if let Some(json) = json {
        bench.arg("--json").arg(std::path::absolute(json)?);
    }
    bench.arg("--svg").arg(std::path::absolute(svg)?);
    if let Some(only) = only {
        bench.args(["--only", &only]);
    }
    util::run(&mut bench).context("the benchmarks")
}
