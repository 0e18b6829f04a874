//! `lb`: the edge load balancer's daemon and CLI.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
