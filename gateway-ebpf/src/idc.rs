//! IDC -> VPC: frames arriving on a connection's trunk port.
//!
//! parse Ethernet + 802.1Q -> (connection, VLAN) selects the tunnel ->
//! ARP / ICMP echo for the tunnel's own address answered locally ->
//! NAT (peer mapping on the source, local/port mapping on the destination) ->
//! route lookup in the tunnel's gateway table -> TTL, tag removed, MACs
//! from the kernel FIB -> redirect to the gateway's VPC port.

use aya_ebpf::programs::XdpContext;
use gateway_common::{
    bandwidth_dir, gateway_flags, nexthop_kind,
    vlan::{TPID_8021Q, VID_MASK},
    Fate, Port, Route, Tunnel, VlanKey,
};
use network_types::{eth::EthHdr, vlan::VlanHdr};

use crate::{
    counters::{self, Owner},
    dest_cache::{self, Neighbour, Probe},
    flow_cache::{self, Outcome},
    forward::{self, VpcNeighbour, DROP, PASS},
    local,
    maps::{GATEWAYS, TUNNEL_BY_VLAN},
    nat,
    packet::{self, frame_len, ptr_at, Ipv4, ETH_LEN, ETH_P_ARP, ETH_P_IPV4, VLAN_ETH_LEN},
    ratelimit, routes,
};

#[inline(always)]
pub fn from_connection(ctx: &XdpContext, ifindex: u32, port: &Port) -> u32 {
    let connection = Owner::Connection(port.id);
    let len = frame_len(ctx);
    counters::rx(connection, len);
    let (Some(eth), Some(tag)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<VlanHdr>(ctx, ETH_LEN)) else {
        // Shorter than an Ethernet header plus a tag: nothing of ours.
        counters::fate(connection, Fate::Malformed);
        return DROP;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, tag) = unsafe { (&*eth, &*tag) };
    if u16::from_be(eth.ether_type) != TPID_8021Q {
        counters::fate(connection, Fate::Untagged);
        return DROP;
    }
    let key = VlanKey {
        ifindex,
        vlan: u16::from_be_bytes(tag.tci) & VID_MASK,
        _pad: 0,
    };
    // SAFETY: the value is copied out before any other map operation.
    let Some(tunnel) = (unsafe { TUNNEL_BY_VLAN.get(key) }).copied() else {
        counters::fate(connection, Fate::UnknownVlan);
        return DROP;
    };
    let owner = Owner::Tunnel(tunnel.id);
    counters::rx(owner, len);
    match u16::from_be(tag.ether_type) {
        ETH_P_ARP => local::arp(ctx, ifindex, port, &tunnel),
        ETH_P_IPV4 => ipv4(ctx, ifindex, port, &tunnel, eth.src_addr, eth.dst_addr),
        _ => {
            counters::fate(owner, Fate::NonIpv4);
            DROP
        }
    }
}

