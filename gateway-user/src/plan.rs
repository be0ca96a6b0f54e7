//! Config -> desired contents of every configuration map: a pure function,
//! tested without a kernel. The datapath facade applies a `Plan` as a diff.
//!
//! Ids (array indexes) are stable: a tunnel keeps its id as long as its
//! (connection interface, VLAN) stays, a gateway as long as its VPC port
//! stays, so counters and learned peer MACs survive reloads and restarts.
//! The previous assignment is read back from the maps (`Existing`).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use gateway_common::{
    gateway_flags, limits, mapping_kind, nexthop_kind, port_mapping_dir, port_role, tunnel_flags,
    Gateway, IpMapping, MappingKey, NexthopGroup, Port, PortMapping, PortMappingKey, Route,
    RouteKey, RoutePrefixKey, Tunnel, VlanKey,
};
use ipnet::Ipv4Net;

use crate::config::{Config, HealthCfg, PortMappingCfg};

/// What the kernel says about an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetDev {
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// `gateway_common::port_flags` the port needs (from its driver).
    pub port_flags: u16,
}

/// An LPM trie entry's key: data plus the number of leading bits matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteEntryKey {
    pub gateway_id: u32,
    pub addr: [u8; 4],
    /// Prefix length of the destination (0..=32), without the gateway bits.
    pub prefix_len: u8,
}

impl RouteEntryKey {
    pub fn trie_prefix_len(&self) -> u32 {
        RouteKey::GATEWAY_BITS + self.prefix_len as u32
    }
    pub fn data(&self) -> RouteKey {
        RouteKey::new(self.gateway_id, self.addr)
    }
    pub fn from_trie(prefix_len: u32, data: RouteKey) -> Self {
        Self {
            gateway_id: u32::from_be_bytes(data.gateway),
            addr: data.addr,
            prefix_len: prefix_len.saturating_sub(RouteKey::GATEWAY_BITS) as u8,
        }
    }
    /// The key of this route in the `ROUTES` hash.
    pub fn prefix_key(&self) -> RoutePrefixKey {
        RoutePrefixKey::new(self.gateway_id, self.addr, self.prefix_len)
    }
    pub fn from_prefix_key(k: &RoutePrefixKey) -> Self {
        Self {
            gateway_id: k.gateway,
            addr: k.addr,
            prefix_len: k.prefix_len,
        }
    }
}

/// Per gateway: the prefix lengths its routes use, as the datapath's
/// `ROUTE_PREFIX_LENS` bitmap.
pub fn route_prefix_lens<'a>(
    routes: impl Iterator<Item = &'a RouteEntryKey>,
) -> BTreeMap<u32, u64> {
    let mut out: BTreeMap<u32, u64> = BTreeMap::new();
    for k in routes {
        *out.entry(k.gateway_id).or_default() |= 1u64 << k.prefix_len.min(32);
    }
    out
}

/// An `IP_MAPPINGS` trie entry's key: kind, owner and the network address
/// of the prefix to translate, plus the prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MappingEntryKey {
    /// `key.addr` is the network address of the prefix.
    pub key: MappingKey,
    /// Prefix length of the address (0..=32), without the kind/owner bits.
    pub prefix_len: u8,
}

impl MappingEntryKey {
    /// `kind` (`mapping_kind::*`) translations owned by tunnel or gateway
    /// `owner` for the addresses of `net`.
    pub fn new(kind: u8, owner: u32, net: &Ipv4Net) -> Self {
        Self {
            key: MappingKey::new(kind, owner, net.network().octets()),
            prefix_len: net.prefix_len(),
        }
    }
    pub fn trie_prefix_len(&self) -> u32 {
        MappingKey::SCOPE_BITS + self.prefix_len as u32
    }
    pub fn from_trie(prefix_len: u32, data: MappingKey) -> Self {
        Self {
            key: data,
            prefix_len: prefix_len.saturating_sub(MappingKey::SCOPE_BITS) as u8,
        }
    }
}

/// Ids already in use in the maps (read back by the datapath facade).
#[derive(Clone, Debug, Default)]
pub struct Existing {
    /// (connection ifindex, VLAN) -> tunnel id.
    pub tunnels: BTreeMap<(u32, u16), u32>,
    /// VPC port ifindex -> gateway id.
    pub gateways: BTreeMap<u32, u32>,
    /// Connection port ifindex -> connection id.
    pub connections: BTreeMap<u32, u32>,
    /// Member tunnel ids -> group id.
    pub groups: BTreeMap<Vec<u32>, u32>,
}

