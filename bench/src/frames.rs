//! Frames the benchmark sends (etherparse computes lengths and checksums).

use etherparse::{ArpEthIpv4Packet, ArpOperation, PacketBuilder, VlanId};

use crate::fixture::PEER_MAC;

/// UDP payload that makes a tagged frame 60 bytes (64 on the wire with FCS).
pub const PAYLOAD_TAGGED: usize = 14;
/// ... and an untagged one.
pub const PAYLOAD_UNTAGGED: usize = 18;

/// IDC -> VPC: tagged UDP from the customer router's MAC.
pub fn udp_tagged(vlan: u16, dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    udp_tagged_ports(vlan, dst_mac, src, 40000, dst, 53)
}

/// `udp_tagged` with the given ports (one flow per port pair).
pub fn udp_tagged_ports(
    vlan: u16,
    dst_mac: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(PEER_MAC, dst_mac)
        .single_vlan(VlanId::try_new(vlan).expect("vlan id"))
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, &[0x5a; PAYLOAD_TAGGED])
        .expect("frame");
    v
}

/// Untagged UDP (VPC -> IDC, or the kernel's untagged lab traffic).
pub fn udp_untagged(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, &[0x5a; PAYLOAD_UNTAGGED])
        .expect("frame");
    v
}

/// A customer router's ARP request for the gateway's interconnect address.
pub fn arp_request(vlan: u16, sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(PEER_MAC, [0xff; 6])
        .single_vlan(VlanId::try_new(vlan).expect("vlan id"))
        .arp(
            ArpEthIpv4Packet {
                operation: ArpOperation::REQUEST,
                sender_mac: PEER_MAC,
                sender_ipv4: sender,
                target_mac: [0; 6],
                target_ipv4: target,
            }
            .into(),
        )
        .write(&mut v)
        .expect("frame");
    v
}
