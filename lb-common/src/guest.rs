//! What the guest agent's TC programs (`lb-ebpf`'s `lb-guest` object) and `lb guest run` agree
//! on: map names, capacities, the flow record's layout and the counters.
//!
//! The agent runs inside the VM. When the edge moves a flow from path A to path B, the client's
//! packets arrive at the VM's address B, where the connection's socket (bound to A) does not
//! live. The ingress program finds the socket on A (`bpf_skc_lookup_tcp`/`bpf_sk_lookup_udp`),
//! rewrites the destination B → A and records the flow twice in [`FLOWS`]:
//!
//! - the `IN` record, keyed by the arriving packet (`local` = B), whose value names A;
//! - the `OUT` record, keyed by the socket's replies (`local` = A), whose value names B and
//!   B's interface: the egress program rewrites the replies' source A → B and sends them out
//!   there.
//!
//! The socket is the truth and a record only its cache: a record that expired (or an agent that
//! restarted) is made again by the next client packet. Records expire in user space (FIN or RST
//! seen and then quiet, or idle); the table is bounded and a full table is counted.

use core::mem::size_of;

/// The given addresses (`[u8; 4]` → [`GuestAddr`]).
pub const ADDRS: &str = "LBG_ADDRS";
/// The given addresses again, as a list the ingress program walks (`u32` index → [`GuestAddr`];
/// `ifindex == 0`: a free slot).
pub const ADDR_LIST: &str = "LBG_ADDR_LIST";
/// The flow records ([`GuestFlowKey`] → [`GuestFlow`]).
pub const FLOWS: &str = "LBG_FLOWS";
/// Per-CPU counters, indexed by [`GuestCounter`].
pub const COUNTERS: &str = "LBG_COUNTERS";

/// Every map of the object.
pub const ALL: [&str; 4] = [ADDRS, ADDR_LIST, FLOWS, COUNTERS];

/// The most addresses the agent serves (each one a path of the VM).
pub const MAX_ADDRS: u32 = 8;
/// Capacity of [`FLOWS`], in records (two a moved flow).
pub const FLOW_TABLE_SIZE: u32 = 65_536;

/// Program names in the object.
pub const PROG_IN: &str = "lb_guest_in";
pub const PROG_OUT: &str = "lb_guest_out";

/// [`GuestFlowKey::dir`]: a record of the arriving side (local = the address the packet came to).
pub const DIR_IN: u8 = 0;
/// [`GuestFlowKey::dir`]: a record of the replying side (local = the socket's address).
pub const DIR_OUT: u8 = 1;

/// [`GuestFlow::flags`]: a FIN was seen (in the record's direction).
pub const FLOW_FIN: u32 = 1;
/// [`GuestFlow::flags`]: a RST was seen (in the record's direction).
pub const FLOW_RST: u32 = 2;

/// A given address: its interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestAddr {
    /// Network byte order.
    pub addr: [u8; 4],
    pub ifindex: u32,
}

/// One side of a moved flow, as the packets on that side carry it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GuestFlowKey {
    /// The VM's address on this side (network byte order).
    pub local: [u8; 4],
    /// The client's address as the VM sees it.
    pub client: [u8; 4],
    pub client_port: [u8; 2],
    pub local_port: [u8; 2],
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub proto: u8,
    /// [`DIR_IN`] or [`DIR_OUT`].
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// What a record rewrites to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestFlow {
    /// IN: the socket's address (A), the new destination. OUT: the address the flow arrives at
    /// (B), the new source.
    pub addr: [u8; 4],
    /// OUT: the interface of `addr`, where the replies leave. IN: the interface of A.
    pub ifindex: u32,
    /// `bpf_ktime_get_ns` of the last packet through this record (CLOCK_MONOTONIC).
    pub seen_ns: u64,
    /// [`FLOW_FIN`], [`FLOW_RST`].
    pub flags: u32,
    pub _pad: u32,
}

const _: () = {
    assert!(size_of::<GuestAddr>() == 8);
    assert!(size_of::<GuestFlowKey>() == 16);
    assert!(size_of::<GuestFlow>() == 24);
};

