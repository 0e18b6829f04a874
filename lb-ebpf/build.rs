//! Rebuilds the eBPF object when `bpf-linker` changes (cargo cannot track a tool it does not
//! build), and says clearly what to do when it is missing.
use which::which;

fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => {
            println!("cargo:warning=bpf-linker is not installed: run `cargo xtask setup`");
        }
    }
}
