//! The lb control plane as a library: the embedded XDP object, loading and attaching it, and
//! typed access to its maps. The `lb` binary and the test harness build on it.

pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod exceptions;
pub mod health;
pub mod links;
pub mod lock;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod netdev;
pub mod passive;
pub mod policy;
pub mod probe;
pub mod probe_thread;
pub mod tables;
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

/// The XDP object built from `lb-ebpf`, embedded at build time.
pub fn object() -> Result<&'static [u8], dataplane::Error> {
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
    if OBJECT.is_empty() {
        return Err(dataplane::Error::NoObject);
    }
    Ok(OBJECT)
}
