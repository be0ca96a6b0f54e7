//! Types shared by the XDP program and the daemon: every BPF map key and
//! value, the map names, capacities and the counter layout.
//!
//! Rules (see shared/notes/style.md): `#[repr(C)]`, no implicit padding
//! (explicit `_pad` fields), byte order stated on every multi-byte field,
//! and a compile-time size assertion for each type. IPv4 addresses are
//! `[u8; 4]` in network order so `bpftool map dump` prints them as
//! readable octets.
#![no_std]

pub mod counters;
pub use counters::{Counters, Fate, FateKind, FATE_COUNT};

/// Map names: the ELF symbol of each map in the XDP program and the file name
/// of its pin under `<bpffs>/gatewayd/<node>/`. User space opens maps only
/// through these names.
pub mod map_names {
    pub const PORTS: &str = "PORTS";
    pub const TUNNEL_BY_VLAN: &str = "TUNNEL_BY_VLAN";
    pub const TUNNELS: &str = "TUNNELS";
    pub const PEER_NEIGH: &str = "PEER_NEIGH";
    pub const GATEWAYS: &str = "GATEWAYS";
    pub const ROUTES: &str = "ROUTES";
    pub const ROUTE_PREFIX_LENS: &str = "ROUTE_PREFIX_LENS";
    pub const NEXTHOP_GROUPS: &str = "NEXTHOP_GROUPS";
    pub const TUNNEL_COUNTERS: &str = "TUNNEL_COUNTERS";
    pub const CONNECTION_COUNTERS: &str = "CONNECTION_COUNTERS";
    pub const GATEWAY_COUNTERS: &str = "GATEWAY_COUNTERS";
    pub const NODE_COUNTERS: &str = "NODE_COUNTERS";
    pub const IP_MAPPINGS: &str = "IP_MAPPINGS";
    pub const PORT_MAPPINGS: &str = "PORT_MAPPINGS";
    pub const TUNNEL_HEALTH: &str = "TUNNEL_HEALTH";
    pub const BANDWIDTH: &str = "BANDWIDTH";
    pub const DEST_CACHE: &str = "DEST_CACHE";
    pub const DEST_CACHE_GENERATION: &str = "DEST_CACHE_GENERATION";
    pub const DEST_CACHE_STATS: &str = "DEST_CACHE_STATS";
    pub const MAPPING_CACHE: &str = "MAPPING_CACHE";
    pub const FLOW_CACHE: &str = "FLOW_CACHE";
    pub const FLOW_CACHE_STATS: &str = "FLOW_CACHE_STATS";
    pub const PIPELINE_UNAVAILABLE: &str = "PIPELINE_UNAVAILABLE";
    /// The entry program's tail call target: one per loaded object, pinned
    /// per program id (`<pin dir>/PIPELINE_<id>`), not by this name.
    pub const PIPELINE: &str = "PIPELINE";
    /// Every map the daemon pins by name, in one list.
    pub const ALL: &[&str] = &[
        PORTS,
        TUNNEL_BY_VLAN,
        TUNNELS,
        PEER_NEIGH,
        GATEWAYS,
        ROUTES,
        ROUTE_PREFIX_LENS,
        NEXTHOP_GROUPS,
        TUNNEL_COUNTERS,
        CONNECTION_COUNTERS,
        GATEWAY_COUNTERS,
        NODE_COUNTERS,
        IP_MAPPINGS,
        PORT_MAPPINGS,
        TUNNEL_HEALTH,
        BANDWIDTH,
        DEST_CACHE,
        DEST_CACHE_GENERATION,
        DEST_CACHE_STATS,
        MAPPING_CACHE,
        FLOW_CACHE,
        FLOW_CACHE_STATS,
        PIPELINE_UNAVAILABLE,
    ];
}

/// Name of the XDP entry point in the eBPF object.
pub const XDP_PROGRAM: &str = "gateway";

/// Name of the full pipeline's XDP program, which the entry point
/// tail-calls through the `PIPELINE` map on a flow cache miss.
pub const PIPELINE_PROGRAM: &str = "gateway_pipeline";

