//! `lb guest run`: the agent inside the VM that keeps a moved flow on its socket (see
//! `lb_common::guest` for what the TC programs do).
//!
//! Here: which interfaces serve the given addresses ([`resolve`]), loading the agent's object
//! and attaching its programs on clsact ingress and egress of those interfaces ([`Agent`]),
//! expiring the flow records ([`expired`], pure; [`Agent::sweep`]) and reading the counters.
//!
//! Nothing is pinned: the programs live as long as the agent (TCX links owned by the process).
//! A restarted agent starts with no records and makes them again from the next client packet
//! of each moved flow, since the socket is the truth and a record only its cache.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, TcAttachType},
};
use lb_common::{
    guest::{
        self as g, DIR_IN, DIR_OUT, FLOW_FIN, FLOW_RST, GuestAddr, GuestCounter, GuestFlow,
        GuestFlowKey, MAX_ADDRS,
    },
    net::{IPPROTO_TCP, IPPROTO_UDP},
};
use serde::Serialize;

use crate::guest::facts::Facts;

/// The agent's object built from `lb-ebpf` (`src/guest/main.rs`), embedded at build time.
pub fn object() -> anyhow::Result<&'static [u8]> {
    static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-guest"));
    if OBJECT.is_empty() {
        anyhow::bail!("this lb was built without its eBPF objects: run `cargo xtask setup`");
    }
    Ok(OBJECT)
}

/// How long records live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// A TCP flow with no packet for this long (its record is made again by the next one).
    pub tcp_idle: Duration,
    /// A UDP flow with no packet for this long.
    pub udp_idle: Duration,
    /// A flow that saw a FIN or a RST, quiet for this long.
    pub closing: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_idle: Duration::from_secs(2 * 60 * 60),
            udp_idle: Duration::from_secs(120),
            closing: Duration::from_secs(10),
        }
    }
}

/// Whether a moved flow's records expire at `now_ns`: `inbound` its IN record, `outbound` its
/// OUT record when there is one.
pub fn expired(
    key: &GuestFlowKey,
    inbound: &GuestFlow,
    outbound: Option<&GuestFlow>,
    now_ns: u64,
    t: &Timeouts,
) -> bool {
    let (seen, flags) = match outbound {
        Some(o) => (inbound.seen_ns.max(o.seen_ns), inbound.flags | o.flags),
        None => (inbound.seen_ns, inbound.flags),
    };
    let quiet = Duration::from_nanos(now_ns.saturating_sub(seen));
    let idle = match key.proto {
        IPPROTO_UDP => t.udp_idle,
        _ => t.tcp_idle,
    };
    let closing = key.proto == IPPROTO_TCP && flags & (FLOW_FIN | FLOW_RST) != 0;
    quiet >= idle || (closing && quiet >= t.closing)
}

/// A given address and the interface that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Served {
    pub address: Ipv4Addr,
    pub interface: String,
    pub ifindex: u32,
}