impl GuestFlowKey {
    /// The key of one side of a flow: `local` the VM's address on that side (network byte
    /// order, ports too).
    pub const fn new(
        local: [u8; 4],
        client: [u8; 4],
        local_port: [u8; 2],
        client_port: [u8; 2],
        proto: u8,
        dir: u8,
    ) -> GuestFlowKey {
        GuestFlowKey {
            local,
            client,
            client_port,
            local_port,
            proto,
            dir,
            _pad: [0; 2],
        }
    }

    /// The other side's key of the same flow: `local` becomes `other`.
    pub const fn twin(&self, other: [u8; 4]) -> GuestFlowKey {
        GuestFlowKey {
            local: other,
            dir: if self.dir == DIR_IN { DIR_OUT } else { DIR_IN },
            ..*self
        }
    }
}

macro_rules! guest_counters {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )*) => {
        /// Index into [`COUNTERS`].
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum GuestCounter {
            $( $(#[$doc])* $variant, )*
        }

        impl GuestCounter {
            /// Every counter, in index order.
            pub const ALL: &'static [GuestCounter] = &[ $( GuestCounter::$variant, )* ];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The stable name used by logs, JSON and metrics.
            pub const fn name(self) -> &'static str {
                match self { $( GuestCounter::$variant => $name, )* }
            }
        }
    };
}

guest_counters! {
    /// Packets rewritten from the address they arrived at to their socket's address.
    InMoved = "in_moved",
    /// ICMP errors (destination unreachable, time exceeded) about a moved flow's reply, sent to
    /// the socket's address with the quoted packet as the socket sent it (PMTU discovery).
    IcmpMoved = "icmp_moved",
    /// Replies rewritten to the address their flow arrives at.
    OutMoved = "out_moved",
    /// Of those, the replies sent out of another interface (`bpf_redirect_neigh`).
    OutRedirected = "out_redirected",
    /// Flows recorded (one per move; two records each).
    FlowsRecorded = "flows_recorded",
    /// A flow to move found the table full: its packet passed unchanged (the VM answers RST).
    TableFull = "table_full",
    /// A SYN met an old record of its ports (the client reused them): the record was removed
    /// and the SYN passed to its own address.
    StaleRemoved = "stale_removed",
    /// A moved flow's packet arrived at its socket's own address again (the edge moved it
    /// back): its records were removed, and its replies leave from that address again.
    Returned = "returned",
    /// Packets for a given address with no socket on it and none on another given address:
    /// passed unchanged.
    NoSocket = "no_socket",
    /// Fragments to a given address: never moved (the others of the datagram carry no ports).
    Fragment = "fragment",
    /// A reply's redirect failed (the interface is gone): dropped.
    RedirectFailed = "redirect_failed",
    /// A checksum update failed (an internal fault): dropped.
    RewriteFailed = "rewrite_failed",
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: each type is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and
    // has no implicit padding (sizes asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for GuestAddr {}
    unsafe impl aya::Pod for GuestFlowKey {}
    unsafe impl aya::Pod for GuestFlow {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twins_swap_the_local_address_and_the_direction() {
        let k = GuestFlowKey {
            local: [192, 0, 2, 100],
            client: [198, 51, 100, 10],
            client_port: 40000u16.to_be_bytes(),
            local_port: 80u16.to_be_bytes(),
            proto: 6,
            dir: DIR_IN,
            _pad: [0; 2],
        };
        let t = k.twin([192, 0, 2, 70]);
        assert_eq!(t.local, [192, 0, 2, 70]);
        assert_eq!(t.dir, DIR_OUT);
        assert_eq!(t.client, k.client);
        assert_eq!(t.twin(k.local), k);
    }

    #[test]
    fn map_names_fit_the_kernel() {
        for name in ALL {
            assert!(name.len() <= 15, "{name}");
        }
        let mut names: [&str; GuestCounter::COUNT as usize] = [""; GuestCounter::COUNT as usize];
        for (i, c) in GuestCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            names[i] = c.name();
        }
        for (i, a) in names.iter().enumerate() {
            assert!(!names[..i].contains(a), "{a} twice");
        }
    }
}
