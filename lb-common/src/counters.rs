//! The global per-CPU counters: one per XDP verdict, one per reason a packet was passed to the
//! kernel or dropped, and one per datapath event. Indexes [`crate::maps::COUNTERS`].

/// What the datapath does with a packet that carries a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Pass,
    Drop,
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )*) => {
        /// Index into the per-CPU counters array.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Counter {
            $( $(#[$doc])* $variant, )*
        }

        impl Counter {
            /// Every counter, in index order.
            pub const ALL: &'static [Counter] = &[ $( Counter::$variant, )* ];
            pub const COUNT: u32 = Self::ALL.len() as u32;

            /// The stable name used by the CLI, JSON output and metrics.
            pub const fn name(self) -> &'static str {
                match self { $( Counter::$variant => $name, )* }
            }
        }
    };
}

counters! {
    // ---- XDP verdicts, indexed by the xdp_action value. ----
    /// An internal fault that "cannot happen"; never because of packet content.
    XdpAborted = "xdp_aborted",
    XdpDrop = "xdp_drop",
    XdpPass = "xdp_pass",
    XdpTx = "xdp_tx",
    XdpRedirect = "xdp_redirect",

    // ---- Passed to the kernel untouched: not ours, or not forwardable here. ----
    /// Neither IPv4 nor IPv6 (ARP, LLDP, ...), or an Ethernet frame too short to say.
    PassNotIp = "pass_not_ip",
    /// An IPv4 header too short or of the wrong version to read addresses from.
    PassBadIpv4 = "pass_bad_ipv4",
    /// The destination is no VIP (ingress) / the source no path (return); for a later
    /// fragment, its datagram's first fragment was not ours.
    PassNotForUs = "pass_not_for_us",
    /// TTL would expire: the kernel answers with an ICMP time exceeded.
    PassTtlExpired = "pass_ttl_expired",
    /// An ICMP error that quotes no translated flow.
    PassIcmpNotOurs = "pass_icmp_not_ours",
    /// Addressed to this host (the reply to a health probe, say): never translated.
    PassLocal = "pass_local",
    /// Forwarding is disabled on the ingress interface: left to the kernel untranslated, which
    /// answers as a host that does not forward (ICMP unreachable quoting what was sent).
    PassForwardingOff = "pass_forwarding_off",
    /// Arrived with two VLAN tags (802.1ad): left to the kernel's VLAN devices untranslated.
    PassVlan = "pass_vlan",
    /// An IPv6 header too short or of the wrong version to read addresses from.
    PassBadIpv6 = "pass_bad_ipv6",
    /// IPv6 extension headers the datapath does not translate across: authentication (it
    /// covers the addresses) or ESP, no next header, an unknown header, hop-by-hop options
    /// that are not first, a routing header with segments left (the destination is not the
    /// final one), a jumbogram, or more headers or bytes than the walk's bound.
    PassIpv6Ext = "pass_ipv6_ext",
    /// ICMPv6 of the link or the host (neighbour discovery, router advertisements, MLD):
    /// never translated, whatever its addresses.
    PassIcmp6Control = "pass_icmp6_control",
    /// IPv6 reached a program whose IPv6 twin is not in its program array (a datapath loaded
    /// without it): passed untouched. Never happens in a datapath the daemon loaded.
    PassNoIpv6Program = "pass_no_ipv6_program",

    // ---- Translated, then handed to the kernel to forward. ----
    /// The FIB has no neighbour entry for the next hop yet.
    PassNoNeighbour = "pass_no_neighbour",
    /// The route needs something the datapath cannot do (lightweight tunnel encapsulation).
    PassFibUnsupported = "pass_fib_unsupported",
    /// Larger than the egress MTU without DF: the kernel fragments it.
    PassFragmentNeeded = "pass_fragment_needed",
    /// The egress interface is not in the devmap (XDP cannot send into it).
    PassNoTxPort = "pass_no_tx_port",

    // ---- Dropped. ----
    /// IPv4 header inconsistent: IHL < 5, total length beyond the frame or below the header.
    DropBadIpv4 = "drop_bad_ipv4",
    /// IPv6 payload length beyond the frame, or an extension header cut short.
    DropBadIpv6 = "drop_bad_ipv6",
    /// UDP over IPv6 without a checksum (0), which IPv6 forbids (RFC 8200 §8.1).
    DropUdp6ZeroChecksum = "drop_udp6_zero_checksum",
    /// For a VIP or from a path, but the TCP/UDP/ICMP header is truncated.
    DropShortL4 = "drop_short_l4",
    /// For a whole-address VIP, but neither TCP, UDP nor ICMP.
    DropUnsupportedProto = "drop_unsupported_proto",
    /// ICMP to or from a translated address that is neither echo nor a translatable error.
    DropUnsupportedIcmp = "drop_unsupported_icmp",
    /// An ICMP error whose quoted datagram is truncated or inconsistent.
    DropBadIcmpQuote = "drop_bad_icmp_quote",
    /// The target has no usable path (all down and `all_down: drop`).
    DropNoPath = "drop_no_path",
    /// The FIB says blackhole, unreachable or prohibited, or has no route.
    DropNoRoute = "drop_no_route",
    /// A later fragment (no ports) of a datagram whose first fragment was not seen: to a
    /// service VIP or an active/active target, or from a path address that no whole-address
    /// VIP covers. It cannot be placed without the first fragment's ports, and must not leave
    /// with a path address.
    DropFragmentUntracked = "drop_fragment_untracked",
    /// Larger than the egress MTU with DF set, and no "fragmentation needed" could be sent
    /// (the packet is itself an ICMP error, or the frame could not be reshaped).
    DropFragmentNeeded = "drop_fragment_needed",
    /// Larger than the egress MTU with DF set, and the "fragmentation needed" answers of this
    /// CPU are over their rate (`icmp_too_big_per_sec`): dropped unanswered, as a router
    /// whose ICMP rate limit is reached.
    DropTooBigRateLimited = "drop_too_big_rate_limited",
    /// From the client side to a path address its target does not expose (`expose_paths`).
    DropToPath = "drop_to_path",
    /// From the client side with a VIP or a path address as source (spoofed, or looping).
    DropMartian = "drop_martian",
    /// From a path address, but on an interface its replies are not routed through (a
    /// spoofer on another segment).
    DropWrongInterface = "drop_wrong_interface",

    // ---- Events. ----
    /// A packet followed its target's current decision: no exception, no state (ingress).
    FlowDecided = "flow_decided",
    /// A packet of an established TCP connection without an exception followed its target's
    /// previous decision, whose path is still up (ingress, during a transition).
    FlowPrevious = "flow_previous",
    /// A packet followed its flow's exception (ingress).
    ExceptionHit = "exception_hit",
    /// A client packet pinned its connection to the previous decision's path (`LB_FLOWS`).
    ExceptionPinned = "exception_pinned",
    /// A packet of the VM's pinned its flow to the path it left by (`LB_OUTBOUND`): a
    /// connection the VM opened, or a SYN-ACK the decision rules would not follow.
    ExceptionFromVm = "exception_from_vm",
    /// A pin was refused: this CPU's pins are over their rate (`flows.pins_per_sec`). The
    /// packet still went to the path it pins to.
    ExceptionRateLimited = "exception_rate_limited",
    /// An exception table refused an insert (full). The packet still went through.
    ExceptionInsertFailed = "exception_insert_failed",
    /// An exception whose path is no longer usable (down, disabled, another target's) was
    /// removed; the packet followed the decision rules.
    ExceptionStale = "exception_stale",
    /// A whole-address flow on a shadowed port was recorded (`LB_SHADOWED`).
    FlowShadowed = "flow_shadowed",
    /// A first fragment was recorded, so its datagram's later fragments follow it.
    FragTracked = "frag_tracked",
    /// The fragment table refused an insert (the first fragment is still forwarded; later
    /// ones of a service VIP or an active/active target will be dropped as untracked).
    FragInsertFailed = "frag_insert_failed",
    /// Packets translated VIP → path.
    NatIngress = "nat_ingress",
    /// Packets translated path → VIP.
    NatReturn = "nat_return",
    /// ICMP errors whose quoted datagram was translated, ingress side.
    IcmpErrorIngress = "icmp_error_ingress",
    /// ICMP errors whose quoted datagram was translated, return side.
    IcmpErrorReturn = "icmp_error_return",
    /// Packets larger than the egress MTU with DF set, answered with an ICMP "fragmentation
    /// needed" quoting them untranslated (sent back with XDP_TX).
    IcmpTooBigSent = "icmp_too_big_sent",
}

