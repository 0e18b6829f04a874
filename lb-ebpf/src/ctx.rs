//! One abstraction over the packet, so that the same datapath runs at two hooks: XDP (a raw
//! frame, `XdpContext`) and TC (an skb on clsact, [`Tc`]). Parsing, lookups, NAT decisions,
//! ICMP and counters are written once against [`Packet`]; where the hooks must differ (how a
//! packet is sent on, how the TCP/UDP checksum follows a rewrite, how a packet is reshaped),
//! the difference lives in the two implementations here, not in branches through the logic
//! (the shape of Cilium's `ctx_*` layer).

use core::{cell::Cell, ffi::c_void, mem::offset_of};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action,
    },
    helpers::{
        bpf_csum_update, bpf_l4_csum_replace, bpf_redirect, bpf_skb_change_head,
        bpf_skb_change_tail, bpf_skb_pull_data, bpf_skb_vlan_pop, bpf_xdp_adjust_head,
        bpf_xdp_adjust_meta, bpf_xdp_adjust_tail,
    },
    programs::{TcContext, XdpContext},
};
use lb_common::{
    nat::{self, L4, Side},
    net::{EthHdr, IcmpHdr, TcpHdr, UdpHdr, VLAN_HDR_LEN},
};

use crate::{
    family::{AddrFix, Family},
    maps::LB_TX_PORTS,
    parse::L2,
};

/// A packet at one of the hooks.
pub trait Packet: EbpfContext {
    /// The hook's return codes for each verdict.
    const PASS: u32;
    const DROP: u32;
    const ABORTED: u32;
    /// Sent back out of the interface it came in on.
    const TX: u32;
    /// Sent out of another interface.
    const REDIRECT: u32;

    /// Start and end of the packet data the program may touch directly.
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The packet's whole length (an skb's may extend past `data_end`).
    fn len(&self) -> usize;
    fn ingress_ifindex(&self) -> u32;

    /// The `tot_len` bpf_fib_lookup checks against the route's MTU, for a packet whose IP
    /// total length is `ip_tot_len`.
    #[inline(always)]
    fn fib_tot_len(&self, ip_tot_len: u16) -> u16 {
        ip_tot_len
    }

    /// Whether the packet carries a VLAN tag outside its data (an skb's accelerated tag).
    #[inline(always)]
    fn vlan_outside(&self) -> bool {
        false
    }

    /// Translates the outer header (see [`nat::rewrite`]); the transport header starts at
    /// `l4_off`.
    fn rewrite<F: Family>(
        &self,
        ip: &mut F::Hdr,
        l4: L4<'_>,
        l4_off: usize,
        side: Side,
        addr: F::Addr,
        port: Option<[u8; 2]>,
    );

    /// Prepares sending the packet out of `ifindex`; `false` when this hook cannot (the packet
    /// then goes to the kernel).
    fn redirect(&self, ifindex: u32) -> bool;

    /// Prepares sending the packet back out of the interface it came in on.
    fn bounce(&self);

    /// Marks a translated packet the kernel will forward (see `lb_common::maps::HANDED_OFF`).
    /// Every packet pointer is invalid afterwards.
    #[inline(always)]
    fn hand_off(&self) {}

    /// Writes the next hop's MACs into a packet that arrived with one VLAN tag (`l2.vlan`, or
    /// [`Packet::vlan_outside`]) and removes the tag: the packet leaves untagged, as the FIB
    /// answer for the egress interface means. `false` when that failed (an internal fault).
    /// Every packet pointer is invalid afterwards.
    fn untag(&self, l2: &L2, dmac: [u8; 6], smac: [u8; 6]) -> bool;

    /// Grows the packet by `head` bytes at the front, then cuts it to `len` bytes (never
    /// longer than it was). Every packet pointer is invalid afterwards.
    fn reshape(&self, head: usize, len: usize) -> bool;

    /// Hands the packet to the hook's program in `slot` of its program array
    /// (`lb_common::maps::CALL_*`), never to come back; returns only when the slot is empty.
    fn tail_call(&self, slot: u32);

    /// Completes what the hook deferred, once the packet's fate is decided: `false` when that
    /// failed (an internal fault). Every packet pointer is invalid afterwards.
    #[inline(always)]
    fn commit(&self) -> bool {
        true
    }
}

