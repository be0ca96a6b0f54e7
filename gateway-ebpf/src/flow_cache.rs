//! The flow cache: the fast path in front of the whole pipeline.
//!
//! The full pipeline (idc.rs, vpc.rs) classifies the frame, translates it,
//! looks its route and neighbour up and counts it: a dozen map lookups in
//! as many pages. For a TCP or UDP flow every packet gets the same
//! treatment, so when the pipeline forwards one it records the outcome in
//! a per-CPU slot keyed by the flow (ingress port, VLAN, protocol,
//! addresses, ports): the new addresses and ports with their checksum
//! deltas, the tag to pop or push, the MACs, the egress port and the
//! counter owners. The flow's next packets find the slot first and get the
//! same bytes out with one probe, the counters the pipeline would have
//! moved, and the tunnel's bandwidth cap.
//!
//! Anything the slot cannot vouch for goes to the full pipeline, which
//! decides, counts and, if it forwards, refills the slot: another
//! destination or source MAC than recorded (a new peer MAC gets learned),
//! TTL <= 1, a packet above the recorded MTU, IP options, fragments, ICMP
//! and everything not TCP/UDP over IPv4, a VPC -> IDC peer MAC that
//! changed since (checked per packet in `PEER_NEIGH`).
//!
//! Validity is the destination cache's: a slot holds the cache generation
//! read before the pipeline ran (the daemon bumps it after every config
//! change, every line health change and on kernel neighbour, route and link
//! events) and is used for `FLOW_CACHE_MAX_AGE_JIFFIES` at most (1 s at
//! HZ=100, less at higher tick rates).

use aya_ebpf::{
    btf_maps::PerCpuArray, helpers::bpf_jiffies64, macros::btf_map, programs::XdpContext,
};
use gateway_common::{
    bandwidth_dir, flow_dir,
    limits::FLOW_CACHE_SLOTS,
    vlan::{TPID_8021Q, VID_MASK},
    Fate, FlowCacheEntry, FlowKey, FLOW_CACHE_MAX_AGE_JIFFIES, FLOW_UNTAGGED,
};
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::{
    counters::{self, Owner},
    csum, dest_cache,
    forward::{self, DROP},
    maps::{FLOW_CACHE, FLOW_CACHE_STATS, PEER_NEIGH},
    packet::{
        frame_len, load_u16, load_u32, ptr_at, store_u16, store_u32, Ipv4, MacPair, ETH_LEN,
        ETH_P_IPV4, IPPROTO_TCP, IPPROTO_UDP, VLAN_ETH_LEN, VLAN_TAG_LEN,
    },
    ratelimit,
};

/// IPv4 header without options, then the TCP/UDP ports.
const IP_LEN: usize = 20;

/// Bytes of an 802.1Q tag.
const TAG: usize = VLAN_TAG_LEN as usize;

/// What the flow cache made of a frame.
pub enum Lookup {
    /// Forwarded (or dropped by the cap) on the fast path: the XDP action.
    Done(u32),
    /// The full pipeline decides; it records its outcome with `record`.
    Miss,
}

/// A flow the fast path could not serve, for the pipeline to record its
/// outcome in: `FLOW_PENDING[0]` (per CPU), written by every `lookup` that
/// does not forward. Kept in a map: the pipeline is another program (a
/// tail call hands over nothing but the context), and the verifier walks
/// it once, not once for every way the lookup can miss.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// The slot to fill (way `slot % 2` of set `slot / 2`), or `NO_SLOT`
    /// for a frame the fast path never takes.
    slot: u32,
    _pad: u32,
    key: FlowKey,
    /// When the lookup ran: the slot's fill time.
    stamp: u64,
}

const NO_SLOT: u32 = u32::MAX;

/// Per CPU, slot 0: the flow the pipeline is working on (see `Pending`).
#[btf_map]
static FLOW_PENDING: PerCpuArray<Pending, 1> = PerCpuArray::new();

/// Ends a lookup without a forwarded frame: what the pipeline records.
#[inline(always)]
fn miss(slot: u32, key: Option<(&FlowKey, u64)>) -> Lookup {
    if let Some(p) = FLOW_PENDING.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU uses it while we run.
        unsafe {
            (*p).slot = slot;
            if let Some((k, stamp)) = key {
                (*p).key = *k;
                (*p).stamp = stamp;
            }
        }
    }
    Lookup::Miss
}

