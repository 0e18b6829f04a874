//! An independent packet builder for expected frames: every header and checksum is computed
//! from scratch by etherparse, never by lb's own rewrite code.

use std::net::Ipv4Addr;

use etherparse::{
    Icmpv4Type, IpFragOffset, IpHeaders, IpNumber, Ipv4Extensions, Ipv4Header, Ipv4Options,
    PacketBuilder, VlanId,
};

/// The transport part of a [`Pkt`].
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        syn: bool,
        ack: bool,
        rst: bool,
        fin: bool,
    },
    /// `zero_csum`: sent without a checksum (0), as UDP over IPv4 allows.
    Udp {
        sport: u16,
        dport: u16,
        zero_csum: bool,
    },
    EchoRequest {
        id: u16,
        seq: u16,
    },
    EchoReply {
        id: u16,
        seq: u16,
    },
    /// Any ICMP message by type; the payload of the [`Pkt`] follows the 8-byte header.
    Icmp(Icmpv4Type),
    /// Another IP protocol, payload only.
    Raw(u8),
}

/// A frame: Ethernet (optionally one VLAN tag), IPv4 (options, flags), transport, payload.
#[derive(Clone, Debug)]
pub struct Pkt {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    /// The type-of-service byte (DSCP and ECN).
    pub tos: u8,
    pub ident: u16,
    pub df: bool,
    pub mf: bool,
    pub frag_offset: u16,
    /// Raw IPv4 options (a multiple of 4 bytes, at most 40).
    pub options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Pkt {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr, l4: L4) -> Self {
        Self {
            eth_src: [0x02, 0, 0, 0, 0xee, 0x01],
            eth_dst: [0x02, 0, 0, 0, 0xee, 0x02],
            vlan: None,
            src,
            dst,
            ttl: 64,
            tos: 0,
            ident: 0x1234,
            df: true,
            mf: false,
            frag_offset: 0,
            options: Vec::new(),
            l4,
            payload: b"lb fixture payload".to_vec(),
        }
    }

    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                syn: false,
                ack: true,
                rst: false,
                fin: false,
            },
        )
    }

    pub fn tcp_syn(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Tcp {
                sport,
                dport,
                syn: true,
                ack: false,
                rst: false,
                fin: false,
            },
        )
    }

    /// The answer to a SYN.
    pub fn tcp_syn_ack(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        let mut p = Self::tcp_syn(src, sport, dst, dport);
        if let L4::Tcp { ack, .. } = &mut p.l4 {
            *ack = true;
        }
        p
    }

    /// A TCP segment with FIN set (beside its other flags).
    pub fn with_fin(mut self) -> Self {
        if let L4::Tcp { fin, .. } = &mut self.l4 {
            *fin = true;
        }
        self
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self::new(
            src,
            dst,
            L4::Udp {
                sport,
                dport,
                zero_csum: false,
            },
        )
    }

    pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Self {
        Self::new(src, dst, L4::EchoRequest { id, seq: 1 })
    }

    pub fn echo_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16) -> Self {
        Self::new(src, dst, L4::EchoReply { id, seq: 1 })
    }

    /// An ICMP error of type `ty` quoting the first `quote_len` bytes of `quoted`'s IP datagram.
    pub fn icmp_error(
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ty: Icmpv4Type,
        quoted: &Pkt,
        quote_len: usize,
    ) -> Self {
        let mut datagram = quoted.ip_datagram();
        datagram.truncate(quote_len);
        let mut p = Self::new(src, dst, L4::Icmp(ty));
        p.payload = datagram;
        p
    }

    // ---- Modifiers, for deriving an expected frame from an input. ----

    pub fn eth(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.eth_src = src;
        self.eth_dst = dst;
        self
    }
    pub fn src(mut self, src: Ipv4Addr) -> Self {
        self.src = src;
        self
    }
    pub fn dst(mut self, dst: Ipv4Addr) -> Self {
        self.dst = dst;
        self
    }
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = tos;
        self
    }
    pub fn ident(mut self, ident: u16) -> Self {
        self.ident = ident;
        self
    }
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }
    pub fn untagged(mut self) -> Self {
        self.vlan = None;
        self
    }
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        self
    }
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }
    pub fn df(mut self, df: bool) -> Self {
        self.df = df;
        self
    }
    pub fn fragment(mut self, mf: bool, offset: u16) -> Self {
        self.mf = mf;
        self.frag_offset = offset;
        self
    }
    pub fn sport(mut self, port: u16) -> Self {
        match &mut self.l4 {
            L4::Tcp { sport, .. } | L4::Udp { sport, .. } => *sport = port,
            other => panic!("no source port on {other:?}"),
        }
        self
    }
    pub fn dport(mut self, port: u16) -> Self {
        match &mut self.l4 {
            L4::Tcp { dport, .. } | L4::Udp { dport, .. } => *dport = port,
            other => panic!("no destination port on {other:?}"),
        }
        self
    }
    pub fn zero_udp_checksum(mut self) -> Self {
        match &mut self.l4 {
            L4::Udp { zero_csum, .. } => *zero_csum = true,
            other => panic!("not UDP: {other:?}"),
        }
        self
    }

    fn ip_header(&self) -> Ipv4Header {
        let mut ip = Ipv4Header::new(
            0,
            self.ttl,
            IpNumber(0),
            self.src.octets(),
            self.dst.octets(),
        )
        .expect("a zero payload length is valid");
        ip.identification = self.ident;
        ip.dscp = etherparse::IpDscp::try_new(self.tos >> 2).expect("6 bits");
        ip.ecn = etherparse::IpEcn::try_new(self.tos & 3).expect("2 bits");
        ip.dont_fragment = self.df;
        ip.more_fragments = self.mf;
        ip.fragment_offset = IpFragOffset::try_new(self.frag_offset).expect("offset < 8192");
        ip.options = Ipv4Options::try_from(&self.options[..]).expect("options: n*4 <= 40 bytes");
        ip
    }

    /// The IP datagram (no link layer), as the frame would carry it.
    pub fn ip_datagram(&self) -> Vec<u8> {
        let frame = self.bytes();
        let l3 = if self.vlan.is_some() { 18 } else { 14 };
        frame[l3..].to_vec()
    }

    /// The frame's bytes, every length and checksum computed by etherparse.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let eth = PacketBuilder::ethernet2(self.eth_src, self.eth_dst);
        let ip = IpHeaders::Ipv4(self.ip_header(), Ipv4Extensions::default());
        let step = match self.vlan {
            Some(id) => eth
                .single_vlan(VlanId::try_new(id).expect("VLAN id < 4096"))
                .ip(ip),
            None => eth.ip(ip),
        };
        let payload = &self.payload;
        let written = match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                syn,
                ack,
                rst,
                fin,
            } => {
                let mut b = step.tcp(*sport, *dport, 1000, 64240);
                if *syn {
                    b = b.syn();
                }
                if *ack {
                    b = b.ack(2000);
                }
                if *rst {
                    b = b.rst();
                }
                if *fin {
                    b = b.fin();
                }
                b.write(&mut out, payload)
            }
            L4::Udp { sport, dport, .. } => step.udp(*sport, *dport).write(&mut out, payload),
            L4::EchoRequest { id, seq } => {
                step.icmpv4_echo_request(*id, *seq).write(&mut out, payload)
            }
            L4::EchoReply { id, seq } => step.icmpv4_echo_reply(*id, *seq).write(&mut out, payload),
            L4::Icmp(ty) => step.icmpv4(ty.clone()).write(&mut out, payload),
            L4::Raw(proto) => step.write(&mut out, IpNumber(*proto), payload),
        };
        written.expect("etherparse builds the frame");
        if let L4::Udp {
            zero_csum: true, ..
        } = self.l4
        {
            let l4 = out.len() - payload.len() - 8;
            out[l4 + 6] = 0;
            out[l4 + 7] = 0;
        }
        out
    }
}
