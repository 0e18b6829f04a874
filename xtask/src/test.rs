//! `cargo xtask test`: sets up what the tests need, then runs every tier with one
//! `cargo test`: host unit tests, the BPF_PROG_TEST_RUN fixtures and the netns end-to-end
//! tests (the last two need root), every binary even after one has failed. Prints the wall time
//! of each step, the slowest test binaries, and last a `tests: N passed, N failed, N skipped
//! (N ran: host N, fixtures N, …)` line summing every binary's result by tier. Under CI a
//! skipped test, or a privileged tier that ran nothing, fails the run.

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
    if lb_testkit::ci::is_ci() && !root {
        bail!(
            "CI=true but not running as root: the privileged tests (tests crate) must run under \
             CI, not skip"
        );
    }

    let mut timings = Timings::default();
    let mut tally = Tally::default();
    let mut result = run_steps(&mut timings, &mut tally, root, &cargo_args);
    timings.print();
    tally.print_slowest();
    let problems = tally.problems(lb_testkit::ci::is_ci(), cargo_args.is_empty());
    for problem in &problems {
        say(format!("under CI: {problem}"));
    }
    if result.is_ok() && !problems.is_empty() {
        result = Err(anyhow::anyhow!(
            "under CI every tier must run: {}",
            problems.join("; ")
        ));
    }
    // The last line: the sum over every binary, in the form CI reads.
    println!("{}", tally.summary());
    result
}

/// The privileged tiers: the `tests` crate's test binaries (`tests/Cargo.toml`), each its own
/// tier; every other test binary (unit tests, `lb-user/tests`, doc-tests) is the host tier.
const PRIVILEGED_TIERS: &[&str] = &["fixtures", "robustness", "daemon", "lab", "edges"];
const HOST_TIER: &str = "host";

/// The tier of a test binary from cargo's `Running tests/fixtures.rs (target/…)` line.
fn tier_of(running: &str) -> &'static str {
    let source = running.split_whitespace().next().unwrap_or_default();
    PRIVILEGED_TIERS
        .iter()
        .copied()
        .find(|tier| source == format!("tests/{tier}.rs"))
        .unwrap_or(HOST_TIER)
}

/// Tests of one tier, by outcome.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Count {
    passed: u64,
    failed: u64,
    skipped: u64,
}

