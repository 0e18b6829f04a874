//! Network namespaces as guards: created with a unique name, removed on drop (also when the
//! test fails), with helpers to run commands, threads and processes inside.

use std::{
    fs::File,
    os::fd::AsRawFd as _,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    thread::JoinHandle,
};

use anyhow::Context as _;

use crate::sys::output;

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Deleted on drop (`false` for namespaces this guard only refers to).
    owned: bool,
}

/// A name no other test (of this or a parallel process) uses: `lbt<pid%100000>-<tag><n>`,
/// kept short because interface-like names are derived from it.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "lbt{}{}{}",
        std::process::id() % 100_000,
        tag,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        output(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
            owned: true,
        };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// Refers to an existing namespace without owning it (not deleted on drop).
    pub fn existing(name: &str) -> Self {
        Self {
            name: name.to_string(),
            owned: false,
        }
    }

    /// Keeps the namespace after this guard drops (`cargo xtask lab up`).
    pub fn keep(&mut self) {
        self.owned = false;
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &str) -> anyhow::Result<()> {
        output(
            Command::new("ip")
                .args(["-n", &self.name])
                .args(args.split_whitespace()),
        )
        .map(drop)
    }

    /// The `/32` destinations of routing table `table` with route protocol `proto` (lb's
    /// announcements), sorted; an absent table is empty.
    pub fn host_routes(&self, table: u32, proto: u8) -> anyhow::Result<Vec<std::net::Ipv4Addr>> {
        self.host_routes_of("-4", table, proto)
    }

    /// The destinations of family `family` (`-4`, `-6`) in `table` of protocol `proto`.
    fn host_routes_of<A: std::str::FromStr + Ord>(
        &self,
        family: &str,
        table: u32,
        proto: u8,
    ) -> anyhow::Result<Vec<A>> {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j", family, "route", "show", "table"])
            .arg(table.to_string())
            .args(["proto", &proto.to_string()])
            .output()
            .context("running ip route show")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            // A table that was never made.
            if err.contains("does not exist") || err.contains("No such file") {
                return Ok(Vec::new());
            }
            anyhow::bail!("ip route show table {table}: {err}");
        }
        let routes: Vec<serde_json::Value> = if text.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&text).with_context(|| format!("parsing {text}"))?
        };
        let mut out: Vec<A> = routes
            .iter()
            .filter_map(|r| r["dst"].as_str()?.parse().ok())
            .collect();
        out.sort();
        Ok(out)
    }

    /// [`Netns::host_routes`] of IPv6: the `/128` routes' addresses.
    pub fn host_routes6(&self, table: u32, proto: u8) -> anyhow::Result<Vec<std::net::Ipv6Addr>> {
        self.host_routes_of("-6", table, proto)
    }

    /// Loads the nftables ruleset `text` in the namespace (`nft -f`, through a file).
    pub fn nft(&self, text: &str) -> anyhow::Result<()> {
        static N: AtomicU32 = AtomicU32::new(0);
        let file = std::env::temp_dir().join(format!(
            "{}-{}.nft",
            self.name,
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&file, text)?;
        let r = self.exec("nft", &["-f", &file.to_string_lossy()]).map(drop);
        let _ = std::fs::remove_file(&file);
        r
    }

    /// Runs `cmd args` inside the namespace (`ip netns exec`), failing with its stderr.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> anyhow::Result<Output> {
        output(
            Command::new("ip")
                .args(["netns", "exec", &self.name, cmd])
                .args(args),
        )
    }

    /// A command that runs `program` in this network namespace only (`nsenter --net`): unlike
    /// `ip netns exec`, it keeps the caller's mounts, so bpffs pins stay visible to everyone.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Moves the calling thread into the namespace.
    pub fn enter(&self) -> anyhow::Result<()> {
        let f = File::open(self.path()).with_context(|| format!("opening {}", self.path()))?;
        // SAFETY: a valid fd; setns only changes this thread's network namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setns");
        }
        Ok(())
    }

    /// Runs `f` on a new thread inside the namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> JoinHandle<anyhow::Result<T>> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: a valid fd; only this thread moves.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.owned {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

/// A veth pair between two namespaces, both ends up.
pub fn veth(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> anyhow::Result<()> {
    output(Command::new("ip").args([
        "link",
        "add",
        a_name,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_name,
        "netns",
        b.name(),
    ]))?;
    a.ip(&format!("link set {a_name} up"))?;
    b.ip(&format!("link set {b_name} up"))?;
    Ok(())
}
