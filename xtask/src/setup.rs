//! `cargo xtask setup`: installs what building and testing need, only what is missing, saying
//! what it checks and what it does: the nightly toolchain with `rust-src` (for
//! `-Z build-std=core`), bpf-linker built against that nightly's own libLLVM, and the Debian
//! packages the privileged tests drive. The `ensure_*` functions are what other subcommands
//! call first, so a fresh machine sets itself up.

use std::{
    env,
    ffi::OsString,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::util::{self, say};

/// Debian packages the tests use: `ip` (netns, veth), `nft`, `ping`, `ethtool` (offloads off on
/// the tuned lab's veths), `sysctl`, `curl`, `iperf3`, a real TCP client and server, and
/// `tcpdump`, for looking at the lab's traffic when a test or a bench surprises.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "iputils-ping",
    "ethtool",
    "procps",
    "curl",
    "iperf3",
    "tcpdump",
    // The routing daemon of the multi-edge lab and tests (BGP, BFD, ECMP upstream).
    "bird2",
    // `systemd-analyze verify` checks the packaged units (lb-user/tests/packaging.rs).
    "systemd",
    // The VM's TLS server and its certificate in the https probe's end-to-end test.
    "openssl",
];

// ---- The toolchains the build needs: this is the one place that names them. ----
//
// - stable (the host crates, xtask): at least the workspace's `rust-version` (Cargo.toml), which
//   cargo itself enforces and `ensure_toolchain` checks first, so an old stable is one clear line;
// - nightly (lb-ebpf, for `-Z build-std=core` on the bpf target; aya-build runs
//   `rustup run nightly`), with its `rust-src`;
// - bpf-linker, built against that nightly's own libLLVM, which works only while the nightly's
//   LLVM major is one that bpf-linker release has a feature for.

/// The oldest stable rustc for the host crates: the workspace's `rust-version`.
pub const STABLE_MIN: &str = env!("CARGO_PKG_RUST_VERSION");

/// The toolchain lb-ebpf builds with (aya-build's `Toolchain::Nightly`). Not a dated nightly:
/// machines here cannot fetch toolchains, so whatever `nightly` is installed is checked instead.
pub const NIGHTLY: &str = "nightly";

/// The bpf-linker release line we accept when one is installed already.
const BPF_LINKER_SERIES: &str = "0.13";
/// The release we install (`cargo install --locked`).
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM majors bpf-linker 0.13.0 has a feature for (`llvm-21` … `llvm-23` in its
/// Cargo.toml): the nightly's LLVM must be one of them.
const BPF_LINKER_LLVM: std::ops::RangeInclusive<u32> = 21..=23;

/// Install (and look for) bpf-linker under this root instead of `$CARGO_HOME` and PATH; for
/// trying the install path without touching a working install.
const BPF_LINKER_ROOT_ENV: &str = "LB_BPF_LINKER_ROOT";

#[derive(clap::Parser)]
pub struct Options {
    /// Leave out the Debian packages (the Rust toolchain bits only; needs no root).
    #[arg(long)]
    no_apt: bool,
}

pub fn run(opts: Options) -> Result<()> {
    let Options { no_apt } = opts;
    let toolchain = ensure_toolchain()?;
    let mut installed = toolchain.installed;
    if ensure_cargo_fuzz()?.fresh {
        installed.push("cargo-fuzz".to_owned());
    }
    if no_apt {
        say("Debian packages: skipped (--no-apt)");
    } else {
        installed.extend(ensure_apt()?);
    }
    if installed.is_empty() {
        say("setup: everything is present, nothing to do");
    } else {
        say(format!("setup: installed {}", installed.join(", ")));
    }
    Ok(())
}

/// The Rust side, checked and completed by [`ensure_toolchain`].
pub struct Toolchain {
    /// The bpf-linker to use, when `bpf-linker` on PATH is not it (absent, or another version):
    /// its directory goes first on PATH for the cargo commands we run, since lb-user's build
    /// script and rustc look bpf-linker up on PATH.
    bpf_linker_dir: Option<PathBuf>,
    /// What this call installed, for the summary.
    pub installed: Vec<String>,
}

impl Toolchain {
    /// `cargo` (host toolchain) in the workspace root, with bpf-linker reachable.
    pub fn cargo(&self) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(util::workspace_root());
        // `lb --version` names the revision it was built from (read with `option_env!`, so a
        // new revision recompiles lb-user, not the XDP object).
        if let Some(rev) = git_revision() {
            cmd.env("LB_GIT_REV", rev);
        }
        if let Some(dir) = &self.bpf_linker_dir {
            cmd.env("PATH", path_with_first(dir));
        }
        cmd
    }

    /// `cargo +nightly`, as [`Toolchain::cargo`].
    pub fn cargo_nightly(&self) -> Command {
        let mut cmd = self.cargo();
        cmd.arg(format!("+{NIGHTLY}"));
        cmd
    }
}

