//! BPF_PROG_TEST_RUN fixtures over the real compiled object: each case describes the map setup,
//! the input frames, the expected action and output bytes (built by the independent packet
//! builder), and the expected counters.
//!
//! Run one case: `cargo test -p lb-tests --test fixtures -- <name>`.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{Icmpv4Type, icmpv4::DestUnreachableHeader};
use lb_common::{
    Counter::{self, *},
    maps::{
        FLOW_F_FROM_SYN, FLOW_F_REPLIED, FlowKey, FlowValue, PASSIVE_SILENCE, PASSIVE_SYN,
        PATH_DISABLED, PATH_DOWN, PATH_UP, PassiveEvent, PathSeen, TargetValue,
    },
    net::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};
use lb_tests::{
    fixture::{
        Env, Fx, Hook, Iface, Prog,
        Prog::{Ingress, Return},
        XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, addr, addr6, ids, macs,
    },
    packet::{L4, Pkt},
};
use libtest_mimic::{Arguments, Failed, Trial};

#[path = "fixtures/guest.rs"]
mod guest;

type Case = fn(&mut Fx) -> anyhow::Result<()>;

/// Client → whole-address VIP, as it arrives on cli0.
fn to_vip(dst: Ipv4Addr, sport: u16, dport: u16) -> Pkt {
    Pkt::tcp(addr::CLIENT, sport, dst, dport).eth(macs::CLIENT, macs::CLI0)
}

/// What leaves toward a path: destination rewritten, TTL down, MACs from the FIB.
fn toward(p: &Pkt, path: Ipv4Addr, path_mac: [u8; 6]) -> Pkt {
    p.clone()
        .dst(path)
        .ttl(p.ttl - 1)
        .eth(macs::PATH0, path_mac)
}

/// What leaves toward a client: source rewritten, TTL down, MACs from the FIB.
fn toward_client(p: &Pkt, vip: Ipv4Addr, client_mac: [u8; 6]) -> Pkt {
    p.clone()
        .src(vip)
        .ttl(p.ttl - 1)
        .eth(macs::CLI0, client_mac)
}

/// A reply from a path address, as it arrives on path0.
fn from_path(p: Pkt, path_mac: [u8; 6]) -> Pkt {
    p.eth(path_mac, macs::PATH0)
}

/// The ICMP fragmentation-needed lb sends back for `p` (IP header of `hlen` bytes), quoting it
/// as it arrived; link layer left to the caller.
fn too_big_reply(p: &Pkt, mtu: u16, hlen: usize) -> Pkt {
    Pkt::icmp_error(p.dst, p.src, frag_needed(mtu), p, hlen + 8)
        .tos(0xc0)
        .ident(0)
        .df(false)
}

fn frag_needed(mtu: u16) -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
        next_hop_mtu: mtu,
    })
}

/// A service-only VIP: `addr::NOT_VIP` udp/53 → a path at `addr::SMALL_MTU` (the target
/// `TARGET_SPARE`), so replies from that address are covered by the service entry only.
fn spare_dns(fx: &mut Fx) -> anyhow::Result<()> {
    use ids::*;
    fx.path(PATH_SPARE, addr::SMALL_MTU, TARGET_SPARE, PATH_UP)?;
    fx.target_single(TARGET_SPARE, PATH_SPARE)?;
    fx.expose(
        VIP_SPARE,
        addr::NOT_VIP,
        Some((IPPROTO_UDP, 53)),
        TARGET_SPARE,
        None,
        &[(PATH_SPARE, addr::SMALL_MTU)],
    )
}

/// A later fragment of a UDP datagram (identification `ident`) from `addr::SMALL_MTU`.
fn dns_later_fragment(ident: u16) -> Pkt {
    Pkt::new(addr::SMALL_MTU, addr::CLIENT, L4::Raw(IPPROTO_UDP))
        .ident(ident)
        .df(false)
        .fragment(false, 185)
        .payload(&[2; 60])
}

/// A non-IP frame (ARP request) of the given ethertype.
fn raw_frame(ethertype: u16, body_len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&macs::CLI0);
    f.extend_from_slice(&macs::CLIENT);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend((0..body_len).map(|i| i as u8));
    f
}

/// TCP from `addr::CLIENT` (198.51.100.10) port N to `addr::VIP_SPREAD` (203.0.113.20) port 80:
/// (N, its slot of the 4099-slot ring). Computed once, outside lb, from the hash's definition
/// (`lb_common::hash::flow_hash`: murmur3's finaliser chained over seed ^ source, destination,
/// the ports as one big-endian word and the protocol), so a change of the hash fails here.
const SPREAD_SLOTS: &[(u16, u32)] = &[
    (41000, 1101),
    (41001, 2861),
    (41002, 2050),
    (41003, 2618),
    (41004, 2974),
    (41005, 36),
    (41006, 264),
    (41007, 3681),
    (41008, 46),
    (41009, 2410),
    (41010, 793),
    (41011, 3427),
    (41012, 2973),
    (41013, 3684),
    (41014, 1193),
    (41015, 2607),
];