/// What the test binaries reported: their `test result:` lines and the skip lines of `lb_testkit::ci`,
/// by tier and by binary.
#[derive(Default)]
struct Tally {
    tiers: Vec<(&'static str, Count)>,
    binaries: Vec<(String, Duration)>,
    /// The binary running now, as cargo named it.
    current: String,
    /// Tests libtest counted as passed that said they skipped (`lb_testkit::ci::Skip::Test`), by tier.
    passed_but_skipped: Vec<(&'static str, u64)>,
}

/// `N passed` in `ok. 3 passed; 0 failed; 1 ignored; …`.
fn result_number(rest: &str, word: &str) -> u64 {
    rest.split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(word)
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

impl Tally {
    fn tier(&mut self, tier: &'static str) -> &mut Count {
        let i = match self.tiers.iter().position(|(t, _)| *t == tier) {
            Some(i) => i,
            None => {
                self.tiers.push((tier, Count::default()));
                self.tiers.len() - 1
            }
        };
        &mut self.tiers[i].1
    }

    /// Reads one line of `cargo test` output.
    fn line(&mut self, line: &str) {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("Running ") {
            self.current = rest.to_string();
        } else if let Some(rest) = line.strip_prefix("Doc-tests ") {
            self.current = format!("doc-tests {rest}");
        } else if let Some(skip) = lb_testkit::ci::Skip::parse(line) {
            let tier = tier_of(&self.current);
            self.tier(tier).skipped += skip.tests() as u64;
            if let lb_testkit::ci::Skip::Test { .. } = skip {
                match self.passed_but_skipped.iter_mut().find(|(t, _)| *t == tier) {
                    Some((_, n)) => *n += 1,
                    None => self.passed_but_skipped.push((tier, 1)),
                }
            }
        } else if let Some(rest) = line.strip_prefix("test result: ") {
            let tier = tier_of(&self.current);
            let count = self.tier(tier);
            count.passed += result_number(rest, " passed");
            count.failed += result_number(rest, " failed");
            // An ignored test did not run: a skip like any other.
            count.skipped += result_number(rest, " ignored");
            let secs = rest
                .rsplit("finished in ")
                .next()
                .and_then(|t| t.trim_end_matches('s').parse::<f64>().ok())
                .unwrap_or(0.0);
            self.binaries
                .push((self.current.clone(), Duration::from_secs_f64(secs)));
        }
    }

    /// Every tier's count, skips that libtest counted as passed taken out of the passed.
    fn counts(&self) -> Vec<(&'static str, Count)> {
        let mut tiers = self.tiers.clone();
        for (tier, n) in &self.passed_but_skipped {
            if let Some((_, c)) = tiers.iter_mut().find(|(t, _)| t == tier) {
                c.passed = c.passed.saturating_sub(*n);
            }
        }
        // The host tier first, then the privileged ones in their order.
        tiers.sort_by_key(|(t, _)| {
            PRIVILEGED_TIERS
                .iter()
                .position(|p| p == t)
                .map_or(0, |i| i + 1)
        });
        tiers
    }

    fn total(&self) -> Count {
        self.counts()
            .iter()
            .fold(Count::default(), |acc, (_, c)| Count {
                passed: acc.passed + c.passed,
                failed: acc.failed + c.failed,
                skipped: acc.skipped + c.skipped,
            })
    }

    /// Why the run must count as failed although every binary exited successfully: under CI a
    /// skip is a failure, and so is a privileged tier that reported no test at all (its binary
    /// did not run, or ran none). `whole` says the run was not narrowed by the caller's arguments.
    fn problems(&self, ci: bool, whole: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if !ci {
            return problems;
        }
        let counts = self.counts();
        for (tier, c) in &counts {
            if c.skipped > 0 {
                problems.push(format!("{tier}: {} tests skipped under CI", c.skipped));
            }
        }
        if whole {
            for tier in PRIVILEGED_TIERS {
                let ran = counts
                    .iter()
                    .find(|(t, _)| t == tier)
                    .is_some_and(|(_, c)| c.passed + c.failed > 0);
                if !ran {
                    problems.push(format!("{tier}: no test ran"));
                }
            }
        }
        problems
    }

    /// `tests: 300 passed, 0 failed, 0 skipped (host 190, fixtures 83, …)`: the closing line, in
    /// the form CI reads.
    fn summary(&self) -> String {
        let total = self.total();
        let tiers: Vec<String> = self
            .counts()
            .iter()
            .map(|(tier, c)| {
                let mut s = format!("{tier} {}", c.passed + c.failed);
                if c.failed > 0 {
                    s += &format!(" ({} failed)", c.failed);
                }
                if c.skipped > 0 {
                    s += &format!(" ({} skipped)", c.skipped);
                }
                s
            })
            .collect();
        format!(
            "tests: {} passed, {} failed, {} skipped ({} ran: {})",
            total.passed,
            total.failed,
            total.skipped,
            total.passed + total.failed,
            if tiers.is_empty() {
                "no test binary reported".to_owned()
            } else {
                tiers.join(", ")
            }
        )
    }

    fn print_slowest(&mut self) {
        if self.binaries.is_empty() {
            return;
        }
        self.binaries.sort_by_key(|b| std::cmp::Reverse(b.1));
        say("slowest test binaries:");
        for (name, time) in self.binaries.iter().take(5) {
            println!("  {:>7.2}s  {name}", time.as_secs_f64());
        }
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
    let mut out = std::io::stdout();
    for line in BufReader::new(reader).lines() {
        let line = line.context("reading cargo test's output")?;
        let _ = writeln!(out, "{line}");
        tally.line(&line);
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
    // Every test binary runs, also after one has failed: a red run says everything that broke.
    cmd.args(["test", "--no-fail-fast"]);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(output: &str) -> Tally {
        let mut tally = Tally::default();
        for line in output.lines() {
            tally.line(line);
        }
        tally
    }

    const RUN: &str = "
     Running unittests src/lib.rs (target/debug/deps/lb_common-1)
test result: ok. 10 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
     Running tests/probe.rs (target/debug/deps/probe-2)
lb-testkit: skipped test icmp_echo_to_loopback: needs CAP_NET_RAW
test result: ok. 5 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.50s
     Running tests/fixtures.rs (target/debug/deps/fixtures-3)
test result: ok. 83 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 2.00s
     Running tests/lab.rs (target/debug/deps/lab-4)
lb-testkit: skipped suite lab: 6 tests: needs root
   Doc-tests lb_common
test result: ok. 0 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s
";

    #[test]
    fn counts_by_tier_with_skips_out_of_the_passed() {
        let t = tally(RUN);
        assert_eq!(
            t.counts(),
            [
                (
                    "host",
                    Count {
                        passed: 14,
                        failed: 1,
                        skipped: 3
                    }
                ),
                (
                    "fixtures",
                    Count {
                        passed: 83,
                        failed: 0,
                        skipped: 0
                    }
                ),
                (
                    "lab",
                    Count {
                        passed: 0,
                        failed: 0,
                        skipped: 6
                    }
                ),
            ]
        );
        assert_eq!(
            t.summary(),
            "tests: 97 passed, 1 failed, 9 skipped (98 ran: host 15 (1 failed) (3 skipped), \
             fixtures 83, lab 0 (6 skipped))"
        );
    }

    #[test]
    fn under_ci_a_skip_or_a_silent_tier_is_a_failure() {
        let t = tally(RUN);
        assert!(t.problems(false, true).is_empty());
        assert_eq!(
            t.problems(true, true),
            [
                "host: 3 tests skipped under CI",
                "lab: 6 tests skipped under CI",
                "robustness: no test ran",
                "daemon: no test ran",
                "lab: no test ran",
                "edges: no test ran",
            ]
        );
        // A narrowed run (`cargo xtask test -- -p lb-common`) need not run every tier.
        assert_eq!(t.problems(true, false).len(), 2);
    }

    #[test]
    fn tiers_come_from_the_test_source() {
        assert_eq!(
            tier_of("tests/fixtures.rs (target/debug/deps/fixtures-3)"),
            "fixtures"
        );
        assert_eq!(tier_of("tests/lab.rs (target/debug/deps/lab-4)"), "lab");
        assert_eq!(
            tier_of("unittests src/lib.rs (target/debug/deps/lab-4)"),
            "host"
        );
        assert_eq!(
            tier_of("tests/probe.rs (target/debug/deps/probe-2)"),
            "host"
        );
    }
}
