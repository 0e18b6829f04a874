//! Robustness: hundreds of thousands of random, mutated and truncated frames, IPv4 and IPv6,
//! through both programs. Never XDP_ABORTED; every rewritten frame whose input checksums were
//! valid has valid IPv4 and transport checksums (IPv6's over its pseudo-header, ICMPv6's too), the quoted datagram of a translated ICMP error included (a UDP
//! checksum of 0 stays 0, a valid one never becomes 0); frames not for a VIP (ingress) or not
//! from a path (return) leave byte-for-byte unchanged; over the whole run the counters hold one
//! verdict a run and one reason for every pass and drop. Most rewritten frames must have had
//! checksums to verify, or the run fails.
//!
//! `LB_FUZZ_FRAMES` sets the number of frames (default 200000), `LB_FUZZ_SEED` the seed (printed
//! first, and with every failure).

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
};

use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use lb_common::{Counter, counters::Disposition};
use lb_tests::{
    fixture::{
        Env, Fx, Hook, Iface, Prog, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
        action_name, addr, addr6, macs,
    },
    packet::{L4, Pkt},
};
use libtest_mimic::{Arguments, Failed, Trial};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

const VIPS: [Ipv4Addr; 4] = [addr::VIP, addr::VIP_SVC, addr::VIP_DNS, addr::VIP_SPREAD];
const PATHS: [Ipv4Addr; 4] = [addr::NN1, addr::NN2, addr::SPREAD_A, addr::SPREAD_B];
const VIPS6: [Ipv6Addr; 2] = [addr6::VIP, addr6::VIP_SVC];
const PATHS6: [Ipv6Addr; 2] = [addr6::NN1, addr6::NN2];

/// One's-complement sum of big-endian 16-bit words, written independently of lb's code.
fn ones_sum(mut acc: u64, data: &[u8]) -> u64 {
    for pair in data.chunks(2) {
        acc += u64::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    acc
}

fn folds_to_ffff(mut acc: u64) -> bool {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc == 0xffff
}

/// What can be said of a frame's IP datagram.
struct Ip<'a> {
    /// 4 or 16 bytes.
    src: &'a [u8],
    dst: &'a [u8],
    proto: u8,
    /// The IPv4 header; empty for IPv6, which has no header checksum.
    header: &'a [u8],
    /// The transport bytes (within the IP total length) of an unfragmented datagram.
    payload: Option<&'a [u8]>,
}

fn parse(frame: &[u8]) -> Option<Ip<'_>> {
    let mut l3 = 14;
    let mut ty = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ty == 0x8100 || ty == 0x88a8 {
        ty = u16::from_be_bytes([*frame.get(16)?, *frame.get(17)?]);
        l3 = 18;
    }
    if ty == 0x86dd {
        return parse6(frame.get(l3..)?);
    }
    if ty != 0x0800 {
        return None;
    }
    let ip = frame.get(l3..)?;
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let hlen = usize::from(ip[0] & 0xf) * 4;
    let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let header = ip.get(..hlen.max(20))?;
    let payload = (hlen >= 20 && tot >= hlen && tot <= ip.len() && !frag).then(|| &ip[hlen..tot]);
    Some(Ip {
        src: &ip[12..16],
        dst: &ip[16..20],
        proto: ip[9],
        header,
        payload,
    })
}

/// An IPv6 datagram: the fixed header, then hop-by-hop, destination options and routing
/// headers walked over; a fragment header (or anything unknown) leaves the payload unjudged.
fn parse6(ip: &[u8]) -> Option<Ip<'_>> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let end = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let (mut next, mut off) = (ip[6], 40);
    let mut payload = None;
    for _ in 0..8 {
        match next {
            0 | 60 | 43 => {
                let h = ip.get(off..off + 2)?;
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            6 | 17 | 58 => {
                payload = ip.get(off..end.min(ip.len())).filter(|_| end <= ip.len());
                break;
            }
            _ => break,
        }
    }
    Some(Ip {
        src: &ip[8..24],
        dst: &ip[24..40],
        proto: next,
        header: &[],
        payload,
    })
}

/// What a transport checksum says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4Sum {
    Valid,
    Invalid,
    /// UDP over IPv4 sent without a checksum (the field is 0).
    Absent,
}

/// The transport checksum of `payload` (a whole TCP, UDP or ICMP message), if it can be judged.
fn l4_sum(src: &[u8], dst: &[u8], proto: u8, p: &[u8]) -> Option<L4Sum> {
    let pseudo = || {
        let mut acc = ones_sum(0, src);
        acc = ones_sum(acc, dst);
        acc + u64::from(proto) + p.len() as u64
    };
    let v6 = src.len() == 16;
    let valid = |ok: bool| if ok { L4Sum::Valid } else { L4Sum::Invalid };
    match proto {
        6 if p.len() >= 20 => Some(valid(folds_to_ffff(ones_sum(pseudo(), p)))),
        17 if p.len() >= 8 && p[6..8] == [0, 0] => Some(L4Sum::Absent),
        17 if p.len() >= 8 => Some(valid(folds_to_ffff(ones_sum(pseudo(), p)))),
        1 if p.len() >= 8 && !v6 => Some(valid(folds_to_ffff(ones_sum(0, p)))),
        // ICMPv6's checksum covers the pseudo-header.
        58 if p.len() >= 8 && v6 => Some(valid(folds_to_ffff(ones_sum(pseudo(), p)))),
        _ => None,
    }
}

