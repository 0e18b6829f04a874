//! `cargo xtask fmt [--check]`: rustfmt over every workspace crate, the BPF crate included
//! (formatting needs no target). `--check` changes nothing and fails on any difference: CI runs it.

use anyhow::{Context as _, Result};

use crate::{setup, util};

#[derive(clap::Parser)]
pub struct Options {
    /// Change nothing; fail, showing the difference, when a file is not formatted.
    #[arg(long)]
    check: bool,
}

pub fn run(opts: Options) -> Result<()> {
    let Options { check } = opts;
    setup::ensure_component(None, "rustfmt")?;
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(util::workspace_root())
        .args(["fmt", "--all"]);
    if check {
        cmd.args(["--", "--check"]);
    }
    util::run(&mut cmd).context(if check {
        "formatting differs: run `cargo xtask fmt` (or `cargo fmt --all`) and commit the result"
    } else {
        "running rustfmt"
    })
}