#[inline(always)]
fn count(hit: bool) {
    dest_cache::count_in(&FLOW_CACHE_STATS, hit);
}

/// The fast path: forwards the frame if its flow is cached. Inlined into
/// the entry program (main.rs), which holds nothing else: the pipeline is
/// a program of its own, so the fast path pays no BPF-to-BPF call (its
/// prologue, epilogue and return cost ~10 ns per packet on this
/// datapath's lab machines) and has the stack to itself.
/// Which frames it may take, then `flow`.
#[inline(always)]
pub fn lookup(ctx: &XdpContext) -> Lookup {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return miss(NO_SLOT, None);
    };
    // SAFETY: bounds checked by ptr_at.
    let ether_type = u16::from_be(unsafe { (*eth).ether_type });
    if ether_type == TPID_8021Q {
        let Some(tag) = ptr_at::<VlanHdr>(ctx, ETH_LEN) else {
            return miss(NO_SLOT, None);
        };
        // SAFETY: bounds checked by ptr_at.
        let tag = unsafe { &*tag };
        if u16::from_be(tag.ether_type) != ETH_P_IPV4 {
            return miss(NO_SLOT, None);
        }
        let vlan = u16::from_be_bytes(tag.tci) & VID_MASK;
        flow::<VLAN_ETH_LEN>(ctx, eth, vlan, flow_dir::TO_VPC)
    } else if ether_type == ETH_P_IPV4 {
        flow::<ETH_LEN>(ctx, eth, FLOW_UNTAGGED, flow_dir::TO_IDC)
    } else {
        miss(NO_SLOT, None)
    }
}

/// The fast path for an IPv4 header at `L3`.
#[inline(always)]
fn flow<const L3: usize>(ctx: &XdpContext, eth: *mut EthHdr, vlan: u16, dir: u8) -> Lookup {
    // The clock first, while nothing else is live: to the compiler it is a
    // helper call, and every value held across one is a stack spill and
    // reload (the verifier then turns it into a single load of `jiffies`).
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_jiffies64() };
    let Some(hdr) = ptr_at::<[u8; IP_LEN + 4]>(ctx, L3) else {
        return miss(NO_SLOT, None);
    };
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &mut *hdr };
    let proto = h[9];
    // IPv4 without options, not a fragment, TCP or UDP.
    if h[0] != 0x45 || h[6] & 0x3f != 0 || h[7] != 0 {
        return miss(NO_SLOT, None);
    }
    let check_at = L3
        + IP_LEN
        + match proto {
            IPPROTO_TCP => 16,
            IPPROTO_UDP => 6,
            _ => return miss(NO_SLOT, None),
        };
    let len = frame_len(ctx);
    let tot_len = u16::from_be_bytes([h[2], h[3]]);
    // What packet::ipv4 demands of every IPv4 packet.
    if (tot_len as usize) < IP_LEN || L3 + tot_len as usize > len {
        return miss(NO_SLOT, None);
    }
    let Some(l4_check) = ptr_at::<[u8; 2]>(ctx, check_at) else {
        return miss(NO_SLOT, None);
    };
    // The key as the three words it is compared as, straight from the
    // frame.
    // SAFETY: inside the header bounds checked above.
    let (src, dst, ports) = unsafe {
        (
            u32::from_ne_bytes(load_u32(h[12..].as_ptr())),
            u32::from_ne_bytes(load_u32(h[16..].as_ptr())),
            u32::from_ne_bytes(load_u32(h[20..].as_ptr())),
        )
    };
    let words = FlowKey::words_from(
        ctx.ingress_ifindex() as u32,
        [src, dst, ports],
        vlan,
        proto,
        dir,
        dest_cache::generation(),
    );
    let key = FlowKey::from_words(words);
    let set = FlowKey::set_of(&words, FLOW_CACHE_SLOTS);
    let Some(ways) = FLOW_CACHE.get_ptr(set / 2) else {
        return miss(NO_SLOT, None);
    };
    // SAFETY: a per-CPU array value, valid while the program runs.
    let [ea, eb] = unsafe { &(*ways).ways };
    let fresh = |e: &FlowCacheEntry| now.wrapping_sub(e.stamp) < FLOW_CACHE_MAX_AGE_JIFFIES;
    let hit = if ea.key.same(&key) && fresh(ea) {
        Some(ea)
    } else if eb.key.same(&key) && fresh(eb) {
        Some(eb)
    } else {
        None
    };
    let victim = || {
        // A slot of this flow first (stale, or refused below), then the
        // older one.
        if ea.key.same(&key) || ea.stamp <= eb.stamp {
            set
        } else {
            set + 1
        }
    };
    let Some(e) = hit else {
        count(false);
        return miss(victim(), Some((&key, now)));
    };
    // SAFETY: bounds checked by ptr_at in `lookup` (14 bytes); the frame
    // has not moved.
    let macs = unsafe { MacPair::load(eth as *const u8) };
    let want = entry_macs(&e.in_dmac);
    let macs_ok = if dir == flow_dir::TO_VPC {
        macs.same(&want)
    } else {
        macs.same_dst(&want)
    };
    let peer_unchanged = dir == flow_dir::TO_VPC
        || PEER_NEIGH
            .get(e.tunnel_id)
            .is_some_and(|p| p.valid != 0 && same_mac(&p.mac, &e.out_dmac));
    if !macs_ok || !peer_unchanged || h[8] <= 1 || tot_len > e.mtu {
        count(false);
        return miss(victim(), Some((&key, now)));
    }
    count(true);
    Lookup::Done(forward_cached(ctx, e, h, l4_check, len))
}

