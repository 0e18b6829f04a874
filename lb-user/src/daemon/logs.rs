//! The daemon's logs: human-readable lines on stderr by default, JSON lines with
//! `--log-format json`, and the journal's native protocol (each event's fields as journal
//! fields) when systemd connected stderr to the journal. `RUST_LOG` filters (default `info`).
//! Records of the `log` crate (the rest of the code, aya-log's datapath records) go through
//! the same subscriber.

use std::io::IsTerminal as _;

use anyhow::Context as _;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// How `lb run` writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `journald` when stderr is connected to the journal (`JOURNAL_STREAM`), else `human`.
    #[default]
    Auto,
    /// One line per record: time, level, module, message and fields.
    Human,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with `message`).
    Json,
    /// The journal's native protocol: the message, the priority, and each field as a journal
    /// field (`LB_KIND=transition`, `LB_TARGET_NAME=web`, …), identifier `lb`.
    Journald,
}

/// Installs the subscriber for `format`; returns the format in force (`auto` resolved).
pub fn init(format: LogFormat) -> anyhow::Result<LogFormat> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Human,
        f => f,
    };
    let registry = tracing_subscriber::registry().with(filter());
    match format {
        LogFormat::Journald => {
            let journal = tracing_journald::layer()
                .context("connecting to the journal")?
                // `LB_KIND=transition`, `LB_TARGET_NAME=web`, … (the notify hooks' prefix).
                .with_field_prefix(Some("LB".into()))
                .with_syslog_identifier("lb".into())
                // syslog's meaning of each level (the crate maps info to notice).
                .with_priority_mappings(tracing_journald::PriorityMappings {
                    info: tracing_journald::Priority::Informational,
                    debug: tracing_journald::Priority::Debug,
                    ..tracing_journald::PriorityMappings::new()
                });
            registry.with(journal).try_init()
        }
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Human | LogFormat::Auto => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    }
    .context("installing the log subscriber")?;
    Ok(format)
}

/// Whether stderr is the journal's stream: systemd sets `JOURNAL_STREAM` to its
/// `device:inode` (see systemd.exec(5)); a stderr redirected elsewhere by the service does
/// not match.
fn stderr_is_journal() -> bool {
    use std::os::{fd::AsFd as _, unix::fs::MetadataExt as _};
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
