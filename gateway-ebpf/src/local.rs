//! The gateway's own interconnect address on a tunnel: ARP and ICMP echo
//! are answered in XDP (the kernel has no interface for a tunnel: tunnels
//! are VLANs that exist only in our maps), and the customer router's MAC is
//! learned from what it sends.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::info;
use gateway_common::{Fate, PeerNeigh, Port, Tunnel};
use network_types::{arp::ArpHdr, eth::EthHdr, icmp::Icmpv4Hdr};

use crate::{
    counters::{self, Owner},
    csum,
    forward::{self, DROP},
    maps::PEER_NEIGH,
    packet::{frame_len, ptr_at, Ipv4, IPPROTO_ICMP, VLAN_ETH_LEN},
};

const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
/// TTL of the replies we originate (Linux's default).
const REPLY_TTL: u8 = 64;

/// Records the peer router's MAC for the tunnel if it changed. Writes only
/// on change so the cache line is not bounced between CPUs per packet.
#[inline(always)]
pub fn learn_peer(ctx: &XdpContext, tunnel: &Tunnel, mac: [u8; 6]) {
    let Some(slot) = PEER_NEIGH.get_ptr_mut(tunnel.id) else {
        return;
    };
    // SAFETY: array slot pointer from the kernel; races are benign (the same
    // MAC written twice).
    let slot = unsafe { &mut *slot };
    if slot.valid != 0 && slot.mac == mac {
        return;
    }
    *slot = PeerNeigh { mac, valid: 1 };
    info!(
        ctx,
        "tunnel {} vlan {}: peer router MAC {:mac}", tunnel.id, tunnel.vlan, mac
    );
}

/// ARP on a tunnel (frame is tagged, ARP header at offset 18).
#[inline(always)]
pub fn arp(ctx: &XdpContext, ifindex: u32, port: &Port, tunnel: &Tunnel) -> u32 {
    let owner = Owner::Tunnel(tunnel.id);
    let (Some(eth), Some(arp)) = (
        ptr_at::<EthHdr>(ctx, 0),
        ptr_at::<ArpHdr>(ctx, VLAN_ETH_LEN),
    ) else {
        counters::fate(owner, Fate::Malformed);
        return DROP;
    };
    // SAFETY: bounds checked by ptr_at.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };
    if arp.htype() != 1 || arp.ptype() != 0x0800 || arp.hlen() != 6 || arp.plen() != 4 {
        counters::fate(owner, Fate::Malformed);
        return DROP;
    }
    let spa = arp.spa();
    let tpa = arp.tpa();
    let from_peer = spa == tunnel.peer_ip;
    if from_peer {
        learn_peer(ctx, tunnel, arp.sha());
    }
    let op = arp.oper();
    if op == ARP_REQUEST && tpa == tunnel.local_ip {
        let requester_mac = arp.sha();
        arp.set_oper(ARP_REPLY);
        arp.set_tha(requester_mac);
        arp.set_tpa(spa);
        arp.set_sha(tunnel.connection_mac);
        arp.set_spa(tunnel.local_ip);
        eth.dst_addr = eth.src_addr;
        eth.src_addr = tunnel.connection_mac;
        counters::fate(owner, Fate::ArpReplied);
        counters::tx(owner, frame_len(ctx));
        return forward::send_back(ifindex, port);
    }
    if op == ARP_REPLY && from_peer && tpa == tunnel.local_ip {
        counters::fate(owner, Fate::ArpLearned);
        return DROP;
    }
    counters::fate(owner, Fate::ArpNotForUs);
    DROP
}

/// IPv4 addressed to the tunnel's own address: ICMP echo is answered,
/// everything else dropped and counted.
#[inline(always)]
pub fn to_local(ctx: &XdpContext, ifindex: u32, port: &Port, tunnel: &Tunnel, ip: &Ipv4) -> u32 {
    let owner = Owner::Tunnel(tunnel.id);
    if ip.proto() != IPPROTO_ICMP {
        counters::fate(owner, Fate::LocalUnsupported);
        return DROP;
    }
    if ip.is_fragment() {
        // Reassembly is not done in XDP; pings larger than the MTU to the
        // interconnect address are not answered.
        counters::fate(owner, Fate::Fragment);
        return DROP;
    }
    let (Some(eth), Some(icmp)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Icmpv4Hdr>(ctx, ip.l4))
    else {
        counters::fate(owner, Fate::Malformed);
        return DROP;
    };
    // SAFETY: bounds checked by ptr_at; `ip.hdr` checked when parsed.
    let (eth, icmp, hdr) = unsafe { (&mut *eth, &mut *icmp, &mut *ip.hdr) };
    if icmp.type_ != ICMP_ECHO_REQUEST || icmp.code != 0 {
        counters::fate(owner, Fate::LocalUnsupported);
        return DROP;
    }
    // ICMP: only the type changes (identifier, sequence and data echo back).
    let old = u16::from_be_bytes([icmp.type_, icmp.code]);
    icmp.type_ = ICMP_ECHO_REPLY;
    let new = u16::from_be_bytes([icmp.type_, icmp.code]);
    icmp.check = csum::replace16(u16::from_be_bytes(icmp.check), old, new).to_be_bytes();
    // IPv4: swapping addresses keeps the checksum; the new TTL does not.
    let src = hdr.src_addr;
    hdr.src_addr = hdr.dst_addr;
    hdr.dst_addr = src;
    let old = u16::from_be_bytes([hdr.ttl, hdr.proto]);
    hdr.ttl = REPLY_TTL;
    let new = u16::from_be_bytes([hdr.ttl, hdr.proto]);
    hdr.check = csum::replace16(u16::from_be_bytes(hdr.check), old, new).to_be_bytes();
    eth.dst_addr = eth.src_addr;
    eth.src_addr = tunnel.connection_mac;
    counters::fate(owner, Fate::IcmpEchoReplied);
    counters::tx(owner, frame_len(ctx));
    forward::send_back(ifindex, port)
}
