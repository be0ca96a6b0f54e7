//! Stateless NAT: IP mappings (peer per tunnel, local per gateway) and
//! IP:port mappings (per gateway), both directions, with incremental
//! checksum updates (RFC 1624). Every packet is translated from the maps
//! alone, so any node with the same config translates identically.
//!
//! IDC -> VPC: source by the tunnel's peer mapping; destination by a port
//! mapping, else the gateway's local mapping. VPC -> IDC: the reverse.
//! ICMP errors carry the packet they complain about; its header is
//! translated the opposite way to the outer one (RFC 5508), so traceroute
//! and path-MTU discovery work across the mappings.
//!
//! Fragments: the first fragment carries the ports and is translated like
//! any packet. Later fragments carry no ports: IP mappings still apply, but
//! a later fragment to/from an address that has port mappings cannot be
//! translated statelessly and is dropped as `nat_fragment`.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use gateway_common::{
    gateway_flags, limits::MAPPING_CACHE_SLOTS, mapping_kind, port_mapping_dir, tunnel_flags, Fate,
    Gateway, IpMapping, MappingCacheEntry, MappingKey, PortMapping, PortMappingKey, Tunnel,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    csum, dest_cache,
    maps::{IP_MAPPINGS, MAPPING_CACHE, PORT_MAPPINGS},
    packet::{ports, ptr_at, Ipv4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// The translation of `addr` by the `kind` mappings of `owner`, if one
/// matches. The trie walk costs more than the rest of a NAT'd packet's
/// translation, so its answers (matches and misses alike) are cached per
/// CPU in `MAPPING_CACHE`, valid while the cache generation is unchanged:
/// mappings change only when the daemon applies a config, which bumps it.
/// The generation is read before the trie, so an answer racing a reload
/// is stored as stale.
#[inline(always)]
fn ip_mapping(kind: u8, owner: u32, addr: [u8; 4]) -> Option<[u8; 4]> {
    let generation = dest_cache::generation();
    let h = gateway_common::mix32(
        u32::from_ne_bytes(addr) ^ owner.wrapping_mul(0x9e37_79b9) ^ ((kind as u32) << 27),
    );
    let slot = MAPPING_CACHE.get_ptr_mut(h & (MAPPING_CACHE_SLOTS - 1));
    if let Some(p) = slot {
        // SAFETY: per-CPU array slot, only this CPU uses it while we run.
        let e = unsafe { &*p };
        if e.kind == kind && e.owner == owner && e.addr == addr && e.generation == generation {
            return (e.found != 0).then_some(e.to);
        }
    }
    let key = Key::new(
        MappingKey::SCOPE_BITS + 32,
        MappingKey::new(kind, owner, addr),
    );
    let found = IP_MAPPINGS.get(&key).map(|m: &IpMapping| m.apply(addr));
    if let Some(p) = slot {
        // SAFETY: as above.
        unsafe {
            *p = MappingCacheEntry {
                kind,
                found: found.is_some() as u8,
                _pad: [0; 2],
                owner,
                addr,
                generation,
                to: found.unwrap_or([0; 4]),
            }
        };
    }
    found
}

#[inline(always)]
fn port_mapping(
    gateway_id: u32,
    addr: [u8; 4],
    port: [u8; 2],
    protocol: u8,
    dir: u8,
) -> Option<PortMapping> {
    let key = PortMappingKey {
        gateway_id,
        addr,
        port,
        protocol,
        dir,
    };
    // SAFETY: copied out before any other map operation.
    unsafe { PORT_MAPPINGS.get(key) }.copied()
}

/// Whether `addr` has any port mapping for `protocol` in direction `dir`
/// (the port-0 marker entry).
#[inline(always)]
fn has_port_mappings(gateway_id: u32, addr: [u8; 4], protocol: u8, dir: u8) -> bool {
    port_mapping(gateway_id, addr, [0, 0], protocol, dir).is_some()
}

#[inline(always)]
fn has_ports(protocol: u8) -> bool {
    protocol == IPPROTO_TCP || protocol == IPPROTO_UDP
}

#[inline(always)]
fn is_icmp_error(ctx: &XdpContext, ip: &Ipv4) -> bool {
    if ip.proto() != IPPROTO_ICMP || ip.is_fragment() {
        return false;
    }
    // Type and code together: a 1-byte check compiles to `p >= end`, which
    // the verifier takes as proving nothing.
    let Some(icmp) = ptr_at::<[u8; 2]>(ctx, ip.l4) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    let t = unsafe { (*icmp)[0] };
    t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED || t == ICMP_PARAMETER_PROBLEM
}

/// Which way a packet crosses the gateway.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToVpc,
    ToIdc,
}

