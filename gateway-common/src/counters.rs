//! Counters: every frame the program sees ends in exactly one counted fate.
//!
//! One `Counters` layout serves tunnels (`TUNNEL_COUNTERS[tunnel id]`),
//! connections (`CONNECTION_COUNTERS[connection id]`: frames that could not be
//! tied to a tunnel), gateways (`GATEWAY_COUNTERS[gateway id]`: frames on the
//! VPC port that could not be tied to a tunnel) and the node
//! (`NODE_COUNTERS[0]`: frames on an interface the config does not know).
//! All are per-CPU arrays: no atomics on the fast path, user space sums CPUs.

/// Why a frame did not simply get forwarded. Index into `Counters::fates`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    // --- drops ---
    /// Frame too short for its headers, or a header field is impossible
    /// (IHL < 5, total length beyond the frame).
    Malformed = 0,
    /// Untagged frame on a connection's trunk port.
    Untagged = 1,
    /// VLAN not configured on this connection.
    UnknownVlan = 2,
    /// Neither IPv4 nor ARP on a tunnel.
    NonIpv4 = 3,
    /// TTL would reach zero when forwarded.
    TtlExceeded = 4,
    /// Destination not in the gateway's route table.
    NoRoute = 5,
    /// ARP on a tunnel that is not for the tunnel's own address.
    ArpNotForUs = 6,
    /// IPv4 to the tunnel's own address that is not an ICMP echo request.
    LocalUnsupported = 7,
    /// VPC -> IDC, but the customer router's MAC is not learned yet (the
    /// daemon keeps ARPing unresolved peers).
    PeerMacUnknown = 8,
    /// The kernel FIB has no usable route into the VPC for the destination.
    VpcUnreachable = 9,
    /// The route points at a tunnel that no longer exists, or an empty group.
    NexthopInvalid = 10,
    /// IPv4 fragment (non-first) or other packet the gateway refuses.
    Fragment = 11,
    // --- answered by the datapath itself ---
    /// ARP request for a tunnel's own address, answered.
    ArpReplied = 12,
    /// ICMP echo request to a tunnel's own address, answered.
    IcmpEchoReplied = 13,
    /// ARP reply from the customer router to the daemon's probe, consumed
    /// after learning the peer's MAC.
    ArpLearned = 14,
    // --- handed to the kernel ---
    /// VPC neighbour not resolved yet: the kernel forwards this packet (and
    /// resolves the neighbour), the next ones take the fast path.
    KernelNeighMissing = 15,
    /// On a VPC port: not IPv4 (ARP to the node, IPv6, ...).
    KernelNonIpv4 = 16,
    /// On a VPC port: IPv4 not routed to a tunnel (traffic for the node).
    KernelLocal = 17,
    /// On an interface the config does not know.
    KernelUnknownPort = 18,
    /// IPv4 on a tunnel whose destination MAC is not the connection port's
    /// (broadcast, multicast, another host's frame flooded on the VLAN):
    /// never routed.
    OtherHost = 19,
    /// A non-first fragment of a port-mapped protocol/address: it carries no
    /// ports, so it cannot be translated statelessly.
    NatFragment = 20,
    /// An ICMP error whose embedded packet is too short or malformed to be
    /// translated along with the outer header.
    NatIcmpMalformed = 21,
    /// Over the tunnel's `bandwidth_mbps` in this direction: the token
    /// bucket was empty.
    RateLimited = 22,
    /// Every tunnel of the route's next-hop group is down (health probes
    /// unanswered or the connection's link down).
    NexthopDown = 23,
}

/// Number of fates; length of `Counters::fates`.
pub const FATE_COUNT: usize = 24;

/// How a fate is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FateKind {
    Drop,
    Answered,
    Kernel,
}

