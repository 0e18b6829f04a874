//! `cargo xtask dist`: what a package installs, in a tree under `target/dist/`, and a tarball
//! of it: the release `lb`, its man pages and shell completions (generated from its clap
//! definitions by the binary itself, `lb generate`), the JSON Schema of the configuration,
//! the systemd units, the README and the example configurations.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

#[derive(clap::Parser)]
pub struct Options {
    /// Where to build the tree (default `target/dist/lb`).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub fn run(opts: Options) -> Result<()> {
    let Options { out } = opts;
    let root = util::workspace_root();
    let out = out.unwrap_or_else(|| root.join("target/dist/lb"));
    let toolchain = setup::ensure_toolchain()?;
    util::run(
        toolchain
            .cargo()
            .args(["build", "--release", "-p", "lb-user", "--bin", "lb"]),
    )
    .context("building lb (release)")?;
    let bin = root.join("target/release/lb");
    if out.exists() {
        fs::remove_dir_all(&out).with_context(|| format!("emptying {}", out.display()))?;
    }
    let dir = |rel: &str| -> Result<PathBuf> {
        let d = out.join(rel);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    };
    let copy = |from: &Path, to: &Path| -> Result<()> {
        fs::copy(from, to)
            .map(drop)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))
    };
    copy(&bin, &dir("usr/local/bin")?.join("lb"))?;
    generate(
        &bin,
        &["man", &dir("usr/local/share/man/man1")?.to_string_lossy()],
        None,
    )?;
    for (shell, at) in [
        ("bash", "usr/share/bash-completion/completions/lb"),
        ("zsh", "usr/share/zsh/vendor-completions/_lb"),
        ("fish", "usr/share/fish/vendor_completions.d/lb.fish"),
    ] {
        let file = out.join(at);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        generate(&bin, &["completions", shell], Some(&file))?;
    }
    generate(
        &bin,
        &["schema"],
        Some(&dir("usr/share/lb")?.join("lb.schema.json")),
    )?;
    let units = dir("etc/systemd/system")?;
    for unit in ["lb.service", "lb@.service", "lb-guest.service"] {
        copy(&root.join("packaging").join(unit), &units.join(unit))?;
    }
    let doc = dir("usr/share/doc/lb")?;
    copy(&root.join("README.md"), &doc.join("README.md"))?;
    let examples = dir("usr/share/doc/lb/examples")?;
    for entry in fs::read_dir(root.join("examples"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            copy(&path, &examples.join(path.file_name().unwrap_or_default()))?;
        }
    }
    let tarball = out.with_extension("tar.gz");
    let mut tar = Command::new("tar");
    tar.arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(&out)
        .arg("--owner=0")
        .arg("--group=0")
        .arg(".");
    util::run(&mut tar).context("packing the tree")?;
    util::say(format!(
        "dist: {} and {} (extract at / as root: `tar -xzf … -C /`)",
        out.display(),
        tarball.display()
    ));
    Ok(())
}

/// `lb generate ARGS`, its stdout into `to` when given.
fn generate(bin: &Path, args: &[&str], to: Option<&Path>) -> Result<()> {
    let out = Command::new(bin)
        .arg("generate")
        .args(args)
        .output()
        .context("running lb generate")?;
    if !out.status.success() {
        bail!(
            "lb generate {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if let Some(to) = to {
        fs::write(to, &out.stdout).with_context(|| format!("writing {}", to.display()))?;
    }
    Ok(())
}