/// The tables of one direction. Both directions translate the IDC-side
/// end of a packet with the tunnel's peer mapping, and the VPC-side end
/// (address and port) with a port mapping, else the gateway's local
/// mapping; only the tables' sense differs.
struct Tables {
    peer: u8,
    port_dir: u8,
    local: u8,
}

impl Direction {
    #[inline(always)]
    fn tables(self) -> Tables {
        match self {
            Direction::ToVpc => Tables {
                peer: mapping_kind::PEER_SRC,
                port_dir: port_mapping_dir::TO_VPC,
                local: mapping_kind::LOCAL_DST,
            },
            Direction::ToIdc => Tables {
                peer: mapping_kind::PEER_DST,
                port_dir: port_mapping_dir::FROM_VPC,
                local: mapping_kind::LOCAL_SRC,
            },
        }
    }
}

/// Which tables a packet's tunnel and gateway have entries in, from their
/// flags (set by the daemon): lookups in the others are skipped, so a tunnel
/// without mappings pays nothing for NAT.
#[derive(Clone, Copy)]
pub struct Scope {
    pub tunnel_id: u32,
    pub gateway_id: u32,
    peer: bool,
    local: bool,
    ports: bool,
}

impl Scope {
    #[inline(always)]
    pub fn new(tunnel: &Tunnel, gateway_id: u32, gateway: &Gateway) -> Scope {
        Scope {
            tunnel_id: tunnel.id,
            gateway_id,
            peer: tunnel.flags & tunnel_flags::PEER_IP_MAPPINGS != 0,
            local: gateway.flags & gateway_flags::LOCAL_IP_MAPPINGS != 0,
            ports: gateway.flags & gateway_flags::PORT_MAPPINGS != 0,
        }
    }

    /// The IDC-side address translated by the tunnel's peer mapping.
    #[inline(always)]
    fn peer(&self, t: &Tables, addr: [u8; 4]) -> [u8; 4] {
        if !self.peer {
            return addr;
        }
        ip_mapping(t.peer, self.tunnel_id, addr).unwrap_or(addr)
    }
}

/// The VPC-side end of a packet, translated: a port mapping if the packet
/// has a port and one matches, else the local IP mapping; the port is kept
/// unless a port mapping changed it.
#[inline(always)]
fn vpc_side(
    t: &Tables,
    scope: &Scope,
    protocol: u8,
    addr: [u8; 4],
    port: Option<[u8; 2]>,
) -> ([u8; 4], [u8; 2]) {
    if let (Some(port), true) = (port, scope.ports) {
        if let Some(m) = port_mapping(scope.gateway_id, addr, port, protocol, t.port_dir) {
            return (m.addr, m.port);
        }
    }
    let addr = if scope.local {
        ip_mapping(t.local, scope.gateway_id, addr).unwrap_or(addr)
    } else {
        addr
    };
    (addr, port.unwrap_or([0; 2]))
}

/// A translation to apply to one IPv4 packet (also the tuple before it).
#[derive(Clone, Copy)]
struct Rewrite {
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
}

