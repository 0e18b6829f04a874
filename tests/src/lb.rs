//! Running the real `lb` binary in a test: the daemon in the edge namespace (its own pin
//! directory, its log in a file), and CLI commands against its pinned state. The guard stops
//! the daemon and removes everything it pinned, also when the test fails.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// The `lb` binary: `LB_BIN` when set (the lab), else built once per test process (`cargo build
/// -p lb-user --bin lb`, a no-op when it is fresh) next to the test executables.
pub fn lb_bin() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("LB_BIN") {
            return Ok(PathBuf::from(bin));
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--quiet", "-p", "lb-user", "--bin", "lb"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map_err(|e| format!("running cargo build: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cargo build -p lb-user --bin lb: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // target/<profile>/deps/<test> → target/<profile>/lb
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("lb"))
            .ok_or("no target dir")?;
        if bin.exists() {
            Ok(bin)
        } else {
            Err(format!("{} not found after the build", bin.display()))
        }
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Runs `lb <args>` (in the caller's namespace: the CLI only reads pins).
pub fn lb(args: &[&str]) -> anyhow::Result<Output> {
    Command::new(lb_bin()?)
        .args(args)
        .output()
        .context("running lb")
}

/// A daemon started by a test.
pub struct Daemon {
    child: Option<Child>,
    edge_path: String,
    pub dir: PathBuf,
    pub pin: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// `--hook X` when the start named one: every restart keeps it.
    hook: Vec<String>,
    /// The file-mode mask the daemon runs under (`None`: the test process's).
    pub umask: Option<u32>,
    /// Environment variables the daemon gets beside `RUST_LOG=info` (every start).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes `config` and starts `lb run` in `edge`, waiting (bounded) until it has applied
    /// the configuration.
    pub fn start(edge: &Netns, config: &str, extra: &[&str]) -> anyhow::Result<Daemon> {
        Self::start_signalled(edge, config, extra, None)
    }

    /// [`Daemon::start`] with environment variables `env` (kept for restarts).
    pub fn start_with_env(
        edge: &Netns,
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Daemon> {
        let mut d = Self::prepare(edge, config, extra)?;
        d.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.spawn(extra, None)?;
        Ok(d)
    }

    /// [`Daemon::start`], sending `signal` to the daemon as soon as its log shows `marker`, while
    /// it is still starting (`at`: `(marker, signal)`).
    pub fn start_signalled(
        edge: &Netns,
        config: &str,
        extra: &[&str],
        at: Option<(&str, i32)>,
    ) -> anyhow::Result<Daemon> {
        let mut d = Self::prepare(edge, config, extra)?;
        d.spawn(extra, at)?;
        Ok(d)
    }

    /// The daemon's files (its configuration written), not started.
    fn prepare(edge: &Netns, config: &str, extra: &[&str]) -> anyhow::Result<Daemon> {
        let dir = std::env::temp_dir().join(format!("{}-lb", edge.name()));
        std::fs::create_dir_all(&dir)?;
        let d = Daemon {
            child: None,
            edge_path: edge.path(),
            pin: dir.join("pins"),
            config: dir.join("lb.json"),
            log: dir.join("lb.log"),
            dir,
            hook: extra
                .windows(2)
                .find(|w| w[0] == "--hook")
                .map(|w| vec![w[0].to_owned(), w[1].to_owned()])
                .unwrap_or_default(),
            umask: None,
            env: Vec::new(),
        };
        std::fs::write(&d.config, config)?;
        Ok(d)
    }

    /// Whether the daemon's process is still running.
    pub fn running(&mut self) -> anyhow::Result<bool> {
        Ok(match self.child.as_mut() {
            Some(child) => child.try_wait()?.is_none(),
            None => false,
        })
    }

    /// Waits (bounded by `within`) for the daemon's process to end on its own: its status.
    pub fn wait_exit(&mut self, within: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("no daemon process");
        };
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("lb run did not end within {within:?}:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn spawn(&mut self, extra: &[&str], mut at: Option<(&str, i32)>) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.edge_path))
            .arg("--")
            .arg(lb_bin()?)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--pin-dir")
            .arg(&self.pin)
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        if let Some(mask) = self.umask {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: umask is async-signal-safe and touches no memory.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask);
                    Ok(())
                });
            }
        }
        // The log is appended across restarts: wait for this run's line.
        let applied = |text: &str| text.matches("configuration applied").count();
        let before = applied(&self.log_text());
        let marks = |text: &str, marker: &str| text.matches(marker).count();
        let marked_before = at.map_or(0, |(marker, _)| marks(&self.log_text(), marker));
        self.child = Some(cmd.spawn().context("starting lb run")?);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.log_text();
            if let Some((marker, signal)) = at
                && marks(&text, marker) > marked_before
                && let Some(child) = self.child.as_ref()
            {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(child.id() as i32, signal) };
                at = None;
            }
            if applied(&text) > before {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("lb run exited ({status}):\n{}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "lb run did not apply its configuration within 10 s:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(if at.is_some() { 1 } else { 20 }));
        }
    }

    /// Stops the daemon (SIGTERM), bounded; the datapath stays.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("lb run did not stop within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Starts the daemon again on the same configuration and pins (and hook).
    pub fn restart(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.stop()?;
        let hook = self.hook.clone();
        let mut args: Vec<&str> = hook.iter().map(String::as_str).collect();
        args.extend(extra);
        self.spawn(&args, None)
    }

    /// `lb reload`: it returns once the daemon has applied the file, and fails when the
    /// daemon rejected it.
    pub fn reload(&self) -> anyhow::Result<()> {
        self.lb(&["reload"]).map(drop)
    }

    /// Rewrites the configuration file (for a reload).
    pub fn write_config(&self, config: &str) -> anyhow::Result<()> {
        Ok(std::fs::write(&self.config, config)?)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The command `lb --pin-dir <pins> <args>` in the edge's network namespace, as an
    /// operator on the edge runs it (interface names and indexes are the edge's).
    pub fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.edge_path))
            .arg("--")
            .arg(lb_bin()?)
            .arg("--pin-dir")
            .arg(&self.pin)
            .args(args);
        Ok(cmd)
    }

    /// [`Self::command`]'s output, whatever its exit status.
    pub fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)?.output().context("running lb")
    }

    /// [`Self::command`], failing unless it succeeds; its stdout.
    pub fn lb(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.output(args)?;
        if !out.status.success() {
            bail!(
                "lb {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `lb <args> --json`, parsed.
    pub fn json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.lb(&all)?;
        serde_json::from_str(&text)
            .with_context(|| format!("parsing the JSON of lb {}", args.join(" ")))
    }

    /// Polls `lb status --json` until `pred` holds (every 10 ms, at most `timeout`); returns how
    /// long it took.
    pub fn wait_status(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<Duration> {
        let start = Instant::now();
        loop {
            let s = self.json(&["status"])?;
            if pred(&s) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "status did not reach the expected state within {timeout:?}: {s:#}\nlog:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
        // In the edge's namespace: `lb down` also withdraws the VIPs' routes there.
        if self.lb(&["down"]).is_err() {
            let pin = self.pin.to_string_lossy().to_string();
            let _ = lb(&["--pin-dir", &pin, "down"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The active path of target `name` in a status JSON.
pub fn active(status: &serde_json::Value, target: &str) -> Option<String> {
    status["targets"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == target)?["active"]
        .as_str()
        .map(str::to_string)
}

/// The active path of family `family` (`ipv4`, `ipv6`) of a target with paths of both
/// families, in a status JSON.
pub fn active_of(status: &serde_json::Value, target: &str, family: &str) -> Option<String> {
    status["targets"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == target)?["families"][family]["active"]
        .as_str()
        .map(str::to_string)
}

/// The state of path `path` of target `target` in a status JSON.
pub fn path_state(status: &serde_json::Value, target: &str, path: &str) -> Option<String> {
    let t = status["targets"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == target)?;
    t["paths"].as_array()?.iter().find(|p| p["name"] == path)?["state"]
        .as_str()
        .map(str::to_string)
}

/// `lb guest run` started by a test in the VM's namespace (`nsenter --net`: the agent pins
/// nothing, but keeps the test's mounts), its log (JSON lines) in a file; stopped on drop.
pub struct GuestAgent {
    child: Option<Child>,
    pub log: PathBuf,
}

impl GuestAgent {
    /// Starts the agent for `addresses` in `vm` with `extra` arguments, waiting (bounded) until
    /// its log says it serves.
    pub fn start(
        vm: &Netns,
        addresses: &[std::net::Ipv4Addr],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{}-guest-agent.log", vm.name()));
        let file = std::fs::File::create(&log)?;
        let list: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", vm.path()))
            .arg(lb_bin()?)
            .args(["guest", "run", "--log-format", "json", "--addresses"])
            .arg(list.join(","))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting lb guest run")?;
        let mut agent = GuestAgent {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if agent.log_text().contains("\"kind\":\"started\"") {
                return Ok(agent);
            }
            if let Some(status) = agent
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("lb guest run exited ({status}):\n{}", agent.log_text());
            }
            if Instant::now() > deadline {
                bail!(
                    "lb guest run did not start within 10 s:\n{}",
                    agent.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the agent (SIGTERM, bounded) and returns the counters of its last log line
    /// (`kind: stopping`).
    pub fn stop(&mut self) -> anyhow::Result<serde_json::Value> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!("lb guest run did not stop within 10 s");
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let text = self.log_text();
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["fields"]["kind"] == "stopping")
            .with_context(|| format!("no `stopping` line in the agent's log:\n{text}"))?;
        let counters = line["fields"]["counters"]
            .as_str()
            .context("counters in the stopping line")?;
        serde_json::from_str(counters).context("the counters' JSON")
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