/// Capacities. Ids (tunnel, gateway, connection, next-hop group) index
/// arrays, so they are dense, start at 0 and stay below these limits.
pub mod limits {
    /// Thousands of tunnels per node (product.md scale targets).
    pub const MAX_TUNNELS: u32 = 16_384;
    pub const MAX_GATEWAYS: u32 = 1_024;
    pub const MAX_CONNECTIONS: u32 = 256;
    /// Connection trunk ports plus gateway VPC ports.
    pub const MAX_PORTS: u32 = MAX_CONNECTIONS + MAX_GATEWAYS;
    /// 1,000,000 routes per node plus every gateway's VPC CIDRs.
    pub const MAX_ROUTES: u32 = 1_100_000;
    pub const MAX_NEXTHOP_GROUPS: u32 = 65_536;
    /// Members of one next-hop group (tunnels announcing one prefix).
    /// Must be a power of two (the datapath masks the member index).
    pub const MAX_NEXTHOPS: usize = 8;
    /// IP mappings in all four directions (each configured mapping takes two).
    pub const MAX_IP_MAPPINGS: u32 = 250_000;
    /// Port mappings, both directions (each configured mapping takes two).
    pub const MAX_PORT_MAPPINGS: u32 = 250_000;
    /// 802.1Q VLAN ids usable for tunnels (0 and 4095 are reserved).
    pub const VLAN_MIN: u16 = 1;
    pub const VLAN_MAX: u16 = 4094;
    /// Slots of the per-CPU destination cache (two-way: half as many sets).
    /// 16k slots of 56 bytes: 896 KiB per CPU, room for the working set of
    /// a busy gateway's destinations without thrashing.
    pub const DEST_CACHE_SLOTS: u32 = 16_384;
    /// Slots of the per-CPU IP mapping cache (direct-mapped, 20 bytes each).
    pub const MAPPING_CACHE_SLOTS: u32 = 16_384;
    /// Slots of the per-CPU flow cache (two-way). 16k slots of 96 bytes:
    /// 1.5 MiB per CPU.
    pub const FLOW_CACHE_SLOTS: u32 = 16_384;
}

/// What a port (an interface the program is attached to) is for.
pub mod port_role {
    /// A connection: a trunk port towards a customer's IDC, 802.1Q tagged.
    pub const CONNECTION: u32 = 1;
    /// A gateway's port towards its VPC, untagged.
    pub const VPC: u32 = 2;
}

/// `PORTS` value, keyed by ifindex (`u32`, host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Port {
    /// `port_role::*`.
    pub role: u32,
    /// Connection id (role CONNECTION) or gateway id (role VPC).
    pub id: u32,
    /// The interface's own MAC: source of every frame we send on it.
    pub mac: [u8; 6],
    /// `port_flags::*`.
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<Port>() == 16);

pub mod port_flags {
    /// Send frames answered on this port (ARP, ICMP echo) with
    /// `bpf_redirect` to the port itself instead of XDP_TX. veth needs it:
    /// XDP_TX frames are queued to the peer, but the peer's NAPI is only
    /// kicked when the peer has an XDP program of its own, so without one
    /// the replies wait until unrelated traffic flushes them.
    pub const TX_VIA_REDIRECT: u16 = 1;
}

/// `TUNNEL_BY_VLAN` key: (connection port, VLAN) selects a tunnel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VlanKey {
    /// ifindex of the connection's trunk port (host order).
    pub ifindex: u32,
    /// 802.1Q VLAN id, 12 bits (host order).
    pub vlan: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<VlanKey>() == 8);

/// A tunnel as the datapath needs it: value of `TUNNEL_BY_VLAN` (IDC side,
/// one hash lookup per frame) and of `TUNNELS[id]` (VPC side, after the
/// route lookup picked a tunnel id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tunnel {
    /// Index into `TUNNELS`, `PEER_NEIGH` and `TUNNEL_COUNTERS`.
    pub id: u32,
    pub gateway_id: u32,
    pub connection_id: u32,
    /// ifindex of the connection's trunk port (host order).
    pub connection_ifindex: u32,
    /// 802.1Q VLAN id (host order).
    pub vlan: u16,
    /// Prefix length of `local_ip`'s interconnect subnet.
    pub local_prefix_len: u8,
    pub _pad: u8,
    /// The gateway's interconnect address on this tunnel (network order).
    pub local_ip: [u8; 4],
    /// The customer router's address (network order).
    pub peer_ip: [u8; 4],
    /// `tunnel_flags::*`.
    pub flags: u32,
    /// MAC of the connection's trunk port: source of frames sent to the IDC.
    pub connection_mac: [u8; 6],
    pub _pad2: [u8; 2],
    /// Cap per direction in Mbit/s of whole frames (802.1Q tag included),
    /// enforced by a token bucket in `BANDWIDTH`; 0 = no cap.
    pub bandwidth_mbps: u32,
    pub _pad3: u32,
}
const _: () = assert!(core::mem::size_of::<Tunnel>() == 48);

pub mod tunnel_flags {
    /// Slot holds a configured tunnel (arrays have no "absent" entries).
    pub const ACTIVE: u32 = 1;
    /// The tunnel has peer IP mappings (`PEER_*` in `IP_MAPPINGS`): the
    /// datapath skips those lookups for tunnels without.
    pub const PEER_IP_MAPPINGS: u32 = 2;
}

