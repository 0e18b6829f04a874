//! BPF_PROG_TEST_RUN fixtures for the guest agent's TC programs (`lb guest run`), with real
//! sockets: the programs look sockets up in the namespace of the thread that runs them, so each
//! case runs in a thread inside a namespace of its own ([`GuestFx::run_case`]):
//!
//! ```text
//!   a0  192.0.2.70/24       path address A (given), and 192.0.2.71/24 (not given)
//!   b0  198.51.100.100/24   path address B (given)
//!   lo  203.0.113.50/32     the client: local, so that a test opens real connections from it
//! ```
//!
//! A case opens connections from the client to A or B (over `lo`), then runs the programs on
//! frames of those connections as they would arrive at B or leave from A, and checks the
//! verdict, the output bytes, the flow records and the counters.

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
};

use anyhow::{Context as _, bail, ensure};
use aya::programs::{TestRun as _, TestRunOptions};
use lb_common::guest::{GuestFlow, GuestFlowKey, PROG_IN, PROG_OUT};
use lb_user::guest::agent::Agent;

use crate::{
    fixture::{self, SKB_CTX_LEN, SKB_IFINDEX, SKB_INGRESS_IFINDEX},
    netns::{Netns, unique},
};

pub const A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 70);
pub const B: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
/// On A's interface, not given to the agent.
pub const NOT_GIVEN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 71);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);

/// TC's verdicts as the programs return them (`crate::fixture`'s, signed).
pub const TC_ACT_OK: i32 = fixture::TC_ACT_OK as i32;
pub const TC_ACT_SHOT: i32 = fixture::TC_ACT_SHOT as i32;
pub const TC_ACT_REDIRECT: i32 = fixture::TC_ACT_REDIRECT as i32;

/// The agent loaded (not attached) in a case's namespace.
pub struct GuestFx {
    pub agent: Agent,
    /// Interface indexes of A's and B's interfaces.
    pub a_if: u32,
    pub b_if: u32,
}

/// One program run.
#[derive(Debug)]
pub struct Run {
    pub verdict: i32,
    pub frame: Vec<u8>,
}

/// Which program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

impl GuestFx {
    /// Builds the namespace, loads the agent for A and B in it and runs `case` on a thread
    /// inside it; the namespace goes when the case ends.
    pub fn run_case(
        case: impl FnOnce(&mut GuestFx) -> anyhow::Result<()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let ns = Netns::new(&unique("g"))?;
        for (dev, peer) in [("a0", "a1"), ("b0", "b1")] {
            ns.ip(&format!("link add {dev} type veth peer name {peer}"))?;
            ns.ip(&format!("link set {dev} up"))?;
            ns.ip(&format!("link set {peer} up"))?;
        }
        ns.ip(&format!("addr add {A}/24 dev a0"))?;
        ns.ip(&format!("addr add {NOT_GIVEN}/24 dev a0"))?;
        ns.ip(&format!("addr add {B}/24 dev b0"))?;
        ns.ip(&format!("addr add {CLIENT}/32 dev lo"))?;
        ns.spawn(move || {
            let agent = Agent::load(&[(A, "a0".to_string()), (B, "b0".to_string())])?;
            let mut fx = GuestFx {
                agent,
                a_if: crate::sys::ifindex("a0")?,
                b_if: crate::sys::ifindex("b0")?,
            };
            case(&mut fx)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the case's thread panicked"))?
    }

    /// Runs the ingress (`In`) or egress (`Out`) program on `frame` as seen on `ifindex`.
    pub fn run(&self, dir: Dir, ifindex: u32, frame: &[u8]) -> anyhow::Result<Run> {
        let prog = self.agent.program(match dir {
            Dir::In => PROG_IN,
            Dir::Out => PROG_OUT,
        })?;
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_INGRESS_IFINDEX..SKB_INGRESS_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
        ctx[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.ctx_in = Some(&ctx);
        let r = prog
            .test_run(opts)
            .context("BPF_PROG_TEST_RUN (guest agent)")?;
        out.truncate(r.data_size_out as usize);
        Ok(Run {
            verdict: r.return_value as i32,
            frame: out,
        })
    }

    /// Runs and checks the verdict and the output (`None`: the input, unchanged).
    pub fn expect(
        &self,
        dir: Dir,
        ifindex: u32,
        frame: &[u8],
        verdict: i32,
        want: Option<&[u8]>,
    ) -> anyhow::Result<()> {
        let r = self.run(dir, ifindex, frame)?;
        ensure!(
            r.verdict == verdict,
            "{dir:?}: verdict {} (want {verdict})",
            r.verdict
        );
        if let Some(d) = lb_testkit::hexdiff::diff(want.unwrap_or(frame), &r.frame) {
            bail!("{dir:?}: output differs\n{d}");
        }
        Ok(())
    }

    /// The counters that are not zero (and `flows_expired`, the agent's own, never here).
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        self.agent
            .counters()
            .into_iter()
            .filter(|(_, n)| *n != 0)
            .collect()
    }

    /// Checks the non-zero counters are exactly `want`.
    pub fn expect_counters(&self, want: &[(&'static str, u64)]) -> anyhow::Result<()> {
        let want: BTreeMap<&'static str, u64> = want.iter().copied().collect();
        let have = self.counters();
        ensure!(have == want, "counters {have:?}, want {want:?}");
        Ok(())
    }

    pub fn records(&self) -> Vec<(GuestFlowKey, GuestFlow)> {
        self.agent.records()
    }
}

/// A TCP connection from the client to `local:port`, both ends open: (client's stream,
/// server's stream, client port). The listener binds the wildcard address, as servers do.
pub fn connect(
    local: Ipv4Addr,
    listener: &TcpListener,
) -> anyhow::Result<(TcpStream, TcpStream, u16)> {
    let port = listener.local_addr()?.port();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((CLIENT, 0)).into())?;
    s.connect(&SocketAddr::from((local, port)).into())?;
    let client: TcpStream = s.into();
    let (server, _) = listener.accept()?;
    let cport = client.local_addr()?.port();
    // Through lo both ways: the connection is established on both ends.
    (&client).write_all(b"x")?;
    Ok((client, server, cport))
}

/// A listener on `0.0.0.0` at a free port.
pub fn listen() -> anyhow::Result<TcpListener> {
    Ok(TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?)
}

/// A UDP socket bound to `local` (port 0: a free one), connected to the client at `cport` when
/// given.
pub fn udp(local: Ipv4Addr, port: u16, connect_to: Option<u16>) -> anyhow::Result<UdpSocket> {
    let s = UdpSocket::bind((local, port))?;
    if let Some(cport) = connect_to {
        s.connect((CLIENT, cport))?;
    }
    Ok(s)
}