/// Names behind the ids, for stats and logs.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TunnelMeta {
    pub id: u32,
    pub name: String,
    pub gateway: String,
    pub connection: String,
    pub vlan: u16,
    pub interface: String,
    pub local_ip: String,
    pub peer_ip: String,
    pub priority: u16,
    pub bandwidth_mbps: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamedId {
    pub id: u32,
    pub name: String,
    pub interface: String,
    /// The interface's ifindex when the plan was built.
    pub ifindex: u32,
}

/// Desired contents of every configuration map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub ports: BTreeMap<u32, Port>,
    pub tunnel_by_vlan: BTreeMap<(u32, u16), Tunnel>,
    pub tunnels: BTreeMap<u32, Tunnel>,
    pub gateways: BTreeMap<u32, Gateway>,
    pub routes: BTreeMap<RouteEntryKey, Route>,
    pub groups: BTreeMap<u32, NexthopGroup>,
    /// `IP_MAPPINGS`: all four translation directions of every tunnel's and
    /// gateway's IP mappings.
    pub ip_mappings: BTreeMap<MappingEntryKey, IpMapping>,
    /// `PORT_MAPPINGS`: both directions of every gateway's port mappings,
    /// plus a port-0 marker per (gateway, address, protocol, direction)
    /// that has any.
    pub port_mappings: BTreeMap<PortMappingKey, PortMapping>,
    pub tunnel_meta: Vec<TunnelMeta>,
    /// Health probe settings per tunnel id (for the daemon's prober).
    pub health: BTreeMap<u32, HealthCfg>,
    pub gateway_meta: Vec<NamedId>,
    pub connection_meta: Vec<NamedId>,
}

impl Plan {
    pub fn vlan_key((ifindex, vlan): (u32, u16)) -> VlanKey {
        VlanKey {
            ifindex,
            vlan,
            _pad: 0,
        }
    }
}

/// Picks the lowest id not in `used` below `limit`.
fn allocate(used: &BTreeSet<u32>, limit: u32, what: &str) -> Result<u32> {
    (0..limit)
        .find(|id| !used.contains(id))
        .ok_or_else(|| anyhow!("too many {what}: the datapath holds at most {limit}"))
}

/// Ids for named objects on ports: an object keeps the id the maps already
/// hold for its port (ifindex); the others take the lowest free ids.
fn assign_ids<'a>(
    items: impl Iterator<Item = Result<(&'a str, NetDev)>>,
    existing: &BTreeMap<u32, u32>,
    limit: u32,
    what: &str,
) -> Result<BTreeMap<String, (u32, NetDev)>> {
    let mut ids = BTreeMap::new();
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let mut pending = Vec::new();
    for item in items {
        let (name, d) = item?;
        match existing.get(&d.ifindex) {
            Some(&id) if used.insert(id) => {
                ids.insert(name.to_owned(), (id, d));
            }
            _ => pending.push((name, d)),
        }
    }
    for (name, d) in pending {
        let id = allocate(&used, limit, what)?;
        used.insert(id);
        ids.insert(name.to_owned(), (id, d));
    }
    Ok(ids)
}

