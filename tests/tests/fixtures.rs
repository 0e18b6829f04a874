//! BPF_PROG_TEST_RUN fixtures over the real compiled object: each case describes the map setup,
//! the input frames, the expected action and output bytes (built by the independent packet
//! builder), and the expected counters.
//!
//! Run one case: `cargo test -p lb-tests --test fixtures -- <name>`.

use std::net::Ipv4Addr;

use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use lb_common::{
    Counter::{self, *},
    maps::{FlowKey, FlowValue, PATH_DISABLED, PATH_DOWN, PATH_UP, TARGET_MODE_NONE, TargetValue},
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use lb_tests::{
    fixture::{
        Env, Fx,
        Prog::{Ingress, Return},
        XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, addr, ids, macs,
    },
    packet::Pkt,
};
use libtest_mimic::{Arguments, Failed, Trial};

type Case = fn(&mut Fx) -> anyhow::Result<()>;

/// Client → whole-address VIP, as it arrives on cli0.
fn to_vip(dst: Ipv4Addr, sport: u16, dport: u16) -> Pkt {
    Pkt::tcp(addr::CLIENT, sport, dst, dport).eth(macs::CLIENT, macs::CLI0)
}

/// What leaves toward a path: destination rewritten, TTL down, MACs from the FIB.
fn toward(p: &Pkt, path: Ipv4Addr, path_mac: [u8; 6]) -> Pkt {
    p.clone().dst(path).ttl(p.ttl - 1).eth(macs::PATH0, path_mac)
}

/// What leaves toward a client: source rewritten, TTL down, MACs from the FIB.
fn toward_client(p: &Pkt, vip: Ipv4Addr, client_mac: [u8; 6]) -> Pkt {
    p.clone().src(vip).ttl(p.ttl - 1).eth(macs::CLI0, client_mac)
}

/// A reply from a path address, as it arrives on path0.
fn from_path(p: Pkt, path_mac: [u8; 6]) -> Pkt {
    p.eth(path_mac, macs::PATH0)
}

fn frag_needed(mtu: u16) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu })
}

const CASES: &[(&str, &str, Case)] = &[
    // ---------------------------------------------------------------- ingress, the basics
    ("ingress_tcp_whole_vip", "TCP to a whole-address VIP goes to the failover active path", |fx| {
        let p = to_vip(addr::VIP, 40000, 22);
        let out = toward(&p, addr::NN1, macs::NN1);
        fx.expect(Ingress, fx.env.cli0, &p.bytes(), XDP_REDIRECT, Some(&out.bytes()))?;
        fx.counters(&[(FlowNew, 1), (NatIngress, 1), (XdpRedirect, 1)])?;
        let s = fx.vip_stats(ids::VIP)?;
        assert_eq!((s.in_packets, s.in_bytes), (1, p.bytes().len() as u64));
        assert_eq!(fx.path_stats(ids::PATH_NN1)?.in_packets, 1);
        assert_eq!(fx.path_stats(ids::PATH_NN2)?.in_packets, 0);
        Ok(())
    }),
];

fn main() {
    let args = Arguments::from_args();
    if !lb_tests::privileged("fixtures") {
        return;
    }
    let env = Env::create().expect("building the fixture namespace");
    let trials = CASES
        .iter()
        .map(|(name, about, case)| {
            let case = *case;
            let about = *about;
            Trial::test(*name, move || {
                let mut fx = Fx::new(env).map_err(|e| Failed::from(format!("{e:#}")))?;
                case(&mut fx).map_err(|e| Failed::from(format!("{about}\n{e:#}")))
            })
        })
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
