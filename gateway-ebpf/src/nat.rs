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
    mapping_kind, port_mapping_dir, Fate, IpMapping, MappingKey, PortMapping, PortMappingKey,
};
use network_types::ip::Ipv4Hdr;

use crate::{
    csum,
    maps::{IP_MAPPINGS, PORT_MAPPINGS},
    packet::{ptr_at, Ipv4, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;

#[inline(always)]
fn ip_mapping(kind: u8, owner: u32, addr: [u8; 4]) -> Option<[u8; 4]> {
    let key = Key::new(
        MappingKey::SCOPE_BITS + 32,
        MappingKey::new(kind, owner, addr),
    );
    IP_MAPPINGS.get(&key).map(|m: &IpMapping| m.apply(addr))
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

/// The source and destination ports of a TCP/UDP header at `l4`.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize) -> Option<([u8; 2], [u8; 2])> {
    let p = ptr_at::<[u8; 4]>(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let p = unsafe { *p };
    Some(([p[0], p[1]], [p[2], p[3]]))
}

/// A translation to apply to one IPv4 packet.
#[derive(Clone, Copy)]
struct Rewrite {
    src: [u8; 4],
    dst: [u8; 4],
    sport: [u8; 2],
    dport: [u8; 2],
}

/// Writes `rw` into the packet, updating the IPv4 header checksum and the
/// TCP/UDP checksum (pseudo-header and ports). A UDP checksum of 0 (none)
/// stays 0; a computed 0 is sent as 0xffff (RFC 768).
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
    let csum_at = if protocol == IPPROTO_TCP { 16 } else { 6 };
    let Some(c) = ptr_at::<[u8; 2]>(ctx, ip.l4 + csum_at) else {
        // A first fragment too short to hold the checksum: cannot fix it.
        return Err(Fate::Malformed);
    };
    // SAFETY: bounds checked by ptr_at.
    let c = unsafe { &mut *c };
    let old = u16::from_be_bytes(*c);
    if protocol == IPPROTO_UDP && old == 0 {
        // No checksum: nothing to keep right.
    } else {
        let mut l4 = old;
        l4 = csum::replace32(l4, old_src, rw.src);
        l4 = csum::replace32(l4, old_dst, rw.dst);
        l4 = csum::replace16(
            l4,
            u16::from_be_bytes(old_sport),
            u16::from_be_bytes(rw.sport),
        );
        l4 = csum::replace16(
            l4,
            u16::from_be_bytes(old_dport),
            u16::from_be_bytes(rw.dport),
        );
        if protocol == IPPROTO_UDP && l4 == 0 {
            l4 = 0xffff;
        }
        *c = l4.to_be_bytes();
    }
    if let Some(p) = ptr_at::<[u8; 4]>(ctx, ip.l4) {
        // SAFETY: bounds checked by ptr_at.
        unsafe {
            *p = [rw.sport[0], rw.sport[1], rw.dport[0], rw.dport[1]];
        }
    }
    Ok(())
}

/// IDC -> VPC translation of a packet received on `tunnel_id` for
/// `gateway_id`. Returns nothing; the packet is rewritten in place.
#[inline(always)]
pub fn idc_to_vpc(
    ctx: &XdpContext,
    tunnel_id: u32,
    gateway_id: u32,
    ip: &Ipv4,
) -> Result<(), Fate> {
    if is_icmp_error(ctx, ip) {
        return icmp_error(ctx, ip, Direction::ToVpc, tunnel_id, gateway_id);
    }
    let protocol = ip.proto();
    let (src, dst) = (ip.src(), ip.dst());
    let (sport, dport) = if has_ports(protocol) && !ip.is_later_fragment() {
        ports(ctx, ip.l4).ok_or(Fate::Malformed)?
    } else {
        ([0; 2], [0; 2])
    };
    let mut rw = Rewrite {
        src: ip_mapping(mapping_kind::PEER_SRC, tunnel_id, src).unwrap_or(src),
        dst,
        sport,
        dport,
    };
    let mut port_mapped = false;
    if has_ports(protocol) {
        if ip.is_later_fragment() {
            if has_port_mappings(gateway_id, dst, protocol, port_mapping_dir::TO_VPC) {
                return Err(Fate::NatFragment);
            }
        } else if let Some(m) =
            port_mapping(gateway_id, dst, dport, protocol, port_mapping_dir::TO_VPC)
        {
            rw.dst = m.addr;
            rw.dport = m.port;
            port_mapped = true;
        }
    }
    if !port_mapped {
        rw.dst = ip_mapping(mapping_kind::LOCAL_DST, gateway_id, dst).unwrap_or(dst);
    }
    if rw.src == src && rw.dst == dst && rw.dport == dport {
        return Ok(());
    }
    apply(ctx, ip, rw)
}

/// VPC -> IDC translation of a packet routed to `tunnel_id`.
#[inline(always)]
pub fn vpc_to_idc(
    ctx: &XdpContext,
    tunnel_id: u32,
    gateway_id: u32,
    ip: &Ipv4,
) -> Result<(), Fate> {
    if is_icmp_error(ctx, ip) {
        return icmp_error(ctx, ip, Direction::ToIdc, tunnel_id, gateway_id);
    }
    let protocol = ip.proto();
    let (src, dst) = (ip.src(), ip.dst());
    let (sport, dport) = if has_ports(protocol) && !ip.is_later_fragment() {
        ports(ctx, ip.l4).ok_or(Fate::Malformed)?
    } else {
        ([0; 2], [0; 2])
    };
    let mut rw = Rewrite {
        src,
        dst: ip_mapping(mapping_kind::PEER_DST, tunnel_id, dst).unwrap_or(dst),
        sport,
        dport,
    };
    let mut port_mapped = false;
    if has_ports(protocol) {
        if ip.is_later_fragment() {
            if has_port_mappings(gateway_id, src, protocol, port_mapping_dir::FROM_VPC) {
                return Err(Fate::NatFragment);
            }
        } else if let Some(m) =
            port_mapping(gateway_id, src, sport, protocol, port_mapping_dir::FROM_VPC)
        {
            rw.src = m.addr;
            rw.sport = m.port;
            port_mapped = true;
        }
    }
    if !port_mapped {
        rw.src = ip_mapping(mapping_kind::LOCAL_SRC, gateway_id, src).unwrap_or(src);
    }
    if rw.src == src && rw.dst == dst && rw.sport == sport {
        return Ok(());
    }
    apply(ctx, ip, rw)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    ToVpc,
    ToIdc,
}

/// Translates an ICMP error and the packet it quotes. The quoted packet
/// travelled the other way, so it is translated with the other
/// direction's tables: e.g. an error from the IDC about a VPC -> IDC packet
/// quotes (src = the VPC service as the IDC knows it, dst = an IDC host);
/// both are turned back into what the VPC sent.
#[inline(always)]
fn icmp_error(
    ctx: &XdpContext,
    ip: &Ipv4,
    dir: Direction,
    tunnel_id: u32,
    gateway_id: u32,
) -> Result<(), Fate> {
    const MALFORMED: Fate = Fate::NatIcmpMalformed;
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
    let (isrc, idst) = (inner.src_addr, inner.dst_addr);
    let (osrc, odst) = (ip.src(), ip.dst());
    let (mut nsrc, mut ndst) = (isrc, idst);
    let (mut nsport, mut ndport) = inner_ports.unwrap_or(([0; 2], [0; 2]));
    let (new_osrc, new_odst);
    match dir {
        Direction::ToVpc => {
            // Quoted packet went VPC -> IDC: src is a VPC address as the IDC
            // sees it, dst an IDC address.
            ndst = ip_mapping(mapping_kind::PEER_SRC, tunnel_id, idst).unwrap_or(idst);
            let mut mapped = false;
            if let Some((sport, _)) = inner_ports {
                if let Some(m) =
                    port_mapping(gateway_id, isrc, sport, protocol, port_mapping_dir::TO_VPC)
                {
                    nsrc = m.addr;
                    nsport = m.port;
                    mapped = true;
                }
            }
            if !mapped {
                nsrc = ip_mapping(mapping_kind::LOCAL_DST, gateway_id, isrc).unwrap_or(isrc);
            }
            new_osrc = ip_mapping(mapping_kind::PEER_SRC, tunnel_id, osrc).unwrap_or(osrc);
            new_odst = if odst == isrc {
                nsrc
            } else {
                ip_mapping(mapping_kind::LOCAL_DST, gateway_id, odst).unwrap_or(odst)
            };
        }
        Direction::ToIdc => {
            // Quoted packet went IDC -> VPC: src an IDC address as the VPC
            // sees it, dst a VPC address.
            nsrc = ip_mapping(mapping_kind::PEER_DST, tunnel_id, isrc).unwrap_or(isrc);
            let mut mapped = false;
            if let Some((_, dport)) = inner_ports {
                if let Some(m) = port_mapping(
                    gateway_id,
                    idst,
                    dport,
                    protocol,
                    port_mapping_dir::FROM_VPC,
                ) {
                    ndst = m.addr;
                    ndport = m.port;
                    mapped = true;
                }
            }
            if !mapped {
                ndst = ip_mapping(mapping_kind::LOCAL_SRC, gateway_id, idst).unwrap_or(idst);
            }
            new_odst = ip_mapping(mapping_kind::PEER_DST, tunnel_id, odst).unwrap_or(odst);
            new_osrc = if osrc == idst {
                ndst
            } else {
                ip_mapping(mapping_kind::LOCAL_SRC, gateway_id, osrc).unwrap_or(osrc)
            };
        }
    }

    // The ICMP checksum covers the quoted bytes: every word changed there
    // is folded into it.
    let icmp_csum = ptr_at::<[u8; 2]>(ctx, ip.l4 + 2).ok_or(MALFORMED)?;
    // SAFETY: bounds checked by ptr_at.
    let icmp_csum = unsafe { &mut *icmp_csum };
    let mut ic = u16::from_be_bytes(*icmp_csum);

    // Quoted IPv4 header.
    let old_inner_check = u16::from_be_bytes(inner.check);
    let mut inner_check = csum::replace32(old_inner_check, isrc, nsrc);
    inner_check = csum::replace32(inner_check, idst, ndst);
    inner.src_addr = nsrc;
    inner.dst_addr = ndst;
    inner.check = inner_check.to_be_bytes();
    ic = csum::replace32(ic, isrc, nsrc);
    ic = csum::replace32(ic, idst, ndst);
    ic = csum::replace16(ic, old_inner_check, inner_check);

    // Quoted ports, and the quoted L4 checksum where it was quoted.
    if let Some((osport, odport)) = inner_ports {
        if let Some(p) = ptr_at::<[u8; 4]>(ctx, inner_l4) {
            // SAFETY: bounds checked by ptr_at.
            unsafe { *p = [nsport[0], nsport[1], ndport[0], ndport[1]] };
        }
        ic = csum::replace16(ic, u16::from_be_bytes(osport), u16::from_be_bytes(nsport));
        ic = csum::replace16(ic, u16::from_be_bytes(odport), u16::from_be_bytes(ndport));
        let csum_at = if protocol == IPPROTO_TCP { 16 } else { 6 };
        if let Some(c) = ptr_at::<[u8; 2]>(ctx, inner_l4 + csum_at) {
            // SAFETY: bounds checked by ptr_at.
            let c = unsafe { &mut *c };
            let old = u16::from_be_bytes(*c);
            if !(protocol == IPPROTO_UDP && old == 0) {
                let mut l4 = csum::replace32(old, isrc, nsrc);
                l4 = csum::replace32(l4, idst, ndst);
                l4 = csum::replace16(l4, u16::from_be_bytes(osport), u16::from_be_bytes(nsport));
                l4 = csum::replace16(l4, u16::from_be_bytes(odport), u16::from_be_bytes(ndport));
                if protocol == IPPROTO_UDP && l4 == 0 {
                    l4 = 0xffff;
                }
                *c = l4.to_be_bytes();
                ic = csum::replace16(ic, old, l4);
            }
        }
    }
    *icmp_csum = ic.to_be_bytes();

    // Outer header: addresses only (ICMP has no pseudo-header).
    apply(
        ctx,
        ip,
        Rewrite {
            src: new_osrc,
            dst: new_odst,
            sport: [0; 2],
            dport: [0; 2],
        },
    )
}
