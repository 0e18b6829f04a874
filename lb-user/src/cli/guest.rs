//! `lb guest plan|check`: what the VM behind the edge needs, made from the edge's
//! configuration (`plan`), and checked inside the VM (`check`).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use lb_user::{
    config::Config,
    daemon::logs::LogFormat,
    guest::{
        agent,
        check::Report,
        facts,
        plan::{self, DEFAULT_PRIORITY_BASE, DEFAULT_TABLE_BASE, Numbering, PathSpec},
        render::{self, Format},
    },
};

use super::print_json;

/// Policy routing inside the VM, so each reply leaves by the path its request came in on:
/// print what the VM needs (`plan`), or check it inside the VM (`check`).
#[derive(clap::Args)]
pub struct Options {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    Plan(PlanOptions),
    Check(CheckOptions),
    Run(RunOptions),
}

/// Print what a target's VM needs, as `ip` commands, networkd or netplan files, or a
/// cloud-config.
///
/// Per path address: a routing table whose default route leaves by the path's interface, a
/// rule `from ADDR` selecting it, and (IPv4) loose reverse-path filtering. Path `i` of the
/// target (its index in the configuration's list) gets table `--table-base + i` and rule
/// priority `--priority-base + i`.
#[derive(clap::Args)]
pub struct PlanOptions {
    /// The edge's configuration file.
    #[arg(long, default_value = "/etc/lb/lb.json", value_name = "FILE")]
    config: PathBuf,
    /// The target whose VM this is for.
    #[arg(long, value_name = "NAME")]
    target: String,
    /// One per path of the target: its name, the VM's interface on it and the path's next hop
    /// as the VM sees it, of the path address's family (e.g. `nn1=eth0,192.0.2.65`).
    #[arg(long = "path", value_name = "NAME=IFACE,GATEWAY")]
    paths: Vec<PathSpec>,
    /// The first path's routing table.
    #[arg(long, default_value_t = DEFAULT_TABLE_BASE, value_name = "N")]
    table_base: u32,
    /// The first path's rule priority (before the main table's rule, 32766).
    #[arg(long, default_value_t = DEFAULT_PRIORITY_BASE, value_name = "N")]
    priority_base: u32,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Format::All)]
    format: Format,
}

/// Inside the VM: check that replies from each path address leave by its own interface.
///
/// For each address: it is on one interface; a rule `from ADDR` selects a table whose default
/// route leaves by that interface; `ip route get` agrees (it asks the kernel which route it
/// would take and sends nothing); and (IPv4) reverse-path filtering there is not strict.
/// Prints each problem with the command that fixes it, and fails when there is any. Needs no
/// privileges.
#[derive(clap::Args)]
pub struct CheckOptions {
    /// The path addresses to check (default: every global address of this host, except
    /// those on `lo` and IPv6 privacy addresses).
    #[arg(long, value_delimiter = ',', value_name = "ADDR,...")]
    addresses: Vec<IpAddr>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Inside the VM: keep each connection on its socket when the edge moves it to another path,
/// until SIGTERM or SIGINT.
///
/// Attaches TC programs (clsact ingress and egress) to the interfaces of the given addresses.
/// A TCP segment or UDP datagram that arrives at address B with no socket of its own there,
/// while a connection for the same client and ports is open on another given address A, is
/// rewritten to A; the connection's replies are rewritten from A to B and leave by B's
/// interface. New connections to B stay B's. Needs the policy routing of `lb guest plan`, loose
/// reverse-path filtering, and CAP_BPF with CAP_NET_ADMIN.
#[derive(clap::Args)]
pub struct RunOptions {
    /// The VM's path addresses (IPv4, two at least, each on one interface).
    #[arg(long, required = true, value_delimiter = ',', value_name = "A,B,...")]
    addresses: Vec<IpAddr>,
    /// A moved TCP flow's records go after this long without a packet (the next packet makes
    /// them again).
    #[arg(long, default_value = "2h", value_name = "DURATION", value_parser = humantime::parse_duration)]
    tcp_idle: Duration,
    /// A moved UDP flow's records go after this long without a packet.
    #[arg(long, default_value = "2m", value_name = "DURATION", value_parser = humantime::parse_duration)]
    udp_idle: Duration,
    /// A TCP flow that saw a FIN or a RST: its records go after this long without a packet.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    closing: Duration,
    /// How often the counters are logged (when they changed).
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = humantime::parse_duration)]
    report_every: Duration,
    /// How to log: auto (journald when stderr is the journal, else human), human, json, or
    /// journald. `RUST_LOG` filters (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