/// `PEER_NEIGH[tunnel id]`: the customer router's MAC, learned by the
/// datapath from the peer's ARP and IPv4 frames. Written only by the XDP
/// program (and cleared by the daemon when a tunnel slot is reused), so a
/// config reload never forgets a learned MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerNeigh {
    pub mac: [u8; 6],
    /// 1 when `mac` is valid.
    pub valid: u16,
}
const _: () = assert!(core::mem::size_of::<PeerNeigh>() == 8);

/// `GATEWAYS[gateway id]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gateway {
    /// ifindex of the gateway's VPC-facing port (host order).
    pub vpc_ifindex: u32,
    /// `gateway_flags::*` (ACTIVE when the slot holds a configured gateway).
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<Gateway>() == 8);

pub mod gateway_flags {
    /// Slot holds a configured gateway.
    pub const ACTIVE: u32 = 1;
    /// The gateway has local IP mappings (`LOCAL_*` in `IP_MAPPINGS`): the
    /// datapath skips those lookups for gateways without.
    pub const LOCAL_IP_MAPPINGS: u32 = 2;
    /// The gateway has IP:port mappings (`PORT_MAPPINGS`).
    pub const PORT_MAPPINGS: u32 = 4;
}

/// `ROUTES` key: one route of one gateway, as (gateway, prefix length,
/// destination network). The table is a hash per (gateway, length), searched
/// longest length first over only the lengths the gateway uses
/// (`ROUTE_PREFIX_LENS`): a handful of O(1) probes whatever the table size,
/// where an LPM trie walks one node per prefix bit and slows down as it grows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RoutePrefixKey {
    /// Gateway id (host order).
    pub gateway: u32,
    /// Destination network address, host bits zero (network order).
    pub addr: [u8; 4],
    /// Prefix length, 0..=32.
    pub prefix_len: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<RoutePrefixKey>() == 12);

impl RoutePrefixKey {
    /// The key a destination has at one prefix length (host bits cleared).
    #[inline(always)]
    pub const fn new(gateway: u32, addr: [u8; 4], prefix_len: u8) -> Self {
        let mask = if prefix_len == 0 {
            0
        } else if prefix_len >= 32 {
            u32::MAX
        } else {
            u32::MAX << (32 - prefix_len as u32)
        };
        Self {
            gateway,
            addr: (u32::from_be_bytes(addr) & mask).to_be_bytes(),
            prefix_len,
            _pad: [0; 3],
        }
    }
}

/// `ROUTE_PREFIX_LENS[gateway id]`: bit L set = the gateway may have routes
/// of prefix length L (0..=32). The daemon sets a bit before it is needed
/// and clears it only once no route of that length is left, so the set is
/// always a superset of the lengths in `ROUTES`: a stale bit costs a probe,
/// never a wrong answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoutePrefixLens {
    pub lens: u64,
}
const _: () = assert!(core::mem::size_of::<RoutePrefixLens>() == 8);

/// Key data of an LPM trie over every gateway's routes: the gateway id
/// (big-endian, always matched: 32 bits) then the destination, so an
/// entry's prefix length is `32 + route prefix`. The datapath does not use
/// it; it is the oracle the `ROUTES` hash is checked against.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RouteKey {
    /// Gateway id, big-endian.
    pub gateway: [u8; 4],
    /// Destination address (network order).
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<RouteKey>() == 8);

impl RouteKey {
    /// Bits of the key that are always matched (the gateway id).
    pub const GATEWAY_BITS: u32 = 32;

    pub const fn new(gateway_id: u32, addr: [u8; 4]) -> Self {
        Self {
            gateway: gateway_id.to_be_bytes(),
            addr,
        }
    }
}

/// Where a route sends traffic.
pub mod nexthop_kind {
    /// Into the gateway's VPC (its VPC port, neighbour from the kernel FIB).
    pub const VPC: u32 = 1;
    /// To the IDC over one of the tunnels of a next-hop group.
    pub const TUNNELS: u32 = 2;
}

/// `ROUTES` value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// `nexthop_kind::*`.
    pub kind: u32,
    /// Index into `NEXTHOP_GROUPS` (kind TUNNELS only). Routes point at a
    /// group, not at tunnels, so a group change (failover, a new line) is one
    /// map write however many routes share it.
    pub group: u32,
}
const _: () = assert!(core::mem::size_of::<Route>() == 8);