/// A TCP/UDP checksum after the addresses (pseudo-header) and ports it
/// covers changed from `old` to `new`. A UDP checksum of 0 (none) stays 0;
/// a computed 0 is sent as 0xffff (RFC 768).
#[inline(always)]
fn l4_checksum(protocol: u8, check: u16, old: &Rewrite, new: &Rewrite) -> u16 {
    if protocol == IPPROTO_UDP && check == 0 {
        return 0;
    }
    let mut c = csum::replace32(check, old.src, new.src);
    c = csum::replace32(c, old.dst, new.dst);
    c = csum::replace16(
        c,
        u16::from_be_bytes(old.sport),
        u16::from_be_bytes(new.sport),
    );
    c = csum::replace16(
        c,
        u16::from_be_bytes(old.dport),
        u16::from_be_bytes(new.dport),
    );
    if protocol == IPPROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// Offset of the checksum in a TCP or UDP header.
#[inline(always)]
fn l4_checksum_offset(protocol: u8) -> usize {
    if protocol == IPPROTO_TCP {
        16
    } else {
        6
    }
}

/// Writes `rw` into the packet, updating the IPv4 header checksum and the
/// TCP/UDP checksum (pseudo-header and ports).
#[inline(always)]
fn apply(ctx: &XdpContext, ip: &Ipv4, rw: Rewrite) -> Result<(), Fate> {
    // SAFETY: `ip.hdr` bounds checked when parsed; the frame has not moved.
    let hdr: &mut Ipv4Hdr = unsafe { &mut *ip.hdr };
    let (old_src, old_dst) = (hdr.src_addr, hdr.dst_addr);
    let mut check = u16::from_be_bytes(hdr.check);
    check = csum::replace32(check, old_src, rw.src);
    check = csum::replace32(check, old_dst, rw.dst);
    hdr.src_addr = rw.src;
    hdr.dst_addr = rw.dst;
    hdr.check = check.to_be_bytes();
    let protocol = hdr.proto;
    if !has_ports(protocol) || ip.is_later_fragment() {
        // ICMP has no pseudo-header; later fragments have no L4 header.
        return Ok(());
    }
    let Some((old_sport, old_dport)) = ports(ctx, ip.l4) else {
        return Err(Fate::Malformed);
    };
    let Some(c) = ptr_at::<[u8; 2]>(ctx, ip.l4 + l4_checksum_offset(protocol)) else {
        // A first fragment too short to hold the checksum: cannot fix it.
        return Err(Fate::Malformed);
    };
    let old = Rewrite {
        src: old_src,
        dst: old_dst,
        sport: old_sport,
        dport: old_dport,
    };
    // SAFETY: bounds checked by ptr_at.
    let c = unsafe { &mut *c };
    *c = l4_checksum(protocol, u16::from_be_bytes(*c), &old, &rw).to_be_bytes();
    if let Some(p) = ptr_at::<[u8; 4]>(ctx, ip.l4) {
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            *p = [rw.sport[0], rw.sport[1], rw.dport[0], rw.dport[1]];
        }
    }
    Ok(())
}

/// Translates a packet crossing the gateway in `dir` on `tunnel_id` of
/// `gateway_id`, in place. IDC -> VPC: source by the peer mapping,
/// destination by a port mapping or the local mapping; VPC -> IDC the
/// reverse.
#[inline(always)]
pub fn translate(ctx: &XdpContext, ip: &Ipv4, dir: Direction, scope: &Scope) -> Result<(), Fate> {
    if !(scope.peer || scope.local || scope.ports) {
        return Ok(());
    }
    if is_icmp_error(ctx, ip) {
        return icmp_error(ctx, ip, dir, scope);
    }
    let t = dir.tables();
    let protocol = ip.proto();
    let (src, dst) = (ip.src(), ip.dst());
    let port_pair = if has_ports(protocol) && !ip.is_later_fragment() {
        Some(ports(ctx, ip.l4).ok_or(Fate::Malformed)?)
    } else {
        None
    };
    let (sport, dport) = port_pair.unwrap_or(([0; 2], [0; 2]));
    // (IDC-side address, VPC-side address, VPC-side port)
    let (idc, vpc, vpc_port) = match dir {
        Direction::ToVpc => (src, dst, port_pair.map(|p| p.1)),
        Direction::ToIdc => (dst, src, port_pair.map(|p| p.0)),
    };
    if scope.ports
        && has_ports(protocol)
        && ip.is_later_fragment()
        && has_port_mappings(scope.gateway_id, vpc, protocol, t.port_dir)
    {
        return Err(Fate::NatFragment);
    }
    let new_idc = scope.peer(&t, idc);
    let (new_vpc, new_vpc_port) = vpc_side(&t, scope, protocol, vpc, vpc_port);
    let rw = match dir {
        Direction::ToVpc => Rewrite {
            src: new_idc,
            dst: new_vpc,
            sport,
            dport: new_vpc_port,
        },
        Direction::ToIdc => Rewrite {
            src: new_vpc,
            dst: new_idc,
            sport: new_vpc_port,
            dport,
        },
    };
    if rw.src == src && rw.dst == dst && rw.sport == sport && rw.dport == dport {
        return Ok(());
    }
    apply(ctx, ip, rw)
}