/// A slot's MAC pair: `dmac` and the source MAC stored right after it
/// (`in_dmac`, `in_smac` or `out_dmac`, `out_smac`; gateway-common asserts
/// the layout), as four aligned loads. Built from the two `[u8; 6]` fields,
/// which promise no alignment, the pair took 12 byte loads and 20 shifts
/// and ors.
#[inline(always)]
fn entry_macs(dmac: &[u8; 6]) -> MacPair {
    // SAFETY: 12 bytes of one FlowCacheEntry: the MAC and the one after it.
    unsafe { MacPair::load(dmac.as_ptr()) }
}

/// Two MACs in map values equal, compared as a 4- and a 2-byte word
/// (`==` on `[u8; 6]` compares them byte by byte).
#[inline(always)]
fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    let (a, b) = (a.as_ptr(), b.as_ptr());
    // SAFETY: 6 bytes each, in map values.
    unsafe {
        (u32::from_ne_bytes(load_u32(a)) ^ u32::from_ne_bytes(load_u32(b)))
            | (u16::from_ne_bytes(load_u16(a.add(4))) ^ u16::from_ne_bytes(load_u16(b.add(4))))
                as u32
            == 0
    }
}

/// Applies a cached flow's treatment to the frame.
#[inline(always)]
fn forward_cached(
    ctx: &XdpContext,
    e: &FlowCacheEntry,
    h: &mut [u8; IP_LEN + 4],
    l4_check: *mut [u8; 2],
    len: usize,
) -> u32 {
    let tunnel = Owner::Tunnel(e.tunnel_id);
    let to_vpc = e.key.dir == flow_dir::TO_VPC;
    // Frames are charged to the cap as they are on the tunnel (tagged).
    let (bw_dir, tagged_len) = if to_vpc {
        counters::rx(Owner::Connection(e.connection_id), len);
        counters::rx(tunnel, len);
        (bandwidth_dir::TO_VPC, len)
    } else {
        counters::rx(Owner::Gateway(e.gateway_id), len);
        (bandwidth_dir::TO_IDC, len + TAG)
    };
    if !ratelimit::allow_capped(e.tunnel_id, e.bandwidth_mbps, bw_dir, tagged_len) {
        counters::fate(tunnel, Fate::RateLimited);
        return DROP;
    }

    // SAFETY: `h` (24 bytes) and `l4_check` (2 bytes) were bounds checked
    // by ptr_at in `flow`; the frame has not moved.
    unsafe {
        let h = h.as_mut_ptr();
        // IPv4: TTL, addresses, header checksum.
        *h.add(8) -= 1;
        store_u32(h.add(12), e.new_src);
        store_u32(h.add(16), e.new_dst);
        let check = u16::from_be_bytes(load_u16(h.add(10)));
        store_u16(h.add(10), csum::adjust(check, e.l3_delta).to_be_bytes());
        // TCP/UDP: ports and checksum (a UDP checksum of 0 means none).
        store_u32(h.add(20), e.new_ports);
        let c = l4_check as *mut u8;
        let old = u16::from_be_bytes(load_u16(c));
        if !(e.key.proto == IPPROTO_UDP && old == 0) {
            let mut new = csum::adjust(old, e.l4_delta);
            if e.key.proto == IPPROTO_UDP && new == 0 {
                new = 0xffff;
            }
            store_u16(c, new.to_be_bytes());
        }
    }
    if to_vpc {
        if !forward::pop_vlan(ctx, entry_macs(&e.out_dmac)) {
            counters::fate(tunnel, Fate::Malformed);
            return DROP;
        }
        counters::tx(Owner::Gateway(e.gateway_id), len - TAG);
    } else {
        if !forward::push_vlan(ctx, e.out_vlan, entry_macs(&e.out_dmac)) {
            counters::fate(tunnel, Fate::Malformed);
            return DROP;
        }
        counters::tx(tunnel, tagged_len);
    }
    forward::redirect(e.out_ifindex)
}