/// PATH with `dir` in front.
fn path_with_first(dir: &Path) -> OsString {
    let rest = env::var_os("PATH").unwrap_or_default();
    let dirs = std::iter::once(dir.to_path_buf()).chain(env::split_paths(&rest));
    // Cannot fail: `dir` came from split_paths or from a path we built, neither holding ':'.
    env::join_paths(dirs).unwrap_or(rest)
}

/// Ensures the nightly toolchain, its `rust-src` and bpf-linker 0.13 (built against that
/// nightly's libLLVM), installing whatever is missing.
pub fn ensure_toolchain() -> Result<Toolchain> {
    let mut installed = Vec::new();

    let rustup = util::stdout(Command::new("rustup").arg("--version")).context(
        "rustup is needed: lb-ebpf builds with a rustup-managed nightly toolchain \
         (install rustup from https://rustup.rs)",
    )?;
    say(format!("rustup: {}", first_line(&rustup)));

    let stable = util::stdout(
        Command::new("rustc")
            .arg("--version")
            .current_dir(util::workspace_root()),
    )
    .context("running rustc (the workspace's default toolchain)")?;
    let stable = first_line(&stable);
    check_stable(stable)?;
    say(format!(
        "stable: {stable} (workspace needs {STABLE_MIN} or newer)"
    ));

    let nightly = match probe_nightly()? {
        Some(nightly) => {
            say(format!(
                "{NIGHTLY} toolchain: present ({})",
                nightly.release
            ));
            nightly
        }
        None => {
            say(format!("{NIGHTLY} toolchain: missing, installing it"));
            util::run(Command::new("rustup").args([
                "toolchain",
                "install",
                NIGHTLY,
                "--profile",
                "minimal",
                // A toolchain install may otherwise replace rustup itself, even with an older
                // release: not ours to change.
                "--no-self-update",
            ]))
            .context("installing the nightly toolchain")?;
            installed.push(format!("{NIGHTLY} toolchain"));
            probe_nightly()?.ok_or_else(|| {
                anyhow!("the nightly toolchain is still missing after installing it")
            })?
        }
    };

    check_nightly_llvm(&nightly)?;

    if ensure_component(Some(NIGHTLY), "rust-src")? {
        installed.push(format!("{NIGHTLY} rust-src"));
    }

    let (bpf_linker, fresh) = ensure_bpf_linker(&nightly)?;
    if fresh {
        installed.push("bpf-linker".to_owned());
    }
    let on_path = which::which("bpf-linker").ok();
    let bpf_linker_dir = if on_path.as_deref() == Some(bpf_linker.as_path()) {
        None
    } else {
        let dir = bpf_linker
            .parent()
            .ok_or_else(|| anyhow!("bpf-linker path {} has no parent", bpf_linker.display()))?;
        say(format!(
            "bpf-linker: {} is not the first on PATH; putting {} first for the cargo commands run here",
            bpf_linker.display(),
            dir.display()
        ));
        Some(dir.to_path_buf())
    };

    Ok(Toolchain {
        bpf_linker_dir,
        installed,
    })
}

/// `(major, minor, patch)` of `1.95.0` or `1.95`.
fn version_triple(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next()??;
    let patch = parts.next().unwrap_or(Some(0))?;
    Some((major, minor, patch))
}

