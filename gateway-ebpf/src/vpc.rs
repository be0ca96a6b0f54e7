//! VPC -> IDC: frames arriving on a gateway's VPC port.
//!
//! route lookup in the gateway's table -> next-hop group -> one tunnel per
//! flow -> NAT (reverse mappings) -> TTL, 802.1Q tag pushed, peer MAC set -> redirect to the tunnel's
//! connection port. Everything not routed to a tunnel belongs to the node
//! and goes to the kernel.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use gateway_common::{limits::MAX_NEXTHOPS, nexthop_kind, tunnel_flags, Fate, Port, RouteKey};
use network_types::eth::EthHdr;

use crate::{
    counters::{self, Owner},
    forward::{self, DROP, PASS},
    maps::{NEXTHOP_GROUPS, PEER_NEIGH, ROUTES, TUNNELS},
    nat,
    packet::{self, frame_len, ptr_at, Ipv4, ETH_LEN, ETH_P_IPV4, IPPROTO_TCP, IPPROTO_UDP},
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
    let key = Key::new(
        RouteKey::GATEWAY_BITS + 32,
        RouteKey::new(port.id, ip.dst()),
    );
    let Some(route) = ROUTES.get(&key).copied() else {
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
    let count = group.count;
    if count == 0 || count as usize > MAX_NEXTHOPS {
        counters::fate(gateway, Fate::NexthopInvalid);
        return DROP;
    }
    // One flow, one tunnel: no reordering within a flow.
    let member = flow_hash(ctx, &ip) % count;
    // LLVM knows member < count <= MAX_NEXTHOPS and would drop any bounds
    // check; the verifier does not know it. A volatile reload hides the
    // range from LLVM so the mask (a no-op in fact) reaches the verifier.
    // SAFETY: reading a local.
    let member = unsafe { core::ptr::read_volatile(&member) } as usize & (MAX_NEXTHOPS - 1);
    let Some(&tunnel_id) = group.tunnels.get(member) else {
        counters::fate(gateway, Fate::NexthopInvalid);
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
    if let Err(fate) = nat::translate(ctx, &ip, nat::Direction::ToIdc, tunnel.id, port.id) {
        counters::fate(owner, fate);
        return DROP;
    }
    forward::decrement_ttl(&ip);
    if !forward::push_vlan(ctx, tunnel.vlan, peer, tunnel.connection_mac) {
        counters::fate(owner, Fate::Malformed);
        return DROP;
    }
    counters::tx(owner, frame_len(ctx));
    forward::redirect(tunnel.connection_ifindex)
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
    // Murmur3 finaliser: spreads close addresses over all members.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