/// What a translation writes: the address on `side` and, with `port`, the port there; the
/// transport header starts at `l4_off`.
#[derive(Clone, Copy)]
pub struct Nat<A> {
    pub side: Side,
    pub addr: A,
    pub port: Option<[u8; 2]>,
    pub l4_off: usize,
}

/// Translates the packet ([`Packet::rewrite`]).
#[inline(always)]
pub fn translate<C: Packet, F: Family>(ctx: &C, ip: &mut F::Hdr, l4: L4<'_>, nat: &Nat<F::Addr>) {
    ctx.rewrite::<F>(ip, l4, nat.l4_off, nat.side, nat.addr, nat.port);
}

impl Packet for XdpContext {
    const PASS: u32 = xdp_action::XDP_PASS;
    const DROP: u32 = xdp_action::XDP_DROP;
    const ABORTED: u32 = xdp_action::XDP_ABORTED;
    const TX: u32 = xdp_action::XDP_TX;
    const REDIRECT: u32 = xdp_action::XDP_REDIRECT;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        XdpContext::data_end(self) - XdpContext::data(self)
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        XdpContext::ingress_ifindex(self) as u32
    }
    /// A frame's checksums are always complete: the incremental update is right.
    #[inline(always)]
    fn rewrite<F: Family>(
        &self,
        ip: &mut F::Hdr,
        l4: L4<'_>,
        _l4_off: usize,
        side: Side,
        addr: F::Addr,
        port: Option<[u8; 2]>,
    ) {
        nat::rewrite(ip, l4, side, addr, port);
    }

    /// Only into interfaces of the devmap: the control plane keeps out those whose driver would
    /// drop redirected frames.
    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> bool {
        LB_TX_PORTS
            .redirect(ifindex, u64::from(xdp_action::XDP_PASS))
            .is_ok()
    }

    #[inline(always)]
    fn bounce(&self) {}

    #[inline(always)]
    fn tail_call(&self, slot: u32) {
        // SAFETY: the program's own context; on success the call does not return.
        unsafe { crate::maps::LB_CALLS.tail_call(self, slot) }
    }

    /// In the metadata area in front of the frame, which the kernel keeps with the skb it
    /// builds for `XDP_PASS` (veth and most native drivers). Best effort: a driver without
    /// metadata support refuses, and nothing else depends on the mark.
    #[inline(always)]
    fn hand_off(&self) {
        // SAFETY: `self.ctx` is the program's context.
        if unsafe { bpf_xdp_adjust_meta(self.ctx, -4) } != 0 {
            return;
        }
        let meta = self.metadata();
        if meta + 4 > self.metadata_end() {
            return;
        }
        // SAFETY: bounds-checked just above against the metadata's end (the frame's start).
        unsafe { *(meta as *mut u32) = lb_common::maps::HANDED_OFF };
    }

    /// The tag is in the frame (XDP sees frames as they arrived): the MACs move 4 bytes
    /// toward the IP header, over the tag, and the frame starts there.
    #[inline(always)]
    fn untag(&self, l2: &L2, dmac: [u8; 6], smac: [u8; 6]) -> bool {
        if !l2.vlan {
            return true;
        }
        // The Ethernet header the frame will have: MACs over the tag, then the tag's inner
        // EtherType, which already lies where the new header's type goes.
        let Some(inner) = crate::parse::ptr_at::<EthHdr, _>(self, VLAN_HDR_LEN) else {
            return false;
        };
        // SAFETY: bounds-checked just above.
        unsafe {
            (*inner).dst = dmac;
            (*inner).src = smac;
        }
        // SAFETY: `self.ctx` is the program's context; the frame shrinks at the front by the
        // tag, which the parser saw.
        unsafe { bpf_xdp_adjust_head(self.ctx, VLAN_HDR_LEN as i32) == 0 }
    }

    #[inline(always)]
    fn reshape(&self, head: usize, len: usize) -> bool {
        // SAFETY: `self.ctx` is the program's context.
        if unsafe { bpf_xdp_adjust_head(self.ctx, -(head as i32)) } != 0 {
            return false;
        }
        let delta = len as i64 - Packet::len(self) as i64;
        // SAFETY: as above; the tail only shrinks.
        delta <= 0 && unsafe { bpf_xdp_adjust_tail(self.ctx, delta as i32) } == 0
    }
}

/// A TCP/UDP/ICMPv6 checksum update the TC hook leaves to the kernel until the end.
#[derive(Clone, Copy)]
struct L4Fix {
    /// Offset of the checksum field in the packet.
    off: u32,
    udp: bool,
    addr: AddrFix,
    port: Option<([u8; 2], [u8; 2])>,
}