/// Fails in one line when `rustc --version` (`rustc 1.95.0 (59807616e 2026-04-14)`) is older
/// than [`STABLE_MIN`].
fn check_stable(rustc_version: &str) -> Result<()> {
    let version = rustc_version
        .split_whitespace()
        .nth(1)
        .map(|v| v.split('-').next().unwrap_or(v))
        .and_then(version_triple)
        .ok_or_else(|| anyhow!("cannot read the version from {rustc_version:?}"))?;
    let min = version_triple(STABLE_MIN)
        .ok_or_else(|| anyhow!("the workspace's rust-version {STABLE_MIN:?} is not a version"))?;
    if version < min {
        bail!(
            "{rustc_version} is older than the workspace needs (rust-version {STABLE_MIN}): \
             run `rustup update stable`"
        );
    }
    Ok(())
}

/// Fails in one line when the nightly's LLVM is one bpf-linker cannot be built against.
fn check_nightly_llvm(nightly: &Nightly) -> Result<()> {
    if BPF_LINKER_LLVM.contains(&nightly.llvm_major) {
        return Ok(());
    }
    bail!(
        "{} uses LLVM {}, but bpf-linker {BPF_LINKER_VERSION} builds only against LLVM {} to {}: \
         install a nightly whose LLVM is one of those, or move BPF_LINKER_VERSION and \
         BPF_LINKER_LLVM in xtask/src/setup.rs to a bpf-linker release that supports LLVM {}",
        nightly.release,
        nightly.llvm_major,
        BPF_LINKER_LLVM.start(),
        BPF_LINKER_LLVM.end(),
        nightly.llvm_major,
    )
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim()
}

/// What `rustc +nightly -vV` says.
struct Nightly {
    /// `rustc 1.97.0-nightly (e50aa6fba 2026-05-19)`
    release: String,
    /// From `LLVM version: 22.1.4`; selects bpf-linker's `llvm-<major>` feature.
    llvm_major: u32,
}

/// The nightly toolchain's rustc, or `None` when the toolchain is not installed.
fn probe_nightly() -> Result<Option<Nightly>> {
    let mut cmd = Command::new("rustup");
    // Without this an older rustup may install a missing toolchain on the spot, silently and
    // with the default profile.
    cmd.env("RUSTUP_AUTO_INSTALL", "0")
        .args(["run", NIGHTLY, "rustc", "-vV"]);
    let Ok(out) = util::stdout(&mut cmd) else {
        return Ok(None);
    };
    let llvm = out
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .ok_or_else(|| anyhow!("`rustc +{NIGHTLY} -vV` printed no `LLVM version:` line"))?
        .trim();
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|major| major.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the LLVM major version from {llvm:?}"))?;
    Ok(Some(Nightly {
        release: first_line(&out).to_owned(),
        llvm_major,
    }))
}

/// Ensures the rustup component `component` of `toolchain` (the active one when `None`);
/// returns whether it had to be installed.
pub fn ensure_component(toolchain: Option<&str>, component: &str) -> Result<bool> {
    let name = toolchain.unwrap_or("active");
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed"]);
    if let Some(toolchain) = toolchain {
        list.args(["--toolchain", toolchain]);
    }
    let listed = util::stdout(&mut list)
        .with_context(|| format!("listing the components of the {name} toolchain"))?;
    // Lines are `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
    let present = listed.lines().map(str::trim).any(|line| {
        line == component
            || line
                .strip_prefix(component)
                .is_some_and(|rest| rest.starts_with('-'))
    });
    if present {
        say(format!("{name} toolchain's {component}: present"));
        return Ok(false);
    }
    say(format!(
        "{name} toolchain's {component}: missing, installing it"
    ));
    let mut add = Command::new("rustup");
    add.args(["component", "add", component]);
    if let Some(toolchain) = toolchain {
        add.args(["--toolchain", toolchain]);
    }
    util::run(&mut add)
        .with_context(|| format!("installing {component} for the {name} toolchain"))?;
    Ok(true)
}

/// The cargo-fuzz release line installed when none is (`cargo xtask fuzz`).
const CARGO_FUZZ_VERSION: &str = "^0.13";

/// A working cargo-fuzz.
pub struct CargoFuzz {
    dir: PathBuf,
    /// Installed by this call.
    pub fresh: bool,
}