#[inline(always)]
fn ipv4(
    ctx: &XdpContext,
    ifindex: u32,
    port: &Port,
    tunnel: &Tunnel,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> u32 {
    let owner = Owner::Tunnel(tunnel.id);
    let Some(ip) = packet::ipv4(ctx, VLAN_ETH_LEN) else {
        counters::fate(owner, Fate::Malformed);
        return DROP;
    };
    if dst_mac != tunnel.connection_mac {
        counters::fate(owner, Fate::OtherHost);
        return DROP;
    }
    local::learn_peer(ctx, tunnel, src_mac);
    if ip.dst() == tunnel.local_ip {
        return local::to_local(ctx, ifindex, port, tunnel, &ip);
    }
    let Some(gateway) = GATEWAYS.get(tunnel.gateway_id).copied() else {
        counters::fate(owner, Fate::NexthopInvalid);
        return DROP;
    };
    if gateway.flags & gateway_flags::ACTIVE == 0 {
        counters::fate(owner, Fate::NexthopInvalid);
        return DROP;
    }
    // Translate first: the route lookup is for the VPC address.
    let scope = nat::Scope::new(tunnel, tunnel.gateway_id, &gateway);
    if let Err(fate) = nat::translate(ctx, &ip, nat::Direction::ToVpc, &scope) {
        counters::fate(owner, fate);
        return DROP;
    }
    // Only VPC destinations: a gateway carries no IDC-to-IDC transit.
    let Some(neighbour) = vpc_destination(ctx, &ip, tunnel.gateway_id, ifindex) else {
        counters::fate(owner, Fate::NoRoute);
        return DROP;
    };
    if ip.ttl() <= 1 {
        counters::fate(owner, Fate::TtlExceeded);
        return DROP;
    }
    if !ratelimit::allow(tunnel, bandwidth_dir::TO_VPC, frame_len(ctx)) {
        counters::fate(owner, Fate::RateLimited);
        return DROP;
    }
    match neighbour {
        VpcNeighbour::Resolved(n) if n.ifindex == gateway.vpc_ifindex => {
            forward::decrement_ttl(&ip);
            flow_cache::record(
                ctx,
                &ip,
                &Outcome {
                    in_dmac: dst_mac,
                    in_smac: src_mac,
                    mtu: n.mtu,
                    out_vlan: 0,
                    out_dmac: n.dmac,
                    out_smac: n.smac,
                    out_ifindex: n.ifindex,
                    tunnel_id: tunnel.id,
                    gateway_id: tunnel.gateway_id,
                    connection_id: port.id,
                    bandwidth_mbps: tunnel.bandwidth_mbps,
                },
            );
            if !forward::pop_vlan(ctx, (n.dmac, n.smac)) {
                counters::fate(owner, Fate::Malformed);
                return DROP;
            }
            counters::tx(Owner::Gateway(tunnel.gateway_id), frame_len(ctx));
            forward::redirect(n.ifindex)
        }
        VpcNeighbour::Missing { ifindex: out } if out == gateway.vpc_ifindex => {
            // Slow path: the kernel forwards this one untagged packet and
            // resolves the neighbour on the way; the flow's next packets
            // find it and take the fast path. TTL is left to the kernel.
            if !forward::pop_vlan(ctx, (tunnel.connection_mac, src_mac)) {
                counters::fate(owner, Fate::Malformed);
                return DROP;
            }
            counters::fate(owner, Fate::KernelNeighMissing);
            PASS
        }
        _ => {
            counters::fate(owner, Fate::VpcUnreachable);
            DROP
        }
    }
}

/// Where a packet to a VPC address leaves: None when the gateway's route
/// for it does not lead into the VPC, else the kernel FIB's answer for it.
/// Both come from the destination cache when it has them (keyed by the
/// source too: the FIB answer may depend on it).
#[inline(always)]
fn vpc_destination(
    ctx: &XdpContext,
    ip: &Ipv4,
    gateway_id: u32,
    ingress: u32,
) -> Option<VpcNeighbour> {
    let key = dest_cache::Key {
        gateway_id,
        ifindex: ingress,
        src: ip.src(),
        dst: ip.dst(),
    };
    let is_vpc = |route: Option<Route>| route.is_some_and(|r| r.kind == nexthop_kind::VPC);
    match dest_cache::probe(&key) {
        Probe::Hit(slot) => {
            // SAFETY: a valid slot pointer from `probe`.
            let entry = unsafe { &*slot };
            if !is_vpc(dest_cache::cached_route(entry)) {
                return None;
            }
            match Neighbour::cached(entry) {
                Some(n) if ip.tot_len() <= n.mtu => Some(VpcNeighbour::Resolved(n)),
                // Too big for the cached MTU: the FIB says what to do.
                Some(_) => Some(forward::vpc_neighbour(ctx, ip, ingress)),
                None => {
                    let found = forward::vpc_neighbour(ctx, ip, ingress);
                    if let VpcNeighbour::Resolved(n) = &found {
                        n.store(slot);
                    }
                    Some(found)
                }
            }
        }
        Probe::Miss(slot) => {
            let route = routes::lookup(gateway_id, ip.dst());
            if !is_vpc(route) {
                slot.fill(&key, route, None);
                return None;
            }
            let found = forward::vpc_neighbour(ctx, ip, ingress);
            let resolved = match &found {
                VpcNeighbour::Resolved(n) => Some(n),
                _ => None,
            };
            slot.fill(&key, route, resolved);
            Some(found)
        }
    }
}
