//! The datapath's lifecycle: loading the XDP object, pinning its maps and links under a pin
//! directory, adopting what an earlier daemon pinned, attaching and detaching the programs.
//!
//! Pin directory layout (one per instance; several instances live side by side):
//!
//! ```text
//! <pin-dir>/maps/<MAP_NAME>          every map of lb_common::maps::ALL, and AYA_LOGS
//! <pin-dir>/links/<role>@<iface>     the XDP links (role: ingress or return)
//! <pin-dir>/links/<role>-tc@<iface>  the TC links (TCX, clsact ingress; Linux 6.6+)
//! ```
//!
//! Links are BPF links pinned in bpffs: they keep the programs attached after the daemon
//! exits, and a new daemon adopts them (and the maps) without detaching anything.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        ProgramError, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::maps::{
    self as m, AYA_LOGS, ControlMeta, FLOWS, LAYOUT, PROG_INGRESS, PROG_INGRESS_TC, PROG_RETURN,
    PROG_RETURN_TC,
};
use log::{info, warn};

use crate::maps::Maps;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "this build has no XDP object (bpf-linker was missing when it was built): run `cargo xtask setup`, then build again"
    )]
    NoObject,
    #[error("loading the XDP object")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP object has no program {name}")]
    MissingProgram { name: &'static str },
    #[error("the XDP object has no map {name}")]
    MissingMap { name: &'static str },
    #[error("map {name} has an unexpected type or layout")]
    MapType {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: {op} failed")]
    MapOp {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot add interface {ifindex} to the redirect devmap")]
    TxPort {
        ifindex: u32,
        #[source]
        source: aya::maps::xdp::XdpMapError,
    },
    #[error("program {name} does not pass the verifier or cannot be loaded")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("no lb state is pinned in {dir} (is the daemon installed there? see --pin-dir)")]
    NotInstalled { dir: PathBuf },
    #[error("opening pinned map {path}")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(
        "the state pinned in {dir} has another layout ({found:#018x}, this build {expected:#018x}): \
         run with --replace to discard it (flows are lost), or run the build that created it"
    )]
    LayoutMismatch {
        dir: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("the state pinned in {dir} is incomplete (map {name} is missing): run with --replace")]
    Incomplete { dir: PathBuf, name: &'static str },
    #[error("{what} {path}")]
    Fs {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("attaching {role} to {iface} ({mode})")]
    Attach {
        role: Role,
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pinning the {role} link of {iface} at {path}")]
    PinLink {
        role: Role,
        iface: String,
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no interface {iface}")]
    NoInterface { iface: String },
    #[error(
        "{path} is {why}: lb does not trust pinned state another user could have written \
         (pins and their directories must be owned by root and writable by no one else); \
         check who changed it, then fix it or start over with `lb down`"
    )]
    UnsafePin { path: PathBuf, why: String },
    #[error("{GENERIC_XDP_REFUSED}")]
    GenericXdp,
}

/// How to load the object.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Capacity of the exception table (`None`: the object's default,
    /// [`lb_common::maps::FLOW_TABLE_SIZE`]). Ignored when pinned maps are adopted.
    pub flow_table_size: Option<u32>,
}

/// Which program an interface runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `lb_ingress`, on client-facing interfaces.
    Ingress,
    /// `lb_return`, on path-facing interfaces.
    Return,
}

impl Role {
    pub fn program(self) -> &'static str {
        match self {
            Role::Ingress => PROG_INGRESS,
            Role::Return => PROG_RETURN,
        }
    }
    /// The program of this role at `hook`.
    pub fn program_at(self, hook: Hook) -> &'static str {
        match (self, hook) {
            (_, Hook::Xdp) => self.program(),
            (Role::Ingress, Hook::Tc) => PROG_INGRESS_TC,
            (Role::Return, Hook::Tc) => PROG_RETURN_TC,
        }
    }
    fn pin_name(self) -> &'static str {
        match self {
            Role::Ingress => "ingress",
            Role::Return => "return",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.program())
    }
}

/// Why `--xdp-mode skb` is refused rather than run.
pub const GENERIC_XDP_REFUSED: &str = "generic (skb) XDP is refused: it runs on skbs whose \
    TCP/UDP checksums may be partial (local senders, GSO), which an XDP program can neither see \
    nor finish, so translated packets would leave with wrong checksums; --hook tc runs at the \
    same place in the stack and handles them";

