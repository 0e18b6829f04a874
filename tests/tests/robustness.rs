//! Robustness: hundreds of thousands of random, mutated and truncated frames through both
//! programs. Never XDP_ABORTED; every rewritten frame whose input checksums were valid has valid
//! IPv4 and transport checksums; frames not for a VIP (ingress) or not from a path (return)
//! leave byte-for-byte unchanged.
//!
//! `LB_FUZZ_FRAMES` sets the number of frames (default 200000), `LB_FUZZ_SEED` the seed.

use std::{collections::BTreeMap, net::Ipv4Addr};

use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use lb_tests::{
    fixture::{Env, Fx, Iface, Prog, XDP_ABORTED, XDP_REDIRECT, XDP_TX, action_name, addr},
    packet::{L4, Pkt},
};
use libtest_mimic::{Arguments, Failed, Trial};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};

const VIPS: [Ipv4Addr; 4] = [addr::VIP, addr::VIP_SVC, addr::VIP_DNS, addr::VIP_SPREAD];
const PATHS: [Ipv4Addr; 4] = [addr::NN1, addr::NN2, addr::SPREAD_A, addr::SPREAD_B];

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

/// What can be said of a frame's IPv4 datagram.
struct Ip<'a> {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
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
        src: ip[12..16].try_into().ok()?,
        dst: ip[16..20].try_into().ok()?,
        proto: ip[9],
        header,
        payload,
    })
}

/// (IPv4 header checksum valid, transport checksum valid if it can be judged).
fn checksums(ip: &Ip<'_>) -> (bool, Option<bool>) {
    let header_ok = ip.header.len() >= 20 && folds_to_ffff(ones_sum(0, ip.header));
    let l4 = ip.payload.and_then(|p| {
        let pseudo = || {
            let mut acc = ones_sum(0, &ip.src);
            acc = ones_sum(acc, &ip.dst);
            acc + u64::from(ip.proto) + p.len() as u64
        };
        match ip.proto {
            6 if p.len() >= 20 => Some(folds_to_ffff(ones_sum(pseudo(), p))),
            17 if p.len() >= 8 => Some(p[6..8] == [0, 0] || folds_to_ffff(ones_sum(pseudo(), p))),
            1 if p.len() >= 8 => Some(folds_to_ffff(ones_sum(0, p))),
            _ => None,
        }
    });
    (header_ok, l4)
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
            // An ICMP error quoting a datagram in the other direction.
            let quoted = Pkt::udp(
                dst,
                dport,
                if rng.random_bool(0.5) {
                    far
                } else {
                    *PATHS.choose(rng).unwrap()
                },
                sport,
            );
            let ty =
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                });
            Pkt::icmp_error(src, dst, ty, &quoted, rng.random_range(20..=46))
        }
        _ => Pkt::new(src, dst, L4::Raw(*[47u8, 50, 132].choose(rng).unwrap())),
    };
    p = p
        .ttl(rng.random_range(0..=255))
        .payload(&vec![rng.random(); rng.random_range(0..120)]);
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

/// A frame of one of the kinds: valid, mutated, truncated, extended, or random bytes.
fn frame(rng: &mut StdRng, ingress: bool) -> Vec<u8> {
    let mut f = valid_frame(rng, ingress);
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
            if rng.random_bool(0.5) {
                f[12] = 0x08;
                f[13] = 0x00;
                f[14] = 0x40 | (f[14] & 0x0f);
            }
        }
    }
    f
}

fn check(
    fx: &Fx,
    prog: Prog,
    on: Iface,
    input: &[u8],
    tally: &mut BTreeMap<String, u64>,
) -> anyhow::Result<()> {
    let r = fx.run(prog, on, input)?;
    *tally
        .entry(format!("{prog:?} {}", action_name(r.action)))
        .or_default() += 1;
    let hex = || input.iter().map(|b| format!("{b:02x}")).collect::<String>();
    anyhow::ensure!(r.action != XDP_ABORTED, "{prog:?} aborted on {}", hex());
    let ip = parse(input);
    let ours = ip.as_ref().is_some_and(|ip| match prog {
        Prog::Ingress => VIPS.iter().any(|v| v.octets() == ip.dst),
        // ICMP errors from routers are matched on their quote.
        Prog::Return => PATHS.iter().any(|p| p.octets() == ip.src) || ip.proto == 1,
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
        let before = ip.as_ref().map(checksums);
        let after = parse(&r.frame).map(|ip| checksums(&ip));
        match (before, after) {
            (Some((ip_ok, l4_ok)), Some((ip_ok2, l4_ok2))) => {
                anyhow::ensure!(
                    !ip_ok || ip_ok2,
                    "{prog:?} broke the IPv4 checksum of {}",
                    hex()
                );
                anyhow::ensure!(
                    l4_ok != Some(true) || l4_ok2 == Some(true),
                    "{prog:?} broke the transport checksum of {}",
                    hex()
                );
            }
            _ => anyhow::bail!("{prog:?} rewrote a frame it cannot have parsed: {}", hex()),
        }
        *tally.entry(format!("{prog:?} rewritten")).or_default() += 1;
    }
    Ok(())
}

fn run(env: Env, frames: u64, seed: u64) -> anyhow::Result<()> {
    let fx = Fx::new(env)?;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = BTreeMap::new();
    for i in 0..frames {
        let ingress = i.is_multiple_of(2);
        let f = frame(&mut rng, ingress);
        let (prog, on) = if ingress {
            (Prog::Ingress, fx.env.cli0)
        } else {
            (Prog::Return, fx.env.path0)
        };
        check(&fx, prog, on, &f, &mut tally)
            .map_err(|e| e.context(format!("frame {i}, seed {seed}")))?;
        // Every frame also goes through the other program, where it is mostly not ours.
        let (prog, on) = if ingress {
            (Prog::Return, fx.env.path0)
        } else {
            (Prog::Ingress, fx.env.cli0)
        };
        check(&fx, prog, on, &f, &mut tally)
            .map_err(|e| e.context(format!("frame {i}, seed {seed}")))?;
    }
    eprintln!("robustness: {frames} frames, seed {seed}: {tally:?}");
    for needed in [
        "Ingress rewritten",
        "Return rewritten",
        "Ingress XDP_REDIRECT",
        "Return XDP_REDIRECT",
        "Ingress XDP_DROP",
        "Return XDP_PASS",
    ] {
        anyhow::ensure!(
            tally.get(needed).copied().unwrap_or(0) > 0,
            "the generator never produced {needed}: {tally:?}"
        );
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    if !lb_tests::privileged("robustness") {
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
    let env = Env::create().expect("building the fixture namespace");
    let trial = Trial::test("random_mutated_truncated_frames", move || {
        run(env, frames, seed).map_err(|e| Failed::from(format!("{e:#}")))
    });
    libtest_mimic::run(&args, vec![trial]).exit();
}