impl Options {
    /// Whether the command loads programs (and needs privileges for it).
    pub fn loads_programs(&self) -> bool {
        matches!(self.action, Action::Run(_))
    }
}

pub fn run(opts: Options) -> anyhow::Result<()> {
    let Options { action } = opts;
    match action {
        Action::Plan(o) => run_plan(o),
        Action::Check(o) => run_check(o),
        Action::Run(o) => run_agent(o),
    }
}

fn run_agent(opts: RunOptions) -> anyhow::Result<()> {
    let RunOptions {
        addresses,
        tcp_idle,
        udp_idle,
        closing,
        report_every,
        log_format,
    } = opts;
    lb_user::daemon::logs::init(log_format)?;
    for (what, d) in [
        ("--tcp-idle", tcp_idle),
        ("--udp-idle", udp_idle),
        ("--closing", closing),
        ("--report-every", report_every),
    ] {
        if d < Duration::from_secs(1) {
            bail!(
                "{what} {}: one second at least",
                humantime::format_duration(d)
            );
        }
    }
    let (facts, _) =
        facts::gather(&addresses).context("gathering this host's addresses, rules and routes")?;
    let served = agent::resolve(&facts, &addresses)?;
    // What `lb guest check` would say: the moved packets need the same routing.
    let report = Report::new(&facts, addresses.clone(), false);
    for f in report.findings.iter().filter(|f| !f.ok) {
        let fix = if f.fix.is_empty() {
            String::new()
        } else {
            format!(" (fix: {})", f.fix.join("; "))
        };
        tracing::warn!(kind = "check", address = %f.address, "{}: {}{fix}", f.address, f.message);
    }
    let agent = agent::Agent::start(&served)?;
    let opts = agent::ServeOptions {
        timeouts: agent::Timeouts {
            tcp_idle,
            udp_idle,
            closing,
        },
        sweep_every: Duration::from_secs(1),
        report_every,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        agent::serve(agent, opts, shutdown).await;
        anyhow::Ok(())
    })
}

fn run_plan(opts: PlanOptions) -> anyhow::Result<()> {
    let PlanOptions {
        config,
        target,
        paths,
        table_base,
        priority_base,
        format,
    } = opts;
    let c = Config::load(&config).with_context(|| format!("loading {}", config.display()))?;
    let numbering = Numbering {
        table_base,
        priority_base,
    };
    let plan = plan::plan(&c, &target, &paths, numbering)
        .with_context(|| format!("planning target {target:?} of {}", config.display()))?;
    print!("{}", render::render(&plan, format));
    Ok(())
}

fn run_check(opts: CheckOptions) -> anyhow::Result<()> {
    let CheckOptions { addresses, json } = opts;
    let every = addresses.is_empty();
    let (facts, addresses) =
        facts::gather(&addresses).context("gathering this host's addresses, rules and routes")?;
    if addresses.is_empty() {
        bail!("no address to check: this host has no global address (give --addresses)");
    }
    let report = Report::new(&facts, addresses, every);
    if json {
        print_json(&report)?;
    } else {
        print_report(&report);
    }
    match report.problems {
        0 => Ok(()),
        1 => bail!("1 problem found"),
        n => bail!("{n} problems found"),
    }
}

fn print_report(report: &Report) {
    let list: Vec<String> = report.addresses.iter().map(|a| a.to_string()).collect();
    println!(
        "checking {}{}",
        list.join(", "),
        match report.every_global_address {
            true => " (every global address of this host; --addresses to choose)",
            false => "",
        }
    );
    for f in &report.findings {
        match f.ok {
            true => println!("ok: {}: {}", f.address, f.message),
            false => {
                println!("problem: {}: {}", f.address, f.message);
                for c in &f.fix {
                    println!("  fix: {c}");
                }
            }
        }
    }
    let fixes = report.fixes();
    if !fixes.is_empty() {
        println!(
            "\nall the fixes, in order (they last until the next reboot: `lb guest plan` on the \
             edge prints the persistent forms):"
        );
        for c in fixes {
            println!("  {c}");
        }
    }
}