/// What the full pipeline did to a flow's packet, recorded by `record`.
pub struct Outcome {
    /// The frame's destination MAC (the port's own) and, IDC -> VPC, its
    /// source MAC (the learned peer).
    pub in_dmac: [u8; 6],
    pub in_smac: [u8; 6],
    pub mtu: u16,
    pub out_vlan: u16,
    pub out_dmac: [u8; 6],
    pub out_smac: [u8; 6],
    pub out_ifindex: u32,
    pub tunnel_id: u32,
    pub gateway_id: u32,
    pub connection_id: u32,
    pub bandwidth_mbps: u32,
}

/// Records the outcome of the packet `lookup` missed for the flow's next
/// packets. Call after the pipeline translated the packet and decremented
/// its TTL, before the tag is popped or pushed (`ip` must still point at
/// its header).
#[inline(always)]
pub fn record(ctx: &XdpContext, ip: &Ipv4, o: &Outcome) {
    let Some(pending) = FLOW_PENDING.get(0) else {
        return;
    };
    if pending.slot == NO_SLOT {
        return;
    }
    let Some(ways) = FLOW_CACHE.get_ptr_mut(pending.slot / 2) else {
        return;
    };
    // SAFETY: a per-CPU array value, valid while the program runs; only
    // this CPU uses it.
    let [a, b] = unsafe { &mut (*ways).ways };
    let slot = if pending.slot & 1 == 0 { a } else { b };
    let Some(p) = ptr_at::<[u8; 4]>(ctx, ip.l4) else {
        return;
    };
    // SAFETY: bounds checked by ptr_at.
    let new_ports = unsafe { *p };
    let k = &pending.key;
    let (new_src, new_dst) = (ip.src(), ip.dst());
    let addrs = csum::delta4(k.src, new_src) + csum::delta4(k.dst, new_dst);
    // Only this CPU uses its slots while we run.
    *slot = FlowCacheEntry {
        key: *k,
        stamp: pending.stamp,
        in_dmac: o.in_dmac,
        in_smac: o.in_smac,
        mtu: o.mtu,
        out_vlan: o.out_vlan,
        new_src,
        new_dst,
        new_ports,
        l3_delta: csum::fold(addrs + csum::TTL_DELTA),
        l4_delta: csum::fold(addrs + csum::delta4(k.ports, new_ports)),
        out_dmac: o.out_dmac,
        out_smac: o.out_smac,
        out_ifindex: o.out_ifindex,
        tunnel_id: o.tunnel_id,
        gateway_id: o.gateway_id,
        connection_id: o.connection_id,
        bandwidth_mbps: o.bandwidth_mbps,
    };
}
