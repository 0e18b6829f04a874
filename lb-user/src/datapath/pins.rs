//! The pin directory: its paths, the bpffs it lives on, and pinning links into it.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};
use lb_common::maps::{self as m, LAYOUT};
use log::warn;

use crate::datapath::{
    error::Error,
    hook::{Hook, Role},
    maps::Maps,
};

/// The pin directory's paths.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub(crate) fn link(&self, role: Role, hook: Hook, iface: &str) -> PathBuf {
        self.links()
            .join(format!("{}{}@{iface}", role.pin_name(), hook.pin_suffix()))
    }
    pub(crate) fn installed(&self) -> bool {
        self.maps().join(m::META).exists()
    }

    /// Refuses pinned state another user could have written: the directory, `maps/`,
    /// `links/` and every pin in them must be owned by root and writable by neither group nor
    /// others.
    pub fn check_ownership(&self) -> Result<(), Error> {
        use std::os::unix::fs::MetadataExt as _;
        let mut paths = vec![self.root.clone()];
        for dir in [self.maps(), self.links()] {
            if !dir.exists() {
                continue;
            }
            paths.push(dir.clone());
            let entries = fs::read_dir(&dir).map_err(|source| Error::Fs {
                what: "reading",
                path: dir.clone(),
                source,
            })?;
            paths.extend(entries.flatten().map(|e| e.path()));
        }
        for path in paths {
            let meta = fs::symlink_metadata(&path).map_err(|source| Error::Fs {
                what: "inspecting",
                path: path.clone(),
                source,
            })?;
            let why = if meta.file_type().is_symlink() {
                Some("a symbolic link".to_owned())
            } else if meta.uid() != 0 {
                Some(format!("owned by uid {}, not root", meta.uid()))
            } else if meta.mode() & 0o022 != 0 {
                Some(format!(
                    "writable by {} (mode {:o})",
                    if meta.mode() & 0o002 != 0 {
                        "every user"
                    } else {
                        "its group"
                    },
                    meta.mode() & 0o7777
                ))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::UnsafePin { path, why });
            }
        }
        Ok(())
    }

    /// The links pinned here, as (role, hook, interface).
    pub fn attachments(&self) -> Result<Vec<(Role, Hook, String)>, Error> {
        let dir = self.links();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Fs {
                    what: "reading",
                    path: dir,
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let parsed = match name.split_once('@') {
                Some(("ingress", iface)) => Some((Role::Ingress, Hook::Xdp, iface.to_string())),
                Some(("return", iface)) => Some((Role::Return, Hook::Xdp, iface.to_string())),
                Some(("ingress-tc", iface)) => Some((Role::Ingress, Hook::Tc, iface.to_string())),
                Some(("return-tc", iface)) => Some((Role::Return, Hook::Tc, iface.to_string())),
                _ => None,
            };
            out.extend(parsed);
        }
        out.sort();
        Ok(out)
    }

    /// Opens the pinned maps (for the CLI), checking the layout.
    pub fn open(&self) -> Result<Maps, Error> {
        if !self.installed() {
            return Err(Error::NotInstalled {
                dir: self.root.clone(),
            });
        }
        self.check_ownership()?;
        let maps = Maps::open(&self.maps())?;
        let found = maps.meta()?.layout;
        if found != LAYOUT {
            return Err(Error::LayoutMismatch {
                dir: self.root.clone(),
                found,
                expected: LAYOUT,
            });
        }
        Ok(maps)
    }

    /// Detaches the program of `role` at `hook` from `iface` (removing its link pin).
    pub fn detach(&self, role: Role, hook: Hook, iface: &str) -> Result<bool, Error> {
        let path = self.link(role, hook, iface);
        if !path.exists() {
            return Ok(false);
        }
        match PinnedLink::from_pin(&path) {
            // Unpinning drops the last reference: the kernel detaches the program.
            Ok(link) => drop(link.unpin()),
            Err(e) => {
                warn!(
                    "{}: not a usable link pin ({e}); removing it",
                    path.display()
                );
                let _ = fs::remove_file(&path);
            }
        }
        Ok(true)
    }

    /// Removes everything: detaches every program, unpins every map, removes the directories
    /// and unmounts the bpffs lb mounted there. Idempotent.
    pub fn remove(&self) -> Result<(), Error> {
        for (role, hook, iface) in self.attachments()? {
            self.detach(role, hook, &iface)?;
        }
        for dir in [self.maps(), self.links()] {
            if let Ok(entries) = fs::read_dir(&dir) {
                for e in entries.flatten() {
                    let path = e.path();
                    fs::remove_file(&path).map_err(|source| Error::Fs {
                        what: "removing",
                        path,
                        source,
                    })?;
                }
            }
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Fs {
                        what: "removing",
                        path: dir,
                        source,
                    });
                }
            }
        }
        bpffs::unmount_if_ours(&self.root);
        Ok(())
    }
}

