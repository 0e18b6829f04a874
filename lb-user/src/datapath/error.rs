//! What can go wrong loading, pinning and attaching the datapath.

use std::path::PathBuf;

use aya::programs::ProgramError;

use crate::datapath::hook::Role;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this build has no XDP object (bpf-linker was missing when it was built): run `cargo xtask setup`, then build again"
    )]
    NoObject,
    #[error("loading the XDP object")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the XDP object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type or layout")]
    MapType {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: {op} failed")]
    MapOp {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot add interface {ifindex} to the redirect devmap")]
    TxPort {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("program {name} does not pass the verifier or cannot be loaded")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("no lb state is pinned in {dir} (is the daemon installed there? see --pin-dir)")]
    NotInstalled { dir: PathBuf },
    #[error("opening pinned map {path}")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "the state pinned in {dir} has another layout ({found:#018x}, this build {expected:#018x}): \
         run with --replace to discard it (flows are lost), or run the build that created it"
    )]
    LayoutMismatch {
        dir: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("the state pinned in {dir} is incomplete (map {name} is missing): run with --replace")]
    Incomplete { dir: PathBuf, name: &'static str },
    #[error("{what} {path}")]
    Fs {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attaching {role} to {iface} ({mode})")]
    Attach {
        role: Role,
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pinning the {role} link of {iface} at {path}")]
    PinLink {
        role: Role,
        iface: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no interface {iface}")]
    NoInterface { iface: String },
    #[error(
        "{path} is {why}: lb does not trust pinned state another user could have written \
         (pins and their directories must be owned by root and writable by no one else); \
         check who changed it, then fix it or start over with `lb down`"
    )]
    UnsafePin { path: PathBuf, why: String },
    #[error("{GENERIC_XDP_REFUSED}")]
    GenericXdp,
}

/// Why `--xdp-mode skb` is refused rather than run.
pub const GENERIC_XDP_REFUSED: &str = "generic (skb) XDP is refused: it runs on skbs whose \
    TCP/UDP checksums may be partial (local senders, GSO), which an XDP program can neither see \
    nor finish, so translated packets would leave with wrong checksums; --hook tc runs at the \
    same place in the stack and handles them";
