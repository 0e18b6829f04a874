//! `cargo xtask`: the workspace's developer tasks, one module a subcommand (aya's xtask shape).
//!
//! Every subcommand that needs a tool calls the `setup::ensure_*` functions first, so a fresh
//! machine sets itself up: `cargo xtask test` is all CI runs after `cargo xtask setup`.

mod bench;
mod build_cmd;
mod clippy;
mod dist;
mod fmt;
mod fuzz;
mod lab;
mod run;
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
    /// Install what building and testing need; idempotent.
    ///
    /// Checks, and installs only what is missing: the nightly toolchain and its rust-src,
    /// bpf-linker 0.13 built against that nightly's libLLVM, and (as root) the Debian packages
    /// the tests drive. Running it again does nothing.
    Setup(setup::Options),
    /// Build the workspace.
    ///
    /// Sets up the toolchain bits first; lb-user's build script builds the XDP object (lb-ebpf)
    /// with nightly and bpf-linker.
    Build(build_cmd::Options),
    /// Format every crate with rustfmt; `--check` only reports (CI).
    Fmt(fmt::Options),
    /// Run clippy, warnings denied, on the host crates and on the BPF crate.
    ///
    /// Host crates with all targets; lb-ebpf for bpfel-unknown-none with nightly. Both run even
    /// when the first fails.
    Clippy(clippy::Options),
    /// Run every test tier with one `cargo test`.
    ///
    /// Host unit tests, BPF_PROG_TEST_RUN fixtures and netns end-to-end tests; the last two need
    /// root and skip without it, except under CI=true, where not being root is an error. As
    /// root, missing Debian packages are installed first.
    Test(test::Options),
    /// The dual-path lab in network namespaces: `story` (default), `up`, `down`.
    ///
    /// client ── edge (lb) ──┬── nn1 (router) ── vm eth0; └── nn2 (router) ── vm eth1. The story
    /// fails a path and heals it with timed output, then tears everything down (also on Ctrl-C).
    Lab(lab::Options),
    /// Build `lb` and run it on this host as root: `cargo xtask run -- run --config FILE`.
    Run(run::Options),
    /// Fuzz the host-side parsers and the shared packet arithmetic (cargo-fuzz, libFuzzer).
    ///
    /// Every target of fuzz/ (config, http_status, icmp_reply, nat, icmp_quote) for --time
    /// seconds from its corpus in fuzz/corpus/; installs cargo-fuzz first when it is missing.
    Fuzz(fuzz::Options),
    /// Measure: per-packet cost, flow-table scale, throughput against nftables DNAT and a bare
    /// redirect, failover outage, restart and reload losses (docs/BENCHMARKS.md).
    Bench(bench::Options),
    /// The installable tree and tarball: release `lb`, man pages, shell completions, the
    /// configuration's JSON Schema, the systemd units, README and examples (`target/dist/`).
    Dist(dist::Options),
}

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let result = match command {
        Command::Setup(opts) => setup::run(opts),
        Command::Build(opts) => build_cmd::run(opts),
        Command::Fmt(opts) => fmt::run(opts),
        Command::Clippy(opts) => clippy::run(opts),
        Command::Test(opts) => test::run(opts),
        Command::Lab(opts) => lab::run(opts),
        Command::Run(opts) => run::run(opts),
        Command::Bench(opts) => bench::run(opts),
        Command::Dist(opts) => dist::run(opts),
        Command::Fuzz(opts) => fuzz::run(opts),
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
