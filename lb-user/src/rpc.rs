//! The running daemon's control socket: what `lb reload`, `lb events` and `lb status` ask the
//! daemon itself, beside what they read from the pinned maps.
//!
//! A unix stream socket at `/run/lb/<instance>.sock` ([`socket_path`]; the instance named
//! after its pin directory as the lock is, [`crate::datapath::lock::instance_name`]). Not in the
//! pin directory: a bpffs holds pinned objects only. `/run/lb` is root's alone, the socket is
//! mode 0600, and the daemon answers only peers of its own user or root (`SO_PEERCRED`).
//!
//! The protocol is JSON lines: one [`Request`] per connection, answered by one [`Reply`] line
//! (reload, health) or by a stream of [`Reply::Event`] lines until either side closes
//! (events). A request line longer than [`MAX_REQUEST`] is refused.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Serialize};

/// Where the control sockets live.
pub const SOCKET_DIR: &str = "/run/lb";

/// The longest request line taken, in bytes.
pub const MAX_REQUEST: usize = 4096;

/// How many events the daemon keeps for `lb events --since`.
pub const EVENT_HISTORY: usize = 4096;

/// The control socket of the instance of pin directory `pin`. A name too long for a socket
/// address (108 bytes) is replaced by a hash of it.
pub fn socket_path(pin: &Path) -> PathBuf {
    socket_path_in(Path::new(SOCKET_DIR), pin)
}

/// [`socket_path`] in `dir` (tests).
pub fn socket_path_in(dir: &Path, pin: &Path) -> PathBuf {
    let name = crate::datapath::lock::instance_name(pin);
    let path = dir.join(format!("{name}.sock"));
    if path.as_os_str().len() < 100 {
        return path;
    }
    // FNV-1a: stable across builds and Rust versions (the CLI and the daemon may differ).
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    dir.join(format!("h{hash:016x}.sock"))
}

/// What a client asks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Re-read the configuration file and apply it (`dry_run`: only say what would change).
    Reload { dry_run: bool },
    /// Each path's probe state, as only the daemon knows it.
    Health {},
    /// The events kept since `since_ms` ago (`None`: none of the past), then (with `follow`)
    /// every new one as it happens.
    Events { since_ms: Option<u64>, follow: bool },
}

/// What the daemon answers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Reload(ReloadReply),
    Health(HealthReply),
    Event(Event),
    /// The end of the past events (`lb events --since`): what follows happens now.
    Now,
    /// The request was not understood, or not allowed.
    Error {
        message: String,
    },
}

/// The result of a reload (or of its dry run).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadReply {
    /// The file was taken (with `dry_run`: it would be).
    pub ok: bool,
    /// Why it was not (`ok` false): the running configuration stays.
    pub error: Option<String>,
    /// Only the differences were computed; nothing was applied.
    pub dry_run: bool,
    /// What differs between the running configuration and the file, in the file's terms.
    pub changes: Vec<Change>,
    /// The map entries the datapath tables differ in (writes and deletions).
    pub map_writes: usize,
    /// Things the reload does not apply (and how to apply them).
    pub notes: Vec<String>,
}

pub use crate::config::diff::Change;

/// Each path's probe state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HealthReply {
    pub pid: u32,
    pub paths: Vec<PathHealth>,
}

/// What the daemon knows of one path's probes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PathHealth {
    pub target: String,
    pub path: String,
    #[serde(flatten)]
    pub state: ProbeState,
}

/// A path's probes: their settings, last result and streak.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeState {
    /// The probe settings in force.
    pub probe: ProbeSettings,
    /// The last probe's result (`None`: none has ended yet).
    pub last: Option<LastProbe>,
    /// Results in a row that contradict the path's state, toward `fall` (an up path) or
    /// `rise` (a down one); `None` when the last result agreed.
    pub streak: Option<Streak>,
    /// The last results, oldest first: `+` a success, `-` a failure.
    pub history: String,
}

/// A probe's settings, as configured (after inheritance).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProbeSettings {
    /// `icmp`, `tcp`, `http` or `https`.
    #[serde(rename = "type")]
    pub kind: String,
    pub port: Option<u16>,
    pub http_path: Option<String>,
    pub expect_status: Option<u16>,
    pub interval_ms: u64,
    /// `None`: adaptive (from the measured round trip).
    pub timeout_ms: Option<u64>,
    pub rise: u32,
    pub fall: u32,
}

impl std::fmt::Display for ProbeSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.kind)?;
        if let Some(port) = self.port {
            write!(f, " port {port}")?;
        }
        if let Some(path) = &self.http_path {
            write!(f, " GET {path}")?;
        }
        if let Some(status) = self.expect_status {
            write!(f, " expect {status}")?;
        }
        write!(f, ", every {} ms, timeout ", self.interval_ms)?;
        match self.timeout_ms {
            Some(ms) => write!(f, "{ms} ms")?,
            None => f.write_str("adaptive")?,
        }
        write!(f, ", rise {} fall {}", self.rise, self.fall)
    }
}

impl ProbeSettings {
    pub fn of(probe: &crate::config::Probe) -> Self {
        use crate::config::ProbeKind;
        let (kind, port, http_path, expect_status) = match &probe.kind {
            ProbeKind::Icmp => ("icmp", None, None, None),
            ProbeKind::Tcp { port } => ("tcp", Some(*port), None, None),
            ProbeKind::Http {
                port,
                path,
                expect_status,
            } => (
                "http",
                Some(*port),
                Some(path.clone()),
                Some(*expect_status),
            ),
            ProbeKind::Https {
                port,
                path,
                expect_status,
                ..
            } => (
                "https",
                Some(*port),
                Some(path.clone()),
                Some(*expect_status),
            ),
        };
        Self {
            kind: kind.into(),
            port,
            http_path,
            expect_status,
            interval_ms: probe.interval.as_millis() as u64,
            timeout_ms: probe.timeout.map(|t| t.as_millis() as u64),
            rise: probe.rise,
            fall: probe.fall,
        }
    }
}