/// Builds the plan. `netdev` resolves interface names (the config has been
/// checked for missing interfaces already; a miss here is still an error).
pub fn build(
    config: &Config,
    netdev: &dyn Fn(&str) -> Option<NetDev>,
    existing: &Existing,
) -> Result<Plan> {
    let mut plan = Plan::default();
    let dev = |name: &str| netdev(name).ok_or_else(|| anyhow!("interface {name} does not exist"));

    // Connections keep their id per trunk port, gateways per VPC port.
    let connection_ids = assign_ids(
        config
            .connections
            .iter()
            .map(|c| Ok((c.name.as_str(), dev(&c.interface)?))),
        &existing.connections,
        limits::MAX_CONNECTIONS,
        "connections",
    )?;
    let gateway_ids = assign_ids(
        config
            .gateways
            .iter()
            .map(|g| Ok((g.name.as_str(), dev(&g.interface)?))),
        &existing.gateways,
        limits::MAX_GATEWAYS,
        "gateways",
    )?;

    for c in &config.connections {
        let (id, d) = connection_ids[&c.name];
        plan.ports.insert(
            d.ifindex,
            Port {
                role: port_role::CONNECTION,
                id,
                mac: d.mac,
                flags: d.port_flags,
            },
        );
        plan.connection_meta.push(NamedId {
            id,
            name: c.name.clone(),
            interface: c.interface.clone(),
            ifindex: d.ifindex,
        });
    }
    for g in &config.gateways {
        let (id, d) = gateway_ids[&g.name];
        plan.ports.insert(
            d.ifindex,
            Port {
                role: port_role::VPC,
                id,
                mac: d.mac,
                flags: d.port_flags,
            },
        );
        plan.gateways.insert(
            id,
            Gateway {
                vpc_ifindex: d.ifindex,
                flags: gateway_flags::ACTIVE
                    | if g.local_ip_mappings.is_empty() {
                        0
                    } else {
                        gateway_flags::LOCAL_IP_MAPPINGS
                    }
                    | if g.local_port_mappings.is_empty() {
                        0
                    } else {
                        gateway_flags::PORT_MAPPINGS
                    },
            },
        );
        plan.gateway_meta.push(NamedId {
            id,
            name: g.name.clone(),
            interface: g.interface.clone(),
            ifindex: d.ifindex,
        });
        // IDCs reach the VPC's original addresses through the mapped ones.
        for m in &g.local_ip_mappings {
            plan.ip_mappings.insert(
                MappingEntryKey::new(mapping_kind::LOCAL_DST, id, &m.mapped),
                ip_mapping_to(&m.original),
            );
            plan.ip_mappings.insert(
                MappingEntryKey::new(mapping_kind::LOCAL_SRC, id, &m.original),
                ip_mapping_to(&m.mapped),
            );
        }
        for m in &g.local_port_mappings {
            let (to_vpc, from_vpc) = port_mapping_entries(id, m);
            for (key, value) in [to_vpc, from_vpc] {
                // The port-0 marker (ports are never 0 in the config) tells
                // the datapath this address has port mappings, so a later
                // fragment (no ports) to or from it is not passed
                // half-translated. Its value is the identity, harmless if
                // a packet with port 0 ever looks it up.
                let marker = PortMappingKey {
                    port: [0; 2],
                    ..key
                };
                plan.port_mappings.insert(
                    marker,
                    PortMapping {
                        addr: key.addr,
                        port: [0; 2],
                        _pad: [0; 2],
                    },
                );
                plan.port_mappings.insert(key, value);
            }
        }
        for cidr in &g.vpc_cidrs {
            plan.routes.insert(
                route_key(id, cidr),
                Route {
                    kind: nexthop_kind::VPC,
                    group: 0,
                },
            );
        }
    }

    // Tunnels: id kept per (trunk port, VLAN).
    let mut tunnel_ids = BTreeMap::new();
    let mut used: BTreeSet<u32> = BTreeSet::new();
    let mut pending = Vec::new();
    for t in &config.tunnels {
        let (_, d) = lookup(&connection_ids, &t.connection, "connection")?;
        match existing.tunnels.get(&(d.ifindex, t.vlan)) {
            Some(&id) if used.insert(id) => {
                tunnel_ids.insert(t.name.clone(), id);
            }
            _ => pending.push(t),
        }
    }
    for t in pending {
        let id = allocate(&used, limits::MAX_TUNNELS, "tunnels")?;
        used.insert(id);
        tunnel_ids.insert(t.name.clone(), id);
    }

    // prefix -> member tunnels, per gateway: the next-hop groups.
    let mut members: BTreeMap<RouteEntryKey, Vec<u32>> = BTreeMap::new();
    let mut priorities: BTreeMap<u32, u16> = BTreeMap::new();
    for t in &config.tunnels {
        let id = tunnel_ids[&t.name];
        let (connection_id, conn) = lookup(&connection_ids, &t.connection, "connection")?;
        let (gateway_id, _) = lookup(&gateway_ids, &t.gateway, "gateway")?;
        let tunnel = Tunnel {
            id,
            gateway_id,
            connection_id,
            connection_ifindex: conn.ifindex,
            vlan: t.vlan,
            local_prefix_len: t.local_ip.prefix_len(),
            _pad: 0,
            local_ip: t.local_ip.addr().octets(),
            peer_ip: t.peer_ip.octets(),
            flags: tunnel_flags::ACTIVE
                | if t.peer_ip_mappings.is_empty() {
                    0
                } else {
                    tunnel_flags::PEER_IP_MAPPINGS
                },
            connection_mac: conn.mac,
            _pad2: [0; 2],
            bandwidth_mbps: t.bandwidth_mbps.unwrap_or(0),
            _pad3: 0,
        };
        priorities.insert(id, t.priority);
        plan.health.insert(id, t.health);
        plan.tunnel_by_vlan.insert((conn.ifindex, t.vlan), tunnel);
        plan.tunnels.insert(id, tunnel);
        plan.tunnel_meta.push(TunnelMeta {
            id,
            name: t.name.clone(),
            gateway: t.gateway.clone(),
            connection: t.connection.clone(),
            vlan: t.vlan,
            interface: config
                .connection(&t.connection)
                .map(|c| c.interface.clone())
                .unwrap_or_default(),
            local_ip: t.local_ip.to_string(),
            peer_ip: t.peer_ip.to_string(),
            priority: t.priority,
            bandwidth_mbps: t.bandwidth_mbps,
        });
        for route in &t.routes {
            members
                .entry(route_key(gateway_id, route))
                .or_default()
                .push(id);
        }
        // The VPC sees this tunnel's IDC addresses as the mapped ones; the
        // mapped prefix routes back through this tunnel alone, which is how
        // two IDCs with the same addresses behind two tunnels are told apart.
        // (Validation keeps mapped prefixes unique per gateway and distinct
        // from announced routes, so the group is exactly this tunnel.)
        for m in &t.peer_ip_mappings {
            plan.ip_mappings.insert(
                MappingEntryKey::new(mapping_kind::PEER_SRC, id, &m.original),
                ip_mapping_to(&m.mapped),
            );
            plan.ip_mappings.insert(
                MappingEntryKey::new(mapping_kind::PEER_DST, id, &m.mapped),
                ip_mapping_to(&m.original),
            );
            members
                .entry(route_key(gateway_id, &m.mapped))
                .or_default()
                .push(id);
        }
    }
    if plan.ip_mappings.len() > limits::MAX_IP_MAPPINGS as usize {
        bail!(
            "too many IP mappings: {} map entries (two per configured mapping), the datapath holds at most {}",
            plan.ip_mappings.len(),
            limits::MAX_IP_MAPPINGS
        );
    }
    if plan.port_mappings.len() > limits::MAX_PORT_MAPPINGS as usize {
        bail!(
            "too many port mappings: {} map entries (two per configured mapping, plus one marker per address, protocol and direction), the datapath holds at most {}",
            plan.port_mappings.len(),
            limits::MAX_PORT_MAPPINGS
        );
    }

    // Groups: one per distinct member set; ids kept per member set.
    let mut sets: BTreeSet<Vec<u32>> = BTreeSet::new();
    for m in members.values_mut() {
        m.sort_unstable();
        m.dedup();
        if m.len() > limits::MAX_NEXTHOPS {
            bail!(
                "{} tunnels announce one prefix; a next-hop group holds at most {}",
                m.len(),
                limits::MAX_NEXTHOPS
            );
        }
        sets.insert(m.clone());
    }
    let mut group_ids: BTreeMap<Vec<u32>, u32> = BTreeMap::new();
    let mut used: BTreeSet<u32> = BTreeSet::new();
    for set in &sets {
        if let Some(&id) = existing.groups.get(set) {
            if used.insert(id) {
                group_ids.insert(set.clone(), id);
            }
        }
    }
    for set in &sets {
        if !group_ids.contains_key(set) {
            let id = allocate(&used, limits::MAX_NEXTHOP_GROUPS, "next-hop groups")?;
            used.insert(id);
            group_ids.insert(set.clone(), id);
        }
    }
    for (set, &id) in &group_ids {
        plan.groups.insert(id, nexthop_group(set, &priorities));
    }
    for (key, m) in members {
        plan.routes.insert(
            key,
            Route {
                kind: nexthop_kind::TUNNELS,
                group: group_ids[&m],
            },
        );
    }
    Ok(plan)
}

