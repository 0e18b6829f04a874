//! `cargo xtask bench`: what users compare us on, each figure a ratio measured side by side in
//! one run (these machines are noisy). Driven by the `lb-bench` binary.
//!
//! - [`cost`]: per-packet cost with `BPF_PROG_TEST_RUN` against the empty program and the
//!   stateless-NAT reference, over many flows in the steady state and just after a decision
//!   change;
//! - [`throughput`]: forwarding on the veth lab against nftables DNAT and a bare redirect;
//! - [`outage`]: the failover outage of a UDP stream, and losses across restart and reload;
//! - [`bulk`]: bulk TCP (iperf3) through the VIP on plain veths, per hook, against nftables
//!   DNAT and plain kernel forwarding;
//! - [`scale`]: decision → map write with 1,000 paths in 256 targets, and transitions of a path
//!   with 5 % loss;
//! - [`scale_out`]: an edge failing under traffic on the two-edge BGP topology: outage and
//!   connections reset;
//! - [`seamless`]: a path failing under established TCP connections, with and without the guest
//!   agent in the VM: connections reset, and a transfer's stall.

pub mod bulk;
pub mod cost;
pub mod outage;
pub mod scale;
pub mod scale_out;
pub mod seamless;
pub mod throughput;

/// Median, minimum and maximum of some samples.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Spread {
        let mut v = samples.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}
