//! The privileged test harness: the independent packet builder, the fixture environment for
//! BPF_PROG_TEST_RUN (a private network namespace with fixed routes and neighbours), hex diffs,
//! and the rule that privileged tests skip on a machine without rights but fail under CI
//! (`lb_testkit::ci`).

pub mod bench;
pub mod edges;
pub mod fixture;
pub mod guest;
pub mod lab;
pub mod lb;
pub mod netns;
pub mod packet;
pub mod seamless;
pub mod servers;
pub mod sys;
pub mod traffic;

/// A scratch directory under the temp dir, emptied when made and removed when dropped, also
/// when the test using it fails.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// `<temp>/<name>`, empty.
    pub fn new(name: &str) -> anyhow::Result<Scratch> {
        let dir = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Scratch(dir))
    }

    pub fn join(&self, path: impl AsRef<std::path::Path>) -> std::path::PathBuf {
        self.0.join(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether privileged tests can run here (as root). Without root the `tests` tests of `suite`
/// are skipped with a line `cargo xtask test` counts, except under CI, where that is a failure
/// (see [`lb_testkit::ci::skip`]): CI must run them.
pub fn privileged(suite: &str, tests: usize) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    lb_testkit::ci::skip(
        lb_testkit::ci::Skip::Suite {
            name: suite.to_owned(),
            tests,
        },
        "needs root (BPF, network namespaces); run under sudo or as root",
    );
    false
}

/// An end-to-end test: a function that sets up its own namespaces and fails with a message.
pub type Test = fn() -> anyhow::Result<()>;

/// Runs `tests` as a libtest-mimic suite (names filterable like `cargo test`), after the
/// privilege check of [`privileged`]. Tests run in parallel, except those named in `alone`:
/// each of them runs with no other test of the suite beside it. Those are the ones that load
/// the machine (bulk traffic) or measure timing that a neighbour's load would distort.
pub fn run_suite(suite: &str, tests: &[(&'static str, Test)], alone: &[&str]) {
    static LOAD: std::sync::RwLock<()> = std::sync::RwLock::new(());
    let args = libtest_mimic::Arguments::from_args();
    if !privileged(suite, tests.len()) {
        return;
    }
    for name in alone {
        assert!(
            tests.iter().any(|(n, _)| n == name),
            "{suite}: `alone` names {name}, which is not a test of the suite"
        );
    }
    let trials = tests
        .iter()
        .map(|&(name, f)| {
            let alone = alone.contains(&name);
            libtest_mimic::Trial::test(name, move || {
                // A failed test poisons the lock; the others still run.
                let _shared;
                let _alone;
                if alone {
                    _alone = LOAD
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                } else {
                    _shared = LOAD
                        .read()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                }
                f().map_err(|e| libtest_mimic::Failed::from(format!("{e:#}")))
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