/// `NEXTHOP_GROUPS[group id]`: the tunnels that carry a set of prefixes,
/// sorted by (priority, tunnel id). The datapath uses the members of the
/// best priority whose `TUNNEL_HEALTH` is up (the "live tier") and pins a
/// flow to the member with the highest `mix(hash(5-tuple), tunnel id)`
/// (rendezvous hashing), so a flow stays on its line while that line stays
/// in the live tier, whatever happens to the others.
///
/// The group itself is a pure function of the config: health never
/// rewrites it (see `TunnelHealth`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NexthopGroup {
    /// Number of valid entries in `tunnels` (0 = group unused).
    pub count: u32,
    /// Tunnel ids, sorted by (priority, id).
    pub tunnels: [u32; limits::MAX_NEXTHOPS],
    /// `priorities[i]` is the configured priority of `tunnels[i]`; lower wins.
    pub priorities: [u16; limits::MAX_NEXTHOPS],
}
const _: () = assert!(
    core::mem::size_of::<NexthopGroup>() == 4 + 4 * limits::MAX_NEXTHOPS + 2 * limits::MAX_NEXTHOPS
);

/// `TUNNEL_HEALTH[tunnel id]`, written only by the daemon's health prober.
///
/// Failover is this one 4-byte write per tunnel: every next-hop group that
/// holds the tunnel sees it at once, whatever the number of groups and
/// routes, and an aligned u32 is never seen half-written (a rewritten
/// group value could be: array map updates are plain copies). The price is
/// at most `MAX_NEXTHOPS` (inlined) array lookups per VPC -> IDC packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelHealth {
    /// 0 = up (the default, so a new tunnel carries traffic at once);
    /// otherwise the `down_reason` bits.
    pub down: u32,
}
const _: () = assert!(core::mem::size_of::<TunnelHealth>() == 4);

pub mod down_reason {
    /// The customer router stopped answering the health probes.
    pub const PROBES: u32 = 1;
    /// The connection's port has no carrier / is down.
    pub const LINK: u32 = 2;
}

/// Which of a tunnel's two buckets in `BANDWIDTH`: slot `2 * id + dir`.
pub mod bandwidth_dir {
    /// IDC -> VPC (received on the tunnel).
    pub const TO_VPC: u32 = 0;
    /// VPC -> IDC (sent on the tunnel).
    pub const TO_IDC: u32 = 1;
}

/// `BANDWIDTH[2 * tunnel id + dir]`: a token bucket kept as a virtual
/// clock (GCRA), written only by the datapath (see
/// gateway-ebpf/src/ratelimit.rs). All zero is a valid start: the first
/// frame finds the bucket full.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Theoretical arrival time, in 1/16 ns of `bpf_ktime_get_ns()`: when
    /// the tunnel will have sent, at its cap, everything admitted so far.
    pub tat: u64,
}
const _: () = assert!(core::mem::size_of::<TokenBucket>() == 8);

/// `DEST_CACHE` slot: one destination's route lookup, and for a VPC
/// destination the kernel FIB's answer (egress port, MACs, MTU), so the
/// datapath pays the route probes and `bpf_fib_lookup` once per destination
/// instead of once per packet. Per CPU, two-way set associative, filled by
/// the datapath on a miss.
///
/// A slot is valid while `generation` equals `DEST_CACHE_GENERATION[0]`,
/// which the daemon bumps after every change to the routes and on kernel
/// neighbour, route and link events, and for at most
/// `DEST_CACHE_MAX_AGE_NS` after `stamp`, which bounds how long a changed
/// kernel neighbour (a VPC host's new MAC) can go unnoticed when no daemon
/// runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestCacheEntry {
    /// Key: the gateway whose table was searched.
    pub gateway_id: u32,
    /// Key: the ingress port (the FIB lookup's input), never 0 in a valid
    /// slot, so an all-zero slot matches nothing.
    pub ifindex: u32,
    /// Key: source address (network order); 0 where only the route is
    /// cached (VPC -> IDC, whose route does not depend on it).
    pub src: [u8; 4],
    /// Key: destination address (network order).
    pub dst: [u8; 4],
    /// `DEST_CACHE_GENERATION[0]` read before the lookups that filled it.
    pub generation: u32,
    /// Egress ifindex from the FIB (`neigh` == 1 only).
    pub out_ifindex: u32,
    /// The longest-prefix route; `route.kind` == 0 caches "no route".
    pub route: Route,
    /// `bpf_ktime_get_coarse_ns()` when filled.
    pub stamp: u64,
    /// Largest IPv4 packet (tot_len) the egress port takes, from the FIB.
    pub mtu: u16,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// 1 when `out_ifindex`, `smac`, `dmac` and `mtu` hold a resolved
    /// VPC neighbour.
    pub neigh: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<DestCacheEntry>() == 56);

/// How long a cached kernel FIB answer is used without asking the kernel
/// again. While the daemon runs, kernel neighbour/route/link events
/// invalidate the cache within a tick (20 ms); this bounds how long a VPC
/// neighbour's changed MAC can go unnoticed when it does not.
pub const DEST_CACHE_MAX_AGE_NS: u64 = 1_000_000_000;

