//! Small system helpers: network namespaces, `ip` commands, interface lookups.

use std::process::{Command, Output};

use anyhow::{Context as _, bail};

/// Moves the calling thread into a new, private network namespace. Threads and processes it
/// starts afterwards inherit it; it disappears with the last of them, so nothing is left over.
pub fn unshare_netns() -> anyhow::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    Ok(())
}

/// Runs `ip <args>` (in the caller's network namespace) and fails with its stderr.
pub fn ip(args: &str) -> anyhow::Result<()> {
    run("ip", &args.split_whitespace().collect::<Vec<_>>())
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<()> {
    output(Command::new(cmd).args(args)).map(drop)
}

/// Runs `cmd` to completion and returns its output; fails naming the command line, with its
/// stderr, when it cannot start or exits unsuccessfully. Every command the harness runs goes
/// through here.
pub fn output(cmd: &mut Command) -> anyhow::Result<Output> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| w.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd.output().with_context(|| format!("running {line}"))?;
    if !out.status.success() {
        bail!("{line}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// Writes a sysctl of the caller's network namespace.
pub fn sysctl(key: &str, value: &str) -> anyhow::Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).with_context(|| format!("writing {path}"))
}

/// The index of interface `name` in the caller's network namespace.
pub fn ifindex(name: &str) -> anyhow::Result<u32> {
    lb_user::ifindex(name).with_context(|| format!("no interface {name}"))
}

/// Runs `f` with the calling thread pinned to the CPU it is on (per-CPU state, such as a
/// per-CPU token bucket, then sees one CPU), and restores the thread's CPU set afterwards.
pub fn on_one_cpu<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    // SAFETY: all-zero is an empty cpu_set_t; the calls get valid pointers and sizes.
    unsafe {
        let mut was: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut was) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            bail!("sched_getcpu: {}", std::io::Error::last_os_error());
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut one);
        if libc::sched_setaffinity(0, size, &one) != 0 {
            bail!("sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        let out = f();
        libc::sched_setaffinity(0, size, &was);
        out
    }
}
