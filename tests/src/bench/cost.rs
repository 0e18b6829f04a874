//! Per-packet cost with `BPF_PROG_TEST_RUN`.
//!
//! Method. `repeat` does not restore the frame between iterations, so the programs are measured
//! through `bench_*` entry points that copy the template frame back first (and give it a new
//! flow, or a random one of N, when asked). `bench_restore` does only that copy: its cost over
//! the empty program (`bench_floor`) is subtracted from every measurement. Each case runs
//! `repeat` iterations per round, many short rounds; reported: the best round (the minimum),
//! with the median and the maximum. The minimum, because these shared VMs lose whole rounds to
//! steal time and noisy neighbours (medians of the same case moved by 2–5× between runs on
//! 2026-12-03), while nothing makes a round faster than the program is. The counters are read before and after each case and must show that every
//! iteration took the intended path (N translations, N flow hits, N new flows...).
//!
//! Everything runs in the fixture namespace (`fixture::Env`), so `bpf_fib_lookup` finds routes
//! and neighbours, and the forwarding cases end in `XDP_REDIRECT` as in production.

use anyhow::{Context as _, ensure};
use aya::{
    maps::{Array, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use lb_common::{
    Counter,
    maps::{
        BENCH, BENCH_FRAME, BENCH_VARY_NONE, BENCH_VARY_RANDOM, BENCH_VARY_SEQUENCE, BenchTemplate,
        PROG_BENCH_FLOOR, PROG_BENCH_INGRESS, PROG_BENCH_NAT_REF, PROG_BENCH_RESTORE,
        PROG_BENCH_RETURN,
    },
};
use serde::Serialize;

use super::Spread;
use crate::{
    fixture::{Env, Fx, Iface, XDP_PASS, XDP_REDIRECT, addr, addr6, macs},
    packet::Pkt,
};

/// One measured case.
#[derive(Clone, Debug, Serialize)]
pub struct Case {
    pub name: &'static str,
    /// Nanoseconds per packet as measured (restore included, for the `bench_*` cases).
    pub raw_ns: Spread,
    /// The program's own cost: raw minus the restore's overhead over the floor.
    pub ns: f64,
    /// `ns` over the floor's.
    pub vs_floor: f64,
    /// `ns` over the stateless-NAT reference's (`None` for the reference itself).
    pub vs_nat_ref: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Cost {
    pub repeat: u32,
    pub rounds: u32,
    pub floor_ns: Spread,
    pub restore_ns: Spread,
    /// The stateless-NAT reference: the same job with no lookups (`bench_nat_ref`).
    pub nat_ref: Case,
    pub ingress_hit: Case,
    pub ingress_new: Case,
    pub non_vip: Case,
    pub return_hit: Case,
    /// The same two over IPv6 (the IPv6 twins, through their tail calls).
    pub ingress_hit6: Case,
    pub return_hit6: Case,
    /// Ingress packets spread over 1k, 100k (and 1M) flows in the steady state: no exception,
    /// every packet follows its target's decision.
    pub flow_scale: Vec<(u32, Case)>,
    /// The same flows as TCP segments without SYN just after a decision change: every flow's
    /// first packet follows the previous decision and pins itself, later ones hit their
    /// exception.
    pub after_change: Vec<(u32, Case)>,
}

struct Bench {
    fx: Fx,
    template: Array<MapData, BenchTemplate>,
    repeat: u32,
    rounds: u32,
    /// The restore's cost over the floor, subtracted from every case.
    overhead: f64,
    /// The floor's cost.
    floor: f64,
}

/// A 64-byte UDP frame (checksum 0, so varied ports keep it valid).
fn frame(p: Pkt) -> Vec<u8> {
    let mut f = p.zero_udp_checksum().payload(&[0x5a; 22]).bytes();
    f.resize(64, 0);
    f
}

impl Bench {
    fn new(env: Env, flows: u32, repeat: u32, rounds: u32) -> anyhow::Result<Self> {
        let mut fx = Fx::with_flow_table(env, flows)?;
        fx.standard6()?;
        for p in [
            PROG_BENCH_FLOOR,
            PROG_BENCH_RESTORE,
            PROG_BENCH_INGRESS,
            PROG_BENCH_RETURN,
            PROG_BENCH_NAT_REF,
        ] {
            fx.dp
                .program_mut(p)
                .with_context(|| format!("loading {p}"))?;
        }
        let map = fx.dp.ebpf_mut().take_map(BENCH).context("the bench map")?;
        let template = Array::try_from(map)?;
        Ok(Self {
            fx,
            template,
            repeat,
            rounds,
            overhead: 0.0,
            floor: f64::NAN,
        })
    }

    /// Puts `spec`'s frame into the template the `bench_*` programs restore.
    fn set(&mut self, spec: &Spec) -> anyhow::Result<()> {
        let f = spec.frame;
        ensure!(
            f.len().is_multiple_of(8) && f.len() <= BENCH_FRAME,
            "template of {} bytes",
            f.len()
        );
        let mut t = BenchTemplate {
            len: f.len() as u32,
            vary: spec.vary,
            flows: spec.flows,
            port: spec.port,
            ..BenchTemplate::default()
        };
        t.frame[..f.len()].copy_from_slice(f);
        self.template.set(0, t, 0)?;
        Ok(())
    }

    /// ns/packet of each case, `rounds` rounds of `repeat` iterations, the cases taking turns
    /// round by round. Checks every round's action, and that the case's counter grew by one per
    /// iteration (a first iteration may differ: a flow's first packet).
    fn interleaved(&mut self, specs: &[Spec]) -> anyhow::Result<Vec<Spread>> {
        let mut samples = vec![Vec::new(); specs.len()];
        for _ in 0..self.rounds {
            for (spec, samples) in specs.iter().zip(&mut samples) {
                self.set(spec)?;
                let before = spec.counter.map(|c| self.counter(c)).transpose()?;
                samples.push(self.round(spec)?);
                if let (Some(c), Some(before)) = (spec.counter, before) {
                    let grew = self.counter(c)? - before;
                    ensure!(
                        grew + 1 >= u64::from(self.repeat),
                        "{}: {} grew by {grew} over {} iterations: the case did not take its path",
                        spec.name,
                        c.name(),
                        self.repeat
                    );
                }
            }
        }
        Ok(samples.iter().map(|s| Spread::of(s)).collect())
    }

    /// One round of `spec`: ns/packet; checks the action.
    fn round(&mut self, spec: &Spec) -> anyhow::Result<f64> {
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(spec.frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&spec.on.ifindex.to_ne_bytes());
        let p = self.fx.dp.program_mut(spec.prog)?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(spec.frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = self.repeat;
        let r = p
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN {}", spec.prog))?;
        ensure!(
            r.return_value == spec.action || (spec.action == 4 && r.return_value == 3),
            "{}: action {} (expected {})",
            spec.name,
            r.return_value,
            spec.action
        );
        Ok(r.duration.as_nanos() as f64)
    }

    fn counter(&self, c: Counter) -> anyhow::Result<u64> {
        Ok(self.fx.dp.maps.counter(c)?)
    }

    /// A measured case: its best round, less the restore's overhead.
    fn case(&self, name: &'static str, raw: Spread) -> Case {
        let ns = raw.min - self.overhead;
        Case {
            name,
            raw_ns: raw,
            ns,
            vs_floor: ns / self.floor,
            vs_nat_ref: None,
        }
    }
}

/// `case` with its ratio to the stateless-NAT reference's `nat_ref` ns.
fn with_ref(case: Case, nat_ref: Option<f64>) -> Case {
    Case {
        vs_nat_ref: nat_ref.map(|r| case.ns / r),
        ..case
    }
}

/// What one case runs: `prog` on `frame` (the template the `bench_*` programs restore, varied
/// as `vary` and `flows` say, sent to `port` by the redirecting ones) arriving on `on`.
struct Spec<'a> {
    name: &'static str,
    prog: &'static str,
    on: Iface,
    frame: &'a [u8],
    vary: u32,
    flows: u32,
    port: u32,
    action: u32,
    /// The counter that must grow by one per iteration (`None`: the action alone is checked).
    counter: Option<Counter>,
}

impl<'a> Spec<'a> {
    fn new(
        name: &'static str,
        prog: &'static str,
        on: Iface,
        frame: &'a [u8],
        action: u32,
    ) -> Self {
        Spec {
            name,
            prog,
            on,
            frame,
            vary: BENCH_VARY_NONE,
            flows: 0,
            port: 0,
            action,
            counter: None,
        }
    }
}

/// Keeps the calling thread on one CPU, the last of the first two: `BPF_PROG_TEST_RUN` runs on
/// the caller's CPU, and the per-CPU state must be the same for every round. Not CPU 0 when
/// there is another: on these VMs CPU 0 takes most timer and device interrupts, and its best
/// rounds were 20–40 % slower and far less repeatable.
fn pin_to_cpu() -> anyhow::Result<()> {
    let mut last = Err(std::io::Error::other("no CPU"));
    for cpu in [1, 0] {
        // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes within it.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: `set` is a valid cpu_set_t of the size passed.
        if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } == 0
        {
            return Ok(());
        }
        last = Err(std::io::Error::last_os_error());
    }
    last.context("sched_setaffinity")
}

pub fn run(quick: bool) -> anyhow::Result<Cost> {
    let (repeat, rounds) = if quick { (20_000, 50) } else { (100_000, 100) };
    pin_to_cpu()?;
    let env = Env::create()?;
    // Room for a million new flows on one CPU (each CPU evicts from its own LRU list).
    let mut b = Bench::new(env, 1 << 21, repeat, rounds)?;
    let to_vip =
        frame(Pkt::udp(addr::CLIENT, 40000, addr::VIP, 5001).eth(macs::CLIENT, macs::CLI0));
    let not_vip =
        frame(Pkt::udp(addr::CLIENT, 40000, addr::NOT_VIP, 5001).eth(macs::CLIENT, macs::CLI0));
    // A TCP segment without SYN (an established connection), 64 bytes.
    let to_vip_tcp = {
        let mut f = Pkt::tcp(addr::CLIENT, 40000, addr::VIP, 5001)
            .eth(macs::CLIENT, macs::CLI0)
            .payload(&[0x5a; 10])
            .bytes();
        f.resize(64, 0);
        f
    };
    let reply = frame(Pkt::udp(addr::NN1, 5001, addr::CLIENT, 40000).eth(macs::NN1, macs::PATH0));
    // IPv6/UDP, 72 bytes, with its checksum (IPv6 forbids none).
    let udp6 = |smac, dmac, src: std::net::Ipv6Addr, sport, dst: std::net::Ipv6Addr, dport| {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2(smac, dmac)
            .ipv6(src.octets(), dst.octets(), 64)
            .udp(sport, dport)
            .write(&mut f, &[0x5a; 10])
            .map(|()| f)
    };
    let to_vip6 = udp6(
        macs::CLIENT,
        macs::CLI0,
        addr6::CLIENT,
        40000,
        addr6::VIP,
        5001,
    )?;
    let reply6 = udp6(
        macs::NN1,
        macs::PATH0,
        addr6::NN1,
        5001,
        addr6::CLIENT,
        40000,
    )?;

    let cli0 = b.fx.env.cli0;
    let path0 = b.fx.env.path0;
    let sizes: &[u32] = if quick {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    // Every case of one fixture, interleaved round by round: a slow spell of the VM then
    // touches all of them, and the ratios between them hold.
    let mut specs = vec![
        Spec::new(
            "empty program (floor)",
            PROG_BENCH_FLOOR,
            cli0,
            &to_vip,
            XDP_PASS,
        ),
        Spec::new("restore", PROG_BENCH_RESTORE, cli0, &to_vip, XDP_PASS),
        Spec {
            port: path0.ifindex,
            ..Spec::new(
                "stateless-NAT reference",
                PROG_BENCH_NAT_REF,
                cli0,
                &to_vip,
                XDP_REDIRECT,
            )
        },
        Spec {
            counter: Some(Counter::FlowDecided),
            ..Spec::new(
                "ingress, flow hit",
                PROG_BENCH_INGRESS,
                cli0,
                &to_vip,
                XDP_REDIRECT,
            )
        },
        Spec {
            counter: Some(Counter::FlowDecided),
            vary: BENCH_VARY_SEQUENCE,
            ..Spec::new(
                "ingress, new flow",
                PROG_BENCH_INGRESS,
                cli0,
                &to_vip,
                XDP_REDIRECT,
            )
        },
        Spec {
            counter: Some(Counter::PassNotForUs),
            ..Spec::new(
                "ingress, not for a VIP",
                PROG_BENCH_INGRESS,
                cli0,
                &not_vip,
                XDP_PASS,
            )
        },
        Spec {
            counter: Some(Counter::NatReturn),
            ..Spec::new("return", PROG_BENCH_RETURN, path0, &reply, XDP_REDIRECT)
        },
        Spec {
            counter: Some(Counter::FlowDecided),
            ..Spec::new(
                "IPv6 ingress, flow hit",
                PROG_BENCH_INGRESS,
                cli0,
                &to_vip6,
                XDP_REDIRECT,
            )
        },
        Spec {
            counter: Some(Counter::NatReturn),
            ..Spec::new(
                "IPv6 return",
                PROG_BENCH_RETURN,
                path0,
                &reply6,
                XDP_REDIRECT,
            )
        },
    ];
    // The steady state over N flows: no exceptions, every flow follows the target's decision.
    for &n in sizes {
        let name: &'static str = match n {
            1_000 => "ingress, 1k flows, steady state",
            100_000 => "ingress, 100k flows, steady state",
            _ => "ingress, 1M flows, steady state",
        };
        specs.push(Spec {
            counter: Some(Counter::FlowDecided),
            vary: BENCH_VARY_RANDOM,
            flows: n,
            ..Spec::new(name, PROG_BENCH_INGRESS, cli0, &to_vip, XDP_REDIRECT)
        });
    }
    let spreads = b.interleaved(&specs)?;
    let [floor, restore, ..] = spreads[..] else {
        anyhow::bail!("the floor and the restore were not measured");
    };
    b.overhead = restore.min - floor.min;
    b.floor = floor.min;
    let overhead = b.overhead;
    let mut cases = specs
        .iter()
        .zip(&spreads)
        .skip(2)
        .map(|(spec, raw)| b.case(spec.name, *raw));
    let mut next = || cases.next().context("a case was not measured");
    let nat_ref = next()?;
    let ingress_hit = next()?;
    let ingress_new = next()?;
    let non_vip = next()?;
    let return_hit = next()?;
    let ingress_hit6 = next()?;
    let return_hit6 = next()?;
    let mut flow_scale = Vec::new();
    for &n in sizes {
        flow_scale.push((n, next()?));
    }
    drop(cases);
    let nat_ref_ns = Some(nat_ref.ns);
    let (ingress_hit, ingress_new, non_vip, return_hit) = (
        with_ref(ingress_hit, nat_ref_ns),
        with_ref(ingress_new, nat_ref_ns),
        with_ref(non_vip, nat_ref_ns),
        with_ref(return_hit, nat_ref_ns),
    );
    let (ingress_hit6, return_hit6) = (
        with_ref(ingress_hit6, nat_ref_ns),
        with_ref(return_hit6, nat_ref_ns),
    );
    let flow_scale = flow_scale
        .into_iter()
        .map(|(n, c)| (n, with_ref(c, nat_ref_ns)))
        .collect();
    drop(b);

    let mut after_change = Vec::new();
    for &n in sizes {
        let mut b = Bench::new(env, 1 << 21, repeat, rounds)?;
        (b.overhead, b.floor) = (overhead, floor.min);
        // nn2 was the decision, nn1 is: established connections stay on nn2 and pin there,
        // at whatever rate they come (the budget is the datapath's defence, not measured here).
        b.fx.dp.maps.set_settings(lb_common::maps::Settings {
            too_big_per_sec: 0,
            too_big_burst: 0,
            pin_per_sec: 10_000_000,
            pin_burst: 10_000_000,
        })?;
        b.fx.target_single(
            crate::fixture::ids::TARGET_WEB,
            crate::fixture::ids::PATH_NN2,
        )?;
        b.fx.change_single(
            crate::fixture::ids::TARGET_WEB,
            crate::fixture::ids::PATH_NN1,
        )?;
        let name: &'static str = match n {
            1_000 => "ingress, 1k flows after a change",
            100_000 => "ingress, 100k flows after a change",
            _ => "ingress, 1M flows after a change",
        };
        let spec = Spec {
            counter: Some(Counter::NatIngress),
            vary: BENCH_VARY_RANDOM,
            flows: n,
            ..Spec::new(name, PROG_BENCH_INGRESS, cli0, &to_vip_tcp, XDP_REDIRECT)
        };
        let raw = b.interleaved(std::slice::from_ref(&spec))?;
        let c = b.case(name, raw[0]);
        after_change.push((n, with_ref(c, nat_ref_ns)));
    }
    Ok(Cost {
        repeat,
        rounds,
        floor_ns: floor,
        restore_ns: restore,
        nat_ref,
        ingress_hit,
        ingress_new,
        non_vip,
        return_hit,
        ingress_hit6,
        return_hit6,
        flow_scale,
        after_change,
    })
}