/// Pinned state is adoptable: every map is there and the layout is this build's.
pub(crate) fn check_pinned(pin: &PinDir) -> Result<(), Error> {
    for name in m::ALL {
        if !pin.maps().join(name).exists() {
            return Err(Error::Incomplete {
                dir: pin.root().into(),
                name,
            });
        }
    }
    pin.open().map(drop)
}

/// bpffs: pins only live on a BPF filesystem.
pub(crate) mod bpffs {
    use std::{ffi::CString, fs, os::unix::ffi::OsStrExt as _, path::Path};

    use super::Error;

    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

    fn is_bpffs(path: &Path) -> bool {
        let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: `c` is NUL-terminated; `st` is written by statfs.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        (unsafe { libc::statfs(c.as_ptr(), &mut st) }) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }

    fn mount(path: &Path) -> Result<(), Error> {
        let err = |source| Error::Fs {
            what: "mounting a bpffs on",
            path: path.into(),
            source,
        };
        let target = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
        // SAFETY: every pointer is a valid NUL-terminated string.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Makes `dir` a directory on a bpffs: the standard `/sys/fs/bpf` when `dir` is below it
    /// (mounted there when missing), else a bpffs mounted on `dir` itself.
    ///
    /// Mounts are per mount namespace: under `ip netns exec` (which gives the process its own
    /// mounts) a bpffs mounted here is invisible to other processes. Enter only the network
    /// namespace (`nsenter --net=...`), or pre-mount the bpffs.
    pub fn ensure(dir: &Path) -> Result<(), Error> {
        super::private_dir(dir)?;
        if is_bpffs(dir) {
            return Ok(());
        }
        let sys = Path::new("/sys/fs/bpf");
        if dir.starts_with(sys) && !is_bpffs(sys) {
            mount(sys)?;
            super::private_dir(dir)?;
            if is_bpffs(dir) {
                return Ok(());
            }
        }
        mount(dir)
    }

    /// Unmounts the bpffs on `dir` if lb mounted one right there (not `/sys/fs/bpf`).
    pub fn unmount_if_ours(dir: &Path) {
        if dir == Path::new("/sys/fs/bpf") || !is_bpffs(dir) {
            return;
        }
        let parent_is_bpffs = dir.parent().is_some_and(is_bpffs);
        if parent_is_bpffs {
            // A plain directory inside a bpffs: just remove it.
            let _ = fs::remove_dir(dir);
            return;
        }
        if let Ok(c) = CString::new(dir.as_os_str().as_bytes()) {
            // SAFETY: `c` is NUL-terminated.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
/// Creates `dir` (and its parents) and makes it root's alone (0700), whatever the umask.
pub(crate) fn private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let err = |what, source| Error::Fs {
        what,
        path: dir.into(),
        source,
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err("creating", e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| err("securing", e))
}

/// Pins a program's link (XDP or TCX) at `path`, so it outlives the daemon.
pub(crate) fn pin_link<L>(link: L, role: Role, iface: &str, path: PathBuf) -> Result<(), Error>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::PinLink {
        role,
        iface: iface.into(),
        path: path.clone(),
        source,
    };
    let fd: FdLink = link.try_into().map_err(|e| pin_err(Box::new(e)))?;
    fd.pin(&path).map_err(|e| pin_err(Box::new(e)))?;
    Ok(())
}