/// The hook a program runs at on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// XDP, in the driver: the fastest, where the driver serves it.
    Xdp,
    /// TC (sched_cls on clsact ingress, as a TCX link): sees the skb, so it is right for
    /// partial checksums and GSO packets, and can send into any interface.
    Tc,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
    }
    fn pin_suffix(self) -> &'static str {
        match self {
            Hook::Xdp => "",
            Hook::Tc => "-tc",
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The hook as the operator asks for it (`--hook`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HookChoice {
    /// Per interface: XDP where the driver runs it natively and its senders hand on complete
    /// checksums, TC everywhere else (every veth, and drivers without native XDP).
    #[default]
    Auto,
    /// XDP on every interface.
    Xdp,
    /// TC on every interface.
    Tc,
}

/// XDP attach mode as the operator asks for it (with the XDP hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum AttachMode {
    /// Native (driver) mode; never generic mode by itself.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: refused, with the reason ([`GENERIC_XDP_REFUSED`]).
    Skb,
}

/// Whether `install` created the state or found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Fresh,
    Adopted,
}

/// An attachment as `attach` left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub role: Role,
    pub hook: Hook,
    pub iface: String,
    /// `None` when an existing pinned link was adopted (its mode is whatever it was).
    pub mode: Option<&'static str>,
}

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
    fn link(&self, role: Role, hook: Hook, iface: &str) -> PathBuf {
        self.links()
            .join(format!("{}{}@{iface}", role.pin_name(), hook.pin_suffix()))
    }
    fn installed(&self) -> bool {
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

/// The loaded datapath: both programs verified and loaded, and its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    pub maps: Maps,
    pin: Option<PinDir>,
}

impl Dataplane {
    /// Loads the object with private, unpinned maps (tests, benchmarks).
    pub fn load(opts: &LoadOptions) -> Result<Self, Error> {
        let mut loader = EbpfLoader::new();
        if let Some(size) = opts.flow_table_size {
            loader.map_max_entries(FLOWS, size);
        }
        let mut ebpf = loader.load(crate::object()?).map_err(Error::Load)?;
        load_programs(&mut ebpf)?;
        let maps = Maps::take(&mut ebpf, true)?;
        Ok(Self {
            ebpf,
            maps,
            pin: None,
        })
    }