/// The last probe of a path.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LastProbe {
    pub ok: bool,
    /// What happened: e.g. `connected`, `connection refused`, `timed out after 200 ms`,
    /// `HTTP 503`.
    pub detail: String,
    pub timed_out: bool,
    pub rtt_ms: Option<f64>,
    /// When it ended (RFC 3339, milliseconds).
    pub at: String,
    /// How long ago it ended when the daemon answered.
    pub age_ms: u64,
}

/// Results in a row against the path's state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Streak {
    /// `failures` (an up path, toward `fall`) or `successes` (a down path, toward `rise`).
    pub of: String,
    pub count: u32,
    /// `fall` or `rise`: the count that changes the state.
    pub needed: u32,
}

/// Something the daemon did or saw, as `lb events` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// Numbers the daemon's events from its start, without gaps.
    pub seq: u64,
    /// When (RFC 3339, milliseconds).
    pub at: String,
    /// `started`, `stopping`, `transition`, `decision`, `reload`, `reload_rejected`, `drain`,
    /// `suspect`, `interface`, `settled`, or `lost` (events this reader missed).
    pub kind: String,
    pub target: Option<String>,
    pub path: Option<String>,
    /// For `transition`: the health before (`unknown` when none was known) and after.
    pub from: Option<String>,
    pub to: Option<String>,
    /// One line for people, as the log says it.
    pub message: String,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:<15} {}", self.at, self.kind, self.message)
    }
}

/// A connection to a running daemon.
pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    socket: PathBuf,
}

impl Client {
    /// Connects to the daemon of pin directory `pin`.
    pub fn connect(pin: &Path) -> anyhow::Result<Self> {
        let socket = socket_path(pin);
        let stream = UnixStream::connect(&socket).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow!(
                "no daemon answers on {} (is `lb run --pin-dir {}` running?)",
                socket.display(),
                pin.display()
            ),
            std::io::ErrorKind::PermissionDenied => anyhow!(
                "{}: permission denied (only root and the daemon's user may use it)",
                socket.display()
            ),
            _ => anyhow!(e).context(format!("connecting to {}", socket.display())),
        })?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self {
            stream,
            reader,
            socket,
        })
    }

    /// Sends `request`; the answer is read with [`Self::next`].
    pub fn send(&mut self, request: &Request) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        self.stream
            .write_all(line.as_bytes())
            .with_context(|| format!("writing to {}", self.socket.display()))
    }

    /// The next reply line, waiting at most `timeout` (`None`: for ever); `None` at the end
    /// of the stream (the daemon closed it).
    pub fn next(&mut self, timeout: Option<Duration>) -> anyhow::Result<Option<Reply>> {
        self.stream.set_read_timeout(timeout)?;
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!(
                    "the daemon did not answer within {:?} on {}",
                    timeout.unwrap_or_default(),
                    self.socket.display()
                )
            }
            Err(e) => return Err(e).context(format!("reading {}", self.socket.display())),
        }
        let reply: Reply = serde_json::from_str(&line)
            .with_context(|| format!("an answer lb does not understand: {}", line.trim_end()))?;
        if let Reply::Error { message } = reply {
            bail!("the daemon refused: {message}");
        }
        Ok(Some(reply))
    }

    /// One request, one reply.
    pub fn ask(pin: &Path, request: &Request, timeout: Duration) -> anyhow::Result<Reply> {
        let mut c = Self::connect(pin)?;
        c.send(request)?;
        c.next(Some(timeout))?
            .ok_or_else(|| anyhow!("the daemon closed the connection without an answer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_follow_the_pin_directory_and_stay_short() {
        let dir = Path::new("/run/lb");
        assert_eq!(
            socket_path_in(dir, Path::new("/nonexistent/bpf/lb-a")),
            dir.join("nonexistent-bpf-lb%2Da.sock")
        );
        assert_ne!(
            socket_path_in(dir, Path::new("/nonexistent/a-b")),
            socket_path_in(dir, Path::new("/nonexistent/a/b"))
        );
        let long = format!("/nonexistent/{}", "x".repeat(200));
        let a = socket_path_in(dir, Path::new(&long));
        let b = socket_path_in(dir, Path::new(&format!("{long}y")));
        assert!(a.as_os_str().len() < 108, "{}", a.display());
        assert_ne!(a, b);
        assert_eq!(a, socket_path_in(dir, Path::new(&long)));
    }

    #[test]
    fn requests_and_replies_are_json_lines_both_ways() {
        let requests = [
            Request::Reload { dry_run: true },
            Request::Health {},
            Request::Events {
                since_ms: Some(60_000),
                follow: true,
            },
        ];
        for r in requests {
            let text = serde_json::to_string(&r).expect("serializes");
            assert!(!text.contains('\n'));
            assert_eq!(serde_json::from_str::<Request>(&text).expect("parses"), r);
        }
        assert_eq!(
            serde_json::to_string(&Request::Reload { dry_run: false }).expect("serializes"),
            r#"{"op":"reload","dry_run":false}"#
        );
        // A request of another version is refused, not half understood.
        assert!(serde_json::from_str::<Request>(r#"{"op":"health","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"format_disk"}"#).is_err());
    }
}
