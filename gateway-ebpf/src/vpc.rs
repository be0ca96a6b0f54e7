//! VPC -> IDC: frames arriving on a gateway's VPC port.
//!
//! route lookup in the gateway's table -> next-hop group -> one tunnel per
//! flow -> NAT (reverse mappings) -> TTL, 802.1Q tag pushed, peer MAC set -> redirect to the tunnel's
//! connection port. Everything not routed to a tunnel belongs to the node
//! and goes to the kernel.

use aya_ebpf::programs::XdpContext;
use gateway_common::{
    bandwidth_dir, limits::MAX_NEXTHOPS, nexthop_kind, tunnel_flags, Fate, NexthopGroup, Port,
};
use network_types::eth::EthHdr;

use crate::{
    counters::{self, Owner},
    dest_cache,
    flow_cache::{self, Outcome},
    forward::{self, DROP, PASS},
    maps::{GATEWAYS, NEXTHOP_GROUPS, PEER_NEIGH, TUNNELS, TUNNEL_HEALTH},
    nat,
    packet::{self, frame_len, ptr_at, Ipv4, ETH_LEN, ETH_P_IPV4, IPPROTO_TCP, IPPROTO_UDP},
    ratelimit,
};

#[inline(always)]
pub fn from_vpc(ctx: &XdpContext, port: &Port) -> u32 {
    let gateway = Owner::Gateway(port.id);
    let len = frame_len(ctx);
    counters::rx(gateway, len);
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        counters::fate(gateway, Fate::Malformed);
        return DROP;
    };
    // SAFETY: bounds checked by ptr_at.
    let eth = unsafe { &*eth };
    if u16::from_be(eth.ether_type) != ETH_P_IPV4 {
        counters::fate(gateway, Fate::KernelNonIpv4);
        return PASS;
    }
    if eth.dst_addr != port.mac {
        counters::fate(gateway, Fate::KernelLocal);
        return PASS;
    }
    let Some(ip) = packet::ipv4(ctx, ETH_LEN) else {
        counters::fate(gateway, Fate::Malformed);
        return DROP;
    };
    let Some(route) = dest_cache::route(port.id, ctx.ingress_ifindex() as u32, ip.dst()) else {
        counters::fate(gateway, Fate::KernelLocal);
        return PASS;
    };
    if route.kind != nexthop_kind::TUNNELS {
        counters::fate(gateway, Fate::KernelLocal);
        return PASS;
    }
    let Some(group) = NEXTHOP_GROUPS.get(route.group) else {
        counters::fate(gateway, Fate::NexthopInvalid);
        return DROP;
    };
    if group.count == 0 || group.count as usize > MAX_NEXTHOPS {
        counters::fate(gateway, Fate::NexthopInvalid);
        return DROP;
    }
    // One flow, one tunnel while the live tier is unchanged: no reordering
    // within a flow.
    let Some(tunnel_id) = pick_member(group, flow_hash(ctx, &ip)) else {
        counters::fate(gateway, Fate::NexthopDown);
        return DROP;
    };
    let Some(tunnel) = TUNNELS.get(tunnel_id).copied() else {
        counters::fate(gateway, Fate::NexthopInvalid);
        return DROP;
    };
    if tunnel.flags & tunnel_flags::ACTIVE == 0 {
        counters::fate(gateway, Fate::NexthopInvalid);
        return DROP;
    }
    let owner = Owner::Tunnel(tunnel.id);
    if ip.ttl() <= 1 {
        counters::fate(owner, Fate::TtlExceeded);
        return DROP;
    }
    let peer = match PEER_NEIGH.get(tunnel.id) {
        Some(peer) if peer.valid != 0 => peer.mac,
        _ => {
            counters::fate(owner, Fate::PeerMacUnknown);
            return DROP;
        }
    };
    // Charged with the 802.1Q tag it is about to get: the cap counts frames
    // as they leave on the tunnel.
    if !ratelimit::allow(
        &tunnel,
        bandwidth_dir::TO_IDC,
        frame_len(ctx) + VLAN_TAG_LEN_BYTES,
    ) {
        counters::fate(owner, Fate::RateLimited);
        return DROP;
    }
    let Some(gateway) = GATEWAYS.get(port.id).copied() else {
        counters::fate(owner, Fate::NexthopInvalid);
        return DROP;
    };
    let scope = nat::Scope::new(&tunnel, port.id, &gateway);
    if let Err(fate) = nat::translate(ctx, &ip, nat::Direction::ToIdc, &scope) {
        counters::fate(owner, fate);
        return DROP;
    }
    forward::decrement_ttl(&ip);
    flow_cache::record(
        ctx,
        &ip,
        &Outcome {
            in_dmac: port.mac,
            in_smac: [0; 6],
            mtu: u16::MAX,
            out_vlan: tunnel.vlan,
            out_dmac: peer,
            out_smac: tunnel.connection_mac,
            out_ifindex: tunnel.connection_ifindex,
            tunnel_id: tunnel.id,
            gateway_id: port.id,
            connection_id: tunnel.connection_id,
            bandwidth_mbps: tunnel.bandwidth_mbps,
        },
    );
    if !forward::push_vlan(ctx, tunnel.vlan, (peer, tunnel.connection_mac)) {
        counters::fate(owner, Fate::Malformed);
        return DROP;
    }
    counters::tx(owner, frame_len(ctx));
    forward::redirect(tunnel.connection_ifindex)
}