/// The group value of a member set: members sorted by (priority, id), the
/// order the datapath's live-tier selection relies on.
fn nexthop_group(set: &[u32], priorities: &BTreeMap<u32, u16>) -> NexthopGroup {
    let mut sorted: Vec<(u16, u32)> = set
        .iter()
        .map(|id| (priorities.get(id).copied().unwrap_or(u16::MAX), *id))
        .collect();
    sorted.sort_unstable();
    let mut group = NexthopGroup {
        count: sorted.len() as u32,
        ..Default::default()
    };
    for (i, (priority, id)) in sorted.into_iter().enumerate() {
        group.tunnels[i] = id;
        group.priorities[i] = priority;
    }
    group
}

fn route_key(gateway_id: u32, net: &Ipv4Net) -> RouteEntryKey {
    RouteEntryKey {
        gateway_id,
        addr: net.network().octets(),
        prefix_len: net.prefix_len(),
    }
}

/// Translation into `to`'s prefix, keeping the host bits.
fn ip_mapping_to(to: &Ipv4Net) -> IpMapping {
    IpMapping {
        to: to.network().octets(),
        host_mask: to.hostmask().octets(),
    }
}

/// The TO_VPC (mapped -> original) and FROM_VPC (original -> mapped)
/// entries of one port mapping of gateway `gateway_id`.
fn port_mapping_entries(
    gateway_id: u32,
    m: &PortMappingCfg,
) -> ((PortMappingKey, PortMapping), (PortMappingKey, PortMapping)) {
    let entry = |from: &std::net::SocketAddrV4, to: &std::net::SocketAddrV4, dir| {
        (
            PortMappingKey {
                gateway_id,
                addr: from.ip().octets(),
                port: from.port().to_be_bytes(),
                protocol: m.protocol.number(),
                dir,
            },
            PortMapping {
                addr: to.ip().octets(),
                port: to.port().to_be_bytes(),
                _pad: [0; 2],
            },
        )
    };
    (
        entry(&m.mapped, &m.original, port_mapping_dir::TO_VPC),
        entry(&m.original, &m.mapped, port_mapping_dir::FROM_VPC),
    )
}

