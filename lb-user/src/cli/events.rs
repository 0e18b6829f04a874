//! `lb events`: what the running daemon does, as it happens.

use std::{io::Write as _, time::Duration};

use anyhow::bail;
use lb_user::rpc::{Client, Reply, Request};

use super::PinArgs;

/// Follow the running daemon's events: path transitions, decisions, reloads (taken or
/// rejected), drains, datapath-suspect flags, interfaces going and coming back. One line
/// each, or one JSON object per line with `--json`. Ends when the daemon stops.
#[derive(clap::Args)]
pub struct Options {
    /// Print each event as one JSON object per line.
    #[arg(long)]
    json: bool,
    /// First print the events of this recent past (e.g. `10m`, `1h`; the daemon keeps the
    /// last 4096).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    since: Option<Duration>,
    /// Print the past events (`--since`) and exit instead of following.
    #[arg(long, requires = "since")]
    no_follow: bool,
}

pub fn run(opts: Options, pin: PinArgs) -> anyhow::Result<()> {
    let Options {
        json,
        since,
        no_follow,
    } = opts;
    let mut client = Client::connect(&pin.pin_dir)?;
    client.send(&Request::Events {
        since_ms: since.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64),
        follow: !no_follow,
    })?;
    let mut out = std::io::stdout().lock();
    let mut stopped = false;
    // The first answer comes at once; then events come when they happen.
    let mut timeout = Some(Duration::from_secs(10));
    while let Some(reply) = client.next(timeout)? {
        timeout = None;
        match reply {
            Reply::Event(e) => {
                stopped |= e.kind == "stopping";
                if json {
                    writeln!(out, "{}", serde_json::to_string(&e)?)?;
                } else {
                    writeln!(out, "{e}")?;
                }
                out.flush()?;
            }
            Reply::Now => {
                if no_follow {
                    return Ok(());
                }
            }
            other => bail!("the daemon answered something else: {other:?}"),
        }
    }
    if !stopped {
        bail!("the daemon closed the connection");
    }
    Ok(())
}
