//! The lb programs: one datapath at two hooks, XDP and TC (sched_cls on clsact ingress), over
//! the packet abstraction of `ctx`. Entry points only: each runs its handler and turns the
//! outcome into the hook's verdict, counting both the verdict and the reason (xdp-tools'
//! `record_action` shape).
#![no_std]
#![no_main]
// `flow::note_pin`: an atomic add, which `AtomicU64` does not offer on a target without CAS.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![deny(clippy::indexing_slicing, clippy::panic, clippy::unwrap_used)]

mod bench;
mod ctx;
mod deliver;
mod family;
mod flow;
mod forward;
mod frag;
mod icmp;
mod icmp6;
mod ingress;
mod maps;
mod parse;
mod reverse;
mod stats;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

use crate::{ctx::Tc, stats::Dir};

/// Client-facing interface: packets for a VIP are translated to the chosen path's address.
#[xdp]
pub fn lb_ingress(ctx: XdpContext) -> u32 {
    stats::record(&ctx, ingress::handle(&ctx))
}

/// Path-facing interface(s): packets from a path address are translated back to the VIP.
#[xdp]
pub fn lb_return(ctx: XdpContext) -> u32 {
    stats::record(&ctx, reverse::handle(&ctx))
}

/// [`lb_ingress`] at TC (clsact ingress), for interfaces XDP does not serve well.
#[classifier]
pub fn lb_ingress_tc(ctx: TcContext) -> i32 {
    let ctx = Tc::new(ctx);
    if ctx.handed_off() {
        return aya_ebpf::bindings::TC_ACT_OK;
    }
    stats::record(&ctx, ingress::handle(&ctx)) as i32
}

/// [`lb_return`] at TC (clsact ingress).
#[classifier]
pub fn lb_return_tc(ctx: TcContext) -> i32 {
    let ctx = Tc::new(ctx);
    if ctx.handed_off() {
        return aya_ebpf::bindings::TC_ACT_OK;
    }
    stats::record(&ctx, reverse::handle(&ctx)) as i32
}

// ---- The IPv6 twins: the programs above hand every IPv6 packet to these with a tail call
// (`LB_CALLS`, `LB_CALLS_TC`), so that each family is verified as a program of its own, with a
// stack of its own; the IPv4 path pays nothing for IPv6. Never attached.

#[xdp]
pub fn lb_ingress6(ctx: XdpContext) -> u32 {
    stats::record(&ctx, ingress::handle6(&ctx))
}

#[xdp]
pub fn lb_return6(ctx: XdpContext) -> u32 {
    stats::record(&ctx, reverse::handle6(&ctx))
}

/// The caller already passed what our XDP program handed off (`Tc::handed_off`).
#[classifier]
pub fn lb_ingress6_tc(ctx: TcContext) -> i32 {
    let ctx = Tc::new(ctx);
    stats::record(&ctx, ingress::handle6(&ctx)) as i32
}

#[classifier]
pub fn lb_return6_tc(ctx: TcContext) -> i32 {
    let ctx = Tc::new(ctx);
    stats::record(&ctx, reverse::handle6(&ctx)) as i32
}

/// The IPv6 twins' second halves, one per direction (see `deliver`).
#[xdp]
pub fn lb_deliver6_in(ctx: XdpContext) -> u32 {
    stats::record(&ctx, deliver::resume::<_, family::V6>(&ctx, Dir::In))
}

#[xdp]
pub fn lb_deliver6_out(ctx: XdpContext) -> u32 {
    stats::record(&ctx, deliver::resume::<_, family::V6>(&ctx, Dir::Out))
}

#[classifier]
pub fn lb_deliver6_in_tc(ctx: TcContext) -> i32 {
    let ctx = Tc::new(ctx);
    stats::record(&ctx, deliver::resume::<_, family::V6>(&ctx, Dir::In)) as i32
}

#[classifier]
pub fn lb_deliver6_out_tc(ctx: TcContext) -> i32 {
    let ctx = Tc::new(ctx);
    stats::record(&ctx, deliver::resume::<_, family::V6>(&ctx, Dir::Out)) as i32
}

/// The IPv6 twins' ICMPv6 error programs (see `icmp6`).
#[xdp]
pub fn lb_error6_in(ctx: XdpContext) -> u32 {
    stats::record(&ctx, icmp6::error_in(&ctx))
}

#[xdp]
pub fn lb_error6_out(ctx: XdpContext) -> u32 {
    stats::record(&ctx, icmp6::error_out(&ctx))
}

#[classifier]
pub fn lb_error6_in_tc(ctx: TcContext) -> i32 {
    let ctx = Tc::new(ctx);
    stats::record(&ctx, icmp6::error_in(&ctx)) as i32
}

#[classifier]
pub fn lb_error6_out_tc(ctx: TcContext) -> i32 {
    let ctx = Tc::new(ctx);
    stats::record(&ctx, icmp6::error_out(&ctx)) as i32
}

/// The IPv6 twins' Packet Too Big (see `icmp6`).
#[xdp]
pub fn lb_too_big6(ctx: XdpContext) -> u32 {
    stats::record(&ctx, icmp6::too_big_program(&ctx))
}

#[classifier]
pub fn lb_too_big6_tc(ctx: TcContext) -> i32 {
    let ctx = Tc::new(ctx);
    stats::record(&ctx, icmp6::too_big_program(&ctx)) as i32
}

// ---- Benchmark entry points (`cargo xtask bench`; see bench.rs). Never loaded by the daemon.

#[xdp]
pub fn bench_floor(_ctx: XdpContext) -> u32 {
    aya_ebpf::bindings::xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_restore(ctx: XdpContext) -> u32 {
    bench::measured(&ctx, None)
}

#[xdp]
pub fn bench_ingress(ctx: XdpContext) -> u32 {
    bench::measured(&ctx, Some(|ctx| stats::record(ctx, ingress::handle(ctx))))
}

#[xdp]
pub fn bench_return(ctx: XdpContext) -> u32 {
    bench::measured(&ctx, Some(|ctx| stats::record(ctx, reverse::handle(ctx))))
}

#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    bench::generate(&ctx)
}

#[xdp]
pub fn bench_redirect(ctx: XdpContext) -> u32 {
    bench::redirect(&ctx)
}

#[xdp]
pub fn bench_nat_ref(ctx: XdpContext) -> u32 {
    bench::measured(&ctx, Some(bench::nat_ref))
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    bench::sink(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