/// Size of the 802.1Q tag pushed on the way to the IDC.
const VLAN_TAG_LEN_BYTES: usize = 4;

/// The group member that carries the flow with hash `hash`: among the
/// members whose tunnel is up, only those of the best (lowest) priority
/// count (the "live tier"); of those, the flow takes the one with the
/// highest weight `mix32(hash, tunnel id)` (rendezvous hashing). A flow thus
/// moves only when its own line leaves the tier (or a line joins that
/// outweighs it); flows on lines that stay never move, unlike with
/// `hash % n`. None when every member is down.
///
/// Members are sorted by (priority, id), so the live tier is the run of up
/// members starting at the first up one. Two passes over at most
/// `MAX_NEXTHOPS` slots (unrolled): the first marks the live tier in a
/// bitmask, the second weighs its members; no variable stack indexing.
#[inline(always)]
fn pick_member(group: &NexthopGroup, hash: u32) -> Option<u32> {
    let count = group.count as usize;
    if count == 0 || count > MAX_NEXTHOPS {
        return None;
    }
    let mut live: u32 = 0;
    let mut tier: u32 = u32::MAX;
    for i in 0..MAX_NEXTHOPS {
        if i >= count {
            break;
        }
        let up = TUNNEL_HEALTH
            .get(group.tunnels[i])
            .is_some_and(|h| h.down == 0);
        if !up {
            continue;
        }
        let priority = group.priorities[i] as u32;
        if priority > tier {
            break;
        }
        tier = priority;
        live |= 1 << i;
    }
    let mut chosen = None;
    let mut best = 0u32;
    for i in 0..MAX_NEXTHOPS {
        if live & (1 << i) != 0 {
            let id = group.tunnels[i];
            let weight = gateway_common::mix32(hash ^ id.wrapping_mul(0x9e37_79b9));
            if chosen.is_none() || weight > best {
                best = weight;
                chosen = Some(id);
            }
        }
    }
    chosen
}

/// Hash of the flow's 5-tuple (addresses and protocol only for fragments
/// after the first, which carry no ports).
#[inline(always)]
fn flow_hash(ctx: &XdpContext, ip: &Ipv4) -> u32 {
    let proto = ip.proto();
    let mut h = u32::from_be_bytes(ip.src())
        ^ u32::from_be_bytes(ip.dst()).rotate_left(16)
        ^ ((proto as u32) << 8);
    if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && !ip.is_later_fragment() {
        if let Some((sport, dport)) = packet::ports(ctx, ip.l4) {
            h ^= u32::from_be_bytes([sport[0], sport[1], dport[0], dport[1]]);
        }
    }
    gateway_common::mix32(h)
}