impl Counter {
    /// The verdict counter of an XDP action value.
    #[inline(always)]
    pub const fn verdict(action: u32) -> Counter {
        match action {
            1 => Counter::XdpDrop,
            2 => Counter::XdpPass,
            3 => Counter::XdpTx,
            4 => Counter::XdpRedirect,
            _ => Counter::XdpAborted,
        }
    }

    /// For a pass/drop reason, what happens to the packet; `None` for verdicts and events.
    pub const fn disposition(self) -> Option<Disposition> {
        let i = self as u32;
        if i >= Counter::PassNotIp as u32 && i <= Counter::PassNoTxPort as u32 {
            Some(Disposition::Pass)
        } else if i >= Counter::DropBadIpv4 as u32 && i <= Counter::DropWrongInterface as u32 {
            Some(Disposition::Drop)
        } else {
            None
        }
    }

    /// Looks a counter up by its index (user side, when reading the map).
    pub fn from_index(i: u32) -> Option<Counter> {
        Self::ALL.get(i as usize).copied()
    }

    /// Looks a counter up by its name.
    pub fn from_name(name: &str) -> Option<Counter> {
        Self::ALL.iter().copied().find(|c| c.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_declaration_order() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as u32, i as u32);
            assert_eq!(Counter::from_index(i as u32), Some(*c));
            assert_eq!(Counter::from_name(c.name()), Some(*c));
        }
        assert_eq!(Counter::from_index(Counter::COUNT), None);
    }

    #[test]
    fn verdicts_match_xdp_action_values() {
        // XDP_ABORTED=0, XDP_DROP=1, XDP_PASS=2, XDP_TX=3, XDP_REDIRECT=4 (uapi/linux/bpf.h).
        for (action, c) in Counter::ALL.iter().take(5).enumerate() {
            assert_eq!(Counter::verdict(action as u32), *c);
            assert_eq!(*c as u32, action as u32);
        }
        assert_eq!(Counter::verdict(99), Counter::XdpAborted);
    }

    #[test]
    fn names_are_unique_and_prefixed_by_kind() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            for b in Counter::ALL.iter().skip(i + 1) {
                assert_ne!(a.name(), b.name());
            }
            match a.disposition() {
                Some(Disposition::Pass) => assert!(a.name().starts_with("pass_"), "{a:?}"),
                Some(Disposition::Drop) => assert!(a.name().starts_with("drop_"), "{a:?}"),
                None => assert!(!a.name().starts_with("pass_") && !a.name().starts_with("drop_")),
            }
        }
    }
}
