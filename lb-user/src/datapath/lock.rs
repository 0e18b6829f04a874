//! Who may write an instance's pinned state: an `flock` per pin directory.
//!
//! The daemon holds its pin directory's lock for as long as it runs; a command that writes the
//! pinned maps (`lb path`, `lb down`) takes it for the time of its change. So "is a daemon
//! running here?" has an answer that cannot be stale: the lock is held by a live process (a
//! pid recorded in the maps can outlive its daemon and be reused by another process). A second
//! daemon on the same directory is refused, and a command never applies a change beside a
//! daemon that would undo it.
//!
//! The lock file is not in the pin directory, which is on a bpffs (only pinned objects live
//! there, and `--replace` or `lb down` unmount it): it is `/run/lock/lb/<the directory's path,
//! escaped>.lock`, in a directory of root's alone. It holds the holder's role and pid, which
//! the holder writes right after taking the lock and clears before releasing it. `lb down`
//! removes it with the rest of the instance; a taker that locked the removed file sees so and
//! opens the path again.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

/// Where the lock files live.
pub const LOCK_DIR: &str = "/run/lock/lb";

/// What a holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `lb run`, for its lifetime.
    Daemon,
    /// A command changing the pinned state.
    Command,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Daemon => "daemon",
            Role::Command => "command",
        }
    }
}

/// Who holds a lock. `pid` 0: the holder has not written itself in yet (it just took it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    pub role: Role,
    pub pid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not root's alone (owner uid {uid}, mode {mode:o}): another user could hold or forge the locks",
        path.display()
    )]
    Insecure { path: PathBuf, uid: u32, mode: u32 },
    #[error("the pin directory {} is in use by the lb daemon (pid {})", pin.display(), holder.pid)]
    HeldByDaemon { pin: PathBuf, holder: Holder },
    #[error("the pin directory {} is busy: another lb command (pid {}) is changing it", pin.display(), holder.pid)]
    HeldByCommand { pin: PathBuf, holder: Holder },
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct PinLock {
    file: File,
    path: PathBuf,
}

/// The lock file of pin directory `pin`, in `dir`.
pub fn lock_path(dir: &Path, pin: &Path) -> PathBuf {
    dir.join(format!("{}.lock", instance_name(pin)))
}

/// The name of the instance of pin directory `pin` in the files kept for it outside the
/// bpffs (its lock, its control socket): the directory's canonical path, its components
/// joined by `-` and every byte but `[A-Za-z0-9_.]` escaped as `%XX`, so different
/// directories never share a name and spellings of one directory always do.
pub fn instance_name(pin: &Path) -> String {
    let pin = fs::canonicalize(pin).unwrap_or_else(|_| normalize(pin));
    let mut name = String::new();
    for c in pin.components() {
        let Component::Normal(part) = c else { continue };
        if !name.is_empty() {
            name.push('-');
        }
        for b in part.as_encoded_bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => name.push(*b as char),
                _ => name.push_str(&format!("%{b:02X}")),
            }
        }
    }
    name
}

/// `pin` made absolute with `.`, `..` and repeated separators resolved by name (for a path that
/// does not exist yet, so cannot be canonicalized).
fn normalize(pin: &Path) -> PathBuf {
    let absolute = std::path::absolute(pin).unwrap_or_else(|_| pin.to_path_buf());
    let mut out = PathBuf::from("/");
    for c in absolute.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            _ => {}
        }
    }
    out
}

impl PinLock {
    /// Takes the lock of `pin` as `role`, waiting up to `wait` while a command holds it (a
    /// command's change takes moments); fails at once, naming it, when a daemon holds it.
    pub fn acquire(pin: &Path, role: Role, wait: Duration) -> Result<Self, Error> {
        Self::acquire_in(Path::new(LOCK_DIR), pin, role, wait)
    }

    /// [`Self::acquire`] with the lock files in `dir` (tests).
    pub fn acquire_in(dir: &Path, pin: &Path, role: Role, wait: Duration) -> Result<Self, Error> {
        secure_dir(dir)?;
        let path = lock_path(dir, pin);
        let io_err = |what, source| Error::Io {
            what,
            path: path.clone(),
            source,
        };
        let deadline = Instant::now() + wait;
        let mut file = loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|e| io_err("opening the lock", e))?;
            match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                // Held, unless `lb down` removed the file meanwhile (a lock on a file no longer
                // at the path locks nothing another process would take): open it again.
                Ok(()) if same_file(&file, &path) => break file,
                Ok(()) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Unreadable: the holder took it a moment ago; it is written in soon.
                    let holder = read_holder(&mut file).unwrap_or(Holder {
                        role: Role::Command,
                        pid: 0,
                    });
                    let pin = pin.to_path_buf();
                    if holder.role == Role::Daemon {
                        return Err(Error::HeldByDaemon { pin, holder });
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::HeldByCommand { pin, holder });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(io_err("locking", e)),
            }
        };
        let me = format!("{} {}\n", role.name(), std::process::id());
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(me.as_bytes()))
            .map_err(|e| io_err("writing the lock's holder", e))?;
        Ok(Self { file, path })
    }

    /// Removes the lock file, then lets go (`lb down`: nothing of the instance is left). A
    /// process waiting on the removed file finds it gone once it has the lock, and opens the
    /// path again.
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }

    /// Who holds the lock of `pin` now; `None` when nobody does.
    pub fn holder(pin: &Path) -> Result<Option<Holder>, Error> {
        Self::holder_in(Path::new(LOCK_DIR), pin)
    }

    /// [`Self::holder`] with the lock files in `dir` (tests).
    pub fn holder_in(dir: &Path, pin: &Path) -> Result<Option<Holder>, Error> {
        let path = lock_path(dir, pin);
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    what: "opening the lock",
                    path,
                    source,
                });
            }
        };
        // A shared lock succeeds only while nobody holds the exclusive one; it is let go at
        // once (a daemon taking the lock meanwhile retries).
        match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
            Ok(()) => {
                let _ = flock(&file, libc::LOCK_UN);
                Ok(None)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The holder writes itself in right after taking the lock.
                for _ in 0..50 {
                    if let Some(h) = read_holder(&mut file) {
                        return Ok(Some(h));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Ok(Some(Holder {
                    role: Role::Command,
                    pid: 0,
                }))
            }
            Err(source) => Err(Error::Io {
                what: "testing the lock",
                path,
                source,
            }),
        }
    }
}

