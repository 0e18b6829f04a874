//! `lb`: the edge load balancer's daemon and CLI.
fn main() {
    eprintln!("lb: the daemon and CLI are not built yet");
    std::process::exit(2);
}