/// How long a `FLOW_CACHE` slot is used at most, in jiffies (the kernel's
/// tick, `bpf_jiffies64()`): 100 is 1 s at the lowest tick rate Linux has
/// (HZ=100) and 0.1 s at the highest (HZ=1000), so the flow cache never
/// serves a slot longer than the destination cache's `DEST_CACHE_MAX_AGE_NS`.
/// Jiffies rather than nanoseconds because the verifier turns
/// `bpf_jiffies64()` into a single load, where the fast path's clock helper
/// call (and return) cost about a sixth of its time; refilling a busy flow's
/// slot ten times a second instead of once costs nothing measurable.
pub const FLOW_CACHE_MAX_AGE_JIFFIES: u64 = 100;

/// What a `FLOW_CACHE` slot is found by: the flow as received (ingress
/// port, VLAN, protocol, addresses and ports) and the cache generation it
/// was filled in, so a slot of an older generation never matches. 24 bytes
/// without padding, 8-byte aligned: compared as three u64 words
/// (`FlowKey::same`), not field by field or with `==`, which compiles to a
/// byte-by-byte `memcmp` call on BPF.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    /// The ingress port.
    pub ifindex: u32,
    /// Addresses and ports as received (network order).
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub ports: [u8; 4],
    /// The VLAN id, or `FLOW_UNTAGGED`.
    pub vlan: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub proto: u8,
    /// `flow_dir::*`; 0 in an empty slot.
    pub dir: u8,
    /// `DEST_CACHE_GENERATION[0]` read before the pipeline ran.
    pub generation: u32,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 24);

impl FlowKey {
    /// The key as three words.
    #[inline(always)]
    pub fn words(&self) -> [u64; 3] {
        // SAFETY: 24 bytes of integers without padding (asserted above);
        // every bit pattern is a valid [u64; 3].
        unsafe { core::mem::transmute::<FlowKey, [u64; 3]>(*self) }
    }

    /// The words of the key with these fields, built from them directly
    /// (what `words` gives, without the key in memory): the fast path
    /// builds its key straight from the frame with this. `addrs_ports` are
    /// src, dst and ports as read from the frame (`u32::from_ne_bytes`).
    #[inline(always)]
    pub fn words_from(
        ifindex: u32,
        addrs_ports: [u32; 3],
        vlan: u16,
        proto: u8,
        dir: u8,
        generation: u32,
    ) -> [u64; 3] {
        let [src, dst, ports] = addrs_ports;
        if cfg!(target_endian = "little") {
            [
                ifindex as u64 | (src as u64) << 32,
                dst as u64 | (ports as u64) << 32,
                vlan as u64 | (proto as u64) << 16 | (dir as u64) << 24 | (generation as u64) << 32,
            ]
        } else {
            FlowKey {
                ifindex,
                src: src.to_ne_bytes(),
                dst: dst.to_ne_bytes(),
                ports: ports.to_ne_bytes(),
                vlan,
                proto,
                dir,
                generation,
            }
            .words()
        }
    }

    /// The key whose words are `w` (the inverse of `words`).
    #[inline(always)]
    pub fn from_words(w: [u64; 3]) -> FlowKey {
        // SAFETY: as for `words`; every field is an integer or a byte array.
        unsafe { core::mem::transmute::<[u64; 3], FlowKey>(w) }
    }

    /// The first of the two slots (of `slots`, a power of two; slot `n` is
    /// way `n % 2` of the `FLOW_CACHE` set `n / 2`)
    /// a key with words `w` may be in: the words folded into 32 bits, then
    /// `mix32`. Flows that differ in one field only (a source port, an
    /// address, the VLAN) spread over the table as random ones would
    /// (`flow_cache_sets_spread_sequential_ports`).
    #[inline(always)]
    pub fn set_of(w: &[u64; 3], slots: u32) -> u32 {
        let folded = w[0] ^ w[1].rotate_left(21) ^ w[2].rotate_left(43);
        let h = mix32((folded ^ (folded >> 32)) as u32);
        (h & (slots / 2 - 1)) * 2
    }

    /// Whether two keys are equal: the XOR of their words is zero. Written
    /// this way so the compiler keeps it to three loads per side (see the
    /// type's comment).
    #[inline(always)]
    pub fn same(&self, other: &FlowKey) -> bool {
        let (a, b) = (self.words(), other.words());
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) == 0
    }
}