/// The interfaces of `addresses` in `facts`: each must be an IPv4 address on exactly one
/// interface of this host, and there must be two at least (the agent moves flows between them).
pub fn resolve(facts: &Facts, addresses: &[IpAddr]) -> anyhow::Result<Vec<(Ipv4Addr, String)>> {
    anyhow::ensure!(
        addresses.len() >= 2,
        "give two addresses at least (--addresses A,B): the agent moves flows between them"
    );
    anyhow::ensure!(
        addresses.len() <= MAX_ADDRS as usize,
        "{} addresses given; the agent serves {MAX_ADDRS} at most",
        addresses.len()
    );
    let mut out = Vec::with_capacity(addresses.len());
    for &a in addresses {
        let IpAddr::V4(v4) = a else {
            anyhow::bail!("{a}: the agent serves IPv4 addresses only (IPv6 flows are not moved)");
        };
        anyhow::ensure!(!out.iter().any(|(b, _)| *b == v4), "{a} is given twice");
        let holders = facts.holders(a);
        let iface = match holders.as_slice() {
            [(i, _)] => i.name.clone(),
            [] => anyhow::bail!("{a} is no address of this host"),
            many => anyhow::bail!(
                "{a} is on {} interfaces ({}); the agent needs it on one",
                many.len(),
                many.iter()
                    .map(|(i, _)| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        out.push((v4, iface));
    }
    Ok(out)
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Swept {
    /// Moved flows whose records remain.
    pub flows: usize,
    /// Moved flows whose records expired now.
    pub expired: usize,
}

/// The loaded and attached agent. Dropping it detaches the programs.
pub struct Agent {
    /// Owns the programs and their links.
    ebpf: Ebpf,
    served: Vec<Served>,
    flows: HashMap<MapData, GuestFlowKey, GuestFlow>,
    counters: PerCpuArray<MapData, u64>,
    expired_total: u64,
}

impl Agent {
    /// Loads the object, fills the address maps and attaches both programs to every interface
    /// of `addresses` (ingress first, then egress). On an error nothing stays attached.
    pub fn start(addresses: &[(Ipv4Addr, String)]) -> anyhow::Result<Agent> {
        let mut agent = Agent::load(addresses)?;
        agent.attach()?;
        Ok(agent)
    }

    /// Loads the object and both programs and fills the address maps, attaching nothing (the
    /// fixtures run the programs with `BPF_PROG_TEST_RUN`).
    pub fn load(addresses: &[(Ipv4Addr, String)]) -> anyhow::Result<Agent> {
        use anyhow::Context as _;
        let mut ebpf = EbpfLoader::new()
            .load(object()?)
            .context("loading the agent's eBPF object")?;
        let mut served = Vec::with_capacity(addresses.len());
        for (address, interface) in addresses {
            let ifindex = ifindex(interface)?;
            served.push(Served {
                address: *address,
                interface: interface.clone(),
                ifindex,
            });
        }
        {
            let mut addrs: HashMap<_, [u8; 4], GuestAddr> =
                HashMap::try_from(ebpf.map_mut(g::ADDRS).context("no address map")?)?;
            for s in &served {
                let entry = GuestAddr {
                    addr: s.address.octets(),
                    ifindex: s.ifindex,
                };
                addrs.insert(s.address.octets(), entry, 0)?;
            }
        }
        {
            let mut list: Array<_, GuestAddr> =
                Array::try_from(ebpf.map_mut(g::ADDR_LIST).context("no address list")?)?;
            for (i, s) in served.iter().enumerate() {
                let entry = GuestAddr {
                    addr: s.address.octets(),
                    ifindex: s.ifindex,
                };
                list.set(i as u32, entry, 0)?;
            }
        }
        for name in [g::PROG_IN, g::PROG_OUT] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("no program {name} in the agent's object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("loading {name} (the kernel's verifier refused it)"))?;
        }
        let flows = HashMap::try_from(ebpf.take_map(g::FLOWS).context("no flow map")?)?;
        let counters = PerCpuArray::try_from(ebpf.take_map(g::COUNTERS).context("no counters")?)?;
        Ok(Agent {
            ebpf,
            served,
            flows,
            counters,
            expired_total: 0,
        })
    }

    /// Attaches both programs to every served interface: ingress first, then egress (a reply
    /// rewritten before its flow's arrivals are would go nowhere).
    pub fn attach(&mut self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let mut interfaces: Vec<String> = self.served.iter().map(|s| s.interface.clone()).collect();
        interfaces.sort();
        interfaces.dedup();
        for (name, kind) in [
            (g::PROG_IN, TcAttachType::Ingress),
            (g::PROG_OUT, TcAttachType::Egress),
        ] {
            let prog = self.program_mut(name)?;
            for iface in &interfaces {
                // TCX (Linux 6.6+) or a netlink filter on clsact before it; the link is owned
                // by the program and detached with it (or with the agent, on an error here).
                prog.attach(iface, kind)
                    .with_context(|| format!("attaching {name} to {iface}"))?;
            }
        }
        Ok(())
    }

    fn program_mut(&mut self, name: &str) -> anyhow::Result<&mut SchedClassifier> {
        use anyhow::Context as _;
        Ok(self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the agent's object"))?
            .try_into()?)
    }

    /// The loaded program `name` ([`g::PROG_IN`] or [`g::PROG_OUT`]).
    pub fn program(&self, name: &str) -> anyhow::Result<&SchedClassifier> {
        use anyhow::Context as _;
        Ok(self
            .ebpf
            .program(name)
            .with_context(|| format!("no program {name} in the agent's object"))?
            .try_into()?)
    }

    pub fn served(&self) -> &[Served] {
        &self.served
    }

    /// The flow table itself, to write (tests fill it; the agent only reads and deletes).
    pub fn flow_table_mut(&mut self) -> &mut HashMap<MapData, GuestFlowKey, GuestFlow> {
        &mut self.flows
    }

    /// Every flow record, as the table holds it now.
    pub fn records(&self) -> Vec<(GuestFlowKey, GuestFlow)> {
        self.flows.iter().filter_map(Result::ok).collect()
    }

    /// Removes the records of flows that expired at `now_ns` ([`expired`]), and OUT records
    /// whose IN record is gone (made while the table filled) once they are quiet.
    pub fn sweep(&mut self, now_ns: u64, t: &Timeouts) -> Swept {
        let all: std::collections::HashMap<GuestFlowKey, GuestFlow> =
            self.flows.iter().filter_map(Result::ok).collect();
        let mut swept = Swept::default();
        let mut doomed = Vec::new();
        for (k, v) in &all {
            match k.dir {
                DIR_IN => {
                    let twin = k.twin(v.addr);
                    let out = all.get(&twin);
                    if expired(k, v, out, now_ns, t) {
                        doomed.push(*k);
                        doomed.push(twin);
                        swept.expired += 1;
                    } else {
                        swept.flows += 1;
                    }
                }
                DIR_OUT => {
                    let twin = k.twin(v.addr);
                    let quiet = Duration::from_nanos(now_ns.saturating_sub(v.seen_ns));
                    if !all.contains_key(&twin) && quiet >= t.closing {
                        doomed.push(*k);
                    }
                }
                _ => doomed.push(*k),
            }
        }
        for k in doomed {
            // Gone already (the datapath removed it on a SYN): nothing to do.
            let _ = self.flows.remove(&k);
        }
        self.expired_total += swept.expired as u64;
        swept
    }

    /// Every counter, summed over the CPUs, with the flows expired so far.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        let mut out = BTreeMap::new();
        for c in GuestCounter::ALL {
            let n = self
                .counters
                .get(&(*c as u32), 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0);
            out.insert(c.name(), n);
        }
        out.insert("flows_expired", self.expired_total);
        out
    }
}

fn ifindex(iface: &str) -> anyhow::Result<u32> {
    crate::ifindex(iface).ok_or_else(|| anyhow::anyhow!("no interface {iface}"))
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// How [`serve`] runs.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    pub timeouts: Timeouts,
    /// How often the records are swept.
    pub sweep_every: Duration,
    /// How often the counters are logged, when they changed.
    pub report_every: Duration,
}

/// Sweeps the records and reports the counters until `shutdown` completes; then logs the
/// counters a last time and detaches (drops the agent). Tells systemd it is ready
/// (`Type=notify`) once serving, and stopping at the end.
pub async fn serve(
    mut agent: Agent,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let ServeOptions {
        timeouts,
        sweep_every,
        report_every,
    } = opts;
    let list: Vec<String> = agent
        .served()
        .iter()
        .map(|s| format!("{} on {}", s.address, s.interface))
        .collect();
    tracing::info!(kind = "started", "guest agent serving {}", list.join(", "));
    let status = format!("serving {}", list.join(", "));
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&status),
    ]);
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(report_every);
    report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = BTreeMap::new();
    let mut flows = 0;
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = sweep.tick() => {
                let swept = agent.sweep(monotonic_ns(), &timeouts);
                flows = swept.flows;
                if swept.expired > 0 {
                    tracing::debug!(kind = "expired", expired = swept.expired, flows = swept.flows,
                        "{} moved flows expired, {} remain", swept.expired, swept.flows);
                }
            }
            _ = report.tick() => {
                let now = agent.counters();
                if now != reported {
                    log_counters(&now, flows, "counters");
                    reported = now;
                }
            }
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    log_counters(&agent.counters(), flows, "stopping");
    drop(agent);
    tracing::info!(kind = "stopped", "guest agent stopped: programs detached");
}

fn log_counters(counters: &BTreeMap<&'static str, u64>, flows: usize, kind: &str) {
    let text: Vec<String> = counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let json = serde_json::to_string(counters).unwrap_or_default();
    tracing::info!(kind, flows, counters = %json, "moved flows {flows}; {}", text.join(" "));
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(proto: u8) -> GuestFlowKey {
        GuestFlowKey {
            local: [192, 0, 2, 100],
            client: [198, 51, 100, 10],
            client_port: 40000u16.to_be_bytes(),
            local_port: 80u16.to_be_bytes(),
            proto,
            dir: DIR_IN,
            _pad: [0; 2],
        }
    }

    fn flow(seen_s: u64, flags: u32) -> GuestFlow {
        GuestFlow {
            addr: [192, 0, 2, 70],
            ifindex: 2,
            seen_ns: seen_s * S,
            flags,
            _pad: 0,
        }
    }

    #[test]
    fn records_expire_when_idle_or_closed_and_quiet() {
        let t = Timeouts {
            tcp_idle: Duration::from_secs(100),
            udp_idle: Duration::from_secs(20),
            closing: Duration::from_secs(5),
        };
        let tcp = key(IPPROTO_TCP);
        // Busy on either side keeps the pair.
        assert!(!expired(&tcp, &flow(10, 0), None, 50 * S, &t));
        assert!(expired(&tcp, &flow(10, 0), None, 110 * S, &t));
        assert!(!expired(
            &tcp,
            &flow(10, 0),
            Some(&flow(60, 0)),
            110 * S,
            &t
        ));
        // A FIN or RST on either side: gone once quiet for `closing`.
        assert!(!expired(&tcp, &flow(10, FLOW_FIN), None, 14 * S, &t));
        assert!(expired(&tcp, &flow(10, FLOW_FIN), None, 15 * S, &t));
        assert!(expired(
            &tcp,
            &flow(10, 0),
            Some(&flow(10, FLOW_RST)),
            15 * S,
            &t
        ));
        // A half-closed connection still sending keeps its records.
        assert!(!expired(
            &tcp,
            &flow(10, FLOW_FIN),
            Some(&flow(14, 0)),
            15 * S,
            &t
        ));
        // UDP has its own idle time, and no closing.
        let udp = key(IPPROTO_UDP);
        assert!(!expired(&udp, &flow(10, 0), None, 29 * S, &t));
        assert!(expired(&udp, &flow(10, 0), None, 30 * S, &t));
        // A clock before the record (cannot happen) keeps it.
        assert!(!expired(&tcp, &flow(10, 0), None, 0, &t));
    }

    fn facts(text: &str) -> Facts {
        Facts {
            interfaces: crate::guest::facts::parse_addresses(text).expect("parses"),
            ..Facts::default()
        }
    }

    #[test]
    fn addresses_resolve_to_one_interface_each() {
        let f = facts(
            r#"[{"ifname":"lo","addr_info":[{"local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
                {"ifname":"eth0","addr_info":[{"local":"192.0.2.70","prefixlen":26,"scope":"global"}]},
                {"ifname":"eth1","addr_info":[{"local":"192.0.2.100","prefixlen":27,"scope":"global"},
                                              {"local":"2001:db8:2::100","prefixlen":64,"scope":"global"}]},
                {"ifname":"eth2","addr_info":[{"local":"192.0.2.100","prefixlen":27,"scope":"global"}]}]"#,
        );
        let a: IpAddr = "192.0.2.70".parse().expect("address");
        let b: IpAddr = "192.0.2.100".parse().expect("address");
        let c: IpAddr = "203.0.113.1".parse().expect("address");
        let v6: IpAddr = "2001:db8:2::100".parse().expect("address");
        let err = |list: &[IpAddr]| format!("{:#}", resolve(&f, list).expect_err("refused"));
        assert!(err(&[a]).contains("two addresses at least"));
        assert!(err(&[a, c]).contains("203.0.113.1 is no address of this host"));
        assert!(err(&[a, v6]).contains("IPv4 addresses only"));
        assert!(err(&[a, a]).contains("given twice"));
        assert!(err(&[a, b]).contains("192.0.2.100 is on 2 interfaces (eth1, eth2)"));
        let nine: Vec<IpAddr> = (1..=9)
            .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)))
            .collect();
        assert!(err(&nine).contains("9 addresses given"));
        let f = facts(
            r#"[{"ifname":"eth0","addr_info":[{"local":"192.0.2.70","prefixlen":26,"scope":"global"}]},
                {"ifname":"eth1","addr_info":[{"local":"192.0.2.100","prefixlen":27,"scope":"global"}]}]"#,
        );
        assert_eq!(
            resolve(&f, &[a, b]).expect("resolves"),
            vec![
                (Ipv4Addr::new(192, 0, 2, 70), "eth0".to_owned()),
                (Ipv4Addr::new(192, 0, 2, 100), "eth1".to_owned())
            ]
        );
    }
}
