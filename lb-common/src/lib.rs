//! Everything the lb datapath and its control plane must agree on: map names, capacities and
//! layouts, counter indices, header layouts, and the packet arithmetic (checksums, rewrites,
//! hashes) that both the XDP programs and the host tests run.
//!
//! `#![no_std]` so the eBPF crate can use it; the `user` feature adds `aya::Pod` impls.
#![no_std]
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::panic, clippy::unwrap_used)
)]

pub mod counters;
pub mod csum;
pub mod guest;
pub mod hash;
pub mod icmp;
pub mod maps;
pub mod nat;
pub mod net;

pub use counters::Counter;
