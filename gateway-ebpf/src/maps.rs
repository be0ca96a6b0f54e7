//! Every map of the program, one purpose each. Keys and values live in
//! gateway-common; the daemon fills the configuration maps, the datapath
//! fills `PEER_NEIGH` and the counters.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, ProgramArray},
    macros::btf_map,
    programs::XdpContext,
};
use gateway_common::{
    limits::*, Counters, DestCacheEntry, DestCacheStats, FlowCacheSet, Gateway, IpMapping,
    MappingCacheEntry, MappingKey, NexthopGroup, PeerNeigh, Port, PortMapping, PortMappingKey,
    Route, RoutePrefixKey, RoutePrefixLens, TokenBucket, Tunnel, TunnelHealth, VlanKey,
};

/// ifindex -> what the port is (connection trunk or VPC port) and its MAC.
#[btf_map]
pub static PORTS: HashMap<u32, Port, { MAX_PORTS as usize }> = HashMap::new();

/// (connection ifindex, VLAN) -> tunnel: the IDC-side classifier, one
/// hash lookup per frame.
#[btf_map]
pub static TUNNEL_BY_VLAN: HashMap<VlanKey, Tunnel, { MAX_TUNNELS as usize }> = HashMap::new();

/// tunnel id -> tunnel: the VPC side reaches a tunnel through a route.
#[btf_map]
pub static TUNNELS: Array<Tunnel, { MAX_TUNNELS as usize }> = Array::new();

/// tunnel id -> the customer router's learned MAC.
#[btf_map]
pub static PEER_NEIGH: Array<PeerNeigh, { MAX_TUNNELS as usize }> = Array::new();

/// gateway id -> gateway (its VPC port).
#[btf_map]
pub static GATEWAYS: Array<Gateway, { MAX_GATEWAYS as usize }> = Array::new();

/// (gateway id, prefix length, network) -> where it goes: every gateway's
/// route table, searched by `routes::lookup`. Not preallocated: memory
/// follows the number of routes, not the 1.1M capacity.
#[btf_map]
pub static ROUTES: HashMap<
    RoutePrefixKey,
    Route,
    { MAX_ROUTES as usize },
    { BPF_F_NO_PREALLOC as usize },
> = HashMap::new();

/// gateway id -> the prefix lengths its routes use (bitmap).
#[btf_map]
pub static ROUTE_PREFIX_LENS: Array<RoutePrefixLens, { MAX_GATEWAYS as usize }> = Array::new();

/// next-hop group id -> member tunnels.
#[btf_map]
pub static NEXTHOP_GROUPS: Array<NexthopGroup, { MAX_NEXTHOP_GROUPS as usize }> = Array::new();

#[btf_map]
pub static TUNNEL_COUNTERS: PerCpuArray<Counters, { MAX_TUNNELS as usize }> = PerCpuArray::new();

#[btf_map]
pub static CONNECTION_COUNTERS: PerCpuArray<Counters, { MAX_CONNECTIONS as usize }> =
    PerCpuArray::new();

#[btf_map]
pub static GATEWAY_COUNTERS: PerCpuArray<Counters, { MAX_GATEWAYS as usize }> = PerCpuArray::new();

/// Frames on ports the config does not know (slot 0 only).
#[btf_map]
pub static NODE_COUNTERS: PerCpuArray<Counters, 1> = PerCpuArray::new();

/// Stateless IP mappings of every tunnel and gateway, both directions
/// (`MappingKey.kind`); longest prefix wins, host bits are kept.
#[btf_map]
pub static IP_MAPPINGS: LpmTrie<MappingKey, IpMapping, { MAX_IP_MAPPINGS as usize }> =
    LpmTrie::new();

/// Stateless IP:port mappings, both directions (`PortMappingKey.dir`). An
/// entry with port 0 marks an address that has port mappings, so a
/// fragment without ports can be recognised as belonging to one.
#[btf_map]
pub static PORT_MAPPINGS: HashMap<PortMappingKey, PortMapping, { MAX_PORT_MAPPINGS as usize }> =
    HashMap::new();

/// tunnel id -> up, or down and why; written only by the daemon's health
/// prober, read when a next-hop group picks a member.
#[btf_map]
pub static TUNNEL_HEALTH: Array<TunnelHealth, { MAX_TUNNELS as usize }> = Array::new();

/// 2 * tunnel id + direction -> token bucket of a tunnel with a bandwidth
/// cap; written only here, atomically.
#[btf_map]
pub static BANDWIDTH: Array<TokenBucket, { 2 * MAX_TUNNELS as usize }> = Array::new();

/// Per CPU: recent destinations' route and VPC neighbour (see
/// dest_cache.rs); written only here.
#[btf_map]
pub static DEST_CACHE: PerCpuArray<DestCacheEntry, { DEST_CACHE_SLOTS as usize }> =
    PerCpuArray::new();

/// Slot 0: the generation of the datapath's caches (`DEST_CACHE`,
/// `MAPPING_CACHE`), bumped by the daemon after every change it applies
/// and on kernel routing events; slots of another generation are stale.
#[btf_map]
pub static DEST_CACHE_GENERATION: Array<u32, 1> = Array::new();

/// Slot 0, per CPU: destination cache hits and misses.
#[btf_map]
pub static DEST_CACHE_STATS: PerCpuArray<DestCacheStats, 1> = PerCpuArray::new();

/// Per CPU: recent `IP_MAPPINGS` answers (see nat.rs); written only here.
#[btf_map]
pub static MAPPING_CACHE: PerCpuArray<MappingCacheEntry, { MAPPING_CACHE_SLOTS as usize }> =
    PerCpuArray::new();

/// Per CPU: recent flows and what the datapath did to them (see
/// flow_cache.rs); written only here. A value is a set of two slots, the
/// two a flow may be in: one lookup finds both (two lookups cost the fast
/// path about 3 ns more per packet).
#[btf_map]
pub static FLOW_CACHE: PerCpuArray<FlowCacheSet, { FLOW_CACHE_SLOTS as usize / 2 }> =
    PerCpuArray::new();

/// Slot 0, per CPU: flow cache hits and misses (TCP/UDP frames only: the
/// others never take the fast path).
#[btf_map]
pub static FLOW_CACHE_STATS: PerCpuArray<DestCacheStats, 1> = PerCpuArray::new();

/// Slot 0: this object's `gateway_pipeline` program, which `gateway`
/// tail-calls on a flow cache miss. Never pinned by name: every loaded
/// object gets its own (the daemon pins it per program id), so during an
/// upgrade the old entry program keeps jumping to its own pipeline.
#[btf_map]
pub static PIPELINE: ProgramArray<1> = ProgramArray::new();

/// Slot 0, per CPU: frames dropped because `PIPELINE` was empty (should
/// stay 0; `gatewayd stats` warns otherwise).
#[btf_map]
pub static PIPELINE_UNAVAILABLE: PerCpuArray<u64, 1> = PerCpuArray::new();

#[inline(always)]
pub fn tail_call_pipeline(ctx: &XdpContext) {
    // SAFETY: `PIPELINE` holds XDP programs only; on success this does not
    // return.
    unsafe { PIPELINE.tail_call(ctx, 0) };
}

#[inline(always)]
pub fn count_pipeline_unavailable() {
    if let Some(n) = PIPELINE_UNAVAILABLE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *n += 1 };
    }
}
