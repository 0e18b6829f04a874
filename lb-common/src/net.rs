//! On-the-wire header layouts. Every field is a byte array in network byte order, so the
//! datapath compares raw header bytes without conversions.
//!
//! Alignment. On the host the structs have alignment 1 and can be overlaid on any bytes (the
//! tests do). In BPF programs they have the alignment C gives `struct iphdr`, `tcphdr` and
//! friends (4 for IPv4 and what follows it, 2 for Ethernet), so that the compiler reads an
//! address with one 4-byte load instead of four byte loads, shifts and ors (ten instructions,
//! six addresses on a translated packet's way). That is the kernel's own model of packet
//! alignment: the verifier checks packet accesses as if the frame began at `NET_IP_ALIGN`
//! (2), where the IPv4 header that follows 14 bytes of Ethernet (or 18 with a VLAN tag) is
//! 4-aligned, and every header after it too (IHL counts 4-byte words). On architectures that
//! need aligned loads the verifier enforces exactly that model and the frames honour it; on
//! those that do not (x86, arm64), it lets the loads through whatever the frame's real offset.

use core::mem::size_of;

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
/// Code of `ICMP_DEST_UNREACH` meaning "fragmentation needed and DF set" (RFC 1191).
pub const ICMP_FRAG_NEEDED: u8 = 4;

/// IPv4 flags/fragment-offset word: "more fragments" bit.
pub const IP_MF: u16 = 0x2000;
/// IPv4 flags/fragment-offset word: "don't fragment" bit.
pub const IP_DF: u16 = 0x4000;
/// IPv4 flags/fragment-offset word: the fragment offset.
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// TCP flag bits in the low byte of `TcpHdr::flags`.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[cfg_attr(target_arch = "bpf", repr(C, align(2)))]
#[cfg_attr(not(target_arch = "bpf"), repr(C))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub proto: [u8; 2],
}

/// The 4 bytes that follow the TPID of an 802.1Q/802.1ad tag.
#[cfg_attr(target_arch = "bpf", repr(C, align(2)))]
#[cfg_attr(not(target_arch = "bpf"), repr(C))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VlanHdr {
    pub tci: [u8; 2],
    pub proto: [u8; 2],
}

/// The fixed 20-byte part of an IPv4 header; options follow when `ihl() > 5`.
#[cfg_attr(target_arch = "bpf", repr(C, align(4)))]
#[cfg_attr(not(target_arch = "bpf"), repr(C))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: [u8; 2],
    pub id: [u8; 2],
    pub frag: [u8; 2],
    pub ttl: u8,
    pub proto: u8,
    pub check: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Hdr {
    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }
    /// Header length in 32-bit words.
    #[inline(always)]
    pub fn ihl(&self) -> u8 {
        self.version_ihl & 0x0f
    }
    #[inline(always)]
    pub fn tot_len(&self) -> u16 {
        u16::from_be_bytes(self.tot_len)
    }
    #[inline(always)]
    pub fn frag_word(&self) -> u16 {
        u16::from_be_bytes(self.frag)
    }
    /// True for any fragment but an unfragmented datagram (MF set or offset non-zero).
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        self.frag_word() & (IP_MF | IP_OFFSET_MASK) != 0
    }
    /// True for a fragment that is not the first (offset non-zero): it carries no transport
    /// header.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        self.frag_word() & IP_OFFSET_MASK != 0
    }
    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        self.frag_word() & IP_DF != 0
    }
}

/// The fixed 20-byte part of a TCP header.
#[cfg_attr(target_arch = "bpf", repr(C, align(4)))]
#[cfg_attr(not(target_arch = "bpf"), repr(C))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
    pub ack: [u8; 4],
    pub off_res: u8,
    pub flags: u8,
    pub window: [u8; 2],
    pub check: [u8; 2],
    pub urg: [u8; 2],
}

#[cfg_attr(target_arch = "bpf", repr(C, align(4)))]
#[cfg_attr(not(target_arch = "bpf"), repr(C))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpHdr {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub len: [u8; 2],
    pub check: [u8; 2],
}

/// The 8-byte ICMP header. For echo request/reply `rest` holds identifier and sequence; for
/// errors it holds unused bytes (or the next-hop MTU of a "fragmentation needed").
#[cfg_attr(target_arch = "bpf", repr(C, align(4)))]
#[cfg_attr(not(target_arch = "bpf"), repr(C))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpHdr {
    pub ty: u8,
    pub code: u8,
    pub check: [u8; 2],
    pub rest: [u8; 4],
}

impl IcmpHdr {
    /// The echo identifier, which plays the part of a port for ICMP echo flows.
    #[inline(always)]
    pub fn echo_id(&self) -> [u8; 2] {
        [self.rest[0], self.rest[1]]
    }
    #[inline(always)]
    pub fn is_echo(&self) -> bool {
        self.ty == ICMP_ECHO_REQUEST || self.ty == ICMP_ECHO_REPLY
    }
    /// The ICMP errors whose payload quotes the offending datagram and that lb translates.
    #[inline(always)]
    pub fn is_error(&self) -> bool {
        matches!(
            self.ty,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM
        )
    }
}

/// The first 8 bytes of a transport header: all an ICMP error is guaranteed to quote.
#[cfg_attr(target_arch = "bpf", repr(C, align(4)))]
#[cfg_attr(not(target_arch = "bpf"), repr(C))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L4Quote {
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// TCP: sequence number. UDP: length and checksum. ICMP echo: type, code, checksum, id.
    pub rest: [u8; 4],
}

pub const ETH_HDR_LEN: usize = size_of::<EthHdr>();
pub const VLAN_HDR_LEN: usize = size_of::<VlanHdr>();
pub const IPV4_HDR_LEN: usize = size_of::<Ipv4Hdr>();
pub const TCP_HDR_LEN: usize = size_of::<TcpHdr>();
pub const UDP_HDR_LEN: usize = size_of::<UdpHdr>();
pub const ICMP_HDR_LEN: usize = size_of::<IcmpHdr>();
pub const L4_QUOTE_LEN: usize = size_of::<L4Quote>();

const _: () = {
    assert!(ETH_HDR_LEN == 14);
    assert!(VLAN_HDR_LEN == 4);
    assert!(IPV4_HDR_LEN == 20);
    assert!(TCP_HDR_LEN == 20);
    assert!(UDP_HDR_LEN == 8);
    assert!(ICMP_HDR_LEN == 8);
    assert!(L4_QUOTE_LEN == 8);
};
#[cfg(not(target_arch = "bpf"))]
const _: () = {
    assert!(core::mem::align_of::<Ipv4Hdr>() == 1);
    assert!(core::mem::align_of::<TcpHdr>() == 1);
};
