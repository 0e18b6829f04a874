//! The daemon's side of the control socket ([`crate::rpc`]): the listener, one task per
//! connection, and the event log `lb events` follows.
//!
//! A connection's task reads its one request and hands it to the daemon's loop ([`Asked`]),
//! which answers between two of its other jobs: a reload is applied by the same code, in the
//! same order, as one from SIGHUP, and nothing is read half-changed. Followers of the events
//! get them over a broadcast channel: a slow reader misses events (and is told how many), it
//! never holds the daemon up.

use std::{
    collections::VecDeque,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use log::{debug, warn};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{
        UnixListener, UnixStream,
        unix::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::{broadcast, mpsc, oneshot},
};

use crate::rpc::{EVENT_HISTORY, Event, MAX_REQUEST, Reply, Request};

/// A request handed to the daemon's loop, with where its answer goes.
pub(crate) struct Asked {
    pub request: Request,
    pub answer: oneshot::Sender<Answer>,
}

/// The daemon's answer to an [`Asked`].
pub(crate) enum Answer {
    One(Reply),
    /// The past events asked for, then (when following) the live ones.
    Events {
        past: Vec<Event>,
        live: Option<broadcast::Receiver<Event>>,
    },
}

/// The control socket, bound; removed when dropped.
pub(crate) struct Socket {
    path: PathBuf,
    /// Held by every connection's task: how many are open.
    open: std::sync::Arc<()>,
}

impl Socket {
    /// Waits (at most `within`) for the open connections to end: once the event log is
    /// dropped, its followers write what is left and close, so `lb events` sees the stop.
    pub(crate) async fn drain(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while std::sync::Arc::strong_count(&self.open) > 1 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket of pin directory `pin` and serves it on the current runtime,
/// handing requests to `tx`. A socket file left by a daemon that died is replaced: whoever
/// runs here holds the pin directory's lock, so no other daemon serves it.
pub(crate) fn listen(pin: &Path, tx: mpsc::Sender<Asked>) -> anyhow::Result<Socket> {
    let path = crate::rpc::socket_path(pin);
    let dir = path.parent().unwrap_or(Path::new(crate::rpc::SOCKET_DIR));
    crate::datapath::lock::secure_dir(dir)?;
    match std::fs::remove_file(&path) {
        Ok(()) => debug!("replaced a stale control socket {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("removing {}", path.display())),
    }
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    let socket = Socket {
        path: path.clone(),
        open: Default::default(),
    };
    let open = std::sync::Arc::downgrade(&socket.open);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let held = open.upgrade();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        serve(stream, tx).await;
                        drop(held);
                    });
                }
                Err(e) => {
                    warn!("control socket: accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(socket)
}

/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

async fn serve(stream: UnixStream, tx: mpsc::Sender<Asked>) {
    let allowed = peer_allowed(&stream);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let request = match allowed {
        Ok(()) => read_request(&mut reader).await,
        Err(e) => Err(e),
    };
    let answer = match request {
        Err(message) => Answer::One(Reply::Error { message }),
        Ok(request) => {
            let (answer, rx) = oneshot::channel();
            if tx.send(Asked { request, answer }).await.is_err() {
                return;
            }
            match rx.await {
                Ok(a) => a,
                // The daemon is stopping.
                Err(_) => return,
            }
        }
    };
    let _ = reply(&mut reader, &mut write, answer).await;
}

/// Only root and the daemon's own user may ask (the socket's mode says the same; this holds
/// also when the socket's directory was made by someone else).
fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("reading the peer's credentials: {e}"))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid() == 0 || cred.uid() == me {
        Ok(())
    } else {
        Err(format!(
            "uid {} may not use this socket (only root and uid {me})",
            cred.uid()
        ))
    }
}

/// The client's one request line.
async fn read_request(reader: &mut BufReader<OwnedReadHalf>) -> Result<Request, String> {
    let mut line = String::new();
    let mut limited = (&mut *reader).take(MAX_REQUEST as u64 + 1);
    let read = limited.read_line(&mut line);
    match tokio::time::timeout(REQUEST_TIMEOUT, read).await {
        Err(_) => return Err(format!("no request within {REQUEST_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("reading the request: {e}")),
        Ok(Ok(_)) => {}
    }
    if line.len() > MAX_REQUEST {
        return Err(format!("a request is at most {MAX_REQUEST} bytes"));
    }
    if !line.ends_with('\n') {
        return Err("a request is one line, ended by a newline".into());
    }
    serde_json::from_str(&line).map_err(|e| format!("not a request this daemon understands: {e}"))
}

/// Writes `answer`; a stream of events ends when the client goes (or the daemon stops).
async fn reply(
    reader: &mut BufReader<OwnedReadHalf>,
    write: &mut OwnedWriteHalf,
    answer: Answer,
) -> std::io::Result<()> {
    let line = |reply: &Reply| {
        let mut text = serde_json::to_string(reply).unwrap_or_default();
        text.push('\n');
        text
    };
    match answer {
        Answer::One(r) => write.write_all(line(&r).as_bytes()).await,
        Answer::Events { past, live } => {
            for e in past {
                write.write_all(line(&Reply::Event(e)).as_bytes()).await?;
            }
            write.write_all(line(&Reply::Now).as_bytes()).await?;
            let Some(mut live) = live else {
                return Ok(());
            };
            let mut scratch = [0u8; 64];
            loop {
                let e = tokio::select! {
                    got = live.recv() => match got {
                        Ok(e) => e,
                        Err(broadcast::error::RecvError::Lagged(n)) => lost(n),
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    },
                    // The client says nothing more: anything read, or its end, ends it.
                    _ = reader.read(&mut scratch) => return Ok(()),
                };
                write.write_all(line(&Reply::Event(e)).as_bytes()).await?;
            }
        }
    }
}

/// The event a reader gets in place of `n` it was too slow to take.
fn lost(n: u64) -> Event {
    Event {
        seq: 0,
        at: now_text(),
        kind: "lost".into(),
        target: None,
        path: None,
        from: None,
        to: None,
        message: format!("{n} events were not delivered: this reader was too slow"),
    }
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// What the daemon did and saw, kept for `lb events --since` and sent to its followers.
pub(crate) struct EventLog {
    seq: u64,
    recent: VecDeque<(SystemTime, Event)>,
    live: broadcast::Sender<Event>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self {
            seq: 0,
            recent: VecDeque::with_capacity(EVENT_HISTORY),
            live: broadcast::channel(EVENT_HISTORY).0,
        }
    }
}

/// The subject of an event: a target, and a path of it.
#[derive(Clone, Copy, Default)]
pub(crate) struct Subject<'a> {
    pub target: Option<&'a str>,
    pub path: Option<&'a str>,
    /// A transition's health before and after.
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
}

impl EventLog {
    /// Records an event of `kind` and sends it to the followers; logs it at `level` with its
    /// fields (`None`: the caller logged it already, in more words).
    pub(crate) fn emit(
        &mut self,
        level: Option<tracing::Level>,
        kind: &str,
        subject: Subject<'_>,
        message: String,
    ) {
        let Subject {
            target,
            path,
            from,
            to,
        } = subject;
        macro_rules! log_at {
            ($mac:ident) => {
                tracing::$mac!(kind, target_name = target, path, from, to, "{message}")
            };
        }
        match level {
            Some(tracing::Level::ERROR) => log_at!(error),
            Some(tracing::Level::WARN) => log_at!(warn),
            Some(_) => log_at!(info),
            None => {}
        }
        let now = SystemTime::now();
        self.seq += 1;
        let event = Event {
            seq: self.seq,
            at: humantime::format_rfc3339_millis(now).to_string(),
            kind: kind.into(),
            target: subject.target.map(Into::into),
            path: subject.path.map(Into::into),
            from: subject.from.map(Into::into),
            to: subject.to.map(Into::into),
            message,
        };
        if self.recent.len() == EVENT_HISTORY {
            self.recent.pop_front();
        }
        self.recent.push_back((now, event.clone()));
        // No follower is no error.
        let _ = self.live.send(event);
    }

    /// The events of the last `since` (none for `None`), and a receiver of the next ones
    /// (when `follow`): taken together, so none falls between the two.
    pub(crate) fn subscribe(&self, since: Option<Duration>, follow: bool) -> Answer {
        let from = since.and_then(|d| SystemTime::now().checked_sub(d));
        let past = match (since, from) {
            (None, _) => Vec::new(),
            // Longer ago than the clock goes back: everything kept.
            (Some(_), None) => self.recent.iter().map(|(_, e)| e.clone()).collect(),
            (Some(_), Some(from)) => self
                .recent
                .iter()
                .filter(|(at, _)| *at >= from)
                .map(|(_, e)| e.clone())
                .collect(),
        };
        Answer::Events {
            past,
            live: follow.then(|| self.live.subscribe()),
        }
    }
}

impl super::Daemon {
    /// Answers a request of the control socket (see [`Asked`]).
    pub(super) fn answer(&mut self, asked: Asked) {
        let answer = match asked.request {
            Request::Reload { dry_run } => Answer::One(Reply::Reload(self.reload(dry_run))),
            Request::Health {} => Answer::One(Reply::Health(self.health())),
            Request::Events { since_ms, follow } => self
                .log
                .subscribe(since_ms.map(Duration::from_millis), follow),
        };
        // The client may have gone meanwhile.
        let _ = asked.answer.send(answer);
    }

    /// Each configured path's probe settings, last result and streak.
    fn health(&self) -> crate::rpc::HealthReply {
        use crate::rpc::{LastProbe, PathHealth, ProbeSettings, ProbeState, Streak};
        let now = SystemTime::now();
        let mut paths = Vec::new();
        for t in &self.model.config.targets {
            for p in &t.paths {
                let Some(id) = self.model.ids.paths.get(&(t.name.clone(), p.name.clone())) else {
                    continue;
                };
                let report = self.last.get(id);
                let health = self.model.paths.get(id).and_then(|s| s.health);
                let last = report.map(|r| {
                    let age = now.duration_since(r.at).unwrap_or_default();
                    let at = humantime::format_rfc3339_millis(r.at).to_string();
                    match &r.result {
                        Some(result) => LastProbe {
                            ok: result.ok,
                            detail: result.detail.clone(),
                            timed_out: result.timed_out,
                            rtt_ms: result.rtt.map(|d| d.as_secs_f64() * 1000.0),
                            at,
                            age_ms: age.as_millis() as u64,
                        },
                        None => LastProbe {
                            ok: false,
                            detail: "no successful probe within the hold time".into(),
                            timed_out: true,
                            rtt_ms: None,
                            at,
                            age_ms: age.as_millis() as u64,
                        },
                    }
                });
                let streak = report.filter(|r| r.streak > 0).map(|r| match health {
                    Some(crate::control::health::Health::Down) => Streak {
                        of: "successes".into(),
                        count: r.streak,
                        needed: p.probe.rise,
                    },
                    _ => Streak {
                        of: "failures".into(),
                        count: r.streak,
                        needed: p.probe.fall,
                    },
                });
                paths.push(PathHealth {
                    target: t.name.clone(),
                    path: p.name.clone(),
                    state: ProbeState {
                        probe: ProbeSettings::of(&p.probe),
                        last,
                        streak,
                        history: report.map(|r| r.history.clone()).unwrap_or_default(),
                    },
                });
            }
        }
        crate::rpc::HealthReply {
            pid: std::process::id(),
            paths,
        }
    }
}