/// The murmur3 32-bit finalizer: every input bit moves every output bit
/// with probability about one half, so the low bits that pick a cache set
/// depend on the whole key.
#[inline(always)]
pub fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// `FLOW_CACHE` slot: everything the datapath did to one flow's packet
/// (TCP or UDP, 5-tuple, ingress port and VLAN), so the flow's next packets
/// take the fast path in `gateway-ebpf/src/flow_cache.rs`: one probe, then
/// the same rewrite, counters and redirect, byte for byte, as the full
/// pipeline gave the packet that filled the slot. Per CPU, two-way set
/// associative, filled by the full pipeline when it forwards a packet.
///
/// Valid while `key.generation` equals `DEST_CACHE_GENERATION[0]` (bumped
/// by the daemon after every applied config, every line health change and
/// on kernel neighbour/route/link events) and for
/// `FLOW_CACHE_MAX_AGE_JIFFIES` after `stamp` (at most 1 s).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheEntry {
    pub key: FlowKey,
    /// `bpf_jiffies64()` when filled.
    pub stamp: u64,
    /// The destination MAC the frame must carry (the port's own).
    pub in_dmac: [u8; 6],
    /// IDC -> VPC: the source MAC the frame must carry (the learned peer;
    /// another one takes the full pipeline, which learns it).
    pub in_smac: [u8; 6],
    /// Largest IPv4 packet (tot_len) the fast path forwards.
    pub mtu: u16,
    /// VPC -> IDC: the 802.1Q VLAN id pushed.
    pub out_vlan: u16,
    /// The translated addresses and ports.
    pub new_src: [u8; 4],
    pub new_dst: [u8; 4],
    pub new_ports: [u8; 4],
    /// One's complement sums added to the IPv4 header checksum (addresses
    /// and the TTL decrement) and to the TCP/UDP checksum (addresses and
    /// ports) (RFC 1624).
    pub l3_delta: u16,
    pub l4_delta: u16,
    pub out_dmac: [u8; 6],
    pub out_smac: [u8; 6],
    pub out_ifindex: u32,
    /// Counted as in the full pipeline.
    pub tunnel_id: u32,
    pub gateway_id: u32,
    pub connection_id: u32,
    /// The tunnel's cap (0: none), enforced on the fast path too.
    pub bandwidth_mbps: u32,
}
const _: () = assert!(core::mem::size_of::<FlowCacheEntry>() == 96);

// The fast path reads each MAC pair as 4 + 2 + 2 + 4 bytes and the new
// addresses and ports as 4-byte words: aligned loads, given these offsets.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(FlowCacheEntry, in_dmac) % 4 == 0);
    assert!(offset_of!(FlowCacheEntry, in_smac) == offset_of!(FlowCacheEntry, in_dmac) + 6);
    assert!(offset_of!(FlowCacheEntry, out_dmac) % 4 == 0);
    assert!(offset_of!(FlowCacheEntry, out_smac) == offset_of!(FlowCacheEntry, out_dmac) + 6);
    assert!(offset_of!(FlowCacheEntry, new_src) % 4 == 0);
    assert!(offset_of!(FlowCacheEntry, new_dst) % 4 == 0);
    assert!(offset_of!(FlowCacheEntry, new_ports) % 4 == 0);
};

/// One `FLOW_CACHE` value: the two slots (ways) a flow may be in, so one
/// map lookup finds both.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSet {
    pub ways: [FlowCacheEntry; 2],
}
// Way 1 starts 96 bytes in, so its MACs and words keep way 0's alignment.
const _: () = assert!(core::mem::size_of::<FlowCacheSet>() == 2 * 96);

/// `FlowKey::vlan` of a frame received untagged (on a VPC port).
pub const FLOW_UNTAGGED: u16 = 0xffff;

/// `FlowKey::dir`.
pub mod flow_dir {
    /// Received tagged on a connection, forwarded untagged into a VPC.
    pub const TO_VPC: u8 = 1;
    /// Received on a VPC port, forwarded tagged to the IDC.
    pub const TO_IDC: u8 = 2;
}

/// `DEST_CACHE_STATS[0]` and `FLOW_CACHE_STATS[0]` (per CPU): how the
/// destination cache and the flow cache do.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DestCacheStats {
    pub hits: u64,
    pub misses: u64,
}
const _: () = assert!(core::mem::size_of::<DestCacheStats>() == 16);

/// `MAPPING_CACHE` slot: the answer of one `IP_MAPPINGS` lookup (an LPM
/// trie walk) for one address, per CPU, direct-mapped. Valid while
/// `generation` equals `DEST_CACHE_GENERATION[0]` (bumped after every
/// applied config: mappings change only then).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingCacheEntry {
    /// Key: `mapping_kind::*`; 0 (no kind) in an empty slot.
    pub kind: u8,
    /// 1 when a mapping matched and `to` is the translation.
    pub found: u8,
    pub _pad: [u8; 2],
    /// Key: tunnel or gateway id.
    pub owner: u32,
    /// Key: the address looked up (network order).
    pub addr: [u8; 4],
    pub generation: u32,
    /// The translated address (network order).
    pub to: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<MappingCacheEntry>() == 20);