/// What a program is expected to do with a frame.
enum Then<'a> {
    /// Sent on by the program (XDP_REDIRECT) as this frame.
    Redirect(&'a Pkt),
    /// Sent back out of the interface it came in on (XDP_TX) as this frame.
    Tx(&'a Pkt),
    /// Translated into this frame, then handed to the kernel (XDP_PASS).
    Kernel(&'a Pkt),
    /// Handed to the kernel unchanged.
    Pass,
    /// Dropped.
    Dropped,
}
use Then::*;

/// Runs `prog` on `input` as it arrives on `on`, expecting `then`.
fn expect_on(fx: &Fx, prog: Prog, on: Iface, input: &Pkt, then: Then<'_>) -> anyhow::Result<()> {
    let (action, output) = match then {
        Redirect(p) => (XDP_REDIRECT, Some(p)),
        Tx(p) => (XDP_TX, Some(p)),
        Kernel(p) => (XDP_PASS, Some(p)),
        Pass => (XDP_PASS, None),
        Dropped => (XDP_DROP, None),
    };
    fx.expect(
        prog,
        on,
        &input.bytes(),
        action,
        output.map(Pkt::bytes).as_deref(),
    )
}

/// `input` through the ingress program, arriving on the client side (cli0).
fn ingress(fx: &Fx, input: &Pkt, then: Then<'_>) -> anyhow::Result<()> {
    expect_on(fx, Ingress, fx.env.cli0, input, then)
}

/// `input` through the return program, arriving on the path side (path0).
fn returning(fx: &Fx, input: &Pkt, then: Then<'_>) -> anyhow::Result<()> {
    expect_on(fx, Return, fx.env.path0, input, then)
}

/// The key of a flow (`dport` 0 for ICMP echo, whose identifier is the `sport`).
fn flow(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, proto: u8) -> FlowKey {
    FlowKey::new(
        src.octets(),
        dst.octets(),
        sport.to_be_bytes(),
        dport.to_be_bytes(),
        proto,
    )
}

/// Redirected to a path: the usual counters of one new translated flow.
const NEW_FLOW_REDIRECT: &[(Counter, u64)] = &[(FlowDecided, 1), (NatIngress, 1), (XdpRedirect, 1)];

const CASES: &[(&str, &str, Case)] = &[
    // ---------------------------------------------------------------- ingress: translation
    (
        "ingress_tcp_whole_vip",
        "TCP to a whole-address VIP goes to the failover active path",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22);
            let out = toward(&p, addr::NN1, macs::NN1);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)?;
            let s = fx.vip_stats(ids::VIP)?;
            assert_eq!(
                (s.in_packets, s.in_bytes, s.out_packets),
                (1, p.bytes().len() as u64, 0)
            );
            assert_eq!(fx.path_stats(ids::PATH_NN1)?.in_packets, 1);
            assert_eq!(fx.path_stats(ids::PATH_NN2)?.in_packets, 0);
            Ok(())
        },
    ),
    (
        "ingress_udp_whole_vip",
        "UDP to a whole-address VIP: address and UDP checksum rewritten",
        |fx| {
            let p = Pkt::udp(addr::CLIENT, 5000, addr::VIP, 5001).eth(macs::CLIENT, macs::CLI0);
            let out = toward(&p, addr::NN1, macs::NN1);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ingress_icmp_echo_whole_vip",
        "ICMP echo to a whole-address VIP is translated",
        |fx| {
            let p = Pkt::echo_request(addr::CLIENT, addr::VIP, 77).eth(macs::CLIENT, macs::CLI0);
            let out = toward(&p, addr::NN1, macs::NN1);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)?;
            assert!(fx.dp.maps.flows(10)?.is_empty(), "no flow state");
            Ok(())
        },
    ),
    (
        "ingress_service_port_translation",
        "tcp/443 on a service VIP goes to the path's port 8443",
        |fx| {
            let p = to_vip(addr::VIP_SVC, 40000, 443);
            let out = toward(&p, addr::NN1, macs::NN1).dport(8443);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)?;
            assert_eq!(fx.vip_stats(ids::VIP_SVC)?.in_packets, 1);
            Ok(())
        },
    ),
    (
        "ingress_service_udp_same_port",
        "udp/53 service without translation keeps the port",
        |fx| {
            let p = Pkt::udp(addr::CLIENT, 33000, addr::VIP_DNS, 53).eth(macs::CLIENT, macs::CLI0);
            let out = toward(&p, addr::NN1, macs::NN1);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ingress_service_other_port_passes",
        "a port a service VIP does not serve is not ours",
        |fx| {
            let p = to_vip(addr::VIP_SVC, 40000, 80);
            ingress(fx, &p, Pass)?;
            fx.counters(&[(PassNotForUs, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_service_other_proto_passes",
        "udp/443 on a tcp/443 service VIP is not ours",
        |fx| {
            let p = Pkt::udp(addr::CLIENT, 40000, addr::VIP_SVC, 443).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &p, Pass)?;
            fx.counters(&[(PassNotForUs, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_not_vip_passes",
        "traffic to an address that is no VIP leaves untouched",
        |fx| {
            let p = to_vip(addr::NOT_VIP, 40000, 22);
            ingress(fx, &p, Pass)?;
            fx.counters(&[(PassNotForUs, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_arp_passes",
        "ARP is not IPv4: passed untouched",
        |fx| {
            fx.expect(Ingress, fx.env.cli0, &raw_frame(0x0806, 28), XDP_PASS, None)?;
            fx.counters(&[(PassNotIp, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_other_ethertypes_pass",
        "neither IPv4 nor IPv6 (LLDP here) is passed untouched",
        |fx| {
            fx.expect(Ingress, fx.env.cli0, &raw_frame(0x88cc, 60), XDP_PASS, None)?;
            fx.counters(&[(PassNotIp, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_udp_zero_checksum",
        "a UDP checksum of 0 (none) stays 0",
        |fx| {
            let p = Pkt::udp(addr::CLIENT, 5000, addr::VIP, 5001)
                .eth(macs::CLIENT, macs::CLI0)
                .zero_udp_checksum();
            let out = toward(&p, addr::NN1, macs::NN1);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ingress_ip_options",
        "IPv4 options (IHL 7): the TCP header is found after them",
        |fx| {
            let opts = [0x01, 0x01, 0x01, 0x01, 0x94, 0x04, 0x00, 0x00]; // NOPs, router alert
            let p = to_vip(addr::VIP, 40000, 22).options(&opts);
            let out = toward(&p, addr::NN1, macs::NN1);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ingress_ip_options_max",
        "IPv4 options of 40 bytes (IHL 15) and a service port",
        |fx| {
            let p = to_vip(addr::VIP_SVC, 40000, 443).options(&[0x01; 40]);
            let out = toward(&p, addr::NN1, macs::NN1).dport(8443);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ingress_vlan_translated_and_untagged",
        "VLAN-tagged: translated and forwarded by the datapath, leaving untagged toward the path",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22).vlan(100);
            let out = toward(&p, addr::NN1, macs::NN1).untagged();
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ingress_two_vlan_tags_pass",
        "two VLAN tags (802.1ad outside 802.1Q): the kernel's VLAN devices own them; passed untranslated",
        |fx| {
            let mut f = to_vip(addr::VIP, 40000, 22).vlan(100).bytes();
            // An outer 802.1ad tag in front of the 802.1Q one.
            f.splice(12..12, [0x88, 0xa8, 0x00, 0x07]);
            fx.expect(Ingress, fx.env.cli0, &f, XDP_PASS, None)?;
            fx.counters(&[(PassVlan, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_vlan_too_big_answers_on_the_vlan",
        "VLAN-tagged, too big for the path with DF: the fragmentation-needed goes back with the same tag",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::SMALL_MTU)?;
            let p = to_vip(addr::NOT_VIP, 40000, 22)
                .vlan(100)
                .payload(&[7; 1100]);
            let reply = too_big_reply(&p, 1000, 20)
                .vlan(100)
                .eth(macs::CLI0, macs::CLIENT);
            ingress(fx, &p, Tx(&reply))?;
            fx.counters(&[(FlowDecided, 1), (IcmpTooBigSent, 1), (XdpTx, 1)])
        },
    ),
    (
        "ingress_vlan_not_vip_passes",
        "VLAN-tagged traffic for no VIP leaves untouched",
        |fx| {
            let p = to_vip(addr::NOT_VIP, 40000, 22).vlan(7);
            ingress(fx, &p, Pass)?;
            fx.counters(&[(PassNotForUs, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_ethernet_padding",
        "a short frame padded to 60 bytes: padding kept, checksums right",
        |fx| {
            let p = Pkt::udp(addr::CLIENT, 5000, addr::VIP, 5001)
                .eth(macs::CLIENT, macs::CLI0)
                .payload(b"x");
            let mut input = p.bytes();
            let mut want = toward(&p, addr::NN1, macs::NN1).bytes();
            input.resize(60, 0xaa);
            want.resize(60, 0xaa);
            fx.expect(Ingress, fx.env.cli0, &input, XDP_REDIRECT, Some(&want))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ingress_to_far_client_gateway",
        "a client beyond the gateway: flows keyed by its address",
        |fx| {
            let p = Pkt::tcp(addr::FAR_CLIENT, 1234, addr::VIP, 22).eth(macs::GATEWAY, macs::CLI0);
            let out = toward(&p, addr::NN1, macs::NN1);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    // ---------------------------------------------------------------- ingress: flows
    (
        "ingress_stateless_by_default",
        "no transition, no exception: every packet follows the decision and nothing is stored",
        |fx| {
            for sport in [40000, 40001] {
                let p = to_vip(addr::VIP, sport, 22);
                ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
                let syn =
                    Pkt::tcp_syn(addr::CLIENT, sport, addr::VIP, 22).eth(macs::CLIENT, macs::CLI0);
                ingress(fx, &syn, Redirect(&toward(&syn, addr::NN1, macs::NN1)))?;
            }
            assert!(fx.dp.maps.flows(10)?.is_empty());
            assert!(fx.dp.maps.outbound(10)?.is_empty());
            fx.counters(&[(FlowDecided, 4), (NatIngress, 4), (XdpRedirect, 4)])
        },
    ),
    (
        "ingress_failback_keeps_old_connections",
        "failback with preempt (nn2 → nn1, nn2 still up): an established connection stays on nn2, pinning itself once; a SYN follows the new decision to nn1 and pins its new connection there (its flow's previous path differs)",
        |fx| {
            fx.target_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            for _ in 0..3 {
                ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            }
            let key = flow(addr::CLIENT, addr::VIP, 40000, 22, IPPROTO_TCP);
            let pinned = fx.dp.maps.flow(&key)?.expect("the connection is pinned");
            assert_eq!((pinned.path, pinned.vip), (ids::PATH_NN2, ids::VIP));
            let syn =
                Pkt::tcp_syn(addr::CLIENT, 40001, addr::VIP, 22).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &syn, Redirect(&toward(&syn, addr::NN1, macs::NN1)))?;
            let new = flow(addr::CLIENT, addr::VIP, 40001, 22, IPPROTO_TCP);
            let syn_pin = fx
                .dp
                .maps
                .flow(&new)?
                .expect("the new connection is pinned");
            assert_eq!(
                (syn_pin.path, syn_pin.flags),
                (ids::PATH_NN1, FLOW_F_FROM_SYN)
            );
            fx.counters(&[
                (FlowDecided, 2),
                (FlowPrevious, 1),
                (ExceptionPinned, 2),
                (ExceptionHit, 2),
                (NatIngress, 5),
                (XdpRedirect, 5),
            ])?;
            // A second change (nn1 → nn2 → nn1 again): the pinned connection stays on nn2.
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            Ok(())
        },
    ),
    (
        "ingress_new_connection_during_a_transition",
        "during a transition a new connection on a flow whose previous path differs (the previous decision nn2, the current nn1) is pinned to nn1 by its SYN; the VM's SYN-ACK confirms that pin instead of making one of its own, and the client's next packets follow it",
        |fx| {
            fx.target_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            let syn =
                Pkt::tcp_syn(addr::CLIENT, 40001, addr::VIP, 22).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &syn, Redirect(&toward(&syn, addr::NN1, macs::NN1)))?;
            let key = flow(addr::CLIENT, addr::VIP, 40001, 22, IPPROTO_TCP);
            let pin = fx.dp.maps.flows(10)?;
            assert_eq!(pin.len(), 1);
            assert_eq!((pin[0].0, pin[0].1.path), (key, ids::PATH_NN1));
            assert_eq!(pin[0].1.flags, FLOW_F_FROM_SYN, "unanswered yet");
            let synack = from_path(
                Pkt::tcp_syn_ack(addr::NN1, 22, addr::CLIENT, 40001),
                macs::NN1,
            );
            returning(
                fx,
                &synack,
                Redirect(&toward_client(&synack, addr::VIP, macs::CLIENT)),
            )?;
            assert!(fx.dp.maps.outbound(10)?.is_empty(), "the SYN's pin serves");
            let pin = fx.dp.maps.flows(10)?;
            assert_eq!(pin[0].1.flags, FLOW_F_FROM_SYN | FLOW_F_REPLIED);
            let ack = to_vip(addr::VIP, 40001, 22);
            ingress(fx, &ack, Redirect(&toward(&ack, addr::NN1, macs::NN1)))?;
            fx.counters(&[
                (FlowDecided, 1),
                (ExceptionPinned, 1),
                (ExceptionHit, 1),
                (NatIngress, 2),
                (NatReturn, 1),
                (XdpRedirect, 3),
            ])?;
            // Without a transition a SYN pins nothing.
            fx.target_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            let syn =
                Pkt::tcp_syn(addr::CLIENT, 40002, addr::VIP, 22).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &syn, Redirect(&toward(&syn, addr::NN1, macs::NN1)))?;
            assert_eq!(fx.dp.maps.flows(10)?.len(), 1);
            Ok(())
        },
    ),
    (
        "ingress_new_connection_during_a_transition_answered_through_another_edge",
        "with several edges the VM's SYN-ACK may come back through another edge: the client's next packet, which it sends only after that SYN-ACK, finds its SYN's pin, follows the current decision (not the previous one, which would reset the connection) and marks the pin answered",
        |fx| {
            fx.target_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            let syn =
                Pkt::tcp_syn(addr::CLIENT, 40003, addr::VIP, 22).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &syn, Redirect(&toward(&syn, addr::NN1, macs::NN1)))?;
            let ack = to_vip(addr::VIP, 40003, 22);
            ingress(fx, &ack, Redirect(&toward(&ack, addr::NN1, macs::NN1)))?;
            let pin = fx.dp.maps.flows(10)?;
            assert_eq!(pin.len(), 1);
            assert_eq!(pin[0].1.path, ids::PATH_NN1);
            assert_eq!(pin[0].1.flags, FLOW_F_FROM_SYN | FLOW_F_REPLIED);
            fx.counters(&[
                (FlowDecided, 1),
                (ExceptionPinned, 1),
                (ExceptionHit, 1),
                (NatIngress, 2),
                (XdpRedirect, 2),
            ])?;
            Ok(())
        },
    ),
    (
        "ingress_udp_follows_the_current_decision",
        "UDP has no handshake: during a transition its datagrams follow the current decision, pinning nothing",
        |fx| {
            fx.target_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            let p = Pkt::udp(addr::CLIENT, 40000, addr::VIP, 5353).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            // A datagram still in flight from the previous path is a reply, not a new flow.
            let late = from_path(Pkt::udp(addr::NN2, 5353, addr::CLIENT, 40000), macs::NN2);
            returning(
                fx,
                &late,
                Redirect(&toward_client(&late, addr::VIP, macs::CLIENT)),
            )?;
            assert!(fx.dp.maps.flows(10)?.is_empty());
            assert!(fx.dp.maps.outbound(10)?.is_empty());
            fx.counters(&[
                (FlowDecided, 1),
                (NatIngress, 1),
                (NatReturn, 1),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "ingress_pins_are_rate_limited",
        "a flood of non-SYN packets during a transition: pins beyond the per-CPU budget are refused and counted, the packets still go to the previous path",
        |fx| {
            fx.dp.maps.set_settings(lb_common::maps::Settings {
                too_big_per_sec: 0,
                too_big_burst: 0,
                pin_per_sec: 1,
                pin_burst: 2,
            })?;
            fx.target_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            for sport in 40000..40005u16 {
                let p = to_vip(addr::VIP, sport, 22);
                ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            }
            assert_eq!(fx.dp.maps.flows(10)?.len(), 2);
            fx.counters(&[
                (FlowPrevious, 5),
                (ExceptionPinned, 2),
                (ExceptionRateLimited, 3),
                (NatIngress, 5),
                (XdpRedirect, 5),
            ])
        },
    ),
    (
        "ingress_exceptions_not_consulted_once_cleared",
        "a target whose exceptions the control plane cleared (exc_clear past its pin count) is stateless again: its entries are not looked at; a new pin makes the datapath consult them again",
        |fx| {
            let key = flow(addr::CLIENT, addr::VIP, 40000, 22, IPPROTO_TCP);
            fx.pin(
                ids::TARGET_WEB,
                key,
                FlowValue::new(ids::PATH_NN2, ids::VIP, 0, 0),
            )?;
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            let seq = fx.dp.maps.exc_seq(ids::TARGET_WEB)?;
            let mut t = TargetValue::single(ids::PATH_NN1);
            t.exc_clear = seq;
            fx.dp.maps.set_target(ids::TARGET_WEB, t)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            // A transition, and another connection pins itself: the tables count again.
            let mut t = TargetValue::single(ids::PATH_NN1)
                .with_previous(&TargetValue::single(ids::PATH_NN2));
            t.exc_clear = seq;
            fx.dp.maps.set_target(ids::TARGET_WEB, t)?;
            let q = to_vip(addr::VIP, 40001, 22);
            ingress(fx, &q, Redirect(&toward(&q, addr::NN2, macs::NN2)))?;
            assert_eq!(fx.dp.maps.exc_seq(ids::TARGET_WEB)?, seq + 1);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            fx.counters(&[
                (ExceptionHit, 2),
                (FlowDecided, 1),
                (FlowPrevious, 1),
                (ExceptionPinned, 1),
                (NatIngress, 4),
                (XdpRedirect, 4),
            ])
        },
    ),
    (
        "sweep_expires_exceptions_and_returns_the_target_to_stateless",
        "the control plane's sweep keeps a live pin, removes it once idle past its timeout, then sets the bound that stops the datapath consulting the tables for the target",
        |fx| {
            use lb_user::{config::Flows, datapath::exceptions::sweep};
            fx.target_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            let (_, pin) = fx.dp.maps.flows(10)?[0];
            let seq = fx.dp.maps.exc_seq(ids::TARGET_WEB)?;
            assert_eq!(seq, 1);
            let t = Flows::default();
            let targets = [ids::TARGET_WEB, ids::TARGET_SPREAD];
            let vip_target = |v: u32| (v == ids::VIP).then_some(ids::TARGET_WEB);
            let never = |_: u32, _: &FlowKey, _: &FlowValue| false;
            // Unanswered (no reply from the VM yet): live for `unreplied`.
            let live = pin.seen_ns + t.unreplied.as_nanos() as u64 - 1;
            let s = sweep(&mut fx.dp.maps, targets, vip_target, never, live, &t)?;
            assert_eq!((s.removed, s.left.get(&ids::TARGET_WEB)), (0, Some(&1)));
            assert!(!s.clear.contains_key(&ids::TARGET_WEB));
            assert_eq!(
                s.clear.get(&ids::TARGET_SPREAD),
                Some(&0),
                "no exceptions at all"
            );
            let gone = pin.seen_ns + t.unreplied.as_nanos() as u64;
            let s = sweep(&mut fx.dp.maps, targets, vip_target, never, gone, &t)?;
            assert_eq!(s.removed, 1);
            assert!(fx.dp.maps.flows(10)?.is_empty());
            assert_eq!(s.clear.get(&ids::TARGET_WEB), Some(&seq));
            // The transition over and the bound written: the target is stateless again.
            let mut v = TargetValue::single(ids::PATH_NN1);
            v.exc_clear = seq;
            fx.dp.maps.set_target(ids::TARGET_WEB, v)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            // A redundant exception (the rules give its path anyway) goes too.
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            let key = flow(addr::CLIENT, addr::VIP, 40001, 22, IPPROTO_TCP);
            fx.pin(
                ids::TARGET_WEB,
                key,
                FlowValue::new(
                    ids::PATH_NN1,
                    ids::VIP,
                    lb_common::maps::FLOW_F_REPLIED,
                    gone,
                ),
            )?;
            let redundant = |_: u32, _: &FlowKey, v: &FlowValue| v.path == ids::PATH_NN1;
            let s = sweep(&mut fx.dp.maps, targets, vip_target, redundant, gone, &t)?;
            assert_eq!(s.removed, 1);
            fx.counters(&[
                (FlowPrevious, 1),
                (ExceptionPinned, 1),
                (FlowDecided, 1),
                (NatIngress, 2),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "ingress_drain_keeps_connections_disable_moves_them",
        "the decision moves off nn1 while it stays up (a drain): its connections stay; once nn1 is disabled, their exceptions are stale, removed, and they follow the decision",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.set_state(ids::PATH_NN1, PATH_DISABLED)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            assert!(
                fx.dp.maps.flows(10)?.is_empty(),
                "the stale exception is gone"
            );
            fx.counters(&[
                (FlowDecided, 2),
                (FlowPrevious, 1),
                (ExceptionPinned, 1),
                (ExceptionStale, 1),
                (NatIngress, 3),
                (XdpRedirect, 3),
            ])
        },
    ),
    (
        "ingress_path_down_moves_its_flows",
        "a flow whose path went down moves on its next packet, in the datapath",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.set_state(ids::PATH_NN1, PATH_DOWN)?;
            // Even with the previous decision kept: its path is down.
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            fx.counters(&[(FlowDecided, 3), (NatIngress, 3), (XdpRedirect, 3)])?;
            assert!(fx.dp.maps.flows(10)?.is_empty());
            Ok(())
        },
    ),
    (
        "ingress_path_disabled_moves_its_flows",
        "an administratively disabled path is left like a down one",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.set_state(ids::PATH_NN1, PATH_DISABLED)?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            fx.counters(&[(FlowDecided, 2), (NatIngress, 2), (XdpRedirect, 2)])
        },
    ),
    (
        "ingress_path_moved_to_another_target_moves_its_flows",
        "a flow whose previous path slot now belongs to another target follows the current decision",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.path(ids::PATH_NN1, addr::NN1, ids::TARGET_SPARE, PATH_UP)?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            fx.counters(&[(FlowDecided, 2), (NatIngress, 2), (XdpRedirect, 2)])
        },
    ),
    (
        "ingress_flow_of_removed_vip_is_not_used",
        "a VIP removed: its flows no longer translate anything",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.dp.maps.remove_vip(ids::VIP)?;
            ingress(fx, &p, Pass)?;
            fx.counters(&[
                (FlowDecided, 1),
                (NatIngress, 1),
                (XdpRedirect, 1),
                (PassNotForUs, 1),
                (XdpPass, 1),
            ])
        },
    ),
    (
        "ingress_exception_of_another_vip_is_ignored",
        "an exception naming another VIP id (the id was reused) is not followed",
        |fx| {
            // An exception names VIP_SVC's id for a destination that id does not serve.
            let key = flow(addr::CLIENT, addr::VIP, 40000, 22, IPPROTO_TCP);
            let stale = FlowValue::new(ids::PATH_NN2, ids::VIP_SVC, 0, 0);
            fx.pin(ids::TARGET_WEB, key, stale)?;
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            assert_eq!(fx.dp.maps.flow(&key)?, Some(stale), "left to the sweep");
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ingress_last_known_keeps_down_path",
        "all_down=last-known: the target still names its down path, flows stay",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.set_state(ids::PATH_NN1, PATH_DOWN)?;
            fx.set_state(ids::PATH_NN2, PATH_DOWN)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.counters(&[(FlowDecided, 2), (NatIngress, 2), (XdpRedirect, 2)])
        },
    ),
    (
        "ingress_no_path_drops",
        "all_down=drop: the target has no path, packets are dropped and counted",
        |fx| {
            fx.dp
                .maps
                .set_target(ids::TARGET_WEB, TargetValue::none())?;
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Dropped)?;
            fx.counters(&[(DropNoPath, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_spread_follows_ring",
        "active/active: each new flow takes the path of its ring slot (fixed vectors)",
        |fx| {
            let mut seen = [0u32; 2];
            for &(sport, slot) in SPREAD_SLOTS {
                let p = to_vip(addr::VIP_SPREAD, sport, 80);
                // The standard ring alternates: even slots A, odd slots B.
                let (path, m, i) = if slot % 2 == 0 {
                    (addr::SPREAD_A, macs::SPREAD_A, 0)
                } else {
                    (addr::SPREAD_B, macs::SPREAD_B, 1)
                };
                seen[i] += 1;
                ingress(fx, &p, Redirect(&toward(&p, path, m)))
                    .map_err(|e| e.context(format!("source port {sport}, ring slot {slot}")))?;
            }
            assert_eq!(seen, [8, 8]);
            fx.counters(&[(FlowDecided, 16), (NatIngress, 16), (XdpRedirect, 16)])?;
            assert_eq!(
                fx.path_stats(ids::PATH_SPREAD_A)?.in_packets,
                u64::from(seen[0])
            );
            assert_eq!(
                fx.path_stats(ids::PATH_SPREAD_B)?.in_packets,
                u64::from(seen[1])
            );
            Ok(())
        },
    ),
    (
        "ingress_spread_path_down_moves_only_its_flows",
        "active/active: a path going down moves its flows; the others stay put",
        |fx| {
            let flows: Vec<Pkt> = (42000..42012u16)
                .map(|s| to_vip(addr::VIP_SPREAD, s, 80))
                .collect();
            let mut on_a = Vec::new();
            for p in &flows {
                let r = fx.run(Ingress, fx.env.cli0, &p.bytes())?;
                on_a.push(r.frame[30..34] == addr::SPREAD_A.octets());
            }
            assert!(on_a.iter().any(|a| *a) && on_a.iter().any(|a| !*a));
            // A goes down; the control plane writes a ring without it into the other half and
            // keeps the old one as the previous decision (whose path A is down).
            fx.set_state(ids::PATH_SPREAD_A, PATH_DOWN)?;
            fx.dp.maps.set_ring(
                ids::TARGET_SPREAD,
                1,
                &vec![ids::PATH_SPREAD_B; lb_common::maps::RING_SIZE as usize],
            )?;
            fx.dp.maps.set_target(
                ids::TARGET_SPREAD,
                TargetValue::ring(1).with_previous(&TargetValue::ring(0)),
            )?;
            for p in &flows {
                ingress(fx, p, Redirect(&toward(p, addr::SPREAD_B, macs::SPREAD_B)))?;
            }
            assert!(
                fx.dp.maps.flows(10)?.is_empty(),
                "nothing to pin: A is down"
            );
            fx.counters(&[(FlowDecided, 24), (NatIngress, 24), (XdpRedirect, 24)])
        },
    ),
    (
        "ingress_ring_change_keeps_old_connections",
        "active/active: the ring changes while both paths stay up (B re-weighted to 0): established connections on B stay there, pinning themselves; a SYN of a flow whose slot moved follows the new ring to A",
        |fx| {
            let flows: Vec<(u16, u32)> = SPREAD_SLOTS.iter().copied().take(8).collect();
            let on_b: Vec<u16> = flows
                .iter()
                .filter(|(_, slot)| slot % 2 == 1)
                .map(|(sport, _)| *sport)
                .collect();
            assert!(!on_b.is_empty());
            fx.dp.maps.set_ring(
                ids::TARGET_SPREAD,
                1,
                &vec![ids::PATH_SPREAD_A; lb_common::maps::RING_SIZE as usize],
            )?;
            fx.dp.maps.set_target(
                ids::TARGET_SPREAD,
                TargetValue::ring(1).with_previous(&TargetValue::ring(0)),
            )?;
            for &sport in &on_b {
                let p = to_vip(addr::VIP_SPREAD, sport, 80);
                ingress(
                    fx,
                    &p,
                    Redirect(&toward(&p, addr::SPREAD_B, macs::SPREAD_B)),
                )?;
                ingress(
                    fx,
                    &p,
                    Redirect(&toward(&p, addr::SPREAD_B, macs::SPREAD_B)),
                )?;
            }
            let n = on_b.len() as u64;
            assert_eq!(fx.dp.maps.flows(100)?.len() as u64, n);
            // The old connections close; new ones reuse their 5-tuples: each SYN follows the
            // new ring, and the VM's SYN-ACK from A replaces the stale exception to B.
            for &sport in &on_b {
                let syn = Pkt::tcp_syn(addr::CLIENT, sport, addr::VIP_SPREAD, 80)
                    .eth(macs::CLIENT, macs::CLI0);
                ingress(
                    fx,
                    &syn,
                    Redirect(&toward(&syn, addr::SPREAD_A, macs::SPREAD_A)),
                )?;
                let synack = from_path(
                    Pkt::tcp_syn_ack(addr::SPREAD_A, 80, addr::CLIENT, sport),
                    macs::SPREAD_A,
                );
                returning(
                    fx,
                    &synack,
                    Redirect(&toward_client(&synack, addr::VIP_SPREAD, macs::CLIENT)),
                )?;
                let ack = to_vip(addr::VIP_SPREAD, sport, 80);
                ingress(
                    fx,
                    &ack,
                    Redirect(&toward(&ack, addr::SPREAD_A, macs::SPREAD_A)),
                )?;
            }
            assert!(fx.dp.maps.flows(100)?.is_empty(), "the stale pins are gone");
            assert_eq!(fx.dp.maps.outbound(100)?.len() as u64, n);
            fx.counters(&[
                (FlowPrevious, n),
                (ExceptionPinned, n),
                (ExceptionHit, 2 * n),
                (FlowDecided, n),
                (ExceptionStale, n),
                (ExceptionFromVm, n),
                (NatIngress, 4 * n),
                (NatReturn, n),
                (XdpRedirect, 5 * n),
            ])
        },
    ),
    (
        "ingress_ttl_one_passes_untranslated",
        "TTL 1: passed untouched, so the kernel's time-exceeded quotes the VIP",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22).ttl(1);
            ingress(fx, &p, Pass)?;
            fx.counters(&[(PassTtlExpired, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_first_fragment_whole_vip_translated",
        "a first fragment (MF set) to a whole-address VIP goes through like any first packet (the active path, its TCP checksum following) and is tracked",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22)
                .df(false)
                .fragment(true, 0)
                .payload(&[5; 64]);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            assert!(fx.dp.maps.flows(10)?.is_empty(), "no flow state");
            fx.counters(&[
                (FlowDecided, 1),
                (FragTracked, 1),
                (NatIngress, 1),
                (XdpRedirect, 1),
            ])
        },
    ),
    (
        "ingress_later_fragment_whole_vip_translated",
        "an untracked later fragment (offset set, no transport header; its first not seen yet) to a failover target's whole-address VIP: the active path, only the IPv4 header changes",
        |fx| {
            let p = Pkt::new(addr::CLIENT, addr::VIP, L4::Raw(IPPROTO_UDP))
                .df(false)
                .fragment(false, 100)
                .payload(&[9; 80])
                .eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.counters(&[(NatIngress, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "ingress_last_fragment_udp_whole_vip_translated",
        "an untracked last fragment (MF clear, offset set) takes the active path, after a failover too",
        |fx| {
            let p = Pkt::new(addr::CLIENT, addr::VIP, L4::Raw(IPPROTO_UDP))
                .df(false)
                .fragment(false, 185)
                .payload(&[3; 20])
                .eth(macs::CLIENT, macs::CLI0);
            fx.set_state(ids::PATH_NN1, PATH_DOWN)?;
            fx.target_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            ingress(fx, &p, Redirect(&toward(&p, addr::NN2, macs::NN2)))?;
            fx.counters(&[(NatIngress, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "ingress_fragments_follow_a_pinned_flow",
        "a whole-address VIP's flow pinned to a path that is not the active one: its first fragment and the later ones all go there, not to the active path",
        |fx| {
            let first = to_vip(addr::VIP, 40000, 22)
                .df(false)
                .fragment(true, 0)
                .payload(&[5; 64]);
            fx.target_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            ingress(fx, &first, Redirect(&toward(&first, addr::NN2, macs::NN2)))?;
            // Failback: new flows go to nn1, this one stays on nn2 (up).
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            let again = first.clone().ident(0x5678);
            ingress(fx, &again, Redirect(&toward(&again, addr::NN2, macs::NN2)))?;
            let later = Pkt::new(addr::CLIENT, addr::VIP, L4::Raw(IPPROTO_TCP))
                .ident(0x5678)
                .df(false)
                .fragment(false, 11)
                .payload(&[6; 40])
                .eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &later, Redirect(&toward(&later, addr::NN2, macs::NN2)))?;
            fx.counters(&[
                (FlowDecided, 1),
                (FlowPrevious, 1),
                (ExceptionPinned, 1),
                (FragTracked, 2),
                (NatIngress, 3),
                (XdpRedirect, 3),
            ])
        },
    ),
    (
        "ingress_service_vip_fragments_follow_the_first",
        "a service VIP: the first fragment gets address and port (checksum over the whole datagram), the middle and last fragments the address, all to the same path",
        |fx| {
            let first = to_vip(addr::VIP_SVC, 40000, 443)
                .df(false)
                .fragment(true, 0)
                .payload(&[5; 60]);
            let out = toward(&first, addr::NN1, macs::NN1).dport(8443);
            ingress(fx, &first, Redirect(&out))?;
            for (mf, offset) in [(true, 10), (false, 20)] {
                let p = Pkt::new(addr::CLIENT, addr::VIP_SVC, L4::Raw(IPPROTO_TCP))
                    .df(false)
                    .fragment(mf, offset)
                    .payload(&[6; 80])
                    .eth(macs::CLIENT, macs::CLI0);
                ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            }
            fx.counters(&[
                (FlowDecided, 1),
                (FragTracked, 1),
                (NatIngress, 3),
                (XdpRedirect, 3),
            ])
        },
    ),
    (
        "ingress_service_vip_fragment_before_the_first_drops",
        "a service VIP's later fragment that arrives before its first cannot be placed: dropped, counted; once the first is through, the rest follow",
        |fx| {
            let later = |offset| {
                Pkt::new(addr::CLIENT, addr::VIP_SVC, L4::Raw(IPPROTO_TCP))
                    .df(false)
                    .fragment(false, offset)
                    .payload(&[6; 80])
                    .eth(macs::CLIENT, macs::CLI0)
            };
            ingress(fx, &later(20), Dropped)?;
            let first = to_vip(addr::VIP_SVC, 40000, 443)
                .df(false)
                .fragment(true, 0)
                .payload(&[5; 60]);
            let out = toward(&first, addr::NN1, macs::NN1).dport(8443);
            ingress(fx, &first, Redirect(&out))?;
            let p = later(10);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            fx.counters(&[
                (DropFragmentUntracked, 1),
                (XdpDrop, 1),
                (FlowDecided, 1),
                (FragTracked, 1),
                (NatIngress, 2),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "ingress_active_active_fragments_follow_the_first",
        "active/active: the first fragment takes its ring slot's path, the later ones follow it; an untracked later fragment is dropped, counted",
        |fx| {
            // Source port 41000 is ring slot 1101 (odd: SPREAD_B).
            let first = to_vip(addr::VIP_SPREAD, 41000, 80)
                .df(false)
                .fragment(true, 0)
                .payload(&[5; 60]);
            ingress(
                fx,
                &first,
                Redirect(&toward(&first, addr::SPREAD_B, macs::SPREAD_B)),
            )?;
            let later = Pkt::new(addr::CLIENT, addr::VIP_SPREAD, L4::Raw(IPPROTO_TCP))
                .df(false)
                .fragment(false, 10)
                .payload(&[6; 80])
                .eth(macs::CLIENT, macs::CLI0);
            ingress(
                fx,
                &later,
                Redirect(&toward(&later, addr::SPREAD_B, macs::SPREAD_B)),
            )?;
            ingress(fx, &later.clone().ident(0x9999), Dropped)?;
            fx.counters(&[
                (FlowDecided, 1),
                (FragTracked, 1),
                (NatIngress, 2),
                (XdpRedirect, 2),
                (DropFragmentUntracked, 1),
                (XdpDrop, 1),
            ])
        },
    ),
    (
        "ingress_fragments_of_a_datagram_not_ours_pass",
        "fragments to a VIP address on a port no service covers: the first passes untranslated, and so do the later ones (tracked as not ours)",
        |fx| {
            let first = to_vip(addr::VIP_SVC, 40000, 444)
                .df(false)
                .fragment(true, 0)
                .payload(&[5; 60]);
            ingress(fx, &first, Pass)?;
            let later = Pkt::new(addr::CLIENT, addr::VIP_SVC, L4::Raw(IPPROTO_TCP))
                .df(false)
                .fragment(false, 10)
                .payload(&[6; 80])
                .eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &later, Pass)?;
            fx.counters(&[(FragTracked, 1), (PassNotForUs, 2), (XdpPass, 2)])
        },
    ),
    (
        "handshakes_are_seen_per_path",
        "a SYN to a path marks a handshake waiting (the first one only), its SYN-ACK answers it; other TCP and UDP leave the marks alone",
        |fx| {
            let seen =
                |fx: &Fx| -> anyhow::Result<PathSeen> { Ok(fx.dp.maps.path_seen(ids::PATH_NN1)?) };
            assert_eq!(seen(fx)?, PathSeen::default());
            let data = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &data, Redirect(&toward(&data, addr::NN1, macs::NN1)))?;
            let udp = Pkt::udp(addr::CLIENT, 5000, addr::VIP, 5001).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &udp, Redirect(&toward(&udp, addr::NN1, macs::NN1)))?;
            let before = seen(fx)?;
            assert_eq!(
                (before.syn_pending_ns, before.synack_ns),
                (0, 0),
                "no SYN yet"
            );
            assert!(
                before.in_pending_ns != 0,
                "traffic waits for an answer: {before:?}"
            );
            let syn =
                Pkt::tcp_syn(addr::CLIENT, 40001, addr::VIP, 22).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &syn, Redirect(&toward(&syn, addr::NN1, macs::NN1)))?;
            let first = seen(fx)?;
            assert!(
                first.syn_pending_ns != 0 && first.synack_ns == 0,
                "{first:?}"
            );
            assert!(first.unanswered_ns(first.syn_pending_ns + 5).is_some());
            // A second SYN keeps the first one's time: the wait is the longest one.
            let again =
                Pkt::tcp_syn(addr::CLIENT, 40002, addr::VIP, 22).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &again, Redirect(&toward(&again, addr::NN1, macs::NN1)))?;
            assert_eq!(seen(fx)?.syn_pending_ns, first.syn_pending_ns);
            assert_eq!(fx.dp.maps.path_seen(ids::PATH_NN2)?, PathSeen::default());
            let answer = from_path(
                Pkt::tcp_syn_ack(addr::NN1, 22, addr::CLIENT, 40001),
                macs::NN1,
            );
            returning(
                fx,
                &answer,
                Redirect(&toward_client(&answer, addr::VIP, macs::CLIENT)),
            )?;
            let answered = seen(fx)?;
            assert!(answered.synack_ns >= first.syn_pending_ns, "{answered:?}");
            assert_eq!(answered.unanswered_ns(u64::MAX), None);
            assert!(
                answered.out_ns >= answered.in_pending_ns,
                "answered: {answered:?}"
            );
            Ok(())
        },
    ),
    (
        "passive_trigger_fires_past_the_threshold",
        "toward a path with a threshold, a packet finding a SYN or any traffic unanswered for longer raises one event on LB_EVENTS, then none for PASSIVE_EVENT_GAP_NS; a packet back from the path answers; without a threshold, nothing",
        |fx| {
            let mut ring = fx.dp.take_events()?;
            let mut drain = || -> Vec<PassiveEvent> {
                let mut out = Vec::new();
                while let Some(item) = ring.next() {
                    out.extend(PassiveEvent::from_bytes(&item));
                }
                out
            };
            const S: u64 = 1_000_000_000;
            let now = lb_user::datapath::monotonic_coarse_ns();
            let udp = Pkt::udp(addr::CLIENT, 5000, addr::VIP, 5001).eth(macs::CLIENT, macs::CLI0);
            let send =
                |fx: &mut Fx| ingress(fx, &udp, Redirect(&toward(&udp, addr::NN1, macs::NN1)));
            let waiting_syn = PathSeen {
                syn_pending_ns: now - 10 * S,
                ..PathSeen::default()
            };
            fx.dp.maps.set_path_seen(ids::PATH_NN1, waiting_syn)?;
            send(fx)?;
            assert_eq!(drain(), [], "no threshold, no event");

            fx.set_passive(ids::PATH_NN1, 5_000)?;
            send(fx)?;
            let got = drain();
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!((got[0].path, got[0].kind), (ids::PATH_NN1, PASSIVE_SYN));
            assert!(got[0].waited_ns >= 10 * S, "{got:?}");
            send(fx)?;
            assert_eq!(drain(), [], "one event per gap");

            // Traffic unanswered (the SYN was answered long ago).
            let silent = PathSeen {
                syn_pending_ns: now - 30 * S,
                synack_ns: now - 20 * S,
                in_pending_ns: now - 10 * S,
                out_ns: now - 20 * S,
                signalled_ns: 0,
            };
            fx.dp.maps.set_path_seen(ids::PATH_NN1, silent)?;
            send(fx)?;
            let got = drain();
            assert_eq!(got.len(), 1, "{got:?}");
            assert_eq!(got[0].kind, PASSIVE_SILENCE);

            // A packet back from the path answers the traffic before it.
            fx.dp.maps.set_path_seen(ids::PATH_NN1, silent)?;
            let reply = from_path(Pkt::udp(addr::NN1, 5001, addr::CLIENT, 5000), macs::NN1);
            returning(
                fx,
                &reply,
                Redirect(&toward_client(&reply, addr::VIP, macs::CLIENT)),
            )?;
            send(fx)?;
            assert_eq!(drain(), [], "answered");
            Ok(())
        },
    ),
    // ---------------------------------------------------------------- ingress: forwarding
    (
        "ingress_no_neighbour_kernel_forwards",
        "no neighbour entry yet: translated, handed to the kernel",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::NO_NEIGH)?;
            let p = to_vip(addr::NOT_VIP, 40000, 22);
            ingress(fx, &p, Kernel(&p.clone().dst(addr::NO_NEIGH)))?;
            fx.counters(&[
                (FlowDecided, 1),
                (NatIngress, 1),
                (PassNoNeighbour, 1),
                (XdpPass, 1),
            ])
        },
    ),
    (
        "ingress_blackhole_drops",
        "a blackhole route to the path: dropped untranslated, counted",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::BLACKHOLE)?;
            let p = to_vip(addr::NOT_VIP, 40000, 22);
            ingress(fx, &p, Dropped)?;
            fx.counters(&[(FlowDecided, 1), (DropNoRoute, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_mtu_fits",
        "a packet within the path's MTU is forwarded",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::SMALL_MTU)?;
            let p = to_vip(addr::NOT_VIP, 40000, 22).payload(&[7; 900]);
            ingress(
                fx,
                &p,
                Redirect(&toward(&p, addr::SMALL_MTU, macs::SMALL_MTU)),
            )?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ingress_mtu_exceeded_df_answers",
        "too big for the path with DF: ICMP fragmentation-needed quoting the VIP, sent back (PMTU)",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::SMALL_MTU)?;
            let p = to_vip(addr::NOT_VIP, 40000, 22).payload(&[7; 1100]);
            let reply = too_big_reply(&p, 1000, 20).eth(macs::CLI0, macs::CLIENT);
            ingress(fx, &p, Tx(&reply))?;
            fx.counters(&[(FlowDecided, 1), (IcmpTooBigSent, 1), (XdpTx, 1)])
        },
    ),
    (
        "ingress_mtu_exceeded_with_options",
        "the fragmentation-needed quotes the whole header, options included",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::SMALL_MTU)?;
            let p = to_vip(addr::NOT_VIP, 40000, 22)
                .options(&[1; 12])
                .payload(&[7; 1100]);
            let reply = too_big_reply(&p, 1000, 32).eth(macs::CLI0, macs::CLIENT);
            ingress(fx, &p, Tx(&reply))?;
            fx.counters(&[(FlowDecided, 1), (IcmpTooBigSent, 1), (XdpTx, 1)])
        },
    ),
    (
        "return_mtu_exceeded_df_answers",
        "a VM reply too big for the client side: fragmentation-needed back to the VM",
        |fx| {
            let p = from_path(
                Pkt::tcp(addr::NN1, 22, addr::CLIENT_SMALL_MTU, 40000).payload(&[3; 1200]),
                macs::NN1,
            );
            let reply = too_big_reply(&p, 1000, 20).eth(macs::PATH0, macs::NN1);
            returning(fx, &p, Tx(&reply))?;
            fx.counters(&[(IcmpTooBigSent, 1), (XdpTx, 1)])
        },
    ),
    (
        "return_icmp_error_too_big_drops",
        "an ICMP error too big for the egress is dropped, never answered",
        |fx| {
            let sent = Pkt::udp(addr::CLIENT_SMALL_MTU, 33000, addr::NN1, 53).payload(&[1; 1200]);
            let err = from_path(
                Pkt::icmp_error(
                    addr::NN1,
                    addr::CLIENT_SMALL_MTU,
                    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
                    &sent,
                    1200,
                ),
                macs::NN1,
            );
            returning(fx, &err, Dropped)?;
            fx.counters(&[(DropFragmentNeeded, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_mtu_exceeded_no_df_kernel_fragments",
        "larger than the path MTU without DF: translated, the kernel fragments",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::SMALL_MTU)?;
            let p = to_vip(addr::NOT_VIP, 40000, 22)
                .payload(&[7; 1100])
                .df(false);
            ingress(fx, &p, Kernel(&p.clone().dst(addr::SMALL_MTU)))?;
            fx.counters(&[
                (FlowDecided, 1),
                (NatIngress, 1),
                (PassFragmentNeeded, 1),
                (XdpPass, 1),
            ])
        },
    ),
    (
        "ingress_cached_next_hop_keeps_mtu_checks",
        "the per-path next-hop cache serves packets up to the size the FIB accepted, no larger",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::SMALL_MTU)?;
            let small = to_vip(addr::NOT_VIP, 40000, 22).payload(&[7; 900]);
            ingress(
                fx,
                &small,
                Redirect(&toward(&small, addr::SMALL_MTU, macs::SMALL_MTU)),
            )?;
            ingress(
                fx,
                &small,
                Redirect(&toward(&small, addr::SMALL_MTU, macs::SMALL_MTU)),
            )?;
            let big = to_vip(addr::NOT_VIP, 40000, 22).payload(&[7; 1100]);
            let reply = too_big_reply(&big, 1000, 20).eth(macs::CLI0, macs::CLIENT);
            ingress(fx, &big, Tx(&reply))?;
            fx.counters(&[
                (FlowDecided, 3),
                (NatIngress, 2),
                (XdpRedirect, 2),
                (IcmpTooBigSent, 1),
                (XdpTx, 1),
            ])
        },
    ),
    (
        "ingress_cached_next_hop_is_per_ingress_interface",
        "a next hop cached for one ingress interface is not used for another",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            let q = p.clone().eth(macs::CLIENT, macs::NOFWD0);
            expect_on(fx, Ingress, fx.env.nofwd0, &q, Pass)?;
            fx.counters(&[
                (FlowDecided, 2),
                (NatIngress, 1),
                (XdpRedirect, 1),
                (PassForwardingOff, 1),
                (XdpPass, 1),
            ])
        },
    ),
    (
        "ingress_hairpin_xdp_tx",
        "leaving by the interface it came in on: XDP_TX",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22).eth(macs::NN2, macs::PATH0);
            expect_on(
                fx,
                Ingress,
                fx.env.path0,
                &p,
                Tx(&toward(&p, addr::NN1, macs::NN1)),
            )?;
            fx.counters(&[(FlowDecided, 1), (NatIngress, 1), (XdpTx, 1)])
        },
    ),
    (
        "ingress_forwarding_disabled",
        "forwarding off on the ingress interface: handed to the kernel untranslated, so whatever the kernel answers quotes the VIP, never a path address",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 22).eth(macs::CLIENT, macs::NOFWD0);
            expect_on(fx, Ingress, fx.env.nofwd0, &p, Pass)?;
            fx.counters(&[(FlowDecided, 1), (PassForwardingOff, 1), (XdpPass, 1)])
        },
    ),
    // ---------------------------------------------------------------- ingress: malformed
    (
        "ingress_unsupported_protocol_drops",
        "GRE to a whole-address VIP: ours, unsupported, dropped",
        |fx| {
            let p = Pkt::new(addr::CLIENT, addr::VIP, L4::Raw(47)).eth(macs::CLIENT, macs::CLI0);
            ingress(fx, &p, Dropped)?;
            fx.counters(&[(DropUnsupportedProto, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_unsupported_icmp_drops",
        "ICMP timestamp to a whole-address VIP: dropped",
        |fx| {
            let p = Pkt::new(
                addr::CLIENT,
                addr::VIP,
                L4::Icmp(Icmpv4Type::TimestampRequest(
                    etherparse::icmpv4::TimestampMessage {
                        id: 1,
                        seq: 1,
                        originate_timestamp: 0,
                        receive_timestamp: 0,
                        transmit_timestamp: 0,
                    },
                )),
            )
            .eth(macs::CLIENT, macs::CLI0)
            .payload(&[]);
            ingress(fx, &p, Dropped)?;
            fx.counters(&[(DropUnsupportedIcmp, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_short_tcp_drops",
        "a TCP header cut short by the IP length: dropped",
        |fx| {
            let p = Pkt::new(addr::CLIENT, addr::VIP, L4::Raw(IPPROTO_TCP))
                .eth(macs::CLIENT, macs::CLI0)
                .payload(&[0; 12]);
            ingress(fx, &p, Dropped)?;
            fx.counters(&[(DropShortL4, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_short_udp_drops",
        "a UDP header cut short by the frame: dropped",
        |fx| {
            let p = Pkt::new(addr::CLIENT, addr::VIP, L4::Raw(IPPROTO_UDP))
                .eth(macs::CLIENT, macs::CLI0)
                .payload(&[0; 5]);
            ingress(fx, &p, Dropped)?;
            fx.counters(&[(DropShortL4, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_short_icmp_drops",
        "an ICMP header cut short (4 of 8 bytes) to a whole-address VIP: dropped",
        |fx| {
            let p = Pkt::new(addr::CLIENT, addr::VIP, L4::Raw(IPPROTO_ICMP))
                .eth(macs::CLIENT, macs::CLI0)
                .payload(&[8, 0, 0, 0]);
            ingress(fx, &p, Dropped)?;
            fx.counters(&[(DropShortL4, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_truncated_frame_drops",
        "a VIP frame shorter than its IP total length: dropped",
        |fx| {
            let mut f = to_vip(addr::VIP, 40000, 22).bytes();
            f.truncate(14 + 20 + 10);
            fx.expect(Ingress, fx.env.cli0, &f, XDP_DROP, None)?;
            fx.counters(&[(DropBadIpv4, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_bad_ihl_drops",
        "IHL below 5 on a VIP packet: dropped",
        |fx| {
            let mut f = to_vip(addr::VIP, 40000, 22).bytes();
            f[14] = 0x44;
            fx.expect(Ingress, fx.env.cli0, &f, XDP_DROP, None)?;
            fx.counters(&[(DropBadIpv4, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_total_length_below_header_drops",
        "IP total length smaller than the header: dropped",
        |fx| {
            let mut f = to_vip(addr::VIP, 40000, 22).bytes();
            f[16] = 0;
            f[17] = 16;
            fx.expect(Ingress, fx.env.cli0, &f, XDP_DROP, None)?;
            fx.counters(&[(DropBadIpv4, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_ip_version_6_passes",
        "version 6 under the IPv4 ethertype: passed",
        |fx| {
            let mut f = to_vip(addr::VIP, 40000, 22).bytes();
            f[14] = 0x65;
            fx.expect(Ingress, fx.env.cli0, &f, XDP_PASS, None)?;
            fx.counters(&[(PassBadIpv4, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_truncated_vlan_passes",
        "a VLAN tag cut short: passed",
        |fx| {
            fx.expect(Ingress, fx.env.cli0, &raw_frame(0x8100, 2), XDP_PASS, None)?;
            fx.counters(&[(PassNotIp, 1), (XdpPass, 1)])
        },
    ),
    // ---------------------------------------------------------------- ingress: what is not ours
    (
        "ingress_to_a_path_address_drops",
        "from the client side to a path address: dropped, counted, so no host beyond the edge reaches the VM's ports that no VIP exposes",
        |fx| {
            let p = to_vip(addr::NN1, 40000, 22);
            ingress(fx, &p, Dropped)?;
            fx.counters(&[(DropToPath, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ingress_to_an_exposed_path_address_passes",
        "a target with expose_paths: client packets to its path addresses pass to the kernel untouched, as before",
        |fx| {
            fx.add_addr(addr::NN1, lb_common::maps::ADDR_EXPOSED)?;
            let p = to_vip(addr::NN1, 40000, 22);
            ingress(fx, &p, Pass)?;
            fx.counters(&[(PassNotForUs, 1), (XdpPass, 1)])
        },
    ),
    (
        "ingress_martians_drop",
        "from the client side with a VIP or a path address as source: dropped, counted (a VIP-to-VIP packet would loop through the upstream router)",
        |fx| {
            for src in [addr::VIP_SVC, addr::NN2] {
                let p = Pkt::tcp(src, 40000, addr::VIP, 22).eth(macs::CLIENT, macs::CLI0);
                ingress(fx, &p, Dropped)?;
            }
            fx.counters(&[(DropMartian, 2), (XdpDrop, 2)])
        },
    ),
    (
        "ingress_too_big_answers_are_rate_limited",
        "a burst of too-big packets: at most the burst is answered (per CPU, at the configured rate); the rest are dropped, counted",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::SMALL_MTU)?;
            fx.dp.maps.set_settings(lb_common::maps::Settings {
                too_big_per_sec: 1,
                too_big_burst: 3,
                pin_per_sec: 0,
                pin_burst: 0,
            })?;
            let p = to_vip(addr::NOT_VIP, 40000, 22).payload(&[7; 1100]);
            let reply = too_big_reply(&p, 1000, 20).eth(macs::CLI0, macs::CLIENT);
            // One CPU's budget: the bucket is per CPU.
            lb_tests::sys::on_one_cpu(|| {
                for i in 0..10 {
                    if i < 3 {
                        ingress(fx, &p, Tx(&reply))?;
                    } else {
                        ingress(fx, &p, Dropped)?;
                    }
                }
                Ok(())
            })?;
            fx.counters(&[
                (FlowDecided, 10),
                (IcmpTooBigSent, 3),
                (XdpTx, 3),
                (DropTooBigRateLimited, 7),
                (XdpDrop, 7),
            ])
        },
    ),
    // ---------------------------------------------------------------- return program
    (
        "return_on_the_wrong_interface_drops",
        "a reply from a path address arriving on an interface its address is not routed through (a spoofer on another segment): dropped, counted; on its own interface, translated",
        |fx| {
            let p = from_path(Pkt::tcp(addr::NN1, 22, addr::CLIENT, 40000), macs::NN1);
            fx.dp
                .maps
                .set_path_iface(ids::PATH_NN1, fx.env.cli0.ifindex)?;
            returning(fx, &p, Dropped)?;
            fx.dp
                .maps
                .set_path_iface(ids::PATH_NN1, fx.env.path0.ifindex)?;
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP, macs::CLIENT)),
            )?;
            fx.counters(&[
                (DropWrongInterface, 1),
                (XdpDrop, 1),
                (NatReturn, 1),
                (XdpRedirect, 1),
            ])
        },
    ),
    (
        "return_tcp_whole_vip",
        "a reply from a path address leaves with the VIP as source",
        |fx| {
            let p = from_path(Pkt::tcp(addr::NN1, 22, addr::CLIENT, 40000), macs::NN1);
            let out = toward_client(&p, addr::VIP, macs::CLIENT);
            returning(fx, &p, Redirect(&out))?;
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])?;
            let s = fx.vip_stats(ids::VIP)?;
            assert_eq!(
                (s.in_packets, s.out_packets, s.out_bytes),
                (0, 1, p.bytes().len() as u64)
            );
            assert_eq!(fx.path_stats(ids::PATH_NN1)?.out_packets, 1);
            Ok(())
        },
    ),
    (
        "return_from_standby_path",
        "replies over the standby path are translated too",
        |fx| {
            let p = from_path(Pkt::tcp(addr::NN2, 22, addr::CLIENT, 40000), macs::NN2);
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP, macs::CLIENT)),
            )?;
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])?;
            assert_eq!(fx.path_stats(ids::PATH_NN2)?.out_packets, 1);
            Ok(())
        },
    ),
    (
        "return_service_port_restored",
        "a reply from port 8443 leaves as the service VIP's port 443",
        |fx| {
            let p = from_path(Pkt::tcp(addr::NN1, 8443, addr::CLIENT, 40000), macs::NN1);
            let out = toward_client(&p, addr::VIP_SVC, macs::CLIENT).sport(443);
            returning(fx, &p, Redirect(&out))?;
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])?;
            assert_eq!(fx.vip_stats(ids::VIP_SVC)?.out_packets, 1);
            Ok(())
        },
    ),
    (
        "return_whole_vip_flow_on_a_service_port",
        "a client of the whole-address VIP on the service's target port gets the whole VIP's replies",
        |fx| {
            // The client reached 203.0.113.10:8443 (whole address), not the tcp/443 service.
            let p = to_vip(addr::VIP, 40000, 8443);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            let reply = from_path(Pkt::tcp(addr::NN1, 8443, addr::CLIENT, 40000), macs::NN1);
            let out = toward_client(&reply, addr::VIP, macs::CLIENT);
            returning(fx, &reply, Redirect(&out))?;
            // Another client, with no whole-address flow: the service's.
            let svc = from_path(Pkt::tcp(addr::NN1, 8443, addr::CLIENT2, 40000), macs::NN1);
            let out = toward_client(&svc, addr::VIP_SVC, macs::CLIENT2).sport(443);
            returning(fx, &svc, Redirect(&out))?;
            fx.counters(&[
                (FlowDecided, 1),
                (FlowShadowed, 1),
                (NatIngress, 1),
                (NatReturn, 2),
                (XdpRedirect, 3),
            ])
        },
    ),
    (
        "icmp_error_quoting_whole_vip_flow_on_a_service_port",
        "an error about a whole-address flow on the service's target port gets the whole VIP back",
        |fx| {
            let p = to_vip(addr::VIP, 40000, 8443);
            ingress(fx, &p, Redirect(&toward(&p, addr::NN1, macs::NN1)))?;
            let sent = Pkt::tcp(addr::CLIENT, 40000, addr::NN1, 8443).ttl(63);
            let err = from_path(
                Pkt::icmp_error(addr::ROUTER, addr::CLIENT, frag_needed(1400), &sent, 28),
                macs::NN1,
            );
            let quoted = sent.clone().dst(addr::VIP);
            let out = Pkt::icmp_error(addr::ROUTER, addr::CLIENT, frag_needed(1400), &quoted, 28)
                .ttl(63)
                .eth(macs::CLI0, macs::CLIENT);
            returning(fx, &err, Redirect(&out))?;
            fx.counters(&[
                (FlowDecided, 1),
                (FlowShadowed, 1),
                (NatIngress, 1),
                (IcmpErrorReturn, 1),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "return_service_wins_over_whole_address",
        "udp from port 53 is the DNS service's; udp from 54 the whole VIP's",
        |fx| {
            let p = from_path(Pkt::udp(addr::NN1, 53, addr::CLIENT, 33000), macs::NN1);
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP_DNS, macs::CLIENT)),
            )?;
            let q = from_path(Pkt::udp(addr::NN1, 54, addr::CLIENT, 33000), macs::NN1);
            returning(
                fx,
                &q,
                Redirect(&toward_client(&q, addr::VIP, macs::CLIENT)),
            )?;
            // The whole-address reply comes from the path the decision chooses: nothing pinned.
            fx.counters(&[(NatReturn, 2), (XdpRedirect, 2)])?;
            assert!(fx.dp.maps.outbound(10)?.is_empty());
            Ok(())
        },
    ),
    (
        "return_udp_zero_checksum",
        "a reply with UDP checksum 0 keeps it 0",
        |fx| {
            let p = from_path(
                Pkt::udp(addr::NN1, 53, addr::CLIENT, 33000).zero_udp_checksum(),
                macs::NN1,
            );
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP_DNS, macs::CLIENT)),
            )?;
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "return_echo_reply",
        "an echo reply from the VM leaves from the VIP",
        |fx| {
            let p = from_path(Pkt::echo_reply(addr::NN1, addr::CLIENT, 77), macs::NN1);
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP, macs::CLIENT)),
            )?;
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "return_probe_reply_to_this_host_untouched",
        "a path's reply to this host (a health probe) is never translated",
        |fx| {
            let p = from_path(
                Pkt::tcp(addr::NN1, 22, Ipv4Addr::new(192, 0, 2, 1), 40000),
                macs::NN1,
            );
            returning(fx, &p, Pass)?;
            let ping = from_path(
                Pkt::echo_reply(addr::NN1, Ipv4Addr::new(192, 0, 2, 1), 5),
                macs::NN1,
            );
            returning(fx, &ping, Pass)?;
            fx.counters(&[(PassLocal, 2), (XdpPass, 2)])
        },
    ),
    (
        "return_not_from_a_path_passes",
        "traffic from an address that is no path leaves untouched",
        |fx| {
            let p = from_path(
                Pkt::tcp(Ipv4Addr::new(192, 0, 2, 5), 22, addr::CLIENT, 40000),
                macs::NN1,
            );
            returning(fx, &p, Pass)?;
            fx.counters(&[(PassNotForUs, 1), (XdpPass, 1)])
        },
    ),
    (
        "return_ttl_one_passes",
        "TTL 1 from a path: passed untranslated",
        |fx| {
            let p = from_path(
                Pkt::tcp(addr::NN1, 22, addr::CLIENT, 40000).ttl(1),
                macs::NN1,
            );
            returning(fx, &p, Pass)?;
            fx.counters(&[(PassTtlExpired, 1), (XdpPass, 1)])
        },
    ),
    (
        "return_first_fragment_translated",
        "a first fragment from a path with a whole-address VIP gets the VIP as source, its UDP checksum following",
        |fx| {
            let p = from_path(
                Pkt::udp(addr::NN1, 22, addr::CLIENT, 40000)
                    .df(false)
                    .fragment(true, 0)
                    .payload(&[1; 100]),
                macs::NN1,
            );
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP, macs::CLIENT)),
            )?;
            fx.counters(&[(FragTracked, 1), (NatReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "return_later_fragment_translated",
        "an untracked later fragment from the VM (an EDNS answer's tail, say) never leaves with the path address: a whole-address VIP's reverse entry needs no ports",
        |fx| {
            let p = from_path(
                Pkt::new(addr::NN1, addr::CLIENT, L4::Raw(IPPROTO_UDP))
                    .df(false)
                    .fragment(false, 185)
                    .payload(&[2; 60]),
                macs::NN1,
            );
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP, macs::CLIENT)),
            )?;
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "return_fragment_service_only_drops",
        "an untracked later fragment from a path that only a service VIP covers cannot be translated: dropped, counted",
        |fx| {
            spare_dns(fx)?;
            let p = from_path(dns_later_fragment(0x1234), macs::SMALL_MTU);
            returning(fx, &p, Dropped)?;
            fx.counters(&[(DropFragmentUntracked, 1), (XdpDrop, 1)])
        },
    ),
    (
        "return_service_fragments_follow_the_first",
        "a service VIP's answer in fragments: the first gets the VIP as source (its UDP checksum following), the later ones follow it",
        |fx| {
            spare_dns(fx)?;
            let first = from_path(
                Pkt::udp(addr::SMALL_MTU, 53, addr::CLIENT, 40000)
                    .df(false)
                    .fragment(true, 0)
                    .payload(&[1; 100]),
                macs::SMALL_MTU,
            );
            returning(
                fx,
                &first,
                Redirect(&toward_client(&first, addr::NOT_VIP, macs::CLIENT)),
            )?;
            let later = from_path(dns_later_fragment(0x1234), macs::SMALL_MTU);
            returning(
                fx,
                &later,
                Redirect(&toward_client(&later, addr::NOT_VIP, macs::CLIENT)),
            )?;
            fx.counters(&[(FragTracked, 1), (NatReturn, 2), (XdpRedirect, 2)])
        },
    ),
    (
        "return_fragments_of_a_datagram_not_ours_pass",
        "fragments from a service-only path address and a port no service covers: the VM's own traffic, passed untranslated, the later ones too",
        |fx| {
            spare_dns(fx)?;
            let first = from_path(
                Pkt::udp(addr::SMALL_MTU, 5353, addr::CLIENT, 40000)
                    .df(false)
                    .fragment(true, 0)
                    .payload(&[1; 100]),
                macs::SMALL_MTU,
            );
            returning(fx, &first, Pass)?;
            let later = from_path(dns_later_fragment(0x1234), macs::SMALL_MTU);
            returning(fx, &later, Pass)?;
            fx.counters(&[(FragTracked, 1), (PassNotForUs, 2), (XdpPass, 2)])
        },
    ),
    (
        "return_vlan_translated_and_untagged",
        "a VLAN-tagged reply from a path: translated and forwarded by the datapath, leaving untagged toward the client",
        |fx| {
            let p = from_path(
                Pkt::tcp(addr::NN1, 22, addr::CLIENT, 40000).vlan(200),
                macs::NN1,
            );
            let out = toward_client(&p, addr::VIP, macs::CLIENT).untagged();
            returning(fx, &p, Redirect(&out))?;
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "return_short_udp_drops",
        "a truncated UDP header from a path address: dropped",
        |fx| {
            let p = from_path(
                Pkt::new(addr::NN1, addr::CLIENT, L4::Raw(IPPROTO_UDP)).payload(&[1, 2, 3]),
                macs::NN1,
            );
            returning(fx, &p, Dropped)?;
            fx.counters(&[(DropShortL4, 1), (XdpDrop, 1)])
        },
    ),
    (
        "return_to_client_beyond_gateway",
        "a reply to a far client goes to the gateway's MAC",
        |fx| {
            let p = from_path(Pkt::tcp(addr::NN1, 22, addr::FAR_CLIENT, 1234), macs::NN1);
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP, macs::GATEWAY)),
            )?;
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "return_vm_opened_tcp_replies_follow_path",
        "a connection the VM opens over NN2 (not the active path) is pinned in its own table (not the client pins'); its replies come back over NN2",
        |fx| {
            let syn = from_path(Pkt::tcp_syn(addr::NN2, 50000, addr::REMOTE, 443), macs::NN2);
            returning(
                fx,
                &syn,
                Redirect(&toward_client(&syn, addr::VIP, macs::REMOTE)),
            )?;
            let key = flow(addr::REMOTE, addr::VIP, 443, 50000, IPPROTO_TCP);
            let recorded = fx.dp.maps.outbound(10)?;
            assert_eq!(recorded.len(), 1);
            let (k, v) = recorded[0];
            assert_eq!(
                (k, v.path, v.vip, v.flags),
                (
                    key,
                    ids::PATH_NN2,
                    ids::VIP,
                    lb_common::maps::FLOW_F_FROM_PATH
                )
            );
            assert_eq!(fx.dp.maps.flow(&key)?, None);
            let reply = Pkt::tcp(addr::REMOTE, 443, addr::VIP, 50000).eth(macs::REMOTE, macs::CLI0);
            ingress(fx, &reply, Redirect(&toward(&reply, addr::NN2, macs::NN2)))?;
            fx.counters(&[
                (ExceptionFromVm, 1),
                (ExceptionHit, 1),
                (NatReturn, 1),
                (NatIngress, 1),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "return_vm_opened_ping_replies_follow_path",
        "a ping the VM sends over NN2: the echo reply comes back over NN2",
        |fx| {
            let req = from_path(Pkt::echo_request(addr::NN2, addr::REMOTE, 9), macs::NN2);
            returning(
                fx,
                &req,
                Redirect(&toward_client(&req, addr::VIP, macs::REMOTE)),
            )?;
            let reply = Pkt::echo_reply(addr::REMOTE, addr::VIP, 9).eth(macs::REMOTE, macs::CLI0);
            ingress(fx, &reply, Redirect(&toward(&reply, addr::NN2, macs::NN2)))?;
            fx.counters(&[
                (ExceptionFromVm, 1),
                (ExceptionHit, 1),
                (NatReturn, 1),
                (NatIngress, 1),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "return_tcp_ack_records_nothing",
        "only a SYN opens a recorded flow; other TCP segments do not",
        |fx| {
            let p = from_path(Pkt::tcp(addr::NN2, 50000, addr::REMOTE, 443), macs::NN2);
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP, macs::REMOTE)),
            )?;
            let key = flow(addr::REMOTE, addr::VIP, 443, 50000, IPPROTO_TCP);
            assert_eq!(fx.dp.maps.flow(&key)?, None);
            assert!(fx.dp.maps.outbound(10)?.is_empty());
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "return_reply_keeps_client_flow",
        "a reply does not overwrite the flow the client opened",
        |fx| {
            let key = flow(addr::CLIENT, addr::VIP, 5000, 5001, IPPROTO_UDP);
            fx.pin(
                ids::TARGET_WEB,
                key,
                FlowValue::new(ids::PATH_NN1, ids::VIP, 0, 0),
            )?;
            let p = from_path(Pkt::udp(addr::NN2, 5001, addr::CLIENT, 5000), macs::NN2);
            returning(
                fx,
                &p,
                Redirect(&toward_client(&p, addr::VIP, macs::CLIENT)),
            )?;
            assert_eq!(fx.dp.maps.flow(&key)?.map(|f| f.path), Some(ids::PATH_NN1));
            // A UDP answer to a client's flow is not a connection the VM opened.
            assert!(fx.dp.maps.outbound(10)?.is_empty());
            fx.counters(&[(NatReturn, 1), (XdpRedirect, 1)])
        },
    ),
    // ---------------------------------------------------------------- ICMP errors
    (
        "icmp_frag_needed_from_path_router",
        "a router on the path reports MTU: the quote gets the VIP back (PMTU)",
        |fx| {
            let sent = Pkt::tcp(addr::CLIENT, 40000, addr::NN1, 22)
                .ttl(63)
                .payload(&[5; 64]);
            let err = from_path(
                Pkt::icmp_error(
                    addr::ROUTER,
                    addr::CLIENT,
                    frag_needed(1400),
                    &sent,
                    20 + 20 + 64,
                ),
                macs::NN1,
            );
            let quoted = sent.clone().dst(addr::VIP);
            let out = Pkt::icmp_error(
                addr::ROUTER,
                addr::CLIENT,
                frag_needed(1400),
                &quoted,
                20 + 20 + 64,
            )
            .ttl(63)
            .eth(macs::CLI0, macs::CLIENT);
            returning(fx, &err, Redirect(&out))?;
            fx.counters(&[(IcmpErrorReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "icmp_error_from_vm_service_port",
        "the VM itself reports: outer source and quoted service port go back to the VIP",
        |fx| {
            let sent = Pkt::tcp(addr::CLIENT, 40000, addr::NN1, 8443).ttl(63);
            let ty = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
            let err = from_path(
                Pkt::icmp_error(addr::NN1, addr::CLIENT, ty.clone(), &sent, 28),
                macs::NN1,
            );
            let quoted = sent.clone().dst(addr::VIP_SVC).dport(443);
            let out = Pkt::icmp_error(addr::VIP_SVC, addr::CLIENT, ty, &quoted, 28)
                .ttl(63)
                .eth(macs::CLI0, macs::CLIENT);
            returning(fx, &err, Redirect(&out))?;
            fx.counters(&[(IcmpErrorReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "icmp_time_exceeded_udp_quote",
        "time exceeded quoting UDP: the quoted UDP checksum follows",
        |fx| {
            let sent = Pkt::udp(addr::CLIENT, 33000, addr::NN1, 53).ttl(1);
            let ty = Icmpv4Type::TimeExceeded(
                etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit,
            );
            let err = from_path(
                Pkt::icmp_error(addr::ROUTER, addr::CLIENT, ty.clone(), &sent, 28),
                macs::NN1,
            );
            let out = Pkt::icmp_error(
                addr::ROUTER,
                addr::CLIENT,
                ty,
                &sent.clone().dst(addr::VIP_DNS),
                28,
            )
            .ttl(63)
            .eth(macs::CLI0, macs::CLIENT);
            returning(fx, &err, Redirect(&out))?;
            fx.counters(&[(IcmpErrorReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "icmp_error_quoting_echo",
        "an error about a client's ping to the VIP is translated",
        |fx| {
            let sent = Pkt::echo_request(addr::CLIENT, addr::NN1, 77).ttl(63);
            let ty = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host);
            let err = from_path(
                Pkt::icmp_error(addr::ROUTER, addr::CLIENT, ty.clone(), &sent, 28),
                macs::NN1,
            );
            let out = Pkt::icmp_error(
                addr::ROUTER,
                addr::CLIENT,
                ty,
                &sent.clone().dst(addr::VIP),
                28,
            )
            .ttl(63)
            .eth(macs::CLI0, macs::CLIENT);
            returning(fx, &err, Redirect(&out))?;
            fx.counters(&[(IcmpErrorReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "icmp_error_not_ours_passes",
        "an error quoting traffic to no path address leaves untouched",
        |fx| {
            let sent = Pkt::tcp(addr::CLIENT, 40000, Ipv4Addr::new(192, 0, 2, 5), 22);
            let err = from_path(
                Pkt::icmp_error(addr::ROUTER, addr::CLIENT, frag_needed(1400), &sent, 28),
                macs::NN1,
            );
            returning(fx, &err, Pass)?;
            fx.counters(&[(PassIcmpNotOurs, 1), (XdpPass, 1)])
        },
    ),
    (
        "icmp_error_truncated_quote_return_passes",
        "an error whose quote is cut short, path side: not ours",
        |fx| {
            let sent = Pkt::tcp(addr::CLIENT, 40000, addr::NN1, 22);
            let err = from_path(
                Pkt::icmp_error(addr::ROUTER, addr::CLIENT, frag_needed(1400), &sent, 24),
                macs::NN1,
            );
            returning(fx, &err, Pass)?;
            fx.counters(&[(PassIcmpNotOurs, 1), (XdpPass, 1)])
        },
    ),
    (
        "icmp_error_to_vip_follows_flow",
        "an error sent to the VIP about a reply goes to the flow's path",
        |fx| {
            // The flow exists on NN2 (the policy would say NN1).
            let key = flow(addr::CLIENT, addr::VIP, 40000, 22, IPPROTO_TCP);
            fx.pin(
                ids::TARGET_WEB,
                key,
                FlowValue::new(ids::PATH_NN2, ids::VIP, 0, 0),
            )?;
            let reply = Pkt::tcp(addr::VIP, 22, addr::CLIENT, 40000)
                .ttl(63)
                .payload(&[9; 40]);
            let err = Pkt::icmp_error(
                addr::INET_ROUTER,
                addr::VIP,
                frag_needed(1280),
                &reply,
                20 + 20 + 40,
            )
            .eth(macs::GATEWAY, macs::CLI0);
            let out = Pkt::icmp_error(
                addr::INET_ROUTER,
                addr::NN2,
                frag_needed(1280),
                &reply.clone().src(addr::NN2),
                20 + 20 + 40,
            )
            .ttl(63)
            .eth(macs::PATH0, macs::NN2);
            ingress(fx, &err, Redirect(&out))?;
            fx.counters(&[(IcmpErrorIngress, 1), (XdpRedirect, 1)])?;
            assert_eq!(fx.path_stats(ids::PATH_NN2)?.in_packets, 1);
            Ok(())
        },
    ),
    (
        "icmp_error_to_service_vip",
        "an error about a service reply: quoted source port back to 8443",
        |fx| {
            let reply = Pkt::tcp(addr::VIP_SVC, 443, addr::CLIENT, 40000).ttl(63);
            let ty = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host);
            let err = Pkt::icmp_error(addr::INET_ROUTER, addr::VIP_SVC, ty.clone(), &reply, 28)
                .eth(macs::GATEWAY, macs::CLI0);
            let out = Pkt::icmp_error(
                addr::INET_ROUTER,
                addr::NN1,
                ty,
                &reply.clone().src(addr::NN1).sport(8443),
                28,
            )
            .ttl(63)
            .eth(macs::PATH0, macs::NN1);
            ingress(fx, &err, Redirect(&out))?;
            fx.counters(&[(IcmpErrorIngress, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "icmp_error_to_vip_udp_quote",
        "an error about a UDP reply: quoted UDP checksum follows; no flow is created",
        |fx| {
            let reply = Pkt::udp(addr::VIP, 5001, addr::CLIENT, 5000).ttl(63);
            let ty = Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port);
            let err = Pkt::icmp_error(addr::CLIENT, addr::VIP, ty.clone(), &reply, 28 + 18)
                .eth(macs::CLIENT, macs::CLI0);
            let out = Pkt::icmp_error(
                addr::CLIENT,
                addr::NN1,
                ty,
                &reply.clone().src(addr::NN1),
                28 + 18,
            )
            .ttl(63)
            .eth(macs::PATH0, macs::NN1);
            ingress(fx, &err, Redirect(&out))?;
            assert!(fx.dp.maps.flows(10)?.is_empty());
            fx.counters(&[(IcmpErrorIngress, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "icmp_error_to_vip_truncated_quote_drops",
        "an error to a VIP whose quote is cut short: dropped",
        |fx| {
            let reply = Pkt::tcp(addr::VIP, 22, addr::CLIENT, 40000);
            let err = Pkt::icmp_error(addr::INET_ROUTER, addr::VIP, frag_needed(1280), &reply, 22)
                .eth(macs::GATEWAY, macs::CLI0);
            ingress(fx, &err, Dropped)?;
            fx.counters(&[(DropBadIcmpQuote, 1), (XdpDrop, 1)])
        },
    ),
    (
        "icmp_error_to_vip_quoting_other_source",
        "an error to a VIP quoting another source is not ours",
        |fx| {
            let other = Pkt::tcp(addr::CLIENT2, 22, addr::CLIENT, 40000);
            let err = Pkt::icmp_error(addr::INET_ROUTER, addr::VIP, frag_needed(1280), &other, 28)
                .eth(macs::GATEWAY, macs::CLI0);
            ingress(fx, &err, Pass)?;
            fx.counters(&[(PassIcmpNotOurs, 1), (XdpPass, 1)])
        },
    ),
    // ------------------------------------------------------------ IPv6: never touched
    (
        "ipv6_neighbour_discovery_untouched",
        "neighbour solicitations and advertisements, router advertisements and MLD pass untouched, counted as the link's own ICMPv6, from either side",
        |fx| {
            let frames = [
                // A unicast neighbour solicitation (NUD), a router advertisement, an MLD
                // report (hop limit 1), a neighbour advertisement from the path side.
                ipv6_icmp(V6_CLIENT, V6_VIP, 255, 135, [0; 4]),
                ipv6_icmp(V6_ROUTER_LL, V6_ALL_NODES, 255, 134, [64, 0, 7, 8]),
                ipv6_icmp(V6_CLIENT, V6_ALL_NODES, 1, 131, [0; 4]),
            ];
            for f in &frames {
                fx.expect(Ingress, fx.env.cli0, f, XDP_PASS, None)?;
            }
            let na = ipv6_icmp(V6_PATH, V6_CLIENT, 255, 136, [0x60, 0, 0, 0]);
            fx.expect(Return, fx.env.path0, &na, XDP_PASS, None)?;
            fx.counters(&[(PassIcmp6Control, 4), (XdpPass, 4)])
        },
    ),
    (
        "ipv6_traffic_passes_untouched",
        "IPv6 TCP, UDP and echo pass untouched (no IPv6 VIP can be configured yet), a short or wrong-version header too",
        |fx| {
            let tcp = ipv6_builder(V6_CLIENT, V6_VIP, 64).tcp(40000, 443, 1, 1000);
            let mut f = Vec::new();
            tcp.write(&mut f, b"hello").expect("a frame");
            fx.expect(Ingress, fx.env.cli0, &f, XDP_PASS, None)?;
            let udp = ipv6_builder(V6_PATH, V6_CLIENT, 64).udp(53, 40000);
            let mut g = Vec::new();
            udp.write(&mut g, b"answer").expect("a frame");
            fx.expect(Return, fx.env.path0, &g, XDP_PASS, None)?;
            let ping = ipv6_icmp(V6_CLIENT, V6_VIP, 64, 128, [0, 7, 0, 1]);
            fx.expect(Ingress, fx.env.cli0, &ping, XDP_PASS, None)?;
            // Version 4 in an IPv6 EtherType.
            let mut bad = f.clone();
            bad[14] = 0x40;
            fx.expect(Ingress, fx.env.cli0, &bad, XDP_PASS, None)?;
            fx.counters(&[(PassNotForUs, 3), (PassBadIpv6, 1), (XdpPass, 4)])
        },
    ),
    // ------------------------------------------------------------------- IPv6 translation
    (
        "ipv6_tcp_to_whole_address_vip",
        "IPv6 TCP to a whole-address VIP goes to the active path: destination rewritten, hop limit decremented, TCP checksum (pseudo-header) follows",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP, 40000, 22);
            ingress6(fx, &p, Redirect6(&toward6(&p, addr6::NN1, macs::NN1)))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ipv6_udp_and_echo_to_whole_address_vip",
        "IPv6 UDP and an ICMPv6 echo request to a whole-address VIP: both translated, the ICMPv6 checksum follows the address (it covers the pseudo-header, unlike ICMP's)",
        |fx| {
            fx.standard6()?;
            let u = to_vip6(addr6::VIP, 5000, 53).l4(L6::Udp);
            ingress6(fx, &u, Redirect6(&toward6(&u, addr6::NN1, macs::NN1)))?;
            let e = to_vip6(addr6::VIP, 7, 0).l4(L6::EchoRequest);
            ingress6(fx, &e, Redirect6(&toward6(&e, addr6::NN1, macs::NN1)))?;
            fx.counters(&[(FlowDecided, 2), (NatIngress, 2), (XdpRedirect, 2)])
        },
    ),
    (
        "ipv6_service_port_translated_both_ways",
        "an IPv6 TCP service (443 → 8443): the client's segment gets the path and port 8443, the VM's reply from 8443 gets the VIP and 443 back",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP_SVC, 40000, 443);
            let out = toward6(&p, addr6::NN1, macs::NN1).ports(40000, 8443);
            ingress6(fx, &p, Redirect6(&out))?;
            let reply = from_path6(P6::tcp(addr6::NN1, 8443, addr6::CLIENT, 40000), macs::NN1);
            let back = toward_client6(&reply, addr6::VIP_SVC, macs::CLIENT).ports(443, 40000);
            returning6(fx, &reply, Redirect6(&back))?;
            fx.counters(&[
                (FlowDecided, 1),
                (NatIngress, 1),
                (NatReturn, 1),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "ipv6_reply_gets_the_vip_back",
        "an IPv6 reply from a path address leaves with the VIP as source, toward the client's MAC",
        |fx| {
            fx.standard6()?;
            let reply = from_path6(P6::tcp(addr6::NN1, 22, addr6::CLIENT, 40000), macs::NN1);
            let back = toward_client6(&reply, addr6::VIP, macs::CLIENT);
            returning6(fx, &reply, Redirect6(&back))?;
            let far = from_path6(P6::tcp(addr6::NN2, 22, addr6::FAR_CLIENT, 40001), macs::NN2);
            let back = toward_client6(&far, addr6::VIP, macs::GATEWAY);
            returning6(fx, &far, Redirect6(&back))?;
            fx.counters(&[(NatReturn, 2), (XdpRedirect, 2)])
        },
    ),
    (
        "ipv6_failover_follows_the_decision",
        "the IPv6 target's decision moves to the second path: new IPv6 flows go there",
        |fx| {
            fx.standard6()?;
            fx.target_single(ids::TARGET_WEB6, ids::PATH6_NN2)?;
            let p = to_vip6(addr6::VIP, 40000, 22);
            ingress6(fx, &p, Redirect6(&toward6(&p, addr6::NN2, macs::NN2)))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ipv6_udp_without_checksum_dropped",
        "UDP over IPv6 with a zero checksum (invalid over IPv6) to a VIP: dropped, counted",
        |fx| {
            fx.standard6()?;
            let mut f = to_vip6(addr6::VIP, 5000, 53).l4(L6::Udp).bytes();
            f[14 + 40 + 6..14 + 40 + 8].copy_from_slice(&[0, 0]);
            fx.expect(Ingress, fx.env.cli0, &f, XDP_DROP, None)?;
            fx.counters(&[(DropUdp6ZeroChecksum, 1), (XdpDrop, 1)])
        },
    ),
    (
        "ipv6_hop_limit_expiring_passes_untranslated",
        "hop limit 1 to an IPv6 VIP: passed untouched, so the kernel's time-exceeded quotes what the client sent",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP, 40000, 22).hop(1);
            ingress6(fx, &p, Pass6)?;
            fx.counters(&[(PassTtlExpired, 1), (XdpPass, 1)])
        },
    ),
    (
        "ipv6_martians_and_path_addresses",
        "from the client side, a source that is a path address is dropped (spoofed or looping), a path address as destination is dropped, an address that is no VIP passes",
        |fx| {
            fx.standard6()?;
            let spoofed = to_vip6(addr6::VIP, 40000, 22).src(addr6::NN2);
            ingress6(fx, &spoofed, Dropped6)?;
            let to_path = to_vip6(addr6::NN1, 40000, 22);
            ingress6(fx, &to_path, Dropped6)?;
            let other = to_vip6(addr6::NOT_VIP, 40000, 22);
            ingress6(fx, &other, Pass6)?;
            fx.counters(&[
                (DropMartian, 1),
                (DropToPath, 1),
                (PassNotForUs, 1),
                (XdpDrop, 2),
                (XdpPass, 1),
            ])
        },
    ),
    (
        "ipv6_extension_headers_are_crossed",
        "hop-by-hop options then destination options in front of TCP: walked over, the packet translated with its extension headers kept",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP, 40000, 22);
            let out = toward6(&p, addr6::NN1, macs::NN1);
            let ext = |f: Vec<u8>| with_ext(with_ext(f, IPPROTO_DSTOPTS6, &PADN6), 0, &PADN6);
            fx.expect(
                Ingress,
                fx.env.cli0,
                &ext(p.bytes()),
                XDP_REDIRECT,
                Some(&ext(out.bytes())),
            )?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ipv6_extension_headers_not_crossed_pass",
        "a routing header with segments left (the destination is not the final one), an authentication header, hop-by-hop options not first: passed untouched, counted",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP, 40000, 22).bytes();
            // Routing type 4 (segment routing), 1 segment left, one 16-byte segment.
            let mut routing = vec![0u8; 24];
            routing[1] = 2;
            routing[2] = 4;
            routing[3] = 1;
            let frames = [
                with_ext(p.clone(), IPPROTO_ROUTING6, &routing),
                with_ext(
                    p.clone(),
                    IPPROTO_AH6,
                    &[0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
                with_ext(with_ext(p, 0, &PADN6), IPPROTO_DSTOPTS6, &PADN6),
            ];
            for f in &frames {
                fx.expect(Ingress, fx.env.cli0, f, XDP_PASS, None)?;
            }
            fx.counters(&[(PassIpv6Ext, 3), (XdpPass, 3)])
        },
    ),
    (
        "ipv6_truncated_headers",
        "an IPv6 payload length beyond the frame, an extension header cut short, a TCP header cut short, each to a VIP: dropped, counted",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP, 40000, 22).bytes();
            let mut long = p.clone();
            long[18..20].copy_from_slice(&200u16.to_be_bytes());
            fx.expect(Ingress, fx.env.cli0, &long, XDP_DROP, None)?;
            // Destination options claiming 16 bytes where the datagram has 8 left.
            let mut ext = with_ext(p.clone(), IPPROTO_DSTOPTS6, &PADN6);
            ext[14 + 41] = 1;
            let cut = 14 + 40 + 8;
            ext.truncate(cut);
            ext[18..20].copy_from_slice(&8u16.to_be_bytes());
            fx.expect(Ingress, fx.env.cli0, &ext, XDP_DROP, None)?;
            // 10 bytes of TCP.
            let mut short = p[..14 + 40 + 10].to_vec();
            short[18..20].copy_from_slice(&10u16.to_be_bytes());
            fx.expect(Ingress, fx.env.cli0, &short, XDP_DROP, None)?;
            fx.counters(&[(DropBadIpv6, 2), (DropShortL4, 1), (XdpDrop, 3)])
        },
    ),
    (
        "ipv6_fragments_follow_their_first",
        "an IPv6 datagram in fragments: the first (with the ports) goes to the active path and is tracked; after a failover its later fragment still follows it, translated without touching its payload",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP, 5000, 53).l4(L6::Udp).body(&[9; 40]);
            let out = toward6(&p, addr6::NN1, macs::NN1);
            // The first fragment: the fixed header, a fragment header (offset 0, more), the
            // UDP header and the first 16 bytes of the payload.
            let first = |f: Vec<u8>| fragment(f, 0x0102_0304, 0, true, 8 + 16);
            fx.expect(
                Ingress,
                fx.env.cli0,
                &first(p.bytes()),
                XDP_REDIRECT,
                Some(&first(out.bytes())),
            )?;
            fx.target_single(ids::TARGET_WEB6, ids::PATH6_NN2)?;
            let later = |f: Vec<u8>| later_fragment6(f, 0x0102_0304, 24, 24);
            fx.expect(
                Ingress,
                fx.env.cli0,
                &later(p.bytes()),
                XDP_REDIRECT,
                Some(&later(out.bytes())),
            )?;
            fx.counters(&[
                (FlowDecided, 1),
                (FragTracked, 1),
                (NatIngress, 2),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "ipv6_udp_service_translated_both_ways",
        "an IPv6 UDP service (53 → 5353): the client's datagram gets the path and port 5353, the VM's answer from 5353 the VIP and 53 back; the UDP checksum follows both ways",
        |fx| {
            fx.standard6()?;
            fx.expose6(
                ids::VIP_SPARE,
                addr6::NOT_VIP,
                Some((IPPROTO_UDP, 53)),
                ids::TARGET_WEB6,
                Some(5353),
                &[(ids::PATH6_NN1, addr6::NN1), (ids::PATH6_NN2, addr6::NN2)],
            )?;
            let q = to_vip6(addr6::NOT_VIP, 5000, 53).l4(L6::Udp);
            let out = toward6(&q, addr6::NN1, macs::NN1).ports(5000, 5353);
            ingress6(fx, &q, Redirect6(&out))?;
            let a = from_path6(
                P6::tcp(addr6::NN1, 5353, addr6::CLIENT, 5000).l4(L6::Udp),
                macs::NN1,
            );
            let back = toward_client6(&a, addr6::NOT_VIP, macs::CLIENT).ports(53, 5000);
            returning6(fx, &a, Redirect6(&back))?;
            fx.counters(&[
                (FlowDecided, 1),
                (NatIngress, 1),
                (NatReturn, 1),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "ipv6_echo_both_ways",
        "the VM's ICMPv6 echo reply leaves with the VIP as source (its checksum follows, pseudo-header), and the VM's own echo request is translated the same way",
        |fx| {
            fx.standard6()?;
            let reply = from_path6(
                P6::tcp(addr6::NN1, 7, addr6::CLIENT, 1).l4(L6::EchoReply),
                macs::NN1,
            );
            let back = toward_client6(&reply, addr6::VIP, macs::CLIENT);
            returning6(fx, &reply, Redirect6(&back))?;
            let ping = from_path6(
                P6::tcp(addr6::NN1, 9, addr6::CLIENT, 1).l4(L6::EchoRequest),
                macs::NN1,
            );
            let out = toward_client6(&ping, addr6::VIP, macs::CLIENT);
            returning6(fx, &ping, Redirect6(&out))?;
            fx.counters(&[(NatReturn, 2), (XdpRedirect, 2)])
        },
    ),
    (
        "ipv6_active_active_follows_the_ring",
        "an IPv6 target in active/active: each flow goes to the path its ring slot names (the IPv6 flow hash), the same flow always to the same path, and both paths get flows",
        |fx| {
            fx.standard6()?;
            let ring: Vec<u32> = (0..lb_common::maps::RING_SIZE)
                .map(|i| {
                    if i % 2 == 0 {
                        ids::PATH6_NN1
                    } else {
                        ids::PATH6_NN2
                    }
                })
                .collect();
            fx.dp.maps.set_ring(ids::TARGET_WEB6, 0, &ring)?;
            fx.dp
                .maps
                .set_target(ids::TARGET_WEB6, TargetValue::ring(0))?;
            let mut seen = [0u32; 2];
            for sport in 41000..41016u16 {
                let key = FlowKey::new(
                    addr6::CLIENT.octets(),
                    addr6::VIP.octets(),
                    sport.to_be_bytes(),
                    80u16.to_be_bytes(),
                    IPPROTO_TCP,
                );
                let slot = lb_common::hash::ring_slot(&key);
                let (path, m, i) = if slot % 2 == 0 {
                    (addr6::NN1, macs::NN1, 0)
                } else {
                    (addr6::NN2, macs::NN2, 1)
                };
                seen[i] += 1;
                let p = to_vip6(addr6::VIP, sport, 80);
                for _ in 0..2 {
                    ingress6(fx, &p, Redirect6(&toward6(&p, path, m)))?;
                }
            }
            assert!(seen[0] > 0 && seen[1] > 0, "both paths get flows: {seen:?}");
            fx.counters(&[(FlowDecided, 32), (NatIngress, 32), (XdpRedirect, 32)])
        },
    ),
    (
        "ipv6_transition_keeps_established_flows",
        "an IPv6 target moves from nn1 to nn2 while nn1 is up: an established connection's segment stays on nn1 and pins its flow (LB_FLOWS6), a SYN goes to nn2 and is pinned there (its flow's previous path differs)",
        |fx| {
            fx.standard6()?;
            fx.change_single(ids::TARGET_WEB6, ids::PATH6_NN2)?;
            let est = to_vip6(addr6::VIP, 40000, 22);
            ingress6(fx, &est, Redirect6(&toward6(&est, addr6::NN1, macs::NN1)))?;
            let pins = fx.dp.maps.flows6(10)?;
            assert_eq!(pins.len(), 1, "the established flow is pinned");
            assert_eq!(
                pins[0].0,
                FlowKey::new(
                    addr6::CLIENT.octets(),
                    addr6::VIP.octets(),
                    40000u16.to_be_bytes(),
                    22u16.to_be_bytes(),
                    IPPROTO_TCP
                )
            );
            assert_eq!(pins[0].1.path, ids::PATH6_NN1);
            ingress6(fx, &est, Redirect6(&toward6(&est, addr6::NN1, macs::NN1)))?;
            let syn = to_vip6(addr6::VIP, 40001, 22).l4(L6::Syn);
            ingress6(fx, &syn, Redirect6(&toward6(&syn, addr6::NN2, macs::NN2)))?;
            fx.counters(&[
                (FlowPrevious, 1),
                (ExceptionPinned, 2),
                (ExceptionHit, 1),
                (FlowDecided, 1),
                (NatIngress, 3),
                (XdpRedirect, 3),
            ])
        },
    ),
    (
        "ipv6_syn_ack_from_the_standby_path_pins",
        "the VM answers an IPv6 SYN over nn2 while nn1 is the decision: the SYN-ACK leaves with the VIP and pins the flow (LB_OUTBOUND6), so the client's next segments go to nn2",
        |fx| {
            fx.standard6()?;
            let synack = from_path6(
                P6::tcp(addr6::NN2, 22, addr6::CLIENT, 40000).l4(L6::SynAck),
                macs::NN2,
            );
            let back = toward_client6(&synack, addr6::VIP, macs::CLIENT);
            returning6(fx, &synack, Redirect6(&back))?;
            assert_eq!(
                fx.dp.maps.outbound6(10)?.len(),
                1,
                "the VM's flow is pinned"
            );
            let next = to_vip6(addr6::VIP, 40000, 22);
            ingress6(fx, &next, Redirect6(&toward6(&next, addr6::NN2, macs::NN2)))?;
            fx.counters(&[
                (ExceptionFromVm, 1),
                (ExceptionHit, 1),
                (NatReturn, 1),
                (NatIngress, 1),
                (XdpRedirect, 2),
            ])
        },
    ),
    (
        "ipv6_reply_on_the_wrong_interface_dropped",
        "an IPv6 reply from a path address arriving on an interface its address is not routed through: dropped, counted",
        |fx| {
            fx.standard6()?;
            fx.dp
                .maps
                .set_path_iface(ids::PATH6_NN1, fx.env.cli0.ifindex)?;
            let reply = from_path6(P6::tcp(addr6::NN1, 22, addr6::CLIENT, 40000), macs::NN1);
            returning6(fx, &reply, Dropped6)?;
            let expiring = reply.clone().hop(1);
            fx.dp.maps.set_path_iface(ids::PATH6_NN1, 0)?;
            returning6(fx, &expiring, Pass6)?;
            fx.counters(&[
                (DropWrongInterface, 1),
                (PassTtlExpired, 1),
                (XdpDrop, 1),
                (XdpPass, 1),
            ])
        },
    ),
    (
        "ipv6_reply_fragments_follow_their_first",
        "the VM's IPv6 answer in fragments: the first is translated and tracked, the later one follows it with the VIP as source, its payload untouched",
        |fx| {
            fx.standard6()?;
            let a = from_path6(
                P6::tcp(addr6::NN1, 53, addr6::CLIENT, 5000)
                    .l4(L6::Udp)
                    .body(&[3; 40]),
                macs::NN1,
            );
            let back = toward_client6(&a, addr6::VIP, macs::CLIENT);
            let first = |f: Vec<u8>| fragment(f, 77, 0, true, 8 + 16);
            fx.expect(
                Return,
                fx.env.path0,
                &first(a.bytes()),
                XDP_REDIRECT,
                Some(&first(back.bytes())),
            )?;
            let later = |f: Vec<u8>| later_fragment6(f, 77, 24, 24);
            fx.expect(
                Return,
                fx.env.path0,
                &later(a.bytes()),
                XDP_REDIRECT,
                Some(&later(back.bytes())),
            )?;
            fx.counters(&[(FragTracked, 1), (NatReturn, 2), (XdpRedirect, 2)])
        },
    ),
    (
        "ipv6_untracked_later_fragments",
        "an IPv6 later fragment whose first was not seen: to a whole-address failover VIP it goes to the active path; to a service-only address it cannot be placed: dropped, counted",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP, 5000, 53).l4(L6::Udp).body(&[9; 40]);
            let later = |f: Vec<u8>| later_fragment6(f, 99, 24, 24);
            fx.expect(
                Ingress,
                fx.env.cli0,
                &later(p.bytes()),
                XDP_REDIRECT,
                Some(&later(toward6(&p, addr6::NN1, macs::NN1).bytes())),
            )?;
            let svc = to_vip6(addr6::VIP_SVC, 5000, 443).body(&[9; 40]);
            fx.expect(Ingress, fx.env.cli0, &later(svc.bytes()), XDP_DROP, None)?;
            fx.counters(&[
                (NatIngress, 1),
                (DropFragmentUntracked, 1),
                (XdpRedirect, 1),
                (XdpDrop, 1),
            ])
        },
    ),
    (
        "ipv6_time_exceeded_from_a_router_on_the_path",
        "a router on the path reports an ICMPv6 time exceeded about a client's datagram: its own source stays, the quoted destination goes back to the VIP",
        |fx| {
            fx.standard6()?;
            let router: Ipv6Addr = "2001:db8:2::fe".parse()?;
            let sent = P6::tcp(addr6::CLIENT, 40000, addr6::NN1, 22).hop(1);
            let te = etherparse::Icmpv6Type::TimeExceeded(
                etherparse::icmpv6::TimeExceededCode::HopLimitExceeded,
            );
            let err = icmp6_error(
                (macs::NN1, macs::PATH0),
                router,
                addr6::CLIENT,
                64,
                te,
                &sent.bytes()[14..],
            );
            let back = sent.clone().dst(addr6::VIP);
            let out = icmp6_error(
                (macs::CLI0, macs::CLIENT),
                router,
                addr6::CLIENT,
                63,
                te,
                &back.bytes()[14..],
            );
            fx.expect(Return, fx.env.path0, &err, XDP_REDIRECT, Some(&out))?;
            fx.counters(&[(IcmpErrorReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "ipv6_walk_bounds",
        "seven destination options headers (the walk stops at six), no next header (59), a jumbogram (payload length 0): passed untouched, counted",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP, 40000, 22).bytes();
            let mut seven = p.clone();
            for _ in 0..7 {
                seven = with_ext(seven, IPPROTO_DSTOPTS6, &PADN6);
            }
            let mut none = p.clone();
            none[20] = 59;
            let mut jumbo = p;
            jumbo[18..20].copy_from_slice(&[0, 0]);
            for f in [&seven, &none, &jumbo] {
                fx.expect(Ingress, fx.env.cli0, f, XDP_PASS, None)?;
            }
            fx.counters(&[(PassIpv6Ext, 3), (XdpPass, 3)])
        },
    ),
    (
        "ipv6_vlan_translated_and_untagged",
        "an 802.1Q-tagged IPv6 packet to a VIP: translated and forwarded, leaving untagged toward the path",
        |fx| {
            fx.standard6()?;
            let p = to_vip6(addr6::VIP, 40000, 22);
            let mut tagged = p.bytes();
            tagged.splice(12..12, [0x81, 0x00, 0x00, 100]);
            fx.expect(
                Ingress,
                fx.env.cli0,
                &tagged,
                XDP_REDIRECT,
                Some(&toward6(&p, addr6::NN1, macs::NN1).bytes()),
            )?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "ipv6_other_protocols_to_a_vip",
        "to an IPv6 whole-address VIP, a protocol lb does not translate (SCTP) and an ICMPv6 message that is neither echo nor error: dropped, counted",
        |fx| {
            fx.standard6()?;
            let mut sctp = to_vip6(addr6::VIP, 40000, 22).bytes();
            sctp[20] = 132;
            fx.expect(Ingress, fx.env.cli0, &sctp, XDP_DROP, None)?;
            let other = ipv6_icmp(addr6::CLIENT.octets(), addr6::VIP.octets(), 64, 100, [0; 4]);
            fx.expect(Ingress, fx.env.cli0, &other, XDP_DROP, None)?;
            fx.counters(&[
                (DropUnsupportedProto, 1),
                (DropUnsupportedIcmp, 1),
                (XdpDrop, 2),
            ])
        },
    ),
    (
        "ipv6_packet_too_big_sent",
        "an IPv6 packet larger than the path's route MTU (1280): answered with an ICMPv6 Packet Too Big from the VIP quoting the first 1232 bytes as the client sent them (IPv6 routers never fragment); one that fits goes through",
        |fx| {
            fx.standard6()?;
            small_mtu_vip6(fx)?;
            let p = to_vip6(addr6::NOT_VIP, 40000, 22).body(&[7; 1300]);
            let input = p.bytes();
            let mut reply = Vec::new();
            etherparse::PacketBuilder::ethernet2(macs::CLI0, macs::CLIENT)
                .ipv6(addr6::NOT_VIP.octets(), addr6::CLIENT.octets(), 64)
                .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1280 })
                .write(&mut reply, &input[14..14 + 1232])
                .expect("a frame");
            fx.expect(Ingress, fx.env.cli0, &input, XDP_TX, Some(&reply))?;
            let small = to_vip6(addr6::NOT_VIP, 40001, 22).body(&[7; 1000]);
            ingress6(
                fx,
                &small,
                Redirect6(&toward6(&small, addr6::SMALL_MTU, macs::SMALL_MTU)),
            )?;
            fx.counters(&[
                (FlowDecided, 2),
                (IcmpTooBigSent, 1),
                (NatIngress, 1),
                (XdpTx, 1),
                (XdpRedirect, 1),
            ])
        },
    ),
    (
        "ipv6_packet_too_big_rate_limited",
        "Packet Too Big answers share the rate limit of IPv4's: past the burst, a too-big IPv6 packet is dropped, counted",
        |fx| {
            fx.standard6()?;
            small_mtu_vip6(fx)?;
            fx.dp.maps.set_settings(lb_common::maps::Settings {
                too_big_per_sec: 1,
                too_big_burst: 1,
                pin_per_sec: 0,
                pin_burst: 0,
            })?;
            let p = to_vip6(addr6::NOT_VIP, 40000, 22).body(&[7; 1300]);
            // One CPU's budget: the bucket is per CPU.
            lb_tests::sys::on_one_cpu(|| {
                let first = fx.run(Ingress, fx.env.cli0, &p.bytes())?;
                let tx = if fx.hook == Hook::Tc {
                    XDP_REDIRECT
                } else {
                    XDP_TX
                };
                anyhow::ensure!(first.action == tx, "the first is answered");
                ingress6(fx, &p, Dropped6)
            })?;
            fx.counters(&[
                (FlowDecided, 2),
                (IcmpTooBigSent, 1),
                (DropTooBigRateLimited, 1),
                (XdpTx, 1),
                (XdpDrop, 1),
            ])
        },
    ),
    (
        "ipv6_icmp_error_to_vip_translated",
        "an ICMPv6 Packet Too Big to the VIP about the VM's reply: outer destination and quoted source go back to the path, the quoted TCP checksum and the ICMPv6 checksum (outer pseudo-header included) follow",
        |fx| {
            fx.standard6()?;
            let reply = P6::tcp(addr6::VIP, 22, addr6::CLIENT, 40000);
            let quoted = |p: &P6| p.bytes()[14..].to_vec();
            let err = icmp6_error(
                (macs::GATEWAY, macs::CLI0),
                addr6::INET_ROUTER,
                addr6::VIP,
                64,
                etherparse::Icmpv6Type::PacketTooBig { mtu: 1400 },
                &quoted(&reply),
            );
            let out = icmp6_error(
                (macs::PATH0, macs::NN1),
                addr6::INET_ROUTER,
                addr6::NN1,
                63,
                etherparse::Icmpv6Type::PacketTooBig { mtu: 1400 },
                &quoted(&reply.clone().src(addr6::NN1)),
            );
            fx.expect(Ingress, fx.env.cli0, &err, XDP_REDIRECT, Some(&out))?;
            assert!(
                fx.dp.maps.flows6(10)?.is_empty(),
                "an error creates no flow"
            );
            fx.counters(&[(IcmpErrorIngress, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "ipv6_icmp_error_from_vm_translated",
        "the VM's ICMPv6 port unreachable about a client's UDP datagram to the service port: outer source and quoted destination go back to the VIP, the quoted port back to the VIP's; the quoted UDP checksum and the ICMPv6 checksum follow",
        |fx| {
            fx.standard6()?;
            fx.expose6(
                ids::VIP_SPARE,
                addr6::NOT_VIP,
                Some((IPPROTO_UDP, 53)),
                ids::TARGET_WEB6,
                Some(5353),
                &[(ids::PATH6_NN1, addr6::NN1)],
            )?;
            let sent = P6::tcp(addr6::CLIENT, 5000, addr6::NN1, 5353).l4(L6::Udp);
            let unreach = etherparse::Icmpv6Type::DestinationUnreachable(
                etherparse::icmpv6::DestUnreachableCode::Port,
            );
            let err = icmp6_error(
                (macs::NN1, macs::PATH0),
                addr6::NN1,
                addr6::CLIENT,
                64,
                unreach,
                &sent.bytes()[14..],
            );
            let back = sent.clone().dst(addr6::NOT_VIP).ports(5000, 53);
            let out = icmp6_error(
                (macs::CLI0, macs::CLIENT),
                addr6::NOT_VIP,
                addr6::CLIENT,
                63,
                unreach,
                &back.bytes()[14..],
            );
            fx.expect(Return, fx.env.path0, &err, XDP_REDIRECT, Some(&out))?;
            fx.counters(&[(IcmpErrorReturn, 1), (XdpRedirect, 1)])
        },
    ),
    (
        "ipv6_icmp_errors_not_ours_pass",
        "ICMPv6 errors to a VIP quoting another source, or quoting a datagram with extension headers: not ours, passed untouched; one whose quote is cut short: dropped",
        |fx| {
            fx.standard6()?;
            let ty = etherparse::Icmpv6Type::PacketTooBig { mtu: 1400 };
            let other = P6::tcp(addr6::CLIENT2, 22, addr6::CLIENT, 40000).bytes();
            let err = icmp6_error(
                (macs::GATEWAY, macs::CLI0),
                addr6::INET_ROUTER,
                addr6::VIP,
                64,
                ty,
                &other[14..],
            );
            fx.expect(Ingress, fx.env.cli0, &err, XDP_PASS, None)?;
            let reply = P6::tcp(addr6::VIP, 22, addr6::CLIENT, 40000).bytes();
            let with_opts = with_ext(reply.clone(), IPPROTO_DSTOPTS6, &PADN6);
            let err = icmp6_error(
                (macs::GATEWAY, macs::CLI0),
                addr6::INET_ROUTER,
                addr6::VIP,
                64,
                ty,
                &with_opts[14..],
            );
            fx.expect(Ingress, fx.env.cli0, &err, XDP_PASS, None)?;
            let err = icmp6_error(
                (macs::GATEWAY, macs::CLI0),
                addr6::INET_ROUTER,
                addr6::VIP,
                64,
                ty,
                &reply[14..14 + 44],
            );
            fx.expect(Ingress, fx.env.cli0, &err, XDP_DROP, None)?;
            fx.counters(&[
                (PassIcmpNotOurs, 2),
                (DropBadIcmpQuote, 1),
                (XdpPass, 2),
                (XdpDrop, 1),
            ])
        },
    ),
];

/// Cases of the XDP hook alone, each saying why.
const XDP_ONLY: &[(&str, &str, Case)] = &[
    (
        "a_flood_of_client_flows_leaves_the_vms_connections",
        "a million new client flows (UDP, and TCP segments without SYN during a transition, which try to pin) through a 4,096-entry exception table: the UDP ones create nothing, the TCP pins are rate-limited and then refused, and a connection the VM opened is never evicted: its replies still come back over its path",
        |fx| {
            let syn = from_path(Pkt::tcp_syn(addr::NN2, 50000, addr::REMOTE, 443), macs::NN2);
            returning(
                fx,
                &syn,
                Redirect(&toward_client(&syn, addr::VIP, macs::REMOTE)),
            )?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN2)?;
            fx.change_single(ids::TARGET_WEB, ids::PATH_NN1)?;
            // 8 sources × 65,536 source ports of UDP without checksum (valid over IPv4), then 8
            // × 65,536 of TCP ACKs (the datapath patches checksums, it never checks them).
            let mut flooded = 0u64;
            for host in 0..16u8 {
                let src = Ipv4Addr::new(198, 51, 100, 100 + host);
                let (mut frame, port_at) = if host < 8 {
                    let mut f = Pkt::udp(src, 0, addr::VIP, 5001)
                        .eth(macs::CLIENT, macs::CLI0)
                        .bytes();
                    f[40..42].copy_from_slice(&[0, 0]);
                    (f, 34)
                } else {
                    (to_vip(addr::VIP, 0, 5001).src(src).bytes(), 34)
                };
                for port in 0..=u16::MAX {
                    frame[port_at..port_at + 2].copy_from_slice(&port.to_be_bytes());
                    fx.run(Ingress, fx.env.cli0, &frame)?;
                    flooded += 1;
                }
            }
            assert!(flooded >= 1_000_000);
            let pinned = fx.dp.maps.flows(usize::MAX)?.len() as u64;
            assert!(pinned <= 4096, "{pinned} pins in a 4,096-entry table");
            let c = fx.dp.maps.counters()?;
            assert_eq!(c[&FlowDecided], 8 * 65536, "UDP follows the decision");
            assert_eq!(c[&FlowPrevious], 8 * 65536);
            assert_eq!(c[&ExceptionPinned], pinned);
            assert!(c[&ExceptionRateLimited] + c[&ExceptionInsertFailed] >= 8 * 65536 - 4096);
            let key = flow(addr::REMOTE, addr::VIP, 443, 50000, IPPROTO_TCP);
            let kept = fx.dp.maps.outbound(10)?;
            assert_eq!(kept.len(), 1, "the VM's connection is kept");
            assert_eq!(kept[0].0, key);
            let reply = Pkt::tcp(addr::REMOTE, 443, addr::VIP, 50000).eth(macs::REMOTE, macs::CLI0);
            ingress(fx, &reply, Redirect(&toward(&reply, addr::NN2, macs::NN2)))?;
            Ok(())
        },
    ),
    (
        "ingress_egress_not_in_devmap",
        "the egress interface is not in the devmap: translated, the kernel forwards (TC needs no devmap: tc::egress_outside_the_devmap_is_redirected)",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::OTHER_PORT)?;
            let p = to_vip(addr::NOT_VIP, 40000, 22);
            ingress(fx, &p, Kernel(&p.clone().dst(addr::OTHER_PORT)))?;
            fx.counters(&[
                (FlowDecided, 1),
                (NatIngress, 1),
                (PassNoTxPort, 1),
                (XdpPass, 1),
            ])
        },
    ),
    (
        "ingress_short_ip_header_passes",
        "fewer than 20 bytes of IPv4: not readable, passed (the TC test run refuses to build an skb of such a frame: EINVAL)",
        |fx| {
            let f = to_vip(addr::VIP, 40000, 22).bytes()[..14 + 12].to_vec();
            fx.expect(Ingress, fx.env.cli0, &f, XDP_PASS, None)?;
            fx.counters(&[(PassBadIpv4, 1), (XdpPass, 1)])
        },
    ),
];

const V6_CLIENT: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x51, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
const V6_VIP: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x71, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];
const V6_PATH: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x70,
];
const V6_ROUTER_LL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const V6_ALL_NODES: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// An Ethernet + IPv6 builder, client side to this host.
fn ipv6_builder(
    src: [u8; 16],
    dst: [u8; 16],
    hop_limit: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    etherparse::PacketBuilder::ethernet2(macs::CLIENT, macs::CLI0).ipv6(src, dst, hop_limit)
}

/// An ICMPv6 message of type `ty` (bytes 4–7 `rest`), with 8 bytes of body.
fn ipv6_icmp(src: [u8; 16], dst: [u8; 16], hop_limit: u8, ty: u8, rest: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    ipv6_builder(src, dst, hop_limit)
        .icmpv6_raw(ty, 0, rest)
        .write(&mut f, &[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1])
        .expect("a frame");
    f
}

/// The transport of a [`P6`].
#[derive(Clone, Copy)]
enum L6 {
    /// An ACK (no SYN: an established connection).
    Tcp,
    Udp,
    /// ICMPv6 echo request: `sport` is the identifier, `dport` the sequence number.
    EchoRequest,
    /// ICMPv6 echo reply: as a request.
    EchoReply,
    /// A SYN without ACK.
    Syn,
    /// A SYN-ACK.
    SynAck,
}

/// An Ethernet + IPv6 packet of the independent builder (etherparse computes every checksum).
#[derive(Clone)]
struct P6 {
    smac: [u8; 6],
    dmac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    l4: L6,
    sport: u16,
    dport: u16,
    body: Vec<u8>,
}

impl P6 {
    fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Self {
        P6 {
            smac: macs::CLIENT,
            dmac: macs::CLI0,
            src,
            dst,
            hop: 64,
            l4: L6::Tcp,
            sport,
            dport,
            body: b"hello".to_vec(),
        }
    }
    fn l4(mut self, l4: L6) -> Self {
        self.l4 = l4;
        self
    }
    fn src(mut self, a: Ipv6Addr) -> Self {
        self.src = a;
        self
    }
    fn dst(mut self, a: Ipv6Addr) -> Self {
        self.dst = a;
        self
    }
    fn hop(mut self, h: u8) -> Self {
        self.hop = h;
        self
    }
    fn ports(mut self, sport: u16, dport: u16) -> Self {
        self.sport = sport;
        self.dport = dport;
        self
    }
    fn body(mut self, b: &[u8]) -> Self {
        self.body = b.to_vec();
        self
    }
    fn eth(mut self, smac: [u8; 6], dmac: [u8; 6]) -> Self {
        self.smac = smac;
        self.dmac = dmac;
        self
    }
    fn bytes(&self) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(self.smac, self.dmac).ipv6(
            self.src.octets(),
            self.dst.octets(),
            self.hop,
        );
        let mut f = Vec::new();
        match self.l4 {
            L6::Tcp => b
                .tcp(self.sport, self.dport, 1000, 64240)
                .ack(2000)
                .write(&mut f, &self.body),
            L6::Udp => b.udp(self.sport, self.dport).write(&mut f, &self.body),
            L6::EchoRequest => b
                .icmpv6_echo_request(self.sport, self.dport)
                .write(&mut f, &self.body),
            L6::EchoReply => b
                .icmpv6_echo_reply(self.sport, self.dport)
                .write(&mut f, &self.body),
            L6::Syn => b
                .tcp(self.sport, self.dport, 1000, 64240)
                .syn()
                .write(&mut f, &[]),
            L6::SynAck => b
                .tcp(self.sport, self.dport, 1000, 64240)
                .syn()
                .ack(1001)
                .write(&mut f, &[]),
        }
        .expect("a frame");
        f
    }
}

/// A whole-address IPv6 VIP [`addr6::NOT_VIP`] whose one path has a route MTU of 1280.
fn small_mtu_vip6(fx: &mut Fx) -> anyhow::Result<()> {
    fx.path6(
        ids::PATH_SPARE,
        addr6::SMALL_MTU,
        ids::TARGET_SPARE,
        PATH_UP,
    )?;
    fx.target_single(ids::TARGET_SPARE, ids::PATH_SPARE)?;
    fx.expose6(
        ids::VIP_SPARE,
        addr6::NOT_VIP,
        None,
        ids::TARGET_SPARE,
        None,
        &[(ids::PATH_SPARE, addr6::SMALL_MTU)],
    )
}

/// An ICMPv6 error frame quoting `quote` (an IPv6 datagram), built by etherparse.
fn icmp6_error(
    (smac, dmac): ([u8; 6], [u8; 6]),
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    ty: etherparse::Icmpv6Type,
    quote: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(smac, dmac)
        .ipv6(src.octets(), dst.octets(), hop)
        .icmpv6(ty)
        .write(&mut f, quote)
        .expect("a frame");
    f
}

/// Client → IPv6 VIP, as it arrives on cli0.
fn to_vip6(dst: Ipv6Addr, sport: u16, dport: u16) -> P6 {
    P6::tcp(addr6::CLIENT, sport, dst, dport)
}

/// `p` as the ingress program sends it to `path`.
fn toward6(p: &P6, path: Ipv6Addr, path_mac: [u8; 6]) -> P6 {
    p.clone()
        .dst(path)
        .hop(p.hop - 1)
        .eth(macs::PATH0, path_mac)
}

/// A packet of the VM's as it arrives on path0 from `path_mac`.
fn from_path6(p: P6, path_mac: [u8; 6]) -> P6 {
    p.eth(path_mac, macs::PATH0)
}

/// `p` as the return program sends it to the client (`client_mac`: the next hop).
fn toward_client6(p: &P6, vip: Ipv6Addr, client_mac: [u8; 6]) -> P6 {
    p.clone()
        .src(vip)
        .hop(p.hop - 1)
        .eth(macs::CLI0, client_mac)
}

enum Then6<'a> {
    Redirect6(&'a P6),
    Pass6,
    Dropped6,
}
use Then6::*;

fn expect6(fx: &Fx, prog: Prog, on: Iface, input: &P6, then: Then6<'_>) -> anyhow::Result<()> {
    let (action, output) = match then {
        Redirect6(p) => (XDP_REDIRECT, Some(p.bytes())),
        Pass6 => (XDP_PASS, None),
        Dropped6 => (XDP_DROP, None),
    };
    fx.expect(prog, on, &input.bytes(), action, output.as_deref())
}

fn ingress6(fx: &Fx, input: &P6, then: Then6<'_>) -> anyhow::Result<()> {
    expect6(fx, Ingress, fx.env.cli0, input, then)
}

fn returning6(fx: &Fx, input: &P6, then: Then6<'_>) -> anyhow::Result<()> {
    expect6(fx, Return, fx.env.path0, input, then)
}

const IPPROTO_DSTOPTS6: u8 = 60;
const IPPROTO_ROUTING6: u8 = 43;
const IPPROTO_AH6: u8 = 51;
/// An 8-byte options header body (after next header and length): one PadN option.
const PADN6: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];

/// `frame` (untagged IPv6) with an extension header of type `kind` spliced in front of the
/// headers after the fixed one: `ext`'s first byte becomes the next header, the payload length
/// grows. Transport checksums do not cover extension headers: they stay right.
fn with_ext(mut frame: Vec<u8>, kind: u8, ext: &[u8]) -> Vec<u8> {
    let mut ext = ext.to_vec();
    ext[0] = frame[20];
    frame[20] = kind;
    let plen = u16::from_be_bytes([frame[18], frame[19]]) + ext.len() as u16;
    frame[18..20].copy_from_slice(&plen.to_be_bytes());
    frame.splice(54..54, ext);
    frame
}

/// A fragment header (built by hand: etherparse 0.19 encodes its offset and M flag at the
/// wrong bits) for fragment `id` at `offset` bytes, `more` following.
fn frag_header(next: u8, id: u32, offset: u16, more: bool) -> [u8; 8] {
    let off = (offset / 8) << 3 | u16::from(more);
    let [o1, o2] = off.to_be_bytes();
    let [i1, i2, i3, i4] = id.to_be_bytes();
    [next, 0, o1, o2, i1, i2, i3, i4]
}

/// The first fragment of `frame`'s datagram: its fragment header (offset 0, more) and the
/// first `keep` bytes of the payload behind the fixed header.
fn fragment(frame: Vec<u8>, id: u32, offset: u16, more: bool, keep: usize) -> Vec<u8> {
    let mut f = frame[..54].to_vec();
    f.extend(frag_header(frame[20], id, offset, more));
    f.extend(&frame[54..54 + keep]);
    f[20] = 44;
    f[18..20].copy_from_slice(&((8 + keep) as u16).to_be_bytes());
    f
}

/// A later fragment of `frame`'s datagram: the payload bytes from `offset`, `len` of them,
/// the last.
fn later_fragment6(frame: Vec<u8>, id: u32, offset: u16, len: usize) -> Vec<u8> {
    let mut f = frame[..54].to_vec();
    f.extend(frag_header(frame[20], id, offset, false));
    let at = 54 + usize::from(offset);
    f.extend(&frame[at..at + len]);
    f[20] = 44;
    f[18..20].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    f
}

/// Cases of the TC hook alone.
const TC_ONLY: &[(&str, &str, Case)] = &[
    (
        "egress_outside_the_devmap_is_redirected",
        "TC redirects into any interface the FIB names: the devmap is XDP's list",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::OTHER_PORT)?;
            let p = to_vip(addr::NOT_VIP, 40000, 22);
            let out = p
                .clone()
                .dst(addr::OTHER_PORT)
                .ttl(p.ttl - 1)
                .eth(macs::OTHER0, macs::OTHER_PORT);
            ingress(fx, &p, Redirect(&out))?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
    (
        "gso_packet_is_checked_by_its_segments",
        "a GSO skb longer than the route's MTU, of segments that fit, is sent, not answered with fragmentation-needed",
        |fx| {
            fx.spare(addr::NOT_VIP, addr::SMALL_MTU)?;
            fx.gso_size = 900;
            let p = to_vip(addr::NOT_VIP, 40000, 22).payload(&[7; 1100]);
            ingress(
                fx,
                &p,
                Redirect(&toward(&p, addr::SMALL_MTU, macs::SMALL_MTU)),
            )?;
            fx.counters(NEW_FLOW_REDIRECT)
        },
    ),
];

/// README.md's table of tiers says how many cases there are: that number is this list's length.
fn readme_counts_every_case() -> Result<(), Failed> {
    const README: &str = include_str!("../../README.md");
    let said = README
        .lines()
        .find(|l| l.contains("`tests/tests/fixtures.rs`"))
        .and_then(|l| l.split(" described cases").next())
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    let guest = README
        .lines()
        .find(|l| l.contains("`tests/tests/fixtures.rs`"))
        .and_then(|l| l.split(" cases of the guest agent").next())
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    match (said, guest) {
        (Some(n), Some(g))
            if n == CASES.len() + XDP_ONLY.len() + TC_ONLY.len() && g == guest::GUEST.len() =>
        {
            Ok(())
        }
        said => Err(format!(
            "README.md's tests table says {said:?} (described cases, cases of the guest agent) \
             for tests/tests/fixtures.rs; there are {} and {}",
            CASES.len() + XDP_ONLY.len() + TC_ONLY.len(),
            guest::GUEST.len()
        )
        .into()),
    }
}

fn main() {
    let args = Arguments::from_args();
    // Needs no privileges: runs wherever the binary runs.
    let readme = Trial::test("readme_counts_every_case", readme_counts_every_case);
    if !lb_tests::privileged(
        "fixtures",
        2 * CASES.len() + XDP_ONLY.len() + TC_ONLY.len() + guest::GUEST.len(),
    ) {
        libtest_mimic::run(&args, vec![readme]).exit();
    }
    let env = Env::create().expect("building the fixture namespace");
    // Every case at both hooks (XDP under its own name, TC as `tc::<name>`), then the cases
    // of one hook.
    let trials = std::iter::once(readme)
        .chain(
            [
                (Hook::Xdp, "", CASES),
                (Hook::Tc, "tc::", CASES),
                (Hook::Xdp, "", XDP_ONLY),
                (Hook::Tc, "tc::", TC_ONLY),
            ]
            .into_iter()
            .flat_map(|(hook, prefix, cases)| {
                cases.iter().map(move |(name, about, case)| {
                    let case = *case;
                    let about = *about;
                    Trial::test(format!("{prefix}{name}"), move || {
                        let mut fx = Fx::new(env).map_err(|e| Failed::from(format!("{e:#}")))?;
                        fx.hook = hook;
                        case(&mut fx).map_err(|e| Failed::from(format!("{about}\n{e:#}")))
                    })
                })
            }),
        )
        .chain(guest::GUEST.iter().map(|(name, about, case)| {
            let (case, about) = (*case, *about);
            Trial::test(*name, move || {
                lb_tests::guest::GuestFx::run_case(case)
                    .map_err(|e| Failed::from(format!("{about}\n{e:#}")))
            })
        }))
        .collect();
    libtest_mimic::run(&args, trials).exit();
}
