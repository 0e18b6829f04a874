//! `cargo xtask`: the workspace's developer tasks, one module a subcommand (aya's xtask shape).
//!
//! Every subcommand that needs a tool calls the `setup::ensure_*` functions first, so a fresh
//! machine sets itself up: `cargo xtask test` is all CI runs after `cargo xtask setup`.

mod build_cmd;
mod clippy;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Developer tasks for the lb workspace.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing need (nightly rust-src, bpf-linker, Debian packages);
    /// idempotent.
    Setup(setup::Options),
    /// Build the workspace (the XDP object is built by lb-user's build script).
    Build(build_cmd::Options),
    /// Run clippy with `-D warnings` on the host crates and on the BPF crate.
    Clippy(clippy::Options),
    /// Run every test tier (`cargo test`); the privileged ones need root.
    Test(test::Options),
}

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Setup(opts) => setup::run(opts),
        Command::Build(opts) => build_cmd::run(opts),
        Command::Clippy(opts) => clippy::run(opts),
        Command::Test(opts) => test::run(opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Not `main() -> anyhow::Result`: that prints a backtrace whenever RUST_BACKTRACE is
            // set, which buries the message naming what failed.
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            // A failing child (cargo test, say) passes its own exit code on.
            let code = err
                .chain()
                .find_map(|cause| cause.downcast_ref::<util::CommandFailed>())
                .and_then(util::CommandFailed::code)
                .and_then(|code| u8::try_from(code).ok())
                .filter(|&code| code != 0)
                .unwrap_or(1);
            ExitCode::from(code)
        }
    }
}