/// Which translation an `IP_MAPPINGS` entry performs. The kind is the first
/// byte of the key, so one LPM trie holds all four tables.
pub mod mapping_kind {
    /// IDC -> VPC source, per tunnel: a customer address -> how the VPC sees it
    /// (`[[tunnel.peer_ip_mapping]]` original -> mapped).
    pub const PEER_SRC: u8 = 1;
    /// VPC -> IDC destination, per tunnel: mapped -> original.
    pub const PEER_DST: u8 = 2;
    /// IDC -> VPC destination, per gateway: how IDCs see a VPC address ->
    /// the VPC address (`[[gateway.local_ip_mapping]]` mapped -> original).
    pub const LOCAL_DST: u8 = 3;
    /// VPC -> IDC source, per gateway: original -> mapped.
    pub const LOCAL_SRC: u8 = 4;
}

/// Data part of the `IP_MAPPINGS` LPM trie key: the trie matches the first
/// 32 bits (kind + owner id) in full, then the address prefix, so an entry's
/// prefix length is `32 + mapping prefix`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingKey {
    /// `mapping_kind::*`.
    pub kind: u8,
    /// Tunnel id (PEER_*) or gateway id (LOCAL_*), 24 bits big-endian.
    pub owner: [u8; 3],
    /// Address to translate (network order).
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<MappingKey>() == 8);

impl MappingKey {
    pub const SCOPE_BITS: u32 = 32;

    pub const fn new(kind: u8, owner: u32, addr: [u8; 4]) -> Self {
        let o = owner.to_be_bytes();
        Self {
            kind,
            owner: [o[1], o[2], o[3]],
            addr,
        }
    }
}

/// `IP_MAPPINGS` value: translated = `to | (addr & host_mask)` (prefixes
/// map 1:1, host bits kept).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpMapping {
    /// Network address of the target prefix (network order).
    pub to: [u8; 4],
    /// Host bits of the prefix (network order), e.g. 0.0.0.255 for a /24.
    pub host_mask: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<IpMapping>() == 8);

impl IpMapping {
    /// The translation of `addr` (network order bytes).
    pub const fn apply(&self, addr: [u8; 4]) -> [u8; 4] {
        let a = u32::from_be_bytes(addr);
        let to = u32::from_be_bytes(self.to);
        let m = u32::from_be_bytes(self.host_mask);
        ((to & !m) | (a & m)).to_be_bytes()
    }
}

/// Which way a `PORT_MAPPINGS` entry translates.
pub mod port_mapping_dir {
    /// IDC -> VPC destination: mapped ip:port -> original (the VPC service).
    pub const TO_VPC: u8 = 1;
    /// VPC -> IDC source: original ip:port -> mapped.
    pub const FROM_VPC: u8 = 2;
}

/// `PORT_MAPPINGS` key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMappingKey {
    pub gateway_id: u32,
    /// Address (network order).
    pub addr: [u8; 4],
    /// Port (network order).
    pub port: [u8; 2],
    /// IP protocol number: 6 (TCP) or 17 (UDP).
    pub protocol: u8,
    /// `port_mapping_dir::*`.
    pub dir: u8,
}
const _: () = assert!(core::mem::size_of::<PortMappingKey>() == 12);

/// `PORT_MAPPINGS` value: the translated address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortMapping {
    /// Address (network order).
    pub addr: [u8; 4],
    /// Port (network order).
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PortMapping>() == 8);

