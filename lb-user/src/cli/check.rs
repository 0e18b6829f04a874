//! `lb check`: validate a configuration file without touching anything.

use std::path::PathBuf;

use lb_user::config::{Config, interface_exists};

/// Validate a configuration file (and that its interfaces exist here) without touching
/// anything.
#[derive(clap::Args)]
pub struct Options {
    /// Configuration file.
    #[arg(long, default_value = "/etc/lb/lb.json", value_name = "FILE")]
    config: PathBuf,
    /// Do not check that the interfaces exist (the file is for another host).
    #[arg(long)]
    skip_interfaces: bool,
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let Options {
        config,
        skip_interfaces,
    } = opts;
    let c = Config::load(&config)?;
    if !skip_interfaces {
        c.check_interfaces(interface_exists)?;
    }
    for w in c.warnings() {
        println!("warning: {w}");
    }
    let paths: usize = c.targets.iter().map(|t| t.paths.len()).sum();
    println!(
        "{}: ok ({} targets, {paths} paths, {} VIPs)",
        config.display(),
        c.targets.len(),
        c.vips.len()
    );
    Ok(())
}