    /// Loads the object with its maps pinned in `pin`: adopts the maps (and, through
    /// [`Dataplane::attach`], the links) an earlier daemon pinned there when their layout
    /// matches this build; with `replace`, discards state of another layout instead of
    /// failing. Mounts a bpffs on the directory when it is on none.
    pub fn install(
        pin: &PinDir,
        opts: &LoadOptions,
        replace: bool,
    ) -> Result<(Self, Origin), Error> {
        // Before touching anything: a build without the object has nothing to install.
        let object = crate::object()?;
        bpffs::ensure(pin.root())?;
        let maps_dir = pin.maps();
        let mut origin = Origin::Fresh;
        if pin.installed() {
            pin.check_ownership()?;
            match check_pinned(pin) {
                Ok(()) => origin = Origin::Adopted,
                Err(e @ (Error::LayoutMismatch { .. } | Error::Incomplete { .. })) if replace => {
                    warn!("{e}; replacing it (--replace)");
                    pin.remove()?;
                    bpffs::ensure(pin.root())?;
                }
                Err(e) => return Err(e),
            }
        }
        for dir in [pin.maps(), pin.links()] {
            private_dir(&dir)?;
        }
        let mut loader = EbpfLoader::new();
        let paths: Vec<(&'static str, PathBuf)> = m::ALL
            .iter()
            .chain([&AYA_LOGS])
            .map(|n| (*n, maps_dir.join(n)))
            .collect();
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        if let Some(size) = opts.flow_table_size {
            loader.map_max_entries(FLOWS, size);
        }
        let mut ebpf = loader.load(object).map_err(Error::Load)?;
        load_programs(&mut ebpf)?;
        let mut maps = Maps::take(&mut ebpf, origin == Origin::Fresh)?;
        if origin == Origin::Fresh {
            maps.set_meta(ControlMeta {
                layout: LAYOUT,
                ..ControlMeta::default()
            })?;
        } else {
            let size = opts.flow_table_size.unwrap_or(m::FLOW_TABLE_SIZE);
            let pinned = maps.flow_capacity()?;
            if pinned != size && replace {
                // A map's size is fixed when it is created: only a new datapath has the new one.
                warn!(
                    "the pinned exception table has {pinned} entries, flow_table_size says {size}: replacing the datapath (--replace)"
                );
                drop(maps);
                drop(ebpf);
                pin.remove()?;
                return Self::install(pin, opts, false);
            }
            if pinned != size {
                warn!(
                    "the pinned exception table keeps its size {pinned} (flow_table_size {size}): changing it needs a restart with --replace"
                );
            }
        }
        Ok((
            Self {
                ebpf,
                maps,
                pin: Some(pin.clone()),
            },
            origin,
        ))
    }

    /// Attaches `role`'s program to `iface` and pins the link. When a link is already pinned
    /// there (a previous daemon's), it is kept and its program is replaced atomically by the one
    /// just loaded (`BPF_LINK_UPDATE`): nothing is detached, not a packet is lost, and the
    /// running code is this build's. The redirect map is the caller's business
    /// ([`sync_redirect_target`]).
    pub fn attach(
        &mut self,
        role: Role,
        hook: Hook,
        iface: &str,
        mode: AttachMode,
    ) -> Result<Attached, Error> {
        let ifindex = crate::ifindex(iface).ok_or_else(|| Error::NoInterface {
            iface: iface.into(),
        })?;
        let pin = self.pin.as_ref().map(|p| p.link(role, hook, iface));
        if let Some(path) = &pin
            && let Ok(pinned) = PinnedLink::from_pin(path)
        {
            match self.update_link(role, hook, iface, path, pinned) {
                Ok(()) => {
                    return Ok(Attached {
                        role,
                        hook,
                        iface: iface.into(),
                        mode: None,
                    });
                }
                // The link's device was deleted (an interface of this name came back as a new
                // device): the pin holds a dead link. It goes; a new one is made below.
                Err(e) if caused_by_errno(&e, libc::ENOLINK) => {
                    warn!(
                        "{iface}: the pinned link of {role} belongs to a deleted device; attaching anew"
                    );
                    let _ = fs::remove_file(path);
                }
                Err(e) => return Err(e),
            }
        }
        if hook == Hook::Tc {
            return self.attach_tc(role, iface, pin);
        }
        let name = role.program();
        let prog = xdp_mut(&mut self.ebpf, name)?;
        let attempt = |prog: &mut Xdp, mode: XdpMode, label: &'static str| {
            prog.attach_to_if_index(ifindex, mode)
                .map_err(|source| Error::Attach {
                    role,
                    iface: iface.into(),
                    mode: label,
                    source,
                })
        };
        let (id, used) = match mode {
            AttachMode::Native | AttachMode::Auto => {
                (attempt(prog, XdpMode::Driver, "native")?, "native")
            }
            AttachMode::Skb => return Err(Error::GenericXdp),
        };
        if let Some(path) = pin {
            let link = prog
                .take_link(id)
                .map_err(|source| Error::Program { name, source })?;
            pin_link(link, role, iface, path)?;
        }
        info!("{name} attached to {iface} ({used} mode)");
        Ok(Attached {
            role,
            hook,
            iface: iface.into(),
            mode: Some(used),
        })
    }

    /// [`Dataplane::attach`] at TC: a TCX link on clsact ingress (Linux 6.6+), pinned.
    fn attach_tc(
        &mut self,
        role: Role,
        iface: &str,
        pin: Option<PathBuf>,
    ) -> Result<Attached, Error> {
        let name = role.program_at(Hook::Tc);
        let prog = tc_mut(&mut self.ebpf, name)?;
        let id = prog
            .attach(iface, TcAttachType::Ingress)
            .map_err(|source| Error::Attach {
                role,
                iface: iface.into(),
                mode: "tc",
                source,
            })?;
        if let Some(path) = pin {
            let link = prog
                .take_link(id)
                .map_err(|source| Error::Program { name, source })?;
            // A TCX link; netlink attachments (kernels before 6.6) cannot be pinned.
            pin_link(link, role, iface, path)?;
        }
        info!("{name} attached to {iface} (tc, clsact ingress)");
        Ok(Attached {
            role,
            hook: Hook::Tc,
            iface: iface.into(),
            mode: Some("tc"),
        })
    }