/// An skb at TC (clsact ingress), with what must be done to it before it leaves.
pub struct Tc {
    pub ctx: TcContext,
    pending: Cell<Option<L4Fix>>,
}

/// Bytes of headers made directly accessible at the start: Ethernet, a VLAN tag, IPv4 with
/// options or IPv6 with extension headers (up to `parse::MAX_L4_OFF`), TCP with options, and
/// an ICMP error's quote.
const TC_PULL: u32 = 256;

impl Tc {
    /// Wraps the program's context, making the headers directly accessible (an skb's first
    /// bytes need not all be in its linear part).
    #[inline(always)]
    pub fn new(ctx: TcContext) -> Tc {
        let want = ctx.len().min(TC_PULL);
        // Only when the linear part is short: most skbs have their headers there already, and
        // the pull is a helper call (and may copy) on every packet otherwise.
        if ((ctx.data_end() - ctx.data()) as u32) < want {
            // SAFETY: the program's own skb. A failed pull leaves less to parse: the packet is
            // then too short to be ours and passes untouched.
            let _ = unsafe { bpf_skb_pull_data(ctx.skb.skb, want) };
        }
        Tc {
            ctx,
            pending: Cell::new(None),
        }
    }

    /// Whether our XDP program on this interface translated the packet and handed it to the
    /// kernel ([`Packet::hand_off`]): then it is not a client's or a path's packet to handle.
    #[inline(always)]
    pub fn handed_off(&self) -> bool {
        let meta = self.skb().data_meta as usize;
        let data = self.ctx.data();
        if meta + 4 > data {
            return false;
        }
        // SAFETY: bounds-checked just above: four metadata bytes in front of the packet.
        unsafe { *(meta as *const u32) == lb_common::maps::HANDED_OFF }
    }

    #[inline(always)]
    fn skb(&self) -> &aya_ebpf::bindings::__sk_buff {
        // SAFETY: the program's context, valid for the whole run.
        unsafe { &*self.ctx.skb.skb }
    }
}

impl EbpfContext for Tc {
    #[inline(always)]
    fn as_ptr(&self) -> *mut c_void {
        self.ctx.skb.skb.cast()
    }
}

impl Packet for Tc {
    const PASS: u32 = TC_ACT_OK as u32;
    const DROP: u32 = TC_ACT_SHOT as u32;
    /// TC has no "aborted": an internal fault drops the packet (and is counted as aborted).
    const ABORTED: u32 = TC_ACT_SHOT as u32;
    const TX: u32 = TC_ACT_REDIRECT as u32;
    const REDIRECT: u32 = TC_ACT_REDIRECT as u32;

    #[inline(always)]
    fn data(&self) -> usize {
        self.ctx.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.ctx.data_end()
    }
    #[inline(always)]
    fn len(&self) -> usize {
        self.ctx.len() as usize
    }
    #[inline(always)]
    fn ingress_ifindex(&self) -> u32 {
        self.skb().ingress_ifindex
    }
    /// A GSO skb is sent as segments: the kernel checks those against the MTU when `tot_len`
    /// is 0 (its `is_skb_forwardable`), where the super-packet's own length would fail.
    #[inline(always)]
    fn fib_tot_len(&self, ip_tot_len: u16) -> u16 {
        if self.skb().gso_size != 0 {
            0
        } else {
            ip_tot_len
        }
    }

    #[inline(always)]
    fn vlan_outside(&self) -> bool {
        self.skb().vlan_present != 0
    }

    /// Addresses, ports and the IPv4 checksum directly; the TCP/UDP/ICMPv6 checksum later,
    /// by the kernel ([`Packet::commit`]), which updates a partial checksum (the pseudo-header
    /// sum a local sender leaves for the device) and the skb's complete checksum correctly.
    #[inline(always)]
    fn rewrite<F: Family>(
        &self,
        ip: &mut F::Hdr,
        l4: L4<'_>,
        l4_off: usize,
        side: Side,
        addr: F::Addr,
        port: Option<[u8; 2]>,
    ) {
        let (l4, changed) = nat::rewrite_fields(ip, l4, side, addr, port);
        let fix = match l4 {
            L4::Tcp(_) => Some((offset_of!(TcpHdr, check), false)),
            L4::Udp(_) => Some((offset_of!(UdpHdr, check), true)),
            L4::Icmp6(_) => Some((offset_of!(IcmpHdr, check), false)),
            L4::Icmp => None,
        };
        if let Some((check, udp)) = fix {
            self.pending.set(Some(L4Fix {
                off: (l4_off + check) as u32,
                udp,
                addr: F::addr_fix(&changed.addr.0, &changed.addr.1),
                port: changed.port,
            }));
        }
    }

