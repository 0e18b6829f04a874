//! Empty library target: lets host crates depend on `lb-ebpf` so cargo rebuilds the eBPF
//! object (built by `lb-user`'s build script) when this crate changes.
#![no_std]
