//! Benchmark-only XDP programs, never attached by the gateway: the
//! baselines `cargo xtask bench` measures the gateway against, and the lab's
//! packet generator and sink.
//!
//! * `bench_floor`: the least an XDP forwarder can do (parse Ethernet, swap
//!   the MACs, XDP_TX): the per-packet cost floor.
//! * `bench_swap_redirect`: swap the MACs and redirect to `BENCH_TARGET[0]`:
//!   the lab's line rate with a trivial forwarder in the gateway's place.
//! * `bench_nat_pop`: the frame work of the gateway's job alone (NAT the
//!   source, decrement the TTL, pop the tag, write the MACs, redirect to
//!   `BENCH_TARGET[0]`) with no table, state or counter: what any
//!   forwarder doing this job costs at least.
//! * `bench_generator`: XDP_TX every frame; run with
//!   BPF_F_TEST_XDP_LIVE_FRAMES it is an in-kernel packet generator.
//! * `bench_sink`: count and drop (the receiving end of the lab).
#![no_std]
#![no_main]
// packet::load_u32 (BPF inline assembly).
#![feature(asm_experimental_arch)]

#[allow(dead_code)]
#[path = "../packet.rs"]
mod packet;

#[allow(dead_code)]
#[path = "../csum.rs"]
mod csum;

/// The gateway's own route lookup code, over copies of its maps, so the
/// lookup alone can be timed against the LPM trie on the same frames.
#[path = "../routes.rs"]
mod routes;

/// The gateway's destination cache in front of it, as the datapath uses it.
#[allow(dead_code)]
#[path = "../dest_cache.rs"]
mod dest_cache;

mod maps {
    use aya_ebpf::{
        bindings::BPF_F_NO_PREALLOC,
        btf_maps::{Array, HashMap, PerCpuArray},
        macros::btf_map,
    };
    use gateway_common::{
        limits::{DEST_CACHE_SLOTS, MAX_GATEWAYS, MAX_ROUTES},
        DestCacheEntry, DestCacheStats, Route, RoutePrefixKey, RoutePrefixLens,
    };

    /// Same type as the gateway's `ROUTES`.
    #[btf_map]
    pub static ROUTES: HashMap<
        RoutePrefixKey,
        Route,
        { MAX_ROUTES as usize },
        { BPF_F_NO_PREALLOC as usize },
    > = HashMap::new();

    /// Same type as the gateway's `ROUTE_PREFIX_LENS`.
    #[btf_map]
    pub static ROUTE_PREFIX_LENS: Array<RoutePrefixLens, { MAX_GATEWAYS as usize }> = Array::new();

    /// Same types as the gateway's destination cache maps.
    #[btf_map]
    pub static DEST_CACHE: PerCpuArray<DestCacheEntry, { DEST_CACHE_SLOTS as usize }> =
        PerCpuArray::new();
    #[btf_map]
    pub static DEST_CACHE_GENERATION: Array<u32, 1> = Array::new();
    #[btf_map]
    pub static DEST_CACHE_STATS: PerCpuArray<DestCacheStats, 1> = PerCpuArray::new();
}

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, LpmTrie, PerCpuArray},
    helpers::{bpf_redirect, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::{btf_map, xdp},
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use gateway_common::{limits::MAX_ROUTES, Route, RouteKey};
use network_types::eth::EthHdr;

/// The LPM trie the gateway's `ROUTES` hash is checked against: a test
/// fills it with the same routes and asks it (from user space, where a
/// lookup in an LPM trie is a longest-prefix match) for the answer the
/// datapath must give; `bench_route_trie` times it.
#[btf_map]
pub static ROUTE_ORACLE: LpmTrie<RouteKey, Route, { MAX_ROUTES as usize }> = LpmTrie::new();

/// Slot 0: ifindex `bench_swap_redirect` and `bench_nat_pop` send every frame to.
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

/// The source address `bench_nat_pop` writes: the lab's peer IP mapping
/// (10.1.0.0/24 -> 100.64.1.0/24) of its source 10.1.0.5.
const NAT_POP_SOURCE: [u8; 4] = [100, 64, 1, 5];

/// The MACs `bench_nat_pop` writes (destination, source): constants, the
/// cheapest write (the sink does not look at them).
const NAT_POP_MACS: [u8; 12] = [2, 0, 0, 0, 0x0a, 2, 2, 0, 0, 0, 0x0a, 1];

/// Ethernet, 802.1Q tag, IPv4 header without options, UDP header.
const NAT_POP_HEADERS: usize = 18 + 20 + 8;

/// What the gateway does to the lab's frame (see the lab's (b)), done the
/// cheapest way, with nothing looked up and nothing counted: the checks any
/// forwarder makes (802.1Q, IPv4 without options, UDP, TTL), TTL - 1, the
/// source rewritten with both checksums updated by one sum each (RFC 1624,
/// as the gateway's fast path does with the deltas its flow cache holds),
/// the tag popped (`bpf_xdp_adjust_head`, as the gateway does), the MACs
/// written (constants) and a redirect. Frames it cannot handle are
/// dropped, so a wrong frame never reaches the sink (the lab checks the
/// frames' length there).
#[xdp]
pub fn bench_nat_pop(ctx: XdpContext) -> u32 {
    let Some(h) = packet::ptr_at::<[u8; NAT_POP_HEADERS]>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &mut *h };
    let (ip, udp) = (18, 38);
    if h[12..14] != [0x81, 0x00]
        || h[16..18] != [0x08, 0x00]
        || h[ip] != 0x45
        || h[ip + 9] != packet::IPPROTO_UDP
        || h[ip + 8] <= 1
    {
        return xdp_action::XDP_DROP;
    }
    let word = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let old_src = [h[ip + 12], h[ip + 13], h[ip + 14], h[ip + 15]];
    let addr = csum::delta4(old_src, NAT_POP_SOURCE);
    h[ip + 8] -= 1;
    let check = csum::adjust(word(&h[ip + 10..]), csum::fold(addr + csum::TTL_DELTA));
    h[ip + 10..ip + 12].copy_from_slice(&check.to_be_bytes());
    h[ip + 12..ip + 16].copy_from_slice(&NAT_POP_SOURCE);
    // A UDP checksum of 0 means none; a computed 0 is sent as 0xffff.
    let l4 = word(&h[udp + 6..]);
    if l4 != 0 {
        let l4 = match csum::adjust(l4, csum::fold(addr)) {
            0 => 0xffff,
            c => c,
        };
        h[udp + 6..udp + 8].copy_from_slice(&l4.to_be_bytes());
    }
    // SAFETY: valid ctx; shrinking the head by 4 of a 46-byte or longer frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, 4) } != 0 {
        return xdp_action::XDP_DROP;
    }
    let Some(eth) = packet::ptr_at::<[u8; 14]>(&ctx, 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe { (&mut *eth)[..12].copy_from_slice(&NAT_POP_MACS) };
    match BENCH_TARGET.get(0) {
        // SAFETY: helper without memory arguments.
        Some(&ifindex) if ifindex != 0 => unsafe { bpf_redirect(ifindex, 0) as u32 },
        _ => xdp_action::XDP_DROP,
    }
}