/// Every checksum of a datagram that can be judged, the quote of an ICMP error included.
#[derive(Clone, Copy, Debug)]
struct Sums {
    ip: bool,
    l4: Option<L4Sum>,
    /// The quoted datagram's IPv4 header (an ICMP error).
    inner_ip: Option<bool>,
    /// The quoted datagram's transport checksum, when the whole datagram is quoted.
    inner_l4: Option<L4Sum>,
}

fn sums(ip: &Ip<'_>) -> Sums {
    let v6 = ip.src.len() == 16;
    let header_ok = v6 || (ip.header.len() >= 20 && folds_to_ffff(ones_sum(0, ip.header)));
    let l4 = ip.payload.and_then(|p| l4_sum(ip.src, ip.dst, ip.proto, p));
    let (mut inner_ip, mut inner_l4) = (None, None);
    // ICMP destination unreachable, time exceeded, parameter problem: 8 bytes, then the quote.
    if let Some(p) = ip.payload.filter(|p| !v6 && ip.proto == 1 && p.len() >= 28)
        && matches!(p[0], 3 | 11 | 12)
    {
        let q = &p[8..];
        let hlen = usize::from(q[0] & 0xf) * 4;
        if q[0] >> 4 == 4 && hlen >= 20 && q.len() >= hlen {
            inner_ip = Some(folds_to_ffff(ones_sum(0, &q[..hlen])));
            let tot = usize::from(u16::from_be_bytes([q[2], q[3]]));
            let frag = u16::from_be_bytes([q[6], q[7]]) & 0x3fff != 0;
            if tot >= hlen && tot <= q.len() && !frag {
                inner_l4 = l4_sum(&q[12..16], &q[16..20], q[9], &q[hlen..tot]);
            }
        }
    }
    Sums {
        ip: header_ok,
        l4,
        inner_ip,
        inner_l4,
    }
}

/// A checksum that was right before the rewrite is right after it: a valid one stays valid (a
/// UDP checksum that became 0 is not: 0 means "none", a computed 0 is sent as 0xFFFF), and a
/// UDP datagram without one stays without one.
fn kept(before: Option<L4Sum>, after: Option<L4Sum>) -> bool {
    match before {
        Some(L4Sum::Valid) => after == Some(L4Sum::Valid),
        Some(L4Sum::Absent) => after == Some(L4Sum::Absent),
        Some(L4Sum::Invalid) | None => true,
    }
}

/// A well-formed frame toward the ingress or the return side, fields at random.
fn valid_frame(rng: &mut StdRng, ingress: bool) -> Vec<u8> {
    let far = Ipv4Addr::new(198, 51, 100, rng.random_range(1..=254));
    let (src, dst) = if ingress {
        let dst = if rng.random_bool(0.8) {
            *VIPS.choose(rng).unwrap()
        } else {
            Ipv4Addr::from(rng.random::<u32>())
        };
        (far, dst)
    } else {
        let src = if rng.random_bool(0.8) {
            *PATHS.choose(rng).unwrap()
        } else {
            Ipv4Addr::from(rng.random::<u32>())
        };
        (src, far)
    };
    let ports = [22, 53, 80, 443, 8443, rng.random::<u16>()];
    let sport = *ports.choose(rng).unwrap();
    let dport = *ports.choose(rng).unwrap();
    let mut p = match rng.random_range(0..7) {
        0 | 1 => Pkt::tcp(src, sport, dst, dport),
        2 => Pkt::tcp_syn(src, sport, dst, dport),
        3 => Pkt::udp(src, sport, dst, dport),
        4 => Pkt::echo_request(src, dst, rng.random()),
        5 => {
            // An ICMP error quoting a datagram in the other direction, with a payload of its
            // own; quoted whole or cut anywhere from its IP header on.
            let to = if rng.random_bool(0.5) {
                far
            } else {
                *PATHS.choose(rng).unwrap()
            };
            let mut quoted = match rng.random_range(0..3) {
                0 => Pkt::tcp(dst, dport, to, sport),
                _ => Pkt::udp(dst, dport, to, sport),
            }
            .payload(&vec![rng.random(); rng.random_range(0..40)]);
            if let (L4::Udp { .. }, true) = (&quoted.l4, rng.random_bool(0.2)) {
                quoted = quoted.zero_udp_checksum();
            }
            let whole = quoted.ip_datagram().len();
            let ty =
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                });
            let quote = if rng.random_bool(0.5) {
                whole
            } else {
                rng.random_range(20..=whole)
            };
            Pkt::icmp_error(src, dst, ty, &quoted, quote)
        }
        _ => Pkt::new(src, dst, L4::Raw(*[47u8, 50, 132].choose(rng).unwrap())),
    };
    p = p.ttl(rng.random_range(0..=255));
    if !matches!(p.l4, L4::Icmp(_)) || rng.random_bool(0.1) {
        // An ICMP error's payload is its quote: replaced only now and then (then mostly not
        // a datagram).
        p = p.payload(&vec![rng.random(); rng.random_range(0..120)]);
    }
    if rng.random_bool(0.1) {
        p = p.vlan(rng.random_range(1..4095));
    }
    if rng.random_bool(0.1) {
        p = p.options(&vec![1u8; 4 * rng.random_range(1..=10)]);
    }
    if rng.random_bool(0.05) {
        p = p
            .df(false)
            .fragment(rng.random_bool(0.5), rng.random_range(0..100));
    }
    if let (L4::Udp { .. }, true) = (&p.l4, rng.random_bool(0.2)) {
        p = p.zero_udp_checksum();
    }
    p.bytes()
}

