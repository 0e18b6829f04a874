//! `cargo xtask clippy`: clippy with `-D warnings` on the host crates and on the BPF crate (for
//! its own target, with nightly), both run even when the first fails.

use anyhow::{Result, bail};

use crate::{
    setup::{self, NIGHTLY},
    util::{self, say},
};

#[derive(clap::Parser)]
pub struct Options {}

pub fn run(opts: Options) -> Result<()> {
    let Options {} = opts;
    let toolchain = setup::ensure_toolchain()?;
    setup::ensure_component(None, "clippy")?;
    setup::ensure_component(Some(NIGHTLY), "clippy")?;

    let mut host = toolchain.cargo();
    host.arg("clippy")
        .args(util::HOST_WORKSPACE)
        .args(["--all-targets", "--", "-D", "warnings"]);

    // Only `clippy` (check, no codegen, no link), so no bpf-linker here; `-Z build-std=core`
    // because the bpf targets ship no prebuilt core (hence nightly and rust-src).
    let mut bpf = toolchain.cargo_nightly();
    bpf.args([
        "clippy",
        "-p",
        "lb-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]);

    let mut failed = Vec::new();
    for (what, cmd) in [("host crates", &mut host), ("BPF crate", &mut bpf)] {
        say(format!("clippy: {what}"));
        if let Err(err) = util::run(cmd) {
            say(format!("clippy: {what}: {err:#}"));
            failed.push(what);
        }
    }
    if !failed.is_empty() {
        bail!("clippy found problems in: {}", failed.join(", "));
    }
    say("clippy: clean");
    Ok(())
}