/// Translates an ICMP error and the packet it quotes. The quoted packet
/// travelled the other way, so its ends swap roles: e.g. an error from the
/// IDC about a VPC -> IDC packet quotes (src = the VPC service as the IDC
/// knows it, dst = an IDC host); both are turned back into what the VPC
/// sent, with the same tables as the error itself.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, ip: &Ipv4, dir: Direction, scope: &Scope) -> Result<(), Fate> {
    const MALFORMED: Fate = Fate::NatIcmpMalformed;
    let t = dir.tables();
    let inner_l3 = ip.l4 + 8;
    let inner_hdr = ptr_at::<Ipv4Hdr>(ctx, inner_l3).ok_or(MALFORMED)?;
    // SAFETY: bounds checked by ptr_at.
    let inner = unsafe { &mut *inner_hdr };
    let vihl = inner.vihl;
    let ihl = ((vihl & 0x0f) as usize) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(MALFORMED);
    }
    let inner_l4 = inner_l3 + ihl;
    let protocol = inner.proto;
    let frags = u16::from_be_bytes(inner.frags);
    let inner_ports = if has_ports(protocol) && frags & 0x1fff == 0 {
        Some(ports(ctx, inner_l4).ok_or(MALFORMED)?)
    } else {
        None
    };
    let (isport, idport) = inner_ports.unwrap_or(([0; 2], [0; 2]));
    let old = Rewrite {
        src: inner.src_addr,
        dst: inner.dst_addr,
        sport: isport,
        dport: idport,
    };
    let (osrc, odst) = (ip.src(), ip.dst());
    // The error's own IDC-side address, and the quoted packet's ends.
    let (outer_idc, outer_vpc, idc, vpc, vpc_port) = match dir {
        // Quoted VPC -> IDC packet: its src is the VPC end.
        Direction::ToVpc => (osrc, odst, old.dst, old.src, inner_ports.map(|p| p.0)),
        // Quoted IDC -> VPC packet: its dst is the VPC end.
        Direction::ToIdc => (odst, osrc, old.src, old.dst, inner_ports.map(|p| p.1)),
    };
    let new_idc = scope.peer(&t, idc);
    let (new_vpc, new_vpc_port) = vpc_side(&t, scope, protocol, vpc, vpc_port);
    let new_outer_idc = scope.peer(&t, outer_idc);
    // The error usually comes from (or goes to) the quoted packet's VPC end.
    let new_outer_vpc = if outer_vpc == vpc {
        new_vpc
    } else {
        vpc_side(&t, scope, protocol, outer_vpc, None).0
    };
    let (new, outer) = match dir {
        Direction::ToVpc => (
            Rewrite {
                src: new_vpc,
                dst: new_idc,
                sport: new_vpc_port,
                dport: idport,
            },
            (new_outer_idc, new_outer_vpc),
        ),
        Direction::ToIdc => (
            Rewrite {
                src: new_idc,
                dst: new_vpc,
                sport: isport,
                dport: new_vpc_port,
            },
            (new_outer_vpc, new_outer_idc),
        ),
    };

    // The ICMP checksum covers the quoted bytes: every word changed there
    // is folded into it.
    let icmp_csum = ptr_at::<[u8; 2]>(ctx, ip.l4 + 2).ok_or(MALFORMED)?;
    // SAFETY: bounds checked by ptr_at.
    let icmp_csum = unsafe { &mut *icmp_csum };
    let mut ic = u16::from_be_bytes(*icmp_csum);

    // Quoted IPv4 header.
    let old_inner_check = u16::from_be_bytes(inner.check);
    let mut inner_check = csum::replace32(old_inner_check, old.src, new.src);
    inner_check = csum::replace32(inner_check, old.dst, new.dst);
    inner.src_addr = new.src;
    inner.dst_addr = new.dst;
    inner.check = inner_check.to_be_bytes();
    ic = csum::replace32(ic, old.src, new.src);
    ic = csum::replace32(ic, old.dst, new.dst);
    ic = csum::replace16(ic, old_inner_check, inner_check);

    // Quoted ports, and the quoted L4 checksum where it was quoted.
    if inner_ports.is_some() {
        if let Some(p) = ptr_at::<[u8; 4]>(ctx, inner_l4) {
            // SAFETY: bounds checked by ptr_at.
            unsafe { *p = [new.sport[0], new.sport[1], new.dport[0], new.dport[1]] };
        }
        ic = csum::replace16(
            ic,
            u16::from_be_bytes(old.sport),
            u16::from_be_bytes(new.sport),
        );
        ic = csum::replace16(
            ic,
            u16::from_be_bytes(old.dport),
            u16::from_be_bytes(new.dport),
        );
        if let Some(c) = ptr_at::<[u8; 2]>(ctx, inner_l4 + l4_checksum_offset(protocol)) {
            // SAFETY: bounds checked by ptr_at.
            let c = unsafe { &mut *c };
            let before = u16::from_be_bytes(*c);
            let after = l4_checksum(protocol, before, &old, &new);
            if after != before {
                *c = after.to_be_bytes();
                ic = csum::replace16(ic, before, after);
            }
        }
    }
    *icmp_csum = ic.to_be_bytes();

    // Outer header: addresses only (ICMP has no pseudo-header).
    apply(
        ctx,
        ip,
        Rewrite {
            src: outer.0,
            dst: outer.1,
            sport: [0; 2],
            dport: [0; 2],
        },
    )
}