/// 802.1Q constants used by both the datapath and the test frames.
pub mod vlan {
    /// Tag protocol identifier of an 802.1Q tag.
    pub const TPID_8021Q: u16 = 0x8100;
    /// Mask of the VLAN id in the tag control information.
    pub const VID_MASK: u16 = 0x0fff;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for Port {}
    unsafe impl aya::Pod for VlanKey {}
    unsafe impl aya::Pod for Tunnel {}
    unsafe impl aya::Pod for PeerNeigh {}
    unsafe impl aya::Pod for Gateway {}
    unsafe impl aya::Pod for RouteKey {}
    unsafe impl aya::Pod for RoutePrefixKey {}
    unsafe impl aya::Pod for RoutePrefixLens {}
    unsafe impl aya::Pod for Route {}
    unsafe impl aya::Pod for NexthopGroup {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for MappingKey {}
    unsafe impl aya::Pod for IpMapping {}
    unsafe impl aya::Pod for PortMappingKey {}
    unsafe impl aya::Pod for PortMapping {}
    unsafe impl aya::Pod for TunnelHealth {}
    unsafe impl aya::Pod for TokenBucket {}
    unsafe impl aya::Pod for DestCacheEntry {}
    unsafe impl aya::Pod for DestCacheStats {}
    unsafe impl aya::Pod for MappingCacheEntry {}
    unsafe impl aya::Pod for FlowCacheEntry {}
    unsafe impl aya::Pod for FlowCacheSet {}
    unsafe impl aya::Pod for FlowKey {}
}
const _: () = assert!(limits::MAX_NEXTHOPS.is_power_of_two());

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path builds a key's words straight from the frame with
    /// `FlowKey::words_from`: they must be the key's own words.
    #[test]
    fn flow_key_words_from_fields() {
        let k = FlowKey {
            ifindex: 7,
            src: [10, 1, 0, 5],
            dst: [172, 16, 0, 10],
            ports: [0x9c, 0x40, 0, 53],
            vlan: 101,
            proto: 17,
            dir: 2,
            generation: 0xdead_beef,
        };
        let word = u32::from_ne_bytes;
        let w = FlowKey::words_from(
            k.ifindex,
            [word(k.src), word(k.dst), word(k.ports)],
            k.vlan,
            k.proto,
            k.dir,
            k.generation,
        );
        assert_eq!(w, k.words());
        assert_eq!(FlowKey::from_words(w), k);
        assert!(k.same(&FlowKey::from_words(w)));
        assert!(!k.same(&FlowKey { generation: 1, ..k }));
    }

    /// Flows that differ in one field only land in as many different sets
    /// as random ones would (4,096 flows in 8,192 sets: ~3,220 distinct on
    /// average, the fullest with about 5), and no set gets crowded.
    #[test]
    fn flow_cache_sets_spread_sequential_ports() {
        let slots = limits::FLOW_CACHE_SLOTS;
        let base = FlowKey {
            ifindex: 3,
            src: [10, 1, 0, 5],
            dst: [172, 16, 0, 10],
            ports: [0, 0, 0, 53],
            vlan: 101,
            proto: 17,
            dir: 1,
            generation: 9,
        };
        let vary: [&dyn Fn(u16) -> FlowKey; 4] = [
            &|i| FlowKey {
                ports: {
                    let p = (40000 + i).to_be_bytes();
                    [p[0], p[1], 0, 53]
                },
                ..base
            },
            &|i| FlowKey {
                src: [10, 1, (i >> 8) as u8, i as u8],
                ..base
            },
            &|i| FlowKey {
                dst: [172, 16, (i >> 8) as u8, i as u8],
                ..base
            },
            &|i| FlowKey {
                vlan: i % 4094 + 1,
                generation: (i / 4094) as u32,
                ..base
            },
        ];
        for (field, key) in vary.iter().enumerate() {
            let mut load = [0u32; (limits::FLOW_CACHE_SLOTS / 2) as usize];
            for i in 0..4096 {
                let set = FlowKey::set_of(&key(i).words(), slots);
                assert!(set.is_multiple_of(2) && set < slots);
                load[(set / 2) as usize] += 1;
            }
            let distinct = load.iter().filter(|&&n| n > 0).count();
            let max = load.iter().max().copied().unwrap_or(0);
            assert!(
                distinct > 3000 && max <= 6,
                "field {field}: {distinct} sets, fullest {max}"
            );
        }
    }

    #[test]
    fn ip_mapping_keeps_host_bits() {
        let m = IpMapping {
            to: [100, 64, 1, 0],
            host_mask: [0, 0, 0, 255],
        };
        assert_eq!(m.apply([10, 0, 0, 5]), [100, 64, 1, 5]);
        let host = IpMapping {
            to: [192, 168, 60, 1],
            host_mask: [0; 4],
        };
        assert_eq!(host.apply([172, 16, 0, 10]), [192, 168, 60, 1]);
    }

    #[test]
    fn route_prefix_key_clears_host_bits() {
        let k = RoutePrefixKey::new(7, [10, 1, 2, 3], 16);
        assert_eq!((k.gateway, k.addr, k.prefix_len), (7, [10, 1, 0, 0], 16));
        assert_eq!(
            RoutePrefixKey::new(0, [10, 1, 2, 3], 32).addr,
            [10, 1, 2, 3]
        );
        assert_eq!(RoutePrefixKey::new(0, [10, 1, 2, 3], 0).addr, [0; 4]);
        assert_eq!(
            RoutePrefixKey::new(0, [10, 1, 2, 255], 31).addr,
            [10, 1, 2, 254]
        );
    }

    #[test]
    fn mapping_key_scope_is_kind_then_owner() {
        let k = MappingKey::new(mapping_kind::PEER_SRC, 0x0001_0203, [10, 0, 0, 0]);
        assert_eq!((k.kind, k.owner), (1, [1, 2, 3]));
    }
}