impl CargoFuzz {
    /// PATH with cargo-fuzz's directory first, for `cargo fuzz`.
    pub fn path_env(&self) -> OsString {
        path_with_first(&self.dir)
    }
}

/// Ensures cargo-fuzz, installing it (`cargo install --locked`) when missing or broken.
pub fn ensure_cargo_fuzz() -> Result<CargoFuzz> {
    let bin = cargo_home()?.join("bin");
    let works = |p: &Path| {
        Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let found = which::which("cargo-fuzz")
        .ok()
        .into_iter()
        .chain([bin.join("cargo-fuzz")])
        .find(|p| works(p));
    if let Some(p) = found {
        let dir = p.parent().map_or_else(|| bin.clone(), Path::to_path_buf);
        say(format!("cargo-fuzz: present ({})", p.display()));
        return Ok(CargoFuzz { dir, fresh: false });
    }
    say("cargo-fuzz: missing, installing it");
    util::run(
        Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            // Away from the workspace, so its .cargo/config.toml cannot change the install.
            .current_dir(env::temp_dir()),
    )
    .context("installing cargo-fuzz")?;
    if !works(&bin.join("cargo-fuzz")) {
        bail!("cargo-fuzz does not run after installing it");
    }
    Ok(CargoFuzz {
        dir: bin,
        fresh: true,
    })
}

/// Where `cargo install` puts binaries by default.
fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(home.into());
    }
    let home = env::var_os("HOME").ok_or_else(|| anyhow!("neither CARGO_HOME nor HOME is set"))?;
    Ok(Path::new(&home).join(".cargo"))
}

/// Ensures a working bpf-linker 0.13.x; returns its path and whether it was installed now.
fn ensure_bpf_linker(nightly: &Nightly) -> Result<(PathBuf, bool)> {
    let custom_root = env::var_os(BPF_LINKER_ROOT_ENV).map(PathBuf::from);
    let root = match &custom_root {
        Some(root) => root.clone(),
        None => cargo_home()?,
    };
    let installed = root.join("bin").join("bpf-linker");

    // With a custom root, only that root counts (so the install path can be tried on a machine
    // that has a working bpf-linker); otherwise PATH first, then $CARGO_HOME/bin.
    let mut candidates = Vec::new();
    if custom_root.is_none() {
        candidates.extend(which::which("bpf-linker").ok());
    }
    if !candidates.contains(&installed) {
        candidates.push(installed.clone());
    }
    let mut problems = Vec::new();
    for candidate in candidates {
        if !candidate.exists() {
            continue;
        }
        match bpf_linker_version(&candidate) {
            Ok(version) if is_wanted_version(&version) => {
                say(format!(
                    "bpf-linker: present ({}, {version})",
                    candidate.display()
                ));
                return Ok((candidate, false));
            }
            Ok(version) => problems.push(format!(
                "{} is {version}, not {BPF_LINKER_SERIES}.x",
                candidate.display()
            )),
            // Typically its libLLVM is gone: the nightly it was built against was updated.
            Err(err) => problems.push(format!("{} does not run: {err:#}", candidate.display())),
        }
    }
    if problems.is_empty() {
        say("bpf-linker: missing, building it (this takes a few minutes)");
    } else {
        say(format!(
            "bpf-linker: {}; building {BPF_LINKER_SERIES}.x (this takes a few minutes)",
            problems.join("; ")
        ));
    }

    install_bpf_linker(nightly, &root, custom_root.is_some())?;
    let version = bpf_linker_version(&installed).with_context(|| {
        format!(
            "running the bpf-linker just installed at {}",
            installed.display()
        )
    })?;
    if !is_wanted_version(&version) {
        bail!(
            "the bpf-linker just installed at {} is {version}, not {BPF_LINKER_SERIES}.x",
            installed.display()
        );
    }
    say(format!(
        "bpf-linker: installed ({}, {version})",
        installed.display()
    ));
    Ok((installed, true))
}

