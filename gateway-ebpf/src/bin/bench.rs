//! Benchmark-only XDP programs, never attached by the gateway: the
//! baselines `cargo xtask bench` measures the gateway against, and the lab's
//! packet generator and sink.
//!
//! * `bench_floor`: the least an XDP forwarder can do (parse Ethernet, swap
//!   the MACs, XDP_TX): the per-packet cost floor.
//! * `bench_swap_redirect`: swap the MACs and redirect to `BENCH_TARGET[0]`:
//!   the lab's line rate with a trivial forwarder in the gateway's place.
//! * `bench_generator`: XDP_TX every frame; run with
//!   BPF_F_TEST_XDP_LIVE_FRAMES it is an in-kernel packet generator.
//! * `bench_sink`: count and drop (the receiving end of the lab).
#![no_std]
#![no_main]

#[allow(dead_code)]
#[path = "../packet.rs"]
mod packet;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    helpers::bpf_redirect,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use network_types::eth::EthHdr;

/// Slot 0: ifindex `bench_swap_redirect` sends every frame to.
#[btf_map]
pub static BENCH_TARGET: Array<u32, 1> = Array::new();

/// Slot 0: frames and bytes `bench_sink` received (per CPU).
#[btf_map]
pub static BENCH_SINK: PerCpuArray<[u64; 2], 1> = PerCpuArray::new();

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> bool {
    let Some(eth) = packet::ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let eth = &mut *eth;
        core::mem::swap(&mut eth.src_addr, &mut eth.dst_addr);
    }
    true
}

#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    if swap_macs(&ctx) {
        xdp_action::XDP_TX
    } else {
        xdp_action::XDP_DROP
    }
}

#[xdp]
pub fn bench_swap_redirect(ctx: XdpContext) -> u32 {
    if !swap_macs(&ctx) {
        return xdp_action::XDP_DROP;
    }
    match BENCH_TARGET.get(0) {
        // SAFETY: helper without memory arguments.
        Some(&ifindex) if ifindex != 0 => unsafe { bpf_redirect(ifindex, 0) as u32 },
        _ => xdp_action::XDP_DROP,
    }
}

#[xdp]
pub fn bench_generator(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_sink(ctx: XdpContext) -> u32 {
    let len = packet::frame_len(&ctx) as u64;
    if let Some(slot) = BENCH_SINK.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            (*slot)[0] += 1;
            (*slot)[1] += len;
        }
    }
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
