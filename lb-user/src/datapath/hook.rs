//! Where the programs run: the hook (XDP or TC), the attach mode, and which interfaces frames
//! are redirected into.

use lb_common::maps::{PROG_INGRESS, PROG_INGRESS_TC, PROG_RETURN, PROG_RETURN_TC};

use crate::datapath::{error::Error, maps::Maps};

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
    pub(crate) fn pin_name(self) -> &'static str {
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
    pub(crate) fn pin_suffix(self) -> &'static str {
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
    let target = match crate::datapath::netdev::xdp_features(ifindex) {
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
    crate::datapath::netdev::driver(iface).is_ok_and(|d| d == "veth")
}

/// The hook for `iface` under `choice`, and why.
pub fn choose_hook(choice: HookChoice, iface: &str) -> (Hook, String) {
    match choice {
        HookChoice::Xdp => (Hook::Xdp, "--hook xdp".into()),
        HookChoice::Tc => (Hook::Tc, "--hook tc".into()),
        HookChoice::Auto => {
            if crate::datapath::netdev::driver(iface).is_ok_and(|d| d == "veth") {
                return (
                    Hook::Tc,
                    "a veth: its senders are local, their checksums partial, which XDP cannot \
                     finish"
                        .into(),
                );
            }
            let features = crate::ifindex(iface).map(crate::datapath::netdev::xdp_features);
            match features {
                Some(Ok(Some(f))) if f.0 & crate::datapath::netdev::act::BASIC != 0 => {
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
