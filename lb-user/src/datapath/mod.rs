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
//!
//! Here: loading, adopting, attaching ([`Dataplane`]). Beside it: the hooks (`hook`), the pin
//! directory (`pins`) and its lock ([`lock`]), typed map access ([`maps`]), the control plane's
//! tables and the planned writes that apply them ([`tables`]), interfaces ([`netdev`]) and the
//! link watch ([`links`]), exception expiry ([`exceptions`]), and the datapath's clock
//! ([`monotonic_coarse_ns`]).

mod error;
pub mod exceptions;
mod hook;
pub mod links;
pub mod lock;
pub mod maps;
pub mod netdev;
mod pins;
pub mod tables;

pub use error::{Error, GENERIC_XDP_REFUSED};
pub use hook::{
    AttachMode, Hook, HookChoice, RedirectTarget, Role, choose_hook, sync_redirect_target,
};
pub use pins::PinDir;

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
    },
};
use lb_common::maps::{
    self as m, AYA_LOGS, ControlMeta, FLOWS, LAYOUT, PROG_INGRESS, PROG_INGRESS_TC, PROG_RETURN,
    PROG_RETURN_TC,
};
use log::{info, warn};

use crate::datapath::{
    maps::Maps,
    pins::{check_pinned, pin_link, private_dir},
};

/// How to load the object.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Capacity of the exception table (`None`: the object's default,
    /// [`lb_common::maps::FLOW_TABLE_SIZE`]). Ignored when pinned maps are adopted.
    pub flow_table_size: Option<u32>,
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
            loader.map_max_entries(m::FLOWS6, size);
        }
        let mut ebpf = loader.load(object()?).map_err(Error::Load)?;
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
        let object = object()?;
        pins::bpffs::ensure(pin.root())?;
        let maps_dir = pin.maps();
        let mut origin = Origin::Fresh;
        if pin.installed() {
            pin.check_ownership()?;
            match check_pinned(pin) {
                Ok(()) => origin = Origin::Adopted,
                Err(e @ (Error::LayoutMismatch { .. } | Error::Incomplete { .. })) if replace => {
                    warn!("{e}; replacing it (--replace)");
                    pin.remove()?;
                    pins::bpffs::ensure(pin.root())?;
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
            loader.map_max_entries(m::FLOWS6, size);
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
    // The IPv6 twins, each into its slot of its hook's program array (before any program is
    // attached: an empty slot passes IPv6 untouched, `pass_no_ipv6_program`).
    for (xdp, tc, slot) in [
        (m::PROG_INGRESS6, m::PROG_INGRESS6_TC, m::CALL_INGRESS6),
        (m::PROG_RETURN6, m::PROG_RETURN6_TC, m::CALL_RETURN6),
        (
            m::PROG_DELIVER6_IN,
            m::PROG_DELIVER6_IN_TC,
            m::CALL_DELIVER6_IN,
        ),
        (
            m::PROG_DELIVER6_OUT,
            m::PROG_DELIVER6_OUT_TC,
            m::CALL_DELIVER6_OUT,
        ),
        (m::PROG_ERROR6_IN, m::PROG_ERROR6_IN_TC, m::CALL_ERROR6_IN),
        (
            m::PROG_ERROR6_OUT,
            m::PROG_ERROR6_OUT_TC,
            m::CALL_ERROR6_OUT,
        ),
        (m::PROG_TOO_BIG6, m::PROG_TOO_BIG6_TC, m::CALL_TOO_BIG6),
    ] {
        xdp_mut(ebpf, xdp)?
            .load()
            .map_err(|source| Error::Program { name: xdp, source })?;
        tc_mut(ebpf, tc)?
            .load()
            .map_err(|source| Error::Program { name: tc, source })?;
        set_call(ebpf, m::CALLS, slot, xdp)?;
        set_call(ebpf, m::CALLS_TC, slot, tc)?;
    }
    Ok(())
}

/// Puts loaded program `name` into `slot` of the program array `array`.
fn set_call(
    ebpf: &mut Ebpf,
    array: &'static str,
    slot: u32,
    name: &'static str,
) -> Result<(), Error> {
    let fd = ebpf
        .program(name)
        .ok_or(Error::MissingProgram { name })?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(|source| Error::Program { name, source })?;
    let map = ebpf
        .map_mut(array)
        .ok_or(Error::MissingMap { name: array })?;
    let mut calls = aya::maps::ProgramArray::try_from(map).map_err(|source| Error::MapType {
        name: array,
        source,
    })?;
    calls.set(slot, &fd, 0).map_err(|source| Error::MapOp {
        map: array,
        op: "setting a program slot",
        source,
    })
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
/// `CLOCK_MONOTONIC_COARSE` in nanoseconds: the clock of the datapath's
/// `bpf_ktime_get_coarse_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The XDP object built from `lb-ebpf`, embedded at build time.
pub fn object() -> Result<&'static [u8], Error> {
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
    if OBJECT.is_empty() {
        return Err(Error::NoObject);
    }
    Ok(OBJECT)
}