impl Fate {
    pub const ALL: [Fate; FATE_COUNT] = [
        Fate::Malformed,
        Fate::Untagged,
        Fate::UnknownVlan,
        Fate::NonIpv4,
        Fate::TtlExceeded,
        Fate::NoRoute,
        Fate::ArpNotForUs,
        Fate::LocalUnsupported,
        Fate::PeerMacUnknown,
        Fate::VpcUnreachable,
        Fate::NexthopInvalid,
        Fate::Fragment,
        Fate::ArpReplied,
        Fate::IcmpEchoReplied,
        Fate::ArpLearned,
        Fate::KernelNeighMissing,
        Fate::KernelNonIpv4,
        Fate::KernelLocal,
        Fate::KernelUnknownPort,
        Fate::OtherHost,
        Fate::NatFragment,
        Fate::NatIcmpMalformed,
        Fate::RateLimited,
        Fate::NexthopDown,
    ];

    /// The name used in `gatewayd stats`, JSON and metrics labels.
    pub const fn name(self) -> &'static str {
        match self {
            Fate::Malformed => "malformed",
            Fate::Untagged => "untagged",
            Fate::UnknownVlan => "unknown_vlan",
            Fate::NonIpv4 => "non_ipv4",
            Fate::TtlExceeded => "ttl_exceeded",
            Fate::NoRoute => "no_route",
            Fate::ArpNotForUs => "arp_not_for_us",
            Fate::LocalUnsupported => "local_unsupported",
            Fate::PeerMacUnknown => "peer_mac_unknown",
            Fate::VpcUnreachable => "vpc_unreachable",
            Fate::NexthopInvalid => "nexthop_invalid",
            Fate::Fragment => "fragment",
            Fate::ArpReplied => "arp_replied",
            Fate::IcmpEchoReplied => "icmp_echo_replied",
            Fate::ArpLearned => "arp_learned",
            Fate::KernelNeighMissing => "neigh_missing",
            Fate::KernelNonIpv4 => "non_ipv4",
            Fate::KernelLocal => "local",
            Fate::KernelUnknownPort => "unknown_port",
            Fate::OtherHost => "other_host",
            Fate::NatFragment => "nat_fragment",
            Fate::NatIcmpMalformed => "nat_icmp_malformed",
            Fate::RateLimited => "rate_limited",
            Fate::NexthopDown => "nexthop_down",
        }
    }

    pub const fn kind(self) -> FateKind {
        match self {
            Fate::ArpReplied | Fate::IcmpEchoReplied | Fate::ArpLearned => FateKind::Answered,
            Fate::KernelNeighMissing
            | Fate::KernelNonIpv4
            | Fate::KernelLocal
            | Fate::KernelUnknownPort => FateKind::Kernel,
            _ => FateKind::Drop,
        }
    }
}

/// Value of every counter array. rx = received from the IDC on a tunnel
/// (or on the port), tx = sent towards the IDC on the tunnel. Bytes are
/// whole frames as on the wire, 802.1Q tag included.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames per `Fate`, indexed by `Fate as usize`.
    pub fates: [u64; FATE_COUNT],
}
const _: () = assert!(core::mem::size_of::<Counters>() == 8 * (4 + FATE_COUNT));

impl Default for Counters {
    fn default() -> Self {
        Self {
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            fates: [0; FATE_COUNT],
        }
    }
}

impl Counters {
    /// Adds another CPU's (or snapshot's) counters to these.
    pub fn add(&mut self, other: &Counters) {
        self.rx_packets += other.rx_packets;
        self.rx_bytes += other.rx_bytes;
        self.tx_packets += other.tx_packets;
        self.tx_bytes += other.tx_bytes;
        for (a, b) in self.fates.iter_mut().zip(other.fates.iter()) {
            *a += *b;
        }
    }

    pub fn fate(&self, fate: Fate) -> u64 {
        self.fates[fate as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fate_table_is_consistent() {
        for (i, f) in Fate::ALL.iter().enumerate() {
            assert_eq!(*f as usize, i, "Fate::ALL must be in discriminant order");
        }
        // Names are unique within a kind (the same word may name a drop and
        // a kernel fate, they are reported in different groups).
        for a in Fate::ALL {
            for b in Fate::ALL {
                if a != b && a.kind() == b.kind() {
                    assert_ne!(a.name(), b.name());
                }
            }
        }
    }
}