    #[inline(always)]
    fn redirect(&self, ifindex: u32) -> bool {
        // SAFETY: a helper on scalars; it records the target for the TC_ACT_REDIRECT verdict.
        unsafe { bpf_redirect(ifindex, 0) == i64::from(TC_ACT_REDIRECT) }
    }

    #[inline(always)]
    fn bounce(&self) {
        // SAFETY: as above; egress of the interface the packet came in on.
        unsafe { bpf_redirect(self.skb().ingress_ifindex, 0) };
    }

    #[inline(always)]
    fn tail_call(&self, slot: u32) {
        // SAFETY: the program's own context; on success the call does not return.
        unsafe { crate::maps::LB_CALLS_TC.tail_call(self, slot) }
    }

    /// The kernel keeps an arriving skb's tag in its metadata (and a test run's in the frame);
    /// `bpf_skb_vlan_pop` removes either, moving the MACs itself. The deferred checksum update
    /// goes first: its offset counts a tag in the frame.
    #[inline(always)]
    fn untag(&self, l2: &L2, dmac: [u8; 6], smac: [u8; 6]) -> bool {
        let _ = l2;
        let Some(eth) = crate::parse::ptr_at::<EthHdr, _>(self, 0) else {
            return false;
        };
        // SAFETY: bounds-checked just above.
        unsafe {
            (*eth).dst = dmac;
            (*eth).src = smac;
        }
        // SAFETY: the program's own skb.
        self.commit() && unsafe { bpf_skb_vlan_pop(self.ctx.skb.skb) == 0 }
    }

    #[inline(always)]
    fn reshape(&self, head: usize, len: usize) -> bool {
        let skb = self.ctx.skb.skb;
        // SAFETY: the program's own skb; both helpers check their arguments.
        unsafe {
            bpf_skb_change_head(skb, head as u32, 0) == 0
                && bpf_skb_change_tail(skb, len as u32, 0) == 0
                // All of it directly accessible: an IPv6 Packet Too Big quotes 1232 bytes.
                && bpf_skb_pull_data(skb, len as u32) == 0
        }
    }

    #[inline(always)]
    fn commit(&self) -> bool {
        let Some(fix) = self.pending.take() else {
            return true;
        };
        let skb = self.ctx.skb.skb;
        // A UDP checksum of 0 ("none") stays 0; one that computes to 0 becomes 0xffff.
        let zero = if fix.udp {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        };
        let addr = match fix.addr {
            // SAFETY: the program's own skb; the helper checks the offset against it. Values
            // are the fields' bytes as they lie in the packet, as the helper expects.
            AddrFix::Word(old, new) => unsafe {
                bpf_l4_csum_replace(
                    skb,
                    fix.off,
                    u64::from(old),
                    u64::from(new),
                    u64::from(BPF_F_PSEUDO_HDR) | zero | 4,
                )
            },
            // A 16-byte address, as a difference (field size 0). With a pseudo-header change
            // the kernel also moves a complete checksum (`skb->csum`) by the difference, right
            // for IPv4, whose header checksum changed with the address, wrong for IPv6, whose
            // packet sum did not change; `bpf_csum_update` moves it back (it does nothing
            // unless the checksum is complete). Kernels from 6.16 offer `BPF_F_IPV6` instead;
            // this works on every kernel the TC hook supports.
            // SAFETY: as above.
            AddrFix::Diff(diff) => unsafe {
                let rc = bpf_l4_csum_replace(
                    skb,
                    fix.off,
                    0,
                    u64::from(diff),
                    u64::from(BPF_F_PSEUDO_HDR) | zero,
                );
                let _ = bpf_csum_update(skb, diff);
                rc
            },
        };
        let port = match fix.port {
            // SAFETY: as above.
            Some((old, new)) => unsafe {
                bpf_l4_csum_replace(
                    skb,
                    fix.off,
                    u64::from(u16::from_ne_bytes(old)),
                    u64::from(u16::from_ne_bytes(new)),
                    zero | 2,
                )
            },
            None => 0,
        };
        addr == 0 && port == 0
    }
}
