//! `cargo xtask test`: sets up what the tests need, then runs every tier with one
//! `cargo test`: host unit tests, the BPF_PROG_TEST_RUN fixtures and the netns end-to-end
//! tests (the last two need root). Prints the wall time of each step, the slowest test
//! binaries, and last a `tests: N passed, N failed` line summing every binary's result.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    util::{self, Timings, say},
};

#[derive(clap::Parser)]
pub struct Options {
    /// Arguments for `cargo test`, after `--`: `cargo xtask test -- -p lb-common`, or
    /// `cargo xtask test -- -- --nocapture` for the test binaries.
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    let Options { cargo_args } = opts;
    let root = util::is_root();
    if util::is_ci() && !root {
        bail!(
            "CI=true but not running as root: the privileged tests (tests crate) must run under \
             CI, not skip"
        );
    }

    let mut timings = Timings::default();
    let mut tally = Tally::default();
    let result = run_steps(&mut timings, &mut tally, root, &cargo_args);
    timings.print();
    tally.print();
    result
}

/// What the test binaries reported: their `test result:` lines, by binary.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    binaries: Vec<(String, Duration)>,
}

impl Tally {
    /// Reads one line of `cargo test` output.
    fn line(&mut self, current: &mut String, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Running ") {
            *current = rest.to_string();
        } else if let Some(rest) = line.strip_prefix("Doc-tests ") {
            *current = format!("doc-tests {rest}");
        } else if let Some(rest) = line.strip_prefix("test result: ") {
            let number = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap_or(0)
            };
            self.passed += number(" passed");
            self.failed += number(" failed");
            let secs = rest
                .rsplit("finished in ")
                .next()
                .and_then(|t| t.trim_end_matches('s').parse::<f64>().ok())
                .unwrap_or(0.0);
            self.binaries
                .push((current.clone(), Duration::from_secs_f64(secs)));
        }
    }

    fn print(&mut self) {
        if self.binaries.is_empty() {
            return;
        }
        self.binaries.sort_by_key(|b| std::cmp::Reverse(b.1));
        say("slowest test binaries:");
        for (name, time) in self.binaries.iter().take(5) {
            println!("  {:>7.2}s  {name}", time.as_secs_f64());
        }
        // The last line: the sum over every binary, in the form CI reads.
        println!("tests: {} passed, {} failed", self.passed, self.failed);
    }
}

/// Runs `cargo test`, echoing its output (stdout and stderr, in order) while tallying it.
fn run_tallied(cmd: &mut Command, tally: &mut Tally) -> Result<()> {
    let (reader, writer) = std::io::pipe().context("creating a pipe for cargo test's output")?;
    cmd.stdout(writer.try_clone().context("duplicating the pipe")?)
        .stderr(writer);
    say(format!("$ {}", util::display(cmd)));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", util::display(cmd)))?;
    // Our copies of the pipe's write end (held by `cmd`) must go, or the read never ends.
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut current = String::new();
    let mut out = std::io::stdout();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading cargo test's output")?;
        let _ = writeln!(out, "{line}");
        tally.line(&mut current, &line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() {
        return Err(util::CommandFailed {
            command: "cargo test".into(),
            status,
        }
        .into());
    }
    Ok(())
}

fn run_steps(
    timings: &mut Timings,
    tally: &mut Tally,
    root: bool,
    cargo_args: &[String],
) -> Result<()> {
    let toolchain = timings.step("setup: toolchain", setup::ensure_toolchain)?;
    if root {
        timings.step("setup: Debian packages", setup::ensure_apt)?;
    } else {
        let missing = setup::missing_apt_packages()?;
        if !missing.is_empty() {
            say(format!(
                "Debian packages missing ({}): the privileged tests need them and root",
                missing.join(", ")
            ));
        }
        say("not root: the privileged tests (BPF_PROG_TEST_RUN, netns) will skip");
    }

    let mut cmd = toolchain.cargo();
    cmd.arg("test");
    // `-p` from the caller selects packages itself; cargo rejects it beside `--exclude`.
    let picks_packages = cargo_args
        .iter()
        .take_while(|arg| *arg != "--")
        .any(|arg| arg.starts_with("-p") || arg.starts_with("--package"));
    if !picks_packages {
        cmd.args(util::HOST_WORKSPACE);
    }
    cmd.args(cargo_args);
    timings
        .step("cargo test", || run_tallied(&mut cmd, tally))
        .context("running the tests")
}