/// A well-formed IPv6 frame toward the ingress or the return side, fields at random, sometimes
/// with extension headers (options, a routing header, a fragment header).
fn valid_frame6(rng: &mut StdRng, ingress: bool) -> Vec<u8> {
    let far = Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x51,
        0,
        0,
        0,
        0,
        rng.random_range(1..=0xffff),
    );
    let random = |rng: &mut StdRng| Ipv6Addr::from(rng.random::<u128>());
    let (src, dst) = if ingress {
        let dst = if rng.random_bool(0.8) {
            *VIPS6.choose(rng).unwrap()
        } else {
            random(rng)
        };
        (far, dst)
    } else {
        let src = if rng.random_bool(0.8) {
            *PATHS6.choose(rng).unwrap()
        } else {
            random(rng)
        };
        (src, far)
    };
    let (smac, dmac) = if ingress {
        (macs::CLIENT, macs::CLI0)
    } else {
        (macs::NN1, macs::PATH0)
    };
    let ports = [22, 53, 80, 443, 8443, rng.random::<u16>()];
    let sport = *ports.choose(rng).unwrap();
    let dport = *ports.choose(rng).unwrap();
    let b = etherparse::PacketBuilder::ethernet2(smac, dmac).ipv6(
        src.octets(),
        dst.octets(),
        rng.random_range(0..=255),
    );
    let payload: Vec<u8> = (0..rng.random_range(0..120))
        .map(|_| rng.random())
        .collect();
    let mut f = Vec::new();
    match rng.random_range(0..6) {
        0 | 1 => b.tcp(sport, dport, rng.random(), 1000).ack(rng.random()),
        2 => b.tcp(sport, dport, rng.random(), 1000).syn(),
        _ => {
            f.clear();
            let w = match rng.random_range(0..3) {
                0 => b.udp(sport, dport).write(&mut f, &payload),
                1 => b.icmpv6_echo_request(sport, dport).write(&mut f, &payload),
                _ => b
                    .icmpv6_raw(rng.random_range(1..=4), 0, [0, 0, 5, 0x28])
                    .write(&mut f, &payload),
            };
            w.expect("a frame");
            return extend6(rng, f);
        }
    }
    .write(&mut f, &payload)
    .expect("a frame");
    extend6(rng, f)
}