/// Slot 0: the frame `bench_generator` sends (every frame of the lab is
/// `GENERATED_LEN` bytes).
#[btf_map]
pub static BENCH_TEMPLATE: Array<[u8; GENERATED_LEN], 1> = Array::new();

const GENERATED_LEN: usize = 60;

/// Writes the template over the frame, then XDP_TX. The rewrite is needed:
/// live-frames pages are recycled with whatever the forwarder and the
/// kernel wrote into them (a popped tag, rewritten MACs, a decremented
/// TTL), and only the frame's bounds are reset between runs.
/// Test-run pages put a frame 48 bytes into a cache line (after the page's
/// own header and XDP_PACKET_HEADROOM), so a 60-byte frame's bytes 16-59,
/// its IP header included, lie in a second line; NIC drivers start frames
/// on a cache line. The generator gets `GENERATED_LEN + LINE - 1` bytes and
/// moves the frame's start onto the next line boundary, then trims it to
/// `GENERATED_LEN`.
const LINE: usize = 64;

#[xdp]
pub fn bench_generator(ctx: XdpContext) -> u32 {
    let shift = (LINE - ctx.data() % LINE) % LINE;
    // SAFETY: valid ctx; the frame is GENERATED_LEN + LINE - 1 bytes, so
    // shrinking it by less than LINE leaves at least GENERATED_LEN.
    if shift != 0 && unsafe { bpf_xdp_adjust_head(ctx.ctx, shift as i32) } != 0 {
        return xdp_action::XDP_DROP;
    }
    let extra = packet::frame_len(&ctx).saturating_sub(GENERATED_LEN);
    // SAFETY: valid ctx; trims the tail to GENERATED_LEN bytes.
    if extra != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -(extra as i32)) } != 0 {
        return xdp_action::XDP_DROP;
    }
    let (Some(frame), Some(template)) = (
        packet::ptr_at::<[u8; GENERATED_LEN]>(&ctx, 0),
        BENCH_TEMPLATE.get(0),
    ) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe { *frame = *template };
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

/// IPv4 destination of an untagged frame (Ethernet 14 + offset 16).
const DST_OFFSET: usize = 30;

/// Route lookup alone with the gateway's code (gateway 0): XDP_TX when a
/// route matched, XDP_DROP when none did.
#[xdp]
pub fn bench_route_hash(ctx: XdpContext) -> u32 {
    let Some(dst) = packet::ptr_at::<[u8; 4]>(&ctx, DST_OFFSET) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked by ptr_at.
    match routes::lookup(0, unsafe { *dst }) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
    }
}

/// The datapath's route lookup as the VPC -> IDC path does it: through the
/// destination cache (ingress port 1), the hash behind it on a miss.
#[xdp]
pub fn bench_route_cached(ctx: XdpContext) -> u32 {
    let Some(dst) = packet::ptr_at::<[u8; 4]>(&ctx, DST_OFFSET) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked by ptr_at.
    match dest_cache::route(0, 1, unsafe { *dst }) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
    }
}

/// The same with the LPM trie (`ROUTE_ORACLE`, gateway 0).
#[xdp]
pub fn bench_route_trie(ctx: XdpContext) -> u32 {
    let Some(dst) = packet::ptr_at::<[u8; 4]>(&ctx, DST_OFFSET) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: bounds checked by ptr_at.
    let key = Key::new(
        RouteKey::GATEWAY_BITS + 32,
        RouteKey::new(0, unsafe { *dst }),
    );
    match ROUTE_ORACLE.get(&key) {
        Some(_) => xdp_action::XDP_TX,
        None => xdp_action::XDP_DROP,
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