fn lookup<'a>(
    ids: &'a BTreeMap<String, (u32, NetDev)>,
    name: &str,
    what: &str,
) -> Result<(u32, &'a NetDev)> {
    ids.get(name)
        .map(|(id, d)| (*id, d))
        .ok_or_else(|| anyhow!("{what} {name} is not defined"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[node]
name = "gw-1"

[[connection]]
name = "line-a"
interface = "eth1"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.0/16"]
interface = "eth2"

[[gateway]]
name = "dcg-test"
vpc = "vpc-test"
vpc_cidrs = ["172.17.0.0/16", "172.18.0.0/24"]
interface = "eth3"

[[tunnel]]
name = "dct-a-100"
connection = "line-a"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.100.2"
routes = ["10.0.0.0/16", "10.9.0.0/24"]

[[tunnel]]
name = "dct-a-101"
connection = "line-a"
vlan = 101
gateway = "dcg-prod"
local_ip = "169.254.101.1/30"
peer_ip = "169.254.101.2"
routes = ["10.0.0.0/16"]

[[tunnel]]
name = "dct-a-200"
connection = "line-a"
vlan = 200
gateway = "dcg-test"
local_ip = "169.254.200.1/30"
peer_ip = "169.254.200.2"
routes = ["10.0.0.0/16"]
"#;

    fn netdev(name: &str) -> Option<NetDev> {
        let n: u32 = name.strip_prefix("eth")?.parse().ok()?;
        Some(NetDev {
            ifindex: 10 + n,
            mac: [2, 0, 0, 0, 0, n as u8],
            port_flags: 0,
        })
    }

    fn plan_of(text: &str, existing: &Existing) -> Plan {
        let config = Config::parse(text, "t.toml").expect("valid config");
        build(&config, &netdev, existing).expect("plan")
    }

    #[test]
    fn example_maps_to_expected_contents() {
        let plan = plan_of(EXAMPLE, &Existing::default());
        assert_eq!(plan.ports.len(), 3);
        assert_eq!(plan.ports[&11].role, port_role::CONNECTION);
        assert_eq!(plan.ports[&12].role, port_role::VPC);
        assert_eq!(plan.ports[&12].id, 0);
        assert_eq!(plan.ports[&13].id, 1);
        let t = plan.tunnel_by_vlan[&(11, 100)];
        assert_eq!(t.id, 0);
        assert_eq!(t.gateway_id, 0);
        assert_eq!(t.local_ip, [169, 254, 100, 1]);
        assert_eq!(t.peer_ip, [169, 254, 100, 2]);
        assert_eq!(t.local_prefix_len, 30);
        assert_eq!(t.connection_mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(plan.tunnels[&0], t);
        assert_eq!(plan.gateways[&1].vpc_ifindex, 13);
        // VPC routes
        let vpc = plan.routes[&RouteEntryKey {
            gateway_id: 1,
            addr: [172, 18, 0, 0],
            prefix_len: 24,
        }];
        assert_eq!(vpc.kind, nexthop_kind::VPC);
        // 10.0.0.0/16 on dcg-prod is announced by two tunnels: one group.
        let r = plan.routes[&RouteEntryKey {
            gateway_id: 0,
            addr: [10, 0, 0, 0],
            prefix_len: 16,
        }];
        assert_eq!(r.kind, nexthop_kind::TUNNELS);
        let g = plan.groups[&r.group];
        assert_eq!(g.count, 2);
        assert_eq!(&g.tunnels[..2], &[0, 1]);
        // ... and by one tunnel on dcg-test: a different table, another group.
        let r2 = plan.routes[&RouteEntryKey {
            gateway_id: 1,
            addr: [10, 0, 0, 0],
            prefix_len: 16,
        }];
        assert_ne!(r.group, r2.group);
        assert_eq!(plan.groups[&r2.group].tunnels[0], 2);
        // 3 VPC cidrs + 3 tunnel routes
        assert_eq!(plan.routes.len(), 6);
        assert_eq!(plan.groups.len(), 3);
        assert_eq!(plan.tunnel_meta[2].name, "dct-a-200");
    }

    #[test]
    fn ids_are_kept_from_existing_state() {
        let mut existing = Existing::default();
        existing.tunnels.insert((11, 200), 7);
        existing.gateways.insert(13, 4);
        existing.connections.insert(11, 3);
        existing.groups.insert(vec![0, 1], 9);
        let plan = plan_of(EXAMPLE, &existing);
        assert_eq!(plan.tunnel_by_vlan[&(11, 200)].id, 7);
        assert_eq!(plan.tunnel_by_vlan[&(11, 200)].gateway_id, 4);
        assert_eq!(plan.tunnel_by_vlan[&(11, 200)].connection_id, 3);
        // New tunnels take the lowest free ids.
        assert_eq!(plan.tunnel_by_vlan[&(11, 100)].id, 0);
        assert_eq!(plan.tunnel_by_vlan[&(11, 101)].id, 1);
        assert_eq!(plan.gateways[&4].vpc_ifindex, 13);
        let r = plan.routes[&RouteEntryKey {
            gateway_id: 0,
            addr: [10, 0, 0, 0],
            prefix_len: 16,
        }];
        assert_eq!(r.group, 9);
    }

    #[test]
    fn missing_interface_is_an_error_not_a_panic() {
        let config = Config::parse(EXAMPLE, "t.toml").expect("valid");
        let err = build(&config, &|_| None, &Existing::default()).unwrap_err();
        assert!(err.to_string().contains("eth"), "{err}");
    }

    #[test]
    fn route_entry_key_round_trips_through_trie_form() {
        let k = RouteEntryKey {
            gateway_id: 258,
            addr: [10, 1, 0, 0],
            prefix_len: 16,
        };
        assert_eq!(k.trie_prefix_len(), 48);
        assert_eq!(k.data().gateway, [0, 0, 1, 2]);
        assert_eq!(RouteEntryKey::from_trie(48, k.data()), k);
    }

    /// Two IDCs with the same address plan (10.0.0.0/24) behind two tunnels
    /// of one gateway, told apart by their mapped prefixes; a host mapping;
    /// a local IP mapping and a port mapping.
    const NAT: &str = r#"
[node]
name = "gw-1"

[[connection]]
name = "line-a"
interface = "eth1"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.0/16"]
interface = "eth2"

[[gateway.local_ip_mapping]]
original = "172.16.1.0/24"
mapped   = "192.168.50.0/24"

[[gateway.local_port_mapping]]
protocol = "tcp"
original = "172.16.0.10:80"
mapped   = "192.168.60.1:8080"

[[tunnel]]
name = "idc-a"
connection = "line-a"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.100.2"
routes = ["10.0.0.0/24"]

[[tunnel.peer_ip_mapping]]
original = "10.0.0.0/24"
mapped   = "100.64.1.0/24"

[[tunnel.peer_ip_mapping]]
original = "10.9.9.9"
mapped   = "100.64.9.9"

[[tunnel]]
name = "idc-b"
connection = "line-a"
vlan = 200
gateway = "dcg-prod"
local_ip = "169.254.200.1/30"
peer_ip = "169.254.200.2"
routes = ["10.0.0.0/24"]

[[tunnel.peer_ip_mapping]]
original = "10.0.0.0/24"
mapped   = "100.64.2.0/24"
"#;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test prefix")
    }

    fn route(gateway_id: u32, s: &str) -> RouteEntryKey {
        route_key(gateway_id, &net(s))
    }

    fn mapping(kind: u8, owner: u32, s: &str) -> MappingEntryKey {
        MappingEntryKey::new(kind, owner, &net(s))
    }

    #[test]
    fn overlapping_idcs_are_told_apart_by_their_mapped_prefixes() {
        let plan = plan_of(NAT, &Existing::default());
        let (a, b) = (
            plan.tunnel_by_vlan[&(11, 100)].id,
            plan.tunnel_by_vlan[&(11, 200)].id,
        );
        let group_of = |key: &RouteEntryKey| {
            let r = plan.routes[key];
            assert_eq!(r.kind, nexthop_kind::TUNNELS, "{key:?}");
            let g = plan.groups[&r.group];
            g.tunnels[..g.count as usize].to_vec()
        };
        // Both announce 10.0.0.0/24: one route, both tunnels.
        assert_eq!(group_of(&route(0, "10.0.0.0/24")), vec![a, b]);
        // Replies to the mapped prefixes go back through their own tunnel.
        assert_eq!(group_of(&route(0, "100.64.1.0/24")), vec![a]);
        assert_eq!(group_of(&route(0, "100.64.9.9/32")), vec![a]);
        assert_eq!(group_of(&route(0, "100.64.2.0/24")), vec![b]);
        // VPC + announced + 3 mapped prefixes; groups {a,b}, {a}, {b}.
        assert_eq!(plan.routes.len(), 5);
        assert_eq!(plan.groups.len(), 3);

        let to = |to: [u8; 4], host_mask: [u8; 4]| IpMapping { to, host_mask };
        let expected: BTreeMap<MappingEntryKey, IpMapping> = [
            // IDC -> VPC source, per tunnel: same original, different result.
            (
                mapping(mapping_kind::PEER_SRC, a, "10.0.0.0/24"),
                to([100, 64, 1, 0], [0, 0, 0, 255]),
            ),
            (
                mapping(mapping_kind::PEER_SRC, b, "10.0.0.0/24"),
                to([100, 64, 2, 0], [0, 0, 0, 255]),
            ),
            (
                mapping(mapping_kind::PEER_SRC, a, "10.9.9.9/32"),
                to([100, 64, 9, 9], [0; 4]),
            ),
            // VPC -> IDC destination, per tunnel.
            (
                mapping(mapping_kind::PEER_DST, a, "100.64.1.0/24"),
                to([10, 0, 0, 0], [0, 0, 0, 255]),
            ),
            (
                mapping(mapping_kind::PEER_DST, b, "100.64.2.0/24"),
                to([10, 0, 0, 0], [0, 0, 0, 255]),
            ),
            (
                mapping(mapping_kind::PEER_DST, a, "100.64.9.9/32"),
                to([10, 9, 9, 9], [0; 4]),
            ),
            // The gateway's own addresses, per gateway.
            (
                mapping(mapping_kind::LOCAL_DST, 0, "192.168.50.0/24"),
                to([172, 16, 1, 0], [0, 0, 0, 255]),
            ),
            (
                mapping(mapping_kind::LOCAL_SRC, 0, "172.16.1.0/24"),
                to([192, 168, 50, 0], [0, 0, 0, 255]),
            ),
        ]
        .into_iter()
        .collect();
        assert_eq!(plan.ip_mappings, expected);

        let src = plan.ip_mappings[&mapping(mapping_kind::PEER_SRC, b, "10.0.0.0/24")];
        assert_eq!(src.apply([10, 0, 0, 7]), [100, 64, 2, 7]);
    }

    #[test]
    fn host_mapping_has_no_host_bits() {
        let plan = plan_of(NAT, &Existing::default());
        let a = plan.tunnel_by_vlan[&(11, 100)].id;
        let k = mapping(mapping_kind::PEER_SRC, a, "10.9.9.9/32");
        assert_eq!(k.prefix_len, 32);
        assert_eq!(k.trie_prefix_len(), 64);
        assert_eq!(plan.ip_mappings[&k].host_mask, [0; 4]);
    }

    #[test]
    fn port_mappings_translate_both_ways() {
        let plan = plan_of(NAT, &Existing::default());
        let expected: BTreeMap<PortMappingKey, PortMapping> = [
            (
                PortMappingKey {
                    gateway_id: 0,
                    addr: [192, 168, 60, 1],
                    port: 8080u16.to_be_bytes(),
                    protocol: 6,
                    dir: port_mapping_dir::TO_VPC,
                },
                PortMapping {
                    addr: [172, 16, 0, 10],
                    port: 80u16.to_be_bytes(),
                    _pad: [0; 2],
                },
            ),
            (
                PortMappingKey {
                    gateway_id: 0,
                    addr: [172, 16, 0, 10],
                    port: 80u16.to_be_bytes(),
                    protocol: 6,
                    dir: port_mapping_dir::FROM_VPC,
                },
                PortMapping {
                    addr: [192, 168, 60, 1],
                    port: 8080u16.to_be_bytes(),
                    _pad: [0; 2],
                },
            ),
        ]
        .into_iter()
        .collect();
        let (markers, mappings): (BTreeMap<_, _>, BTreeMap<_, _>) = plan
            .port_mappings
            .clone()
            .into_iter()
            .partition(|(k, _)| k.port == [0; 2]);
        assert_eq!(mappings, expected);
        // One marker per address, protocol and direction, mapping to itself.
        let marker = |addr: [u8; 4], dir| {
            (
                PortMappingKey {
                    gateway_id: 0,
                    addr,
                    port: [0; 2],
                    protocol: 6,
                    dir,
                },
                PortMapping {
                    addr,
                    port: [0; 2],
                    _pad: [0; 2],
                },
            )
        };
        assert_eq!(
            markers,
            [
                marker([192, 168, 60, 1], port_mapping_dir::TO_VPC),
                marker([172, 16, 0, 10], port_mapping_dir::FROM_VPC),
            ]
            .into_iter()
            .collect()
        );
        // Owners are ids: a gateway kept at id 4 owns its mappings as 4.
        let mut existing = Existing::default();
        existing.gateways.insert(12, 4);
        let plan = plan_of(NAT, &existing);
        assert!(plan.port_mappings.keys().all(|k| k.gateway_id == 4));
        assert!(plan.ip_mappings.contains_key(&mapping(
            mapping_kind::LOCAL_DST,
            4,
            "192.168.50.0/24"
        )));
    }

    #[test]
    fn mapping_entry_key_round_trips_through_trie_form() {
        let k = MappingEntryKey::new(mapping_kind::PEER_DST, 258, &net("100.64.1.0/24"));
        assert_eq!(k.trie_prefix_len(), 56);
        assert_eq!(k.key.owner, [0, 1, 2]);
        assert_eq!(k.key.addr, [100, 64, 1, 0]);
        assert_eq!(MappingEntryKey::from_trie(56, k.key), k);
    }

    #[test]
    fn plan_without_mappings_has_no_mapping_entries() {
        let plan = plan_of(EXAMPLE, &Existing::default());
        assert!(plan.ip_mappings.is_empty() && plan.port_mappings.is_empty());
        // ... and no flag sends the datapath looking for any.
        for t in plan.tunnels.values() {
            assert_eq!(t.flags, tunnel_flags::ACTIVE);
        }
        for g in plan.gateways.values() {
            assert_eq!(g.flags, gateway_flags::ACTIVE);
        }
    }

    /// The datapath looks mappings up only where these flags say there
    /// are some: they must follow the config exactly.
    #[test]
    fn mapping_flags_follow_the_config() {
        let mut config = Config::parse(NAT, "t.toml").expect("valid");
        let plan = build(&config, &netdev, &Existing::default()).expect("plan");
        for t in plan.tunnels.values() {
            assert_eq!(
                t.flags,
                tunnel_flags::ACTIVE | tunnel_flags::PEER_IP_MAPPINGS
            );
        }
        let all =
            gateway_flags::ACTIVE | gateway_flags::LOCAL_IP_MAPPINGS | gateway_flags::PORT_MAPPINGS;
        assert_eq!(
            plan.gateways.values().map(|g| g.flags).collect::<Vec<_>>(),
            [all]
        );
        config.tunnels[1].peer_ip_mappings.clear();
        config.gateways[0].local_ip_mappings.clear();
        let plan = build(&config, &netdev, &Existing::default()).expect("plan");
        let by_name = |vlan| plan.tunnel_by_vlan[&(11, vlan)].flags;
        assert_eq!(
            by_name(100),
            tunnel_flags::ACTIVE | tunnel_flags::PEER_IP_MAPPINGS
        );
        assert_eq!(by_name(200), tunnel_flags::ACTIVE);
        assert_eq!(
            plan.gateways.values().map(|g| g.flags).collect::<Vec<_>>(),
            [gateway_flags::ACTIVE | gateway_flags::PORT_MAPPINGS]
        );
    }

    /// 100,000 peer mappings (the scale target) on one tunnel: each adds
    /// two IP_MAPPINGS entries and one route, all sharing one group.
    #[test]
    fn plan_holds_100k_mappings() {
        let mut config = Config::parse(NAT, "t.toml").expect("valid");
        let base = u32::from(std::net::Ipv4Addr::new(100, 80, 0, 0));
        config.tunnels[0].peer_ip_mappings = (0..100_000u32)
            .map(|i| crate::config::IpMappingCfg {
                original: Ipv4Net::from(std::net::Ipv4Addr::from(0x0a80_0000 + i)),
                mapped: Ipv4Net::from(std::net::Ipv4Addr::from(base + i)),
                line: 0,
            })
            .collect();
        let started = std::time::Instant::now();
        let plan = build(&config, &netdev, &Existing::default()).expect("plan");
        println!("planned 100000 peer mappings in {:?}", started.elapsed());
        // 100,000 tunnel A + 2 tunnel B + 2 local.
        assert_eq!(plan.ip_mappings.len(), 200_004);
        // VPC + announced + 100,000 + 1 mapped.
        assert_eq!(plan.routes.len(), 100_003);
        assert_eq!(plan.groups.len(), 3);
    }
}
