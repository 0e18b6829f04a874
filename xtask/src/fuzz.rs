//! `cargo xtask fuzz [--time S] [TARGET...]`: the coverage-guided fuzz targets of `fuzz/`
//! (cargo-fuzz, libFuzzer, nightly), each for `--time` seconds from its seed corpus in
//! `fuzz/corpus/<target>`; new inputs that reach new code are added there. Prints how many
//! inputs each target ran. A crash fails the run and leaves its input in `fuzz/artifacts/`.

use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

/// Every target in `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &["config", "http_status", "icmp_reply", "nat", "icmp_quote"];

#[derive(clap::Parser)]
pub struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 15)]
    time: u64,
    /// Targets to run (default: all).
    targets: Vec<String>,
}

pub fn run(opts: Options) -> Result<()> {
    let Options { time, targets } = opts;
    let targets: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}; the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        targets.iter().map(String::as_str).collect()
    };
    let cargo_fuzz = setup::ensure_cargo_fuzz()?;
    let root = util::workspace_root();
    let mut total = 0u64;
    for target in targets {
        let corpus = root.join("fuzz").join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.arg(format!("+{}", setup::NIGHTLY))
            .arg("fuzz")
            .args(["run", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={time}"))
            // One line per target is enough; libFuzzer reports progress on stderr.
            .arg("-print_final_stats=1")
            .current_dir(root)
            // The targets need no XDP object: skip building it (and its nightly BPF build
            // under the fuzzer's flags).
            .env("LB_SKIP_EBPF", "1")
            .env("PATH", cargo_fuzz.path_env());
        util::say(format!("fuzz: {target} for {time} s"));
        let out = cmd
            .output()
            .with_context(|| format!("running {}", util::display(&cmd)))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            eprintln!("{stderr}");
            if stderr.contains("failed to build fuzz script") {
                bail!("building fuzz target {target} failed ({})", out.status);
            }
            bail!(
                "fuzz target {target} failed ({}); the input is in fuzz/artifacts/{target}/",
                out.status
            );
        }
        let runs = executed(&stderr).unwrap_or(0);
        total += runs;
        util::say(format!("fuzz: {target}: {runs} inputs, no failure"));
    }
    util::say(format!("fuzz: {total} inputs in all"));
    Ok(())
}

/// The inputs libFuzzer ran, from its `stat::number_of_executed_units: N` line.
fn executed(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        l.strip_prefix("stat::number_of_executed_units:")
            .and_then(|n| n.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_final_stats() {
        let err = "INFO: seed\nstat::number_of_executed_units: 123456\nstat::average_exec_per_sec: 8000\n";
        assert_eq!(super::executed(err), Some(123_456));
        assert_eq!(super::executed("no stats"), None);
    }

    #[test]
    fn every_target_is_in_the_manifest() {
        let manifest = include_str!("../../fuzz/Cargo.toml");
        for t in super::TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{t}\"")),
                "fuzz/Cargo.toml has no target {t}"
            );
        }
    }
}
