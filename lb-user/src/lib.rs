//! The lb control plane as a library: the embedded XDP object, loading and attaching it, and
//! typed access to its maps. The `lb` binary and the test harness build on it.

pub mod dataplane;
pub mod maps;

/// The XDP object built from `lb-ebpf`, embedded at build time.
pub fn object() -> Result<&'static [u8], dataplane::Error> {
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
    if OBJECT.is_empty() {
        return Err(dataplane::Error::NoObject);
    }
    Ok(OBJECT)
}
