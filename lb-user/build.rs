//! Builds the XDP object (`lb-ebpf`, for the bpf target, with the nightly toolchain and
//! bpf-linker) into `OUT_DIR/lb`, which `lb_user::datapath::object` embeds, and the guest agent's
//! (`OUT_DIR/lb-guest`, `lb_user::guest::agent::object`).
//!
//! Without bpf-linker (or with `LB_SKIP_EBPF=1`) the host crates still build, for clippy and
//! docs: an empty object is embedded, and everything that needs the datapath says to run
//! `cargo xtask setup`.
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=LB_SKIP_EBPF");
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    let object = out.join("lb");
    let skip = env::var("LB_SKIP_EBPF").is_ok_and(|v| v == "1");
    let linker = which::which("bpf-linker");
    if skip || linker.is_err() {
        let why = if skip {
            "LB_SKIP_EBPF=1"
        } else {
            "bpf-linker is not installed"
        };
        println!("cargo:warning={why}: building without the XDP object; run `cargo xtask setup`");
        fs::write(&object, []).context("writing the empty eBPF object")?;
        fs::write(out.join("lb-guest"), []).context("writing the empty eBPF object")?;
        return Ok(());
    }
    if let Ok(path) = linker {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let ebpf = Package {
        name: "lb-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf], Toolchain::Nightly)
        .context("building the XDP object (lb-ebpf); `cargo xtask setup` installs what it needs")
}
