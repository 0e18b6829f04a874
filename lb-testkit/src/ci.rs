//! What "under CI" means for this workspace, and the one rule for tests that need something a
//! machine may not have (root, `CAP_NET_RAW`, the built XDP object): they skip with a line that
//! `cargo xtask test` counts, and under CI they fail instead. xtask and every test crate use
//! this module, so the rule cannot drift between copies.

use std::{fmt::Write as _, io::Write as _};

/// The environment variable CI services set.
pub const CI_ENV: &str = "CI";

/// Whether we run under CI: `CI=true` or `CI=1` (as GitHub, GitLab and most services set it,
/// and as `.ci/run`'s caller does). Any other value, or none, is a developer's machine.
pub fn is_ci() -> bool {
    std::env::var(CI_ENV).is_ok_and(|v| ci_value(&v))
}

fn ci_value(value: &str) -> bool {
    let value = value.trim();
    value == "1" || value.eq_ignore_ascii_case("true")
}

/// The start of every skip line; what follows is [`Skip`]'s `Display`.
pub const SKIP_PREFIX: &str = "lb-testkit: skipped ";

/// What did not run, as a skip line says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// A whole test binary with its own harness (libtest-mimic) that ran none of its `tests`:
    /// the harness reported nothing, so nothing was counted as passed.
    Suite { name: String, tests: usize },
    /// One `#[test]` function that returned early: libtest counted it as passed, so the tally
    /// moves it from passed to skipped.
    Test { name: String },
}

impl Skip {
    /// The line `cargo xtask test` reads: `lb-testkit: skipped suite NAME: N tests: WHY` or
    /// `lb-testkit: skipped test NAME: WHY`.
    pub fn line(&self, why: &str) -> String {
        let mut line = String::from(SKIP_PREFIX);
        // Writing to a String cannot fail.
        let _ = match self {
            Skip::Suite { name, tests } => write!(line, "suite {name}: {tests} tests: {why}"),
            Skip::Test { name } => write!(line, "test {name}: {why}"),
        };
        line
    }

    /// Reads a skip line (surrounding white space allowed); `None` for any other line.
    pub fn parse(line: &str) -> Option<Skip> {
        let rest = line.trim().strip_prefix(SKIP_PREFIX)?;
        if let Some(rest) = rest.strip_prefix("suite ") {
            let (name, rest) = rest.split_once(": ")?;
            let tests = rest.split_once(" tests")?.0.parse().ok()?;
            Some(Skip::Suite {
                name: name.to_owned(),
                tests,
            })
        } else {
            let rest = rest.strip_prefix("test ")?;
            let (name, _) = rest.split_once(": ")?;
            Some(Skip::Test {
                name: name.to_owned(),
            })
        }
    }

    /// Counts as skipped how many tests.
    pub fn tests(&self) -> usize {
        match self {
            Skip::Suite { tests, .. } => *tests,
            Skip::Test { .. } => 1,
        }
    }
}

/// Reports that `what` cannot run here because of `why`: prints its skip line, or panics under
/// CI (where everything must run). Call it, then return without running the test(s).
///
/// The line goes straight to the process's stderr, not through `eprintln!`, which libtest
/// captures and shows only for failing tests: a passing test's skip must still reach the tally.
pub fn skip(what: Skip, why: &str) {
    let line = what.line(why);
    if is_ci() {
        let value = std::env::var(CI_ENV).unwrap_or_default();
        panic!("{line}: under CI ({CI_ENV}={value}) this is a failure, not a skip");
    }
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_true_or_1() {
        for yes in ["true", "1", "TRUE", "True", " true\n"] {
            assert!(ci_value(yes), "{yes:?}");
        }
        for no in ["", "0", "false", "yes", "no", "2"] {
            assert!(!ci_value(no), "{no:?}");
        }
    }

    #[test]
    fn skip_lines_read_back() {
        for skip in [
            Skip::Suite {
                name: "fixtures".into(),
                tests: 83,
            },
            Skip::Test {
                name: "icmp_echo_to_loopback".into(),
            },
        ] {
            let line = skip.line("needs root: run as root");
            assert_eq!(Skip::parse(&line), Some(skip.clone()), "{line}");
            assert_eq!(Skip::parse(&format!("  {line}\n")), Some(skip));
        }
        assert_eq!(
            Skip::parse("lb-testkit: skipped suite lab: 6 tests: why").map(|s| s.tests()),
            Some(6)
        );
        for other in [
            "test result: ok. 3 passed",
            "lb-testkit: skipped suite lab: many tests: why",
            "lb-testkit: skipped nothing",
            "skipped test x: y",
        ] {
            assert_eq!(Skip::parse(other), None, "{other}");
        }
    }
}