    /// Swaps the program of a pinned link for the freshly loaded one, keeping the link.
    fn update_link(
        &mut self,
        role: Role,
        hook: Hook,
        iface: &str,
        path: &Path,
        pinned: PinnedLink,
    ) -> Result<(), Error> {
        let name = role.program_at(hook);
        let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::PinLink {
            role,
            iface: iface.into(),
            path: path.to_path_buf(),
            source,
        };
        let fd: FdLink = pinned.into();
        // The pin keeps the link (and the old program) attached while it is updated; the
        // program object then tracks the link, which must be taken back so that the program's
        // drop at exit does not detach it.
        match hook {
            Hook::Xdp => {
                let prog = xdp_mut(&mut self.ebpf, name)?;
                let link =
                    aya::programs::xdp::XdpLink::try_from(fd).map_err(|e| pin_err(Box::new(e)))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|source| Error::Program { name, source })?;
                let link = prog
                    .take_link(id)
                    .map_err(|source| Error::Program { name, source })?;
                drop(FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?);
            }
            Hook::Tc => {
                let prog = tc_mut(&mut self.ebpf, name)?;
                let link = aya::programs::tc::SchedClassifierLink::try_from(fd)
                    .map_err(|e| pin_err(Box::new(e)))?;
                let id = prog
                    .attach_to_link(link)
                    .map_err(|source| Error::Program { name, source })?;
                let link = prog
                    .take_link(id)
                    .map_err(|source| Error::Program { name, source })?;
                drop(FdLink::try_from(link).map_err(|e| pin_err(Box::new(e)))?);
            }
        }
        info!("{name} on {iface}: adopted the pinned link, program updated in place");
        Ok(())
    }

    /// The loaded ingress program (tests run it with `BPF_PROG_TEST_RUN`).
    pub fn ingress(&self) -> Result<&Xdp, Error> {
        self.program(PROG_INGRESS)
    }

    /// The loaded return program.
    pub fn reverse(&self) -> Result<&Xdp, Error> {
        self.program(PROG_RETURN)
    }

    /// The loaded TC programs: ingress (`lb_ingress_tc`) and return (`lb_return_tc`).
    pub fn ingress_tc(&self) -> Result<&SchedClassifier, Error> {
        self.tc_program(PROG_INGRESS_TC)
    }

    pub fn reverse_tc(&self) -> Result<&SchedClassifier, Error> {
        self.tc_program(PROG_RETURN_TC)
    }

    fn tc_program(&self, name: &'static str) -> Result<&SchedClassifier, Error> {
        self.ebpf
            .program(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(|source| Error::Program { name, source })
    }

    fn program(&self, name: &'static str) -> Result<&Xdp, Error> {
        self.ebpf
            .program(name)
            .ok_or(Error::MissingProgram { name })?
            .try_into()
            .map_err(|source| Error::Program { name, source })
    }

    /// Program `name` of the object, loaded (through the verifier) on first use: the
    /// benchmark's entry points, which the daemon never loads.
    pub fn program_mut(&mut self, name: &'static str) -> Result<&mut Xdp, Error> {
        let prog = xdp_mut(&mut self.ebpf, name)?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|source| Error::Program { name, source })?;
        }
        Ok(prog)
    }

    /// The object, for aya-log's logger.
    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// The passive trigger's ring buffer (`LB_EVENTS`), taken out of the object: one reader.
    pub fn take_events(&mut self) -> Result<aya::maps::RingBuf<aya::maps::MapData>, Error> {
        let map = self
            .ebpf
            .take_map(m::EVENTS)
            .ok_or(Error::MissingMap { name: m::EVENTS })?;
        aya::maps::RingBuf::try_from(map).map_err(|source| Error::MapType {
            name: m::EVENTS,
            source,
        })
    }

    pub fn pin_dir(&self) -> Option<&PinDir> {
        self.pin.as_ref()
    }
}

/// Program `name` of the object, as the XDP program it must be.
fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram { name })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn tc_mut<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram { name })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