/// Sometimes splices an extension header behind `f`'s fixed IPv6 header (options, a routing
/// header with or without segments left, a fragment header), or zeroes a UDP checksum.
fn extend6(rng: &mut StdRng, mut f: Vec<u8>) -> Vec<u8> {
    if rng.random_bool(0.1) && f[20] == 17 {
        f[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
    }
    if rng.random_bool(0.7) {
        return f;
    }
    let (kind, mut ext) = match rng.random_range(0..4) {
        0 => (0u8, vec![0, 0, 1, 4, 0, 0, 0, 0]),
        1 => (60, vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        2 => (43, vec![0, 0, 4, rng.random_range(0..2), 0, 0, 0, 0]),
        _ => {
            let off: u16 = rng.random_range(0..4) * 8;
            let [o1, o2] = (off << 3 | u16::from(rng.random_bool(0.5))).to_be_bytes();
            (44, vec![0, 0, o1, o2, 1, 2, 3, rng.random()])
        }
    };
    ext[0] = f[20];
    f[20] = kind;
    let plen = u16::from_be_bytes([f[18], f[19]]) + ext.len() as u16;
    f[18..20].copy_from_slice(&plen.to_be_bytes());
    f.splice(54..54, ext);
    f
}

/// A UDP datagram to a VIP (ingress) or from NN1, the failover path (return), whose checksum
/// once translated (to NN1, or from the VIP) computes to 0, which must be sent as 0xFFFF: the
/// last two payload bytes are chosen for it. Random frames meet that case once in 65536 UDP
/// rewrites; this makes it common.
fn udp_checksum_edge(rng: &mut StdRng, ingress: bool) -> Vec<u8> {
    let far = Ipv4Addr::new(198, 51, 100, rng.random_range(1..=254));
    // Not 53 or 8443, the service ports, whose replies a service VIP would claim.
    let (sport, dport) = (rng.random_range(1024..8000), rng.random_range(1024..8000));
    let (vip, port) = if ingress && rng.random_bool(0.5) {
        (addr::VIP_DNS, 53)
    } else {
        (addr::VIP, dport)
    };
    let mut payload: Vec<u8> = (0..2 * rng.random_range(0..20))
        .map(|_| rng.random())
        .collect();
    payload.extend([0, 0]);
    let (input, translated) = if ingress {
        (
            Pkt::udp(far, sport, vip, port),
            Pkt::udp(far, sport, addr::NN1, port),
        )
    } else {
        (
            Pkt::udp(addr::NN1, sport, far, dport),
            Pkt::udp(vip, sport, far, dport),
        )
    };
    let datagram = translated.payload(&payload).ip_datagram();
    let mut udp = datagram[20..].to_vec();
    udp[6..8].copy_from_slice(&[0, 0]);
    let mut sum = ones_sum(0, &datagram[12..20]) + 17 + udp.len() as u64;
    sum = ones_sum(sum, &udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The two bytes that bring the sum to 0xffff, whose complement, the checksum, is 0.
    let n = payload.len();
    payload[n - 2..].copy_from_slice(&(0xffff - sum as u16).to_be_bytes());
    let eth = if ingress {
        (macs::CLIENT, macs::CLI0)
    } else {
        (macs::NN1, macs::PATH0)
    };
    input.payload(&payload).eth(eth.0, eth.1).bytes()
}

/// A frame of one of the kinds: valid, mutated, truncated, extended, or random bytes.
fn frame(rng: &mut StdRng, ingress: bool) -> Vec<u8> {
    let mut f = if rng.random_bool(0.05) {
        udp_checksum_edge(rng, ingress)
    } else if rng.random_bool(0.3) {
        valid_frame6(rng, ingress)
    } else {
        valid_frame(rng, ingress)
    };
    match rng.random_range(0..10) {
        0..=2 => {}
        3..=5 => {
            for _ in 0..rng.random_range(1..=4) {
                let i = rng.random_range(0..f.len());
                f[i] = rng.random();
            }
        }
        6 | 7 => f.truncate(rng.random_range(14..=f.len())),
        8 => f.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
        _ => {
            f = (0..rng.random_range(15..200))
                .map(|_| rng.random())
                .collect();
            if rng.random_bool(0.3) {
                f[12] = 0x08;
                f[13] = 0x00;
                f[14] = 0x40 | (f[14] & 0x0f);
            } else if rng.random_bool(0.3) {
                f[12] = 0x86;
                f[13] = 0xdd;
                f[14] = 0x60 | (f[14] & 0x0f);
            }
        }
    }
    f
}

/// What the whole run saw, beyond each frame's own checks.
#[derive(Default)]
struct Tally {
    /// `"<prog> <action>"` and `"<prog> rewritten"` → frames.
    kinds: BTreeMap<String, u64>,
    /// Program runs.
    runs: u64,
    /// Rewritten frames whose checksums could all be judged before and after (a valid IPv4
    /// header and a transport checksum that was valid or, for UDP, absent).
    verified: u64,
    /// Of those, translated ICMP errors whose quoted datagram's checksums were judged too.
    verified_quotes: u64,
    /// Frames the TC test run refused to make an skb of.
    refused: u64,
}

fn einval(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| io.raw_os_error() == Some(libc::EINVAL))
        || format!("{e:#}").contains("os error 22")
}

impl Tally {
    fn count(&mut self, what: String) {
        *self.kinds.entry(what).or_default() += 1;
    }
    fn get(&self, what: &str) -> u64 {
        self.kinds.get(what).copied().unwrap_or(0)
    }
}

fn check(fx: &Fx, prog: Prog, on: Iface, input: &[u8], tally: &mut Tally) -> anyhow::Result<()> {
    let r = match fx.run(prog, on, input) {
        Ok(r) => r,
        // The sched_cls test run builds no skb of some frames (an IPv4 ethertype with less
        // than an IPv4 header): the kernel refuses them before the program runs.
        Err(e) if fx.hook == Hook::Tc && einval(&e) => {
            tally.refused += 1;
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    tally.runs += 1;
    tally.count(format!("{prog:?} {}", action_name(r.action)));
    let hex = || input.iter().map(|b| format!("{b:02x}")).collect::<String>();
    anyhow::ensure!(r.action != XDP_ABORTED, "{prog:?} aborted on {}", hex());
    let ip = parse(input);
    let ours = ip.as_ref().is_some_and(|ip| match prog {
        Prog::Ingress => {
            VIPS.iter().any(|v| v.octets() == ip.dst) || VIPS6.iter().any(|v| v.octets() == ip.dst)
        }
        // ICMP errors from routers are matched on their quote.
        Prog::Return => {
            PATHS.iter().any(|p| p.octets() == ip.src)
                || PATHS6.iter().any(|p| p.octets() == ip.src)
                || ip.proto == 1
                || ip.proto == 58
        }
    });
    if !ours {
        anyhow::ensure!(
            r.frame == input,
            "{prog:?} changed a frame that is not ours: {}",
            hex()
        );
        anyhow::ensure!(
            r.action != XDP_TX && r.action != XDP_REDIRECT,
            "{prog:?} forwarded a frame that is not ours"
        );
    }
    if r.frame != input {
        let (Some(before), Some(after)) =
            (ip.as_ref().map(sums), parse(&r.frame).map(|ip| sums(&ip)))
        else {
            anyhow::bail!("{prog:?} rewrote a frame it cannot have parsed: {}", hex());
        };
        let what = || format!("{before:?} → {after:?} on {}", hex());
        anyhow::ensure!(
            !before.ip || after.ip,
            "{prog:?} broke the IPv4 checksum: {}",
            what()
        );
        anyhow::ensure!(
            kept(before.l4, after.l4),
            "{prog:?} broke the transport checksum: {}",
            what()
        );
        anyhow::ensure!(
            before.inner_ip != Some(true) || after.inner_ip == Some(true),
            "{prog:?} broke the quoted IPv4 header's checksum: {}",
            what()
        );
        anyhow::ensure!(
            kept(before.inner_l4, after.inner_l4),
            "{prog:?} broke the quoted transport checksum: {}",
            what()
        );
        tally.count(format!("{prog:?} rewritten"));
        let v6 = ip.as_ref().is_some_and(|ip| ip.src.len() == 16);
        if before.ip && matches!(before.l4, Some(L4Sum::Valid | L4Sum::Absent)) {
            tally.verified += 1;
            if v6 {
                tally.count(format!("{prog:?} IPv6 verified"));
            }
            if before.inner_ip == Some(true)
                && matches!(before.inner_l4, Some(L4Sum::Valid | L4Sum::Absent))
            {
                tally.verified_quotes += 1;
            }
        }
    }
    Ok(())
}

/// Over the whole run, the counters agree with what the runs returned: one verdict a run, each
/// verdict as often as its action came back, and one reason for every pass and every drop.
fn counters_agree(fx: &Fx, tally: &Tally) -> anyhow::Result<()> {
    if fx.hook == Hook::Tc {
        return tc_counters_agree(fx, tally);
    }
    let counters = fx.dp.maps.counters()?;
    let of = |c: Counter| counters.get(&c).copied().unwrap_or(0);
    let verdicts = [
        (Counter::XdpAborted, XDP_ABORTED),
        (Counter::XdpDrop, XDP_DROP),
        (Counter::XdpPass, XDP_PASS),
        (Counter::XdpTx, XDP_TX),
        (Counter::XdpRedirect, XDP_REDIRECT),
    ];
    let total: u64 = verdicts.iter().map(|(c, _)| of(*c)).sum();
    anyhow::ensure!(
        total == tally.runs,
        "{total} verdicts counted for {} runs",
        tally.runs
    );
    for (c, action) in verdicts {
        let returned = [Prog::Ingress, Prog::Return]
            .iter()
            .map(|p| tally.get(&format!("{p:?} {}", action_name(action))))
            .sum::<u64>();
        anyhow::ensure!(
            of(c) == returned,
            "{}: counted {}, returned {returned} times",
            c.name(),
            of(c)
        );
    }
    reasons_agree(&of)
}

/// One reason counted for every pass and every drop.
fn reasons_agree(of: &impl Fn(Counter) -> u64) -> anyhow::Result<()> {
    for (disposition, verdict) in [
        (Disposition::Pass, Counter::XdpPass),
        (Disposition::Drop, Counter::XdpDrop),
    ] {
        let reasons: u64 = Counter::ALL
            .iter()
            .filter(|c| c.disposition() == Some(disposition))
            .map(|c| of(*c))
            .sum();
        anyhow::ensure!(
            reasons == of(verdict),
            "{reasons} {disposition:?} reasons counted for {} {}",
            of(verdict),
            verdict.name()
        );
    }
    Ok(())
}

/// [`counters_agree`] for TC, whose verdicts say less: a redirect back out of the interface
/// (counted `xdp_tx`) and one to another (`xdp_redirect`) are both `TC_ACT_REDIRECT`, and an
/// internal fault drops (counted `xdp_aborted`, which must stay 0).
fn tc_counters_agree(fx: &Fx, tally: &Tally) -> anyhow::Result<()> {
    let counters = fx.dp.maps.counters()?;
    let of = |c: Counter| counters.get(&c).copied().unwrap_or(0);
    let returned = |action: u32| -> u64 {
        [Prog::Ingress, Prog::Return]
            .iter()
            .map(|p| tally.get(&format!("{p:?} {}", action_name(action))))
            .sum()
    };
    let total: u64 = [
        Counter::XdpAborted,
        Counter::XdpDrop,
        Counter::XdpPass,
        Counter::XdpTx,
        Counter::XdpRedirect,
    ]
    .iter()
    .map(|c| of(*c))
    .sum();
    anyhow::ensure!(
        total == tally.runs,
        "{total} verdicts counted for {} runs",
        tally.runs
    );
    anyhow::ensure!(of(Counter::XdpAborted) == 0, "internal faults at TC");
    anyhow::ensure!(of(Counter::XdpDrop) == returned(XDP_DROP), "drops");
    anyhow::ensure!(of(Counter::XdpPass) == returned(XDP_PASS), "passes");
    anyhow::ensure!(
        of(Counter::XdpTx) + of(Counter::XdpRedirect) == returned(XDP_REDIRECT),
        "redirects"
    );
    reasons_agree(&of)
}

fn run(env: Env, hook: Hook, frames: u64, seed: u64) -> anyhow::Result<()> {
    let mut fx = Fx::new(env)?;
    fx.standard6()?;
    fx.hook = hook;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    for i in 0..frames {
        let ingress = i.is_multiple_of(2);
        let f = frame(&mut rng, ingress);
        let (prog, on) = if ingress {
            (Prog::Ingress, fx.env.cli0)
        } else {
            (Prog::Return, fx.env.path0)
        };
        check(&fx, prog, on, &f, &mut tally)
            .map_err(|e| e.context(format!("frame {i}, {}", reproduce(seed))))?;
        // Every frame also goes through the other program, where it is mostly not ours.
        let (prog, on) = if ingress {
            (Prog::Return, fx.env.path0)
        } else {
            (Prog::Ingress, fx.env.cli0)
        };
        check(&fx, prog, on, &f, &mut tally)
            .map_err(|e| e.context(format!("frame {i}, {}", reproduce(seed))))?;
    }
    let rewritten = tally.get("Ingress rewritten") + tally.get("Return rewritten");
    eprintln!(
        "robustness at {hook:?}: {frames} frames, {}: {rewritten} rewritten, {} with every \
         checksum verified ({} of them translated ICMP errors with their quote verified); {} \
         refused by the test run; {:?}",
        reproduce(seed),
        tally.verified,
        tally.verified_quotes,
        tally.refused,
        tally.kinds
    );
    // Refusals must stay the exception, or the TC run would test little.
    anyhow::ensure!(
        tally.refused * 10 <= tally.runs,
        "the test run refused {} of {} frames",
        tally.refused,
        tally.runs
    );
    counters_agree(&fx, &tally).map_err(|e| e.context(reproduce(seed)))?;
    for needed in [
        "Ingress rewritten",
        "Return rewritten",
        "Ingress XDP_REDIRECT",
        "Return XDP_REDIRECT",
        "Ingress XDP_DROP",
        "Return XDP_PASS",
        "Ingress IPv6 verified",
        "Return IPv6 verified",
    ] {
        anyhow::ensure!(
            tally.get(needed) > 0,
            "the generator never produced {needed}: {:?}",
            tally.kinds
        );
    }
    // A rewrite check that judged nothing would pass any datapath: most rewritten frames must
    // have had checksums to verify, and translated quotes among them.
    anyhow::ensure!(
        tally.verified * 2 >= rewritten,
        "only {} of {rewritten} rewritten frames had verifiable checksums",
        tally.verified
    );
    anyhow::ensure!(
        tally.verified_quotes * 100 >= tally.verified,
        "only {} of {} verified rewrites were ICMP errors with a verifiable quote",
        tally.verified_quotes,
        tally.verified
    );
    Ok(())
}

/// The guest agent's programs (`lb guest run`) on random, mutated and truncated frames, with
/// real connections behind them (`lb_tests::guest`): never a drop, a frame rewritten only in
/// the address the agent moves (the destination arriving, the source leaving, from one given
/// address to another) and its checksums, every checksum that was valid still valid, a frame for an address not given
/// unchanged, a redirect only on the way out, and the counters agreeing with the runs.
fn guest_run(frames: u64, seed: u64) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use lb_tests::guest::{
        A, B, CLIENT, Dir, GuestFx, NOT_GIVEN, TC_ACT_OK, TC_ACT_REDIRECT, connect, listen, udp,
    };
    GuestFx::run_case(move |fx| {
        let mut rng = StdRng::seed_from_u64(seed);
        // Connections whose segments the generator aims at: on A (moved when they arrive at
        // B), on B (B's own), connected UDP on A, and a listener with no connection.
        let l = listen()?;
        let port = l.local_addr()?.port();
        let mut keep = Vec::new();
        let mut tcp_ports = Vec::new();
        for local in [A, A, A, B] {
            let (c, s, cport) = connect(local, &l)?;
            tcp_ports.push(cport);
            keep.push((c, s));
        }
        let u = udp(A, 0, Some(40_300))?;
        let uport = u.local_addr()?.port();
        let addrs = [A, B, NOT_GIVEN, CLIENT];
        let (mut moved_in, mut moved_out, mut redirected, mut runs) = (0u64, 0u64, 0u64, 0u64);
        let (mut verified, mut refused, mut moved_icmp) = (0u64, 0u64, 0u64);
        for i in 0..frames {
            let valid = if rng.random_bool(0.3) {
                let (sport, dport) = (40_300, uport);
                let (to, from) = (*addrs.choose(&mut rng).unwrap_or(&B), CLIENT);
                Pkt::udp(from, sport, to, dport)
            } else {
                let cport = *tcp_ports.choose(&mut rng).unwrap_or(&1);
                let cport = if rng.random_bool(0.9) {
                    cport
                } else {
                    rng.random()
                };
                let to = *addrs.choose(&mut rng).unwrap_or(&B);
                let mut p = match rng.random_range(0..10) {
                    0 => Pkt::tcp_syn(CLIENT, cport, to, port),
                    _ => Pkt::tcp(CLIENT, cport, to, port),
                };
                if rng.random_bool(0.05) {
                    p = p.with_fin();
                }
                p
            };
            let mut valid = valid.payload(&vec![0x5a; rng.random_range(0..300)]);
            if rng.random_bool(0.05) {
                valid = valid.fragment(rng.random(), rng.random_range(0..200));
            }
            // Half the frames as the socket's replies (from A or B toward the client), and one
            // in ten arriving ones as an ICMP error quoting such a reply.
            let out = rng.random_bool(0.5);
            let icmp = !out && rng.random_bool(0.2);
            if out || icmp {
                let (src, dst) = (valid.dst, valid.src);
                valid = valid.src(src).dst(dst);
                let (sp, dp) = match valid.l4 {
                    L4::Tcp { sport, dport, .. } | L4::Udp { sport, dport, .. } => (dport, sport),
                    _ => (0, 0),
                };
                valid = valid.sport(sp).dport(dp);
            }
            if icmp {
                let ty = etherparse::Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
                );
                let whole = valid.ip_datagram().len();
                let len = if rng.random_bool(0.5) {
                    28.min(whole)
                } else {
                    whole
                };
                let to = if rng.random_bool(0.9) {
                    valid.src
                } else {
                    *addrs.choose(&mut rng).unwrap_or(&B)
                };
                valid = Pkt::icmp_error(
                    std::net::Ipv4Addr::new(198, 51, 100, 1),
                    to,
                    ty,
                    &valid,
                    len,
                );
            }
            let mut f = valid.bytes();
            match rng.random_range(0..10) {
                0..=4 => {}
                5..=6 => {
                    for _ in 0..rng.random_range(1..=4) {
                        let j = rng.random_range(0..f.len());
                        f[j] = rng.random();
                    }
                }
                7 | 8 => f.truncate(rng.random_range(14..=f.len())),
                _ => {
                    f = (0..rng.random_range(15..120))
                        .map(|_| rng.random())
                        .collect()
                }
            }
            let dir = if out { Dir::Out } else { Dir::In };
            let on = if rng.random_bool(0.5) {
                fx.a_if
            } else {
                fx.b_if
            };
            let hex = || f.iter().map(|b| format!("{b:02x}")).collect::<String>();
            let r = match fx.run(dir, on, &f) {
                Ok(r) => r,
                // No skb of an IPv4 ethertype without an IPv4 header (see `check`).
                Err(e) if einval(&e) => {
                    refused += 1;
                    continue;
                }
                Err(e) => return Err(e.context(format!("frame {i}, {}", reproduce(seed)))),
            };
            runs += 1;
            let ctx = || format!("frame {i} {dir:?} on {on}, {}: {}", reproduce(seed), hex());
            anyhow::ensure!(
                r.verdict == TC_ACT_OK || (dir == Dir::Out && r.verdict == TC_ACT_REDIRECT),
                "verdict {}: {}",
                r.verdict,
                ctx()
            );
            if r.verdict == TC_ACT_REDIRECT {
                redirected += 1;
            }
            if r.frame == f {
                anyhow::ensure!(r.verdict == TC_ACT_OK, "redirected unchanged: {}", ctx());
                continue;
            }
            anyhow::ensure!(r.frame.len() == f.len(), "length changed: {}", ctx());
            let before = parse(&f).context("rewrote what it could not have parsed")?;
            if before.proto == 1 {
                // An ICMP error moved to the socket's address: the outer destination and the
                // quoted source, one given address to the other, and the checksums (outer IP,
                // ICMP, the quote's IP and UDP).
                anyhow::ensure!(dir == Dir::In, "{}", ctx());
                // The ICMP header's offset; the quote's header is a plain 20 bytes.
                let o = 14 + usize::from(f[14] & 0xf) * 4;
                let given = |b: &[u8]| [A, B].iter().any(|g| g.octets() == b);
                let qsrc = o + 8 + 12..o + 8 + 16;
                let (was, now) = (&f[30..34], &r.frame[30..34]);
                anyhow::ensure!(
                    given(was)
                        && f[qsrc.clone()] == *was
                        && given(now)
                        && r.frame[qsrc.clone()] == *now
                        && now != was,
                    "moved an ICMP error wrongly: {}",
                    ctx()
                );
                let allowed = [
                    24..26,
                    30..34,
                    o + 2..o + 4,
                    o + 8 + 10..o + 8 + 12,
                    qsrc,
                    // The quoted UDP or TCP checksum.
                    o + 8 + 20 + 6..o + 8 + 20 + 8,
                    o + 8 + 20 + 16..o + 8 + 20 + 18,
                ];
                for (j, (x, y)) in f.iter().zip(&r.frame).enumerate() {
                    let ok = allowed.iter().any(|r| r.contains(&j));
                    anyhow::ensure!(x == y || ok, "byte {j} changed: {}", ctx());
                }
                let (b, a) = (
                    sums(&before),
                    parse(&r.frame).map(|ip| sums(&ip)).context("parse")?,
                );
                anyhow::ensure!(!b.ip || a.ip, "broke the IPv4 checksum: {}", ctx());
                anyhow::ensure!(kept(b.l4, a.l4), "broke the ICMP checksum: {}", ctx());
                anyhow::ensure!(
                    b.inner_ip != Some(true) || a.inner_ip == Some(true),
                    "broke the quoted IPv4 checksum: {}",
                    ctx()
                );
                anyhow::ensure!(
                    kept(b.inner_l4, a.inner_l4),
                    "broke the quoted checksum: {}",
                    ctx()
                );
                if b.ip && b.l4 == Some(L4Sum::Valid) {
                    verified += 1;
                }
                moved_icmp += 1;
                continue;
            }
            // Only the moved address (one given address to another: the destination arriving,
            // the source leaving) and the two checksums may differ.
            let addr_at = match dir {
                Dir::In => 30,
                Dir::Out => 26,
            };
            let given = |b: &[u8]| [A, B].iter().any(|g| g.octets() == b);
            let (was, now) = (&f[addr_at..addr_at + 4], &r.frame[addr_at..addr_at + 4]);
            anyhow::ensure!(
                given(was) && given(now) && was != now,
                "rewrote another address: {}",
                ctx()
            );
            let l4_check =
                14 + usize::from(f[14] & 0xf) * 4 + if before.proto == 6 { 16 } else { 6 };
            for (j, (x, y)) in f.iter().zip(&r.frame).enumerate() {
                let allowed = (24..26).contains(&j)
                    || (addr_at..addr_at + 4).contains(&j)
                    || (l4_check..l4_check + 2).contains(&j);
                anyhow::ensure!(x == y || allowed, "byte {j} changed: {}", ctx());
            }
            let (b, a) = (
                sums(&before),
                parse(&r.frame).map(|ip| sums(&ip)).context("parse")?,
            );
            anyhow::ensure!(!b.ip || a.ip, "broke the IPv4 checksum: {}", ctx());
            anyhow::ensure!(
                kept(b.l4, a.l4),
                "broke the transport checksum ({b:?} -> {a:?}): {}",
                ctx()
            );
            if b.ip && matches!(b.l4, Some(L4Sum::Valid | L4Sum::Absent)) {
                verified += 1;
            }
            match dir {
                Dir::In => moved_in += 1,
                Dir::Out => moved_out += 1,
            }
        }
        let c = fx.agent.counters();
        let n = |k: &str| c.get(k).copied().unwrap_or(0);
        eprintln!(
            "guest robustness: {frames} frames, {}: {moved_in} moved in, {moved_out} moved out \
             ({redirected} redirected), {verified} with every checksum verified, {refused} \
             refused by the test run; counters {c:?}",
            reproduce(seed)
        );
        anyhow::ensure!(
            n("in_moved") == moved_in
                && n("icmp_moved") == moved_icmp
                && n("out_moved") == moved_out
                && n("out_redirected") == redirected,
            "the counters disagree with the runs: {c:?}"
        );
        anyhow::ensure!(
            n("rewrite_failed") == 0 && n("redirect_failed") == 0,
            "{c:?}"
        );
        anyhow::ensure!(
            moved_in > 0 && moved_out > 0 && redirected > 0 && moved_icmp > 0 && n("no_socket") > 0,
            "the generator never moved a flow both ways: {c:?}"
        );
        anyhow::ensure!(
            verified * 2 >= moved_in + moved_out + moved_icmp,
            "only {verified} of {} rewritten frames had verifiable checksums",
            moved_in + moved_out + moved_icmp
        );
        anyhow::ensure!(
            refused * 10 <= runs,
            "the test run refused {refused} of {runs}"
        );
        drop(keep);
        Ok(())
    })
}

fn reproduce(seed: u64) -> String {
    format!("seed {seed} (LB_FUZZ_SEED={seed} reproduces it)")
}

fn main() {
    let args = Arguments::from_args();
    if !lb_tests::privileged("robustness", 3) {
        return;
    }
    let frames = std::env::var("LB_FUZZ_FRAMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed = std::env::var("LB_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("robustness: {frames} frames, {}", reproduce(seed));
    let env = Env::create().expect("building the fixture namespace");
    // The same frames (same seed) through the XDP build and the TC build.
    let trials = [(Hook::Xdp, ""), (Hook::Tc, "tc::")]
        .into_iter()
        .map(|(hook, prefix)| {
            Trial::test(
                format!("{prefix}random_mutated_truncated_frames"),
                move || run(env, hook, frames, seed).map_err(|e| Failed::from(format!("{e:#}"))),
            )
        })
        .chain(std::iter::once(Trial::test(
            "guest::random_mutated_truncated_frames",
            move || {
                // The agent's programs are smaller: a quarter of the frames says as much.
                guest_run(frames / 4, seed).map_err(|e| Failed::from(format!("{e:#}")))
            },
        )))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
