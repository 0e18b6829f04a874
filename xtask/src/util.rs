//! Helpers shared by the subcommands: running commands with their command line printed and a
//! clear error naming the one that failed, the workspace root, who we run as, step timings.

use std::{
    env,
    ffi::OsStr,
    fmt,
    path::Path,
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of this crate's manifest directory).
pub fn workspace_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `--workspace` less lb-ebpf, for cargo commands on the host: lb-ebpf builds only for the bpf
/// target (a `no_std`, `no_main` binary; on the host it fails with "unwinding panics are not
/// supported without std"), through lb-user's build script.
pub const HOST_WORKSPACE: &[&str] = &["--workspace", "--exclude", "lb-ebpf"];

/// Whether this process runs as root (needed by apt and by the privileged tests).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() == 0 }
}

/// Prints a progress line from xtask (to stderr, like cargo's own status lines).
pub fn say(msg: impl fmt::Display) {
    eprintln!("xtask: {msg}");
}

/// A command that ran and exited unsuccessfully; `main` passes its exit code on.
#[derive(Debug)]
pub struct CommandFailed {
    pub command: String,
    pub status: ExitStatus,
}

impl CommandFailed {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl fmt::Display for CommandFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)
    }
}

impl std::error::Error for CommandFailed {}

/// The command line as a shell would take it, with the variables set on the command in front
/// (PATH, which we only ever extend, is left out: it is long and says nothing new).
pub fn display(cmd: &Command) -> String {
    let mut words = Vec::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            words.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    words.push(quote(cmd.get_program()));
    words.extend(cmd.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%^".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio after printing it; fails naming it when it cannot start or
/// exits unsuccessfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("$ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        return Err(CommandFailed {
            command: line,
            status,
        }
        .into());
    }
    Ok(())
}

/// Runs `cmd` quietly (a probe, not printed) and returns its stdout; on failure the error names
/// the command and carries its stderr.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let line = display(cmd);
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stderr = stderr.trim();
        bail!("`{line}` failed ({}): {stderr}", output.status);
    }
    String::from_utf8(output.stdout).with_context(|| format!("`{line}` printed non-UTF-8 output"))
}

/// Wall times of named steps, printed as a table at the end of a subcommand.
#[derive(Default)]
pub struct Timings {
    steps: Vec<(String, Duration, bool)>,
}

impl Timings {
    /// Runs `f` as the step `name`, recording its wall time and whether it succeeded.
    pub fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let result = f();
        self.steps
            .push((name.to_owned(), start.elapsed(), result.is_ok()));
        result
    }

    pub fn print(&self) {
        let width = self.steps.iter().map(|(n, ..)| n.len()).max().unwrap_or(0);
        eprintln!("xtask: wall time by step:");
        let mut total = Duration::ZERO;
        for (name, took, ok) in &self.steps {
            total += *took;
            let outcome = if *ok { "ok" } else { "FAILED" };
            eprintln!("  {name:<width$}  {:>8.1}s  {outcome}", took.as_secs_f64());
        }
        eprintln!("  {:<width$}  {:>8.1}s", "total", total.as_secs_f64());
    }
}

/// A command running `program` as root: directly when we are root, else through `sudo`
/// (which asks for a password if it must).
pub fn as_root(program: &Path) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        say(format!(
            "{} needs root: running it through sudo",
            program.display()
        ));
        let mut cmd = Command::new("sudo");
        cmd.arg("--preserve-env=LB_BIN,RUST_LOG").arg(program);
        cmd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_a_command_as_a_shell_would_take_it() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/a b")
            .env("PATH", "/ignored")
            .args(["install", "--version", "^0.13", "it's"]);
        assert_eq!(
            display(&cmd),
            r"LLVM_PREFIX='/a b' cargo install --version ^0.13 'it'\''s'"
        );
    }
}
