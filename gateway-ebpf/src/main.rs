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

#[xdp]
pub fn gateway(ctx: XdpContext) -> u32 {
    // A packet of a flow the pipeline below has forwarded before takes the
    // fast path; every other one the pipeline, which records what it did.
    if let flow_cache::Lookup::Done(action) = flow_cache::lookup(&ctx) {
        return action;
    }
    pipeline(ctx.ctx)
}

/// The full pipeline, a BPF subprogram of its own like the fast path: the
/// two then have separate stack frames (each within the verifier's 512
/// bytes per call chain) and separate, compact stretches of the JIT image.
#[inline(never)]
fn pipeline(raw: *mut aya_ebpf::bindings::xdp_md) -> u32 {
    let ctx = XdpContext::new(raw);
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
