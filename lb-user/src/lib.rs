//! The lb control plane as a library. The `lb` binary (its CLI in `src/cli/`) and the test
//! harness build on it.
//!
//! Each concern has its folder, and the layers only look down:
//!
//! - [`config`]: the configuration file, parsed and validated (depends on nothing here);
//! - [`datapath`]: the embedded object, loading and attaching it, the pin directory and its
//!   lock, typed map access, the control plane's tables and the planned writes that apply them,
//!   interfaces and the link watch, exception expiry (depends on `config`);
//! - [`control`]: the model built from a configuration, the failover and consistent-hash
//!   policy, per-path health and the probe loop that decides it (depends on `config`,
//!   `datapath`'s tables);
//! - [`probe`]: the probes themselves (TCP, HTTP, HTTPS, ICMP), the thread they run on and the
//!   passive trigger's listener (depends on `config`, `control`);
//! - [`announce`]: the host routes of the servable VIPs, for a routing daemon to export over
//!   BGP (depends on `config`);
//! - [`view`]: what the CLI and the metrics read from the pinned maps; [`metrics`]: the
//!   Prometheus endpoint (depend on the layers above);
//! - [`rpc`]: the running daemon's control socket, its protocol and client (what `lb reload`,
//!   `lb events` and `lb status` ask the daemon itself; depends on `config`, `datapath`);
//! - [`guest`]: what the VM behind the edge needs (policy routing), planned and checked
//!   (depends on `config`);
//! - [`daemon`]: wires everything together; nothing below it reaches back up.

pub mod announce;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod guest;
pub mod metrics;
pub mod probe;
pub mod rpc;
pub mod view;

/// The index of interface `name`, if it exists (in this network namespace).
pub fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The name of interface `ifindex`, if it exists (in this network namespace).
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