impl Drop for PinLock {
    fn drop(&mut self) {
        // Cleared first, so nobody reads a gone holder; the lock goes with the descriptor.
        let _ = self.file.set_len(0);
    }
}

/// Whether `file` is the file at `path` now.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn flock(file: &File, op: i32) -> io::Result<()> {
    // SAFETY: flock on a descriptor this `File` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The holder written in the lock file, if it is complete.
fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    let (role, pid) = text.strip_suffix('\n')?.split_once(' ')?;
    let role = match role {
        "daemon" => Role::Daemon,
        "command" => Role::Command,
        _ => return None,
    };
    Some(Holder {
        role,
        pid: pid.parse().ok()?,
    })
}

/// Creates `dir` (root's alone) or checks that it is: a lock directory another user can write
/// to would let them block the daemon or name a process for `lb path` to signal.
pub(crate) fn secure_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Io {
            what: "creating",
            path: dir.into(),
            source,
        })?;
    let meta = fs::symlink_metadata(dir).map_err(|source| Error::Io {
        what: "inspecting",
        path: dir.into(),
        source,
    })?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(Error::Insecure {
            path: dir.into(),
            uid: meta.uid(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-lock-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn paths_are_escaped_and_normalized() {
        let dir = Path::new("/run/lock/lb");
        assert_eq!(
            lock_path(dir, Path::new("/nonexistent/bpf/lb-a")),
            dir.join("nonexistent-bpf-lb%2Da.lock")
        );
        // Spellings of one directory share a lock; "a-b" and "a/b" do not.
        assert_eq!(
            lock_path(dir, Path::new("/nonexistent/x/../bpf//lb/")),
            lock_path(dir, Path::new("/nonexistent/bpf/lb"))
        );
        assert_ne!(
            lock_path(dir, Path::new("/nonexistent/a-b")),
            lock_path(dir, Path::new("/nonexistent/a/b"))
        );
    }

    #[test]
    fn a_second_holder_is_told_who_holds_it() {
        let dir = scratch("second");
        let pin = Path::new("/nonexistent/pin");
        assert_eq!(PinLock::holder_in(&dir, pin).expect("readable"), None);
        let held = PinLock::acquire_in(&dir, pin, Role::Daemon, Duration::ZERO).expect("free");
        let me = Holder {
            role: Role::Daemon,
            pid: std::process::id(),
        };
        assert_eq!(PinLock::holder_in(&dir, pin).expect("readable"), Some(me));
        let asked = Instant::now();
        let err = PinLock::acquire_in(&dir, pin, Role::Daemon, Duration::from_secs(30))
            .expect_err("held");
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "a daemon holder is not waited for"
        );
        assert!(
            matches!(err, Error::HeldByDaemon { holder, .. } if holder == me),
            "{err}"
        );
        assert!(err.to_string().contains("in use by the lb daemon"), "{err}");
        // Another directory's lock is another lock.
        let other = PinLock::acquire_in(
            &dir,
            Path::new("/nonexistent/pin2"),
            Role::Command,
            Duration::ZERO,
        );
        assert!(other.is_ok());
        drop(held);
        // Another test of this process forking (a child holds copies of every descriptor until
        // it execs) can keep the lock a moment longer.
        let deadline = Instant::now() + Duration::from_secs(2);
        while PinLock::holder_in(&dir, pin).expect("readable").is_some() {
            assert!(Instant::now() < deadline, "released");
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_waiting_taker_gets_the_lock_when_it_is_released() {
        let dir = scratch("wait");
        let pin = Path::new("/nonexistent/pin");
        let held = PinLock::acquire_in(&dir, pin, Role::Command, Duration::ZERO).expect("free");
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            drop(held);
        });
        let got = PinLock::acquire_in(&dir, pin, Role::Daemon, Duration::from_secs(5));
        release.join().expect("released");
        assert!(got.is_ok(), "{got:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_removed_lock_file_is_made_again_by_the_next_taker() {
        let dir = scratch("removed");
        let pin = Path::new("/nonexistent/pin");
        let held = PinLock::acquire_in(&dir, pin, Role::Command, Duration::ZERO).expect("free");
        let path = lock_path(&dir, pin);
        assert!(path.exists());
        held.remove();
        assert!(!path.exists(), "removed");
        let again = PinLock::acquire_in(&dir, pin, Role::Daemon, Duration::ZERO).expect("free");
        assert!(path.exists(), "made again");
        assert_eq!(
            PinLock::holder_in(&dir, pin).expect("readable"),
            Some(Holder {
                role: Role::Daemon,
                pid: std::process::id()
            })
        );
        drop(again);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_lock_directory_others_can_write_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = scratch("insecure");
        fs::create_dir_all(&dir).expect("created");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = PinLock::acquire_in(&dir, Path::new("/x"), Role::Daemon, Duration::ZERO)
            .expect_err("refused");
        assert!(matches!(err, Error::Insecure { .. }), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