/// Loads (verifies) the programs of both hooks: a kernel that refuses either says so at once.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), Error> {
    for name in [PROG_INGRESS, PROG_RETURN] {
        let prog = xdp_mut(ebpf, name)?;
        prog.load()
            .map_err(|source| Error::Program { name, source })?;
    }
    for name in [PROG_INGRESS_TC, PROG_RETURN_TC] {
        let prog = tc_mut(ebpf, name)?;
        prog.load()
            .map_err(|source| Error::Program { name, source })?;
    }
    Ok(())
}

/// Pinned state is adoptable: every map is there and the layout is this build's.
fn check_pinned(pin: &PinDir) -> Result<(), Error> {
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
mod bpffs {
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

/// Whether an OS error `errno` is somewhere in `e`'s chain of causes.
fn caused_by_errno(e: &(dyn std::error::Error + 'static), errno: i32) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
            == Some(errno)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Creates `dir` (and its parents) and makes it root's alone (0700), whatever the umask.
fn private_dir(dir: &Path) -> Result<(), Error> {
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
fn pin_link<L>(link: L, role: Role, iface: &str, path: PathBuf) -> Result<(), Error>
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

/// Whether `iface` is in the redirect map (`LB_TX_PORTS`), and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedirectTarget {
    /// Frames are XDP-redirected into it.
    Yes,
    /// Kept out: frames toward it go through the kernel (counted `pass_no_tx_port`).
    No { why: String },
}

/// Puts `iface` (index `ifindex`) into the redirect map when its driver says frames redirected
/// into it are sent (`xdp-features`: `NDO_XMIT`), and keeps it out otherwise, so that the
/// datapath hands its traffic to the kernel instead of redirecting it into a hole. A kernel
/// that cannot say (before Linux 6.3) gets the interface in the map, as before.
pub fn sync_redirect_target(
    maps: &mut Maps,
    iface: &str,
    ifindex: u32,
) -> Result<RedirectTarget, Error> {
    let target = match crate::netdev::xdp_features(ifindex) {
        Ok(Some(f)) if f.receives_redirects() => RedirectTarget::Yes,
        Ok(Some(_)) => RedirectTarget::No {
            why: if is_veth(iface) {
                "a veth whose peer runs no XDP program and has GRO off drops redirected \
                 frames; `ethtool -K <peer> gro on` on the peer lets lb redirect into it"
                    .into()
            } else {
                "its driver cannot transmit redirected frames (no ndo_xdp_xmit)".into()
            },
        },
        Ok(None) => RedirectTarget::Yes,
        Err(e) => RedirectTarget::No {
            why: format!("its xdp-features cannot be read ({e})"),
        },
    };
    match target {
        RedirectTarget::Yes => maps.add_tx_port(ifindex)?,
        // Absent already is the state we want.
        RedirectTarget::No { .. } => {
            let _ = maps.remove_tx_port(ifindex);
        }
    }
    Ok(target)
}

/// Whether `iface` is a veth.
fn is_veth(iface: &str) -> bool {
    crate::netdev::driver(iface).is_ok_and(|d| d == "veth")
}

/// The hook for `iface` under `choice`, and why.
pub fn choose_hook(choice: HookChoice, iface: &str) -> (Hook, String) {
    match choice {
        HookChoice::Xdp => (Hook::Xdp, "--hook xdp".into()),
        HookChoice::Tc => (Hook::Tc, "--hook tc".into()),
        HookChoice::Auto => {
            if crate::netdev::driver(iface).is_ok_and(|d| d == "veth") {
                return (
                    Hook::Tc,
                    "a veth: its senders are local, their checksums partial, which XDP cannot \
                     finish"
                        .into(),
                );
            }
            let features = crate::ifindex(iface).map(crate::netdev::xdp_features);
            match features {
                Some(Ok(Some(f))) if f.0 & crate::netdev::act::BASIC != 0 => {
                    (Hook::Xdp, "the driver runs XDP natively".into())
                }
                Some(Ok(Some(_))) => (Hook::Tc, "the driver has no native XDP".into()),
                Some(Ok(None)) => (
                    Hook::Xdp,
                    "this kernel does not report xdp-features; trying native XDP".into(),
                ),
                Some(Err(e)) => (Hook::Tc, format!("its xdp-features cannot be read ({e})")),
                None => (Hook::Xdp, "not found".into()),
            }
        }
    }
}
