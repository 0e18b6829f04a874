//! `lb reload`: make the running daemon re-read its configuration, and say what it did.

use std::time::Duration;

use anyhow::{anyhow, bail};
use lb_user::rpc::{Client, Reply, Request};

use super::{PinArgs, print_json};

/// Make the running daemon re-read and apply its configuration file, and wait for its
/// answer: the changes it applied, or why it rejected the file (then it keeps running the
/// configuration it had, and this command exits non-zero).
#[derive(clap::Args)]
pub struct Options {
    /// Only print what a reload would change (computed by the daemon from the file and the
    /// configuration it runs); nothing is applied.
    #[arg(long)]
    dry_run: bool,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    json: bool,
}

/// How long the daemon may take to apply a configuration (attaching to interfaces included).
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options { dry_run, json } = opts;
    let reply = Client::ask(&pin.pin_dir, &Request::Reload { dry_run }, ANSWER_WITHIN)?;
    let Reply::Reload(r) = reply else {
        return Err(anyhow!("the daemon answered something else: {reply:?}"));
    };
    if json {
        print_json(&r)?;
    } else {
        for c in &r.changes {
            println!("{c}");
        }
        for n in &r.notes {
            println!("note: {n}");
        }
        let changes = match r.changes.len() {
            0 => "no changes".to_string(),
            1 => "1 change".to_string(),
            n => format!("{n} changes"),
        };
        match (r.ok, r.dry_run) {
            (true, true) => println!(
                "the file would be taken: {changes}, {} map writes (dry run: nothing applied)",
                r.map_writes
            ),
            (true, false) => println!("reloaded: {changes}, {} map writes", r.map_writes),
            (false, _) => {}
        }
    }
    if !r.ok {
        let why = r.error.as_deref().unwrap_or("no reason given");
        if r.dry_run {
            bail!("the file would be rejected: {why}");
        }
        bail!("reload rejected, the daemon keeps its running configuration: {why}");
    }
    Ok(())
}