/// `bpf-linker --version` prints `bpf-linker 0.13.0`; returns `0.13.0`.
fn bpf_linker_version(path: &Path) -> Result<String> {
    let out = util::stdout(Command::new(path).arg("--version"))?;
    let line = first_line(&out);
    line.split_whitespace()
        .nth(1)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("unexpected `bpf-linker --version` output {line:?}"))
}

fn is_wanted_version(version: &str) -> bool {
    version
        .strip_prefix(BPF_LINKER_SERIES)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// Builds bpf-linker into `root/bin` against the nightly toolchain's own libLLVM (dynamically
/// linked), so it reads the bitcode that nightly's rustc writes.
///
/// The toolchain ships `lib/libLLVM.so.<ver>-rust-<release>` but no `lib/libLLVM.so`, which
/// llvm-sys needs under `LLVM_PREFIX`; so we make a prefix of symlinks. That prefix's `lib/`
/// ends up as the binary's RUNPATH, so it lives beside the install root (not under `target/`,
/// which `cargo clean` removes), one per libLLVM so a nightly update cannot break it silently.
fn install_bpf_linker(nightly: &Nightly, root: &Path, custom_root: bool) -> Result<()> {
    let sysroot =
        util::stdout(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--print", "sysroot"]))
            .context("finding the nightly toolchain's sysroot")?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = find_libllvm(&sysroot_lib)?;
    let soname = libllvm
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", libllvm.display()))?;

    let prefix = root.join("lb-llvm-prefix").join(soname);
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in [OsString::from("libLLVM.so"), soname.to_os_string()] {
        let link = prefix_lib.join(name);
        if link.symlink_metadata().is_ok() {
            fs::remove_file(&link)
                .with_context(|| format!("removing the old {}", link.display()))?;
        }
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    }
    say(format!(
        "LLVM prefix {}: lib/libLLVM.so and lib/{} -> {}",
        prefix.display(),
        soname.to_string_lossy(),
        libllvm.display()
    ));

    let mut cmd = Command::new("cargo");
    cmd.arg(format!("+{NIGHTLY}"))
        .args(["install", "bpf-linker", "--version"])
        .arg(format!("={BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{}", nightly.llvm_major))
        // The versions its authors tested, not whatever is newest today.
        .arg("--locked")
        // We only get here when the bpf-linker in this root is absent, the wrong version or
        // broken; --force replaces it even when cargo's records say that version is installed.
        .arg("--force")
        .env("LLVM_PREFIX", &prefix)
        // Away from the workspace, so its .cargo/config.toml cannot change the install.
        .current_dir(env::temp_dir());
    if custom_root {
        cmd.arg("--root").arg(root);
    }
    util::run(&mut cmd).with_context(|| {
        format!(
            "building bpf-linker {BPF_LINKER_VERSION} against {} (feature llvm-{})",
            libllvm.display(),
            nightly.llvm_major
        )
    })
}

/// The real libLLVM shared object in the toolchain's `lib/`: `libLLVM.so.<ver>-rust-<release>`,
/// whose soname is its file name. Not `libLLVM-<major>-rust-<release>.so`, a one-line linker
/// script pointing at it.
fn find_libllvm(lib: &Path) -> Result<PathBuf> {
    let entries = fs::read_dir(lib).with_context(|| format!("listing {}", lib.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", lib.display()))?
            .path();
        let is_candidate = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libLLVM.so."));
        if is_candidate && is_elf(&path) {
            found.push(path);
        }
    }
    match <[PathBuf; 1]>::try_from(found) {
        Ok([path]) => Ok(path),
        Err(found) if found.is_empty() => bail!(
            "no libLLVM.so.* shared object in {}: cannot build bpf-linker against the nightly \
             toolchain's LLVM",
            lib.display()
        ),
        Err(found) => bail!(
            "several libLLVM.so.* shared objects in {}, cannot tell which to use: {found:?}",
            lib.display()
        ),
    }
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok_and(|()| magic == *b"\x7fELF")
}

/// The packages of [`APT_PACKAGES`] that are not installed.
pub fn missing_apt_packages() -> Result<Vec<&'static str>> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\n"])
        .args(APT_PACKAGES)
        .output()
        .with_context(|| {
            format!(
                "running dpkg-query: the test tools are installed with apt (Debian, Ubuntu); \
                 elsewhere install these by hand: {}",
                APT_PACKAGES.join(" ")
            )
        })?;
    // dpkg-query exits 1 when some package is unknown; the ones it knows are still printed.
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter_map(|line| line.split_once(' '))
        .filter(|(_, status)| status.trim() == "install ok installed")
        .map(|(package, _)| package)
        .collect();
    Ok(APT_PACKAGES
        .iter()
        .copied()
        .filter(|package| !installed.contains(package))
        .collect())
}

/// Ensures the Debian packages the tests need, installing the missing ones with apt (as root);
/// returns what it installed.
pub fn ensure_apt() -> Result<Vec<String>> {
    let missing = missing_apt_packages()?;
    if missing.is_empty() {
        say(format!(
            "Debian packages: present ({})",
            APT_PACKAGES.join(", ")
        ));
        return Ok(Vec::new());
    }
    if !util::is_root() {
        bail!(
            "Debian packages missing: {}; installing them needs root: run \
             `sudo apt-get install -y --no-install-recommends {}` (or `cargo xtask setup` as \
             root; `--no-apt` sets up the rest)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    say(format!(
        "Debian packages: missing {}, installing them",
        missing.join(", ")
    ));
    util::run(
        Command::new("apt-get")
            .arg("update")
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("updating the apt package lists")?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("installing {}", missing.join(", ")))?;
    let still = missing_apt_packages()?;
    if !still.is_empty() {
        bail!(
            "Debian packages still missing after apt-get install: {}",
            still.join(", ")
        );
    }
    Ok(missing.into_iter().map(str::to_owned).collect())
}

/// The workspace's git revision (`abc1234`, with `-dirty` when the tree has changes), if it
/// is a git checkout.
pub fn git_revision() -> Option<String> {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(util::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    let rev = git(&["rev-parse", "--short=10", "HEAD"])?;
    let rev = String::from_utf8_lossy(&rev.stdout).trim().to_string();
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|o| !o.stdout.is_empty());
    Some(if dirty { format!("{rev}-dirty") } else { rev })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_older_than_the_workspace_is_refused() {
        assert!(check_stable(&format!("rustc {STABLE_MIN}.0 (abc 2026-04-14)")).is_ok());
        assert!(check_stable("rustc 99.0.0 (abc 2099-01-01)").is_ok());
        assert!(check_stable("rustc 1.97.0-nightly (e50aa6fba 2026-05-19)").is_ok());
        let err = check_stable("rustc 1.80.1 (abc 2024-08-08)").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("rustc 1.80.1 (abc 2024-08-08) is older than the workspace needs"),
            "{err}"
        );
        assert!(check_stable("rustc").is_err());
    }

    #[test]
    fn nightly_llvm_must_have_a_bpf_linker_feature() {
        let nightly = |llvm_major| Nightly {
            release: "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)".into(),
            llvm_major,
        };
        assert!(check_nightly_llvm(&nightly(22)).is_ok());
        let err = check_nightly_llvm(&nightly(24)).unwrap_err().to_string();
        assert!(
            err.contains("uses LLVM 24, but bpf-linker 0.13.0 builds only against LLVM 21 to 23")
        );
        assert!(check_nightly_llvm(&nightly(20)).is_err());
    }

    #[test]
    fn wanted_version_is_the_0_13_series() {
        assert!(is_wanted_version("0.13.0"));
        assert!(is_wanted_version("0.13.12"));
        assert!(!is_wanted_version("0.12.3"));
        assert!(!is_wanted_version("0.130.0"));
        assert!(!is_wanted_version("0.1"));
    }

    #[test]
    fn finds_the_shared_object_not_the_linker_script() {
        let dir = env::temp_dir().join(format!("xtask-find-libllvm-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("libLLVM-22-rust-1.97.0-nightly.so"),
            "INPUT(libLLVM.so.22.1-rust-1.97.0-nightly)\n",
        )
        .unwrap();
        let lib = dir.join("libLLVM.so.22.1-rust-1.97.0-nightly");
        fs::write(&lib, b"\x7fELF and the rest").unwrap();
        let found = find_libllvm(&dir);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.unwrap(), lib);
    }
}
