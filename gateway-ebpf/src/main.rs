//! The gateway's XDP program: one entry point for every port; the port's
//! role (connection trunk or VPC port) picks the pipeline.
#![no_std]
#![no_main]
// Atomic add/xchg on map values (ratelimit.rs): the target has no
// read-modify-write atomic types.
#![feature(core_intrinsics)]
// One-load reads of unaligned packet words (packet::load_u32).
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod counters;
mod csum;
mod dest_cache;
mod flow_cache;
mod forward;
mod idc;
mod local;
mod maps;
mod nat;
mod packet;
mod ratelimit;
mod routes;
mod vpc;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use gateway_common::{port_role, Fate};

use crate::counters::Owner;

/// The entry point: attached to every port.
///
/// A packet of a flow the pipeline has forwarded before takes the fast
/// path; every other one the full pipeline, which records what it did. The
/// pipeline is a program of its own (`gateway_pipeline`), reached by a tail
/// call through this object's `PIPELINE` array (the daemon fills it and
/// pins it, so it outlives the daemon: datapath.rs): a jump, no return.
#[xdp]
pub fn gateway(ctx: XdpContext) -> u32 {
    if let flow_cache::Lookup::Done(action) = flow_cache::lookup(&ctx) {
        return action;
    }
    maps::tail_call_pipeline(&ctx);
    // Only if `PIPELINE` is empty: a loader that did not fill it, or its
    // pin removed by hand while no daemon held it. Counted, and dropped:
    // the kernel cannot handle a trunk's tagged frames, nor a VPC port's
    // traffic in the gateway's place.
    maps::count_pipeline_unavailable();
    forward::DROP
}

/// The full pipeline (idc.rs, vpc.rs), as an XDP program of its own that
/// `gateway` tail-calls: it gets the verifier's whole stack budget.
#[xdp]
pub fn gateway_pipeline(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the value is copied out before any other map operation.
    let port = unsafe { maps::PORTS.get(ifindex) }.copied();
    match port {
        Some(port) if port.role == port_role::CONNECTION => {
            idc::from_connection(&ctx, ifindex, &port)
        }
        Some(port) if port.role == port_role::VPC => vpc::from_vpc(&ctx, &port),
        _ => {
            counters::rx(Owner::Node, packet::frame_len(&ctx));
            counters::fate(Owner::Node, Fate::KernelUnknownPort);
            forward::PASS
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
