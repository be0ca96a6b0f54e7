//! Stateless NAT through BPF_PROG_TEST_RUN: every rule type in both
//! directions, byte-exact. Expected frames are built by etherparse with the
//! translated addresses, so etherparse's freshly computed checksums check
//! the datapath's incremental ones.

mod common;

use common::*;
use etherparse::{Icmpv4Type, IpHeaders, IpNumber, Ipv4Header, PacketBuilder, VlanId};
use gateway_common::Fate;

const CONFIG: &str = r#"
[node]
name = "natfix"

[[connection]]
name = "line-a"
interface = "conn0"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.0/16"]
interface = "vpc0"

[[gateway.local_ip_mapping]]
original = "172.16.1.0/24"
mapped = "192.168.50.0/24"

[[gateway.local_port_mapping]]
protocol = "tcp"
original = "172.16.0.10:80"
mapped = "192.168.60.1:8080"

[[gateway.local_port_mapping]]
protocol = "udp"
original = "172.16.0.10:53"
mapped = "192.168.60.1:5353"

[[gateway]]
name = "dcg-test"
vpc = "vpc-test"
vpc_cidrs = ["172.17.0.0/16"]
interface = "vpc1"

# Two IDCs with the same private range behind two tunnels.
[[tunnel]]
name = "dct-a-100"
connection = "line-a"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.100.2"
routes = ["10.0.0.0/16"]

[[tunnel.peer_ip_mapping]]
original = "10.0.0.0/24"
mapped = "100.64.1.0/24"

[[tunnel]]
name = "dct-b-101"
connection = "line-a"
vlan = 101
gateway = "dcg-prod"
local_ip = "169.254.101.1/30"
peer_ip = "169.254.101.2"
routes = ["10.0.0.0/16"]

[[tunnel.peer_ip_mapping]]
original = "10.0.0.0/24"
mapped = "100.64.2.0/24"
"#;

const IDC_HOST: [u8; 4] = [10, 0, 0, 5];
const VPC_HOST: [u8; 4] = [172, 16, 0, 10];
const PEER_A: [u8; 4] = [169, 254, 100, 2];
const LOCAL_A: [u8; 4] = [169, 254, 100, 1];
const PEER_B: [u8; 4] = [169, 254, 101, 2];
const LOCAL_B: [u8; 4] = [169, 254, 101, 1];

fn fixture() -> Fixture {
    let mut f = Fixture::new(CONFIG);
    f.learn_peer(100, PEER_A, LOCAL_A);
    f.learn_peer(101, PEER_B, LOCAL_B);
    f
}

/// Ethernet (+ tag) then the given IPv4 header and L4, via etherparse.
fn frame(
    eth: (/*src*/ [u8; 6], /*dst*/ [u8; 6]),
    vlan: Option<u16>,
    ip: Ipv4Header,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    let ip = IpHeaders::Ipv4(ip, Default::default());
    let step = PacketBuilder::ethernet2(eth.0, eth.1);
    macro_rules! finish {
        ($b:expr) => {
            match l4 {
                L4::Udp(s, d) => $b.ip(ip).udp(s, d).write(&mut v, payload).unwrap(),
                L4::Tcp(s, d) => $b
                    .ip(ip)
                    .tcp(s, d, 0x1000, 64240)
                    .syn()
                    .write(&mut v, payload)
                    .unwrap(),
                L4::Echo(id, seq) => $b
                    .ip(ip)
                    .icmpv4_echo_request(id, seq)
                    .write(&mut v, payload)
                    .unwrap(),
                L4::Icmp(t) => $b.ip(ip).icmpv4(t).write(&mut v, payload).unwrap(),
                L4::Raw(n) => $b.ip(ip).write(&mut v, n, payload).unwrap(),
            }
        };
    }
    match vlan {
        Some(id) => finish!(step.single_vlan(VlanId::try_new(id).unwrap())),
        None => finish!(step),
    }
    v
}

#[derive(Clone)]
enum L4 {
    Udp(u16, u16),
    Tcp(u16, u16),
    Echo(u16, u16),
    Icmp(Icmpv4Type),
    Raw(IpNumber),
}

fn ipv4(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Ipv4Header {
    let mut h = Ipv4Header::new(0, ttl, IpNumber::UDP, src, dst).unwrap();
    h.identification = 0x4242;
    h
}

/// IDC -> VPC on VLAN `vlan`, returns the output frame (must be redirected).
fn idc_to_vpc(f: &mut Fixture, vlan: u16, ip: Ipv4Header, l4: L4, payload: &[u8]) -> Vec<u8> {
    let conn = f.conn.mac;
    let input = frame((PEER_MAC, conn), Some(vlan), ip, l4, payload);
    let (action, out) = f.run_idc(&input);
    assert_eq!(action, XDP_REDIRECT, "IDC -> VPC not forwarded");
    out
}

fn vpc_to_idc(f: &mut Fixture, ip: Ipv4Header, l4: L4, payload: &[u8]) -> Vec<u8> {
    let vpc = f.vpc0.mac;
    let input = frame((VPC_HOST_MAC, vpc), None, ip, l4, payload);
    let (action, out) = f.run_vpc(&input);
    assert_eq!(action, XDP_REDIRECT, "VPC -> IDC not forwarded");
    out
}

fn to_vpc_expected(f: &Fixture, ip: Ipv4Header, l4: L4, payload: &[u8]) -> Vec<u8> {
    frame((f.vpc0.mac, VPC_HOST_MAC), None, ip, l4, payload)
}

fn to_idc_expected(f: &Fixture, vlan: u16, ip: Ipv4Header, l4: L4, payload: &[u8]) -> Vec<u8> {
    frame((f.conn.mac, PEER_MAC), Some(vlan), ip, l4, payload)
}

#[test]
fn peer_mapping_translates_the_source_and_tells_overlapping_idcs_apart() {
    let mut f = fixture();
    // The same 10.0.0.5 behind two tunnels appears as two VPC-side addresses.
    for (vlan, mapped) in [(100, [100, 64, 1, 5]), (101, [100, 64, 2, 5])] {
        let out = idc_to_vpc(
            &mut f,
            vlan,
            ipv4(IDC_HOST, VPC_HOST, 64),
            L4::Udp(40000, 9),
            b"x",
        );
        let want = to_vpc_expected(&f, ipv4(mapped, VPC_HOST, 63), L4::Udp(40000, 9), b"x");
        assert_eq!(out, want, "vlan {vlan}");
    }
    // Replies to each mapped prefix go back over its own tunnel, with the
    // original address restored.
    for (vlan, mapped) in [(100, [100, 64, 1, 5]), (101, [100, 64, 2, 5])] {
        let out = vpc_to_idc(
            &mut f,
            ipv4(VPC_HOST, mapped, 64),
            L4::Udp(9, 40000),
            b"reply",
        );
        let want = to_idc_expected(
            &f,
            vlan,
            ipv4(VPC_HOST, IDC_HOST, 63),
            L4::Udp(9, 40000),
            b"reply",
        );
        assert_eq!(out, want, "vlan {vlan}");
    }
    assert_eq!(f.tunnel(0).tx_packets, 2); // ARP reply + the reply
    assert_eq!(f.tunnel(1).tx_packets, 2);
}

#[test]
fn unmapped_addresses_pass_untranslated() {
    let mut f = fixture();
    let src = [10, 0, 9, 9]; // in the routes, outside the mapping
    let out = idc_to_vpc(&mut f, 100, ipv4(src, VPC_HOST, 64), L4::Udp(1, 2), b"u");
    assert_eq!(
        out,
        to_vpc_expected(&f, ipv4(src, VPC_HOST, 63), L4::Udp(1, 2), b"u")
    );
}

#[test]
fn local_ip_mapping_translates_the_vpc_side_both_ways() {
    let mut f = fixture();
    let mapped = [192, 168, 50, 7];
    let original = [172, 16, 1, 7];
    let out = idc_to_vpc(
        &mut f,
        100,
        ipv4(IDC_HOST, mapped, 64),
        L4::Tcp(40000, 443),
        b"hello",
    );
    let mut want_ip = ipv4([100, 64, 1, 5], original, 63);
    want_ip.protocol = IpNumber::TCP;
    // The VPC host's neighbour is unknown to the fixture's kernel: only the
    // translated frame matters, so compare from the IP header on.
    let expected = frame(
        (f.vpc0.mac, VPC_HOST_MAC),
        None,
        want_ip,
        L4::Tcp(40000, 443),
        b"hello",
    );
    assert_eq!(out[14..], expected[14..]);
    let out = vpc_to_idc(
        &mut f,
        ipv4(original, [100, 64, 1, 5], 64),
        L4::Tcp(443, 40000),
        b"hi",
    );
    let want = to_idc_expected(
        &f,
        100,
        ipv4(mapped, IDC_HOST, 63),
        L4::Tcp(443, 40000),
        b"hi",
    );
    assert_eq!(out, want);
}

#[test]
fn port_mapping_translates_address_and_port_with_tcp_and_udp_checksums() {
    let mut f = fixture();
    let service = [192, 168, 60, 1];
    // TCP: IDC reaches 192.168.60.1:8080 = VPC 172.16.0.10:80.
    let out = idc_to_vpc(
        &mut f,
        100,
        ipv4(IDC_HOST, service, 64),
        L4::Tcp(40000, 8080),
        b"GET /",
    );
    let want = to_vpc_expected(
        &f,
        ipv4([100, 64, 1, 5], VPC_HOST, 63),
        L4::Tcp(40000, 80),
        b"GET /",
    );
    assert_eq!(out, want);
    let out = vpc_to_idc(
        &mut f,
        ipv4(VPC_HOST, [100, 64, 1, 5], 64),
        L4::Tcp(80, 40000),
        b"200 OK",
    );
    let want = to_idc_expected(
        &f,
        100,
        ipv4(service, IDC_HOST, 63),
        L4::Tcp(8080, 40000),
        b"200 OK",
    );
    assert_eq!(out, want);
    // UDP: 192.168.60.1:5353 = 172.16.0.10:53.
    let out = idc_to_vpc(
        &mut f,
        100,
        ipv4(IDC_HOST, service, 64),
        L4::Udp(5000, 5353),
        b"q",
    );
    let want = to_vpc_expected(
        &f,
        ipv4([100, 64, 1, 5], VPC_HOST, 63),
        L4::Udp(5000, 53),
        b"q",
    );
    assert_eq!(out, want);
    // Another port on the mapped address is not the service.
    let conn = f.conn.mac;
    let other = frame(
        (PEER_MAC, conn),
        Some(100),
        ipv4(IDC_HOST, service, 64),
        L4::Tcp(1, 22),
        b"",
    );
    assert_eq!(f.run_idc(&other).0, XDP_DROP);
    assert_eq!(f.tunnel(0).fate(Fate::NoRoute), 1);
}

#[test]
fn a_zero_udp_checksum_stays_zero() {
    let mut f = fixture();
    let conn = f.conn.mac;
    let mut input = frame(
        (PEER_MAC, conn),
        Some(100),
        ipv4(IDC_HOST, VPC_HOST, 64),
        L4::Udp(1, 2),
        b"nocsum",
    );
    input[18 + 20 + 6..18 + 20 + 8].copy_from_slice(&[0, 0]);
    let (action, out) = f.run_idc(&input);
    assert_eq!(action, XDP_REDIRECT);
    let mut want = to_vpc_expected(
        &f,
        ipv4([100, 64, 1, 5], VPC_HOST, 63),
        L4::Udp(1, 2),
        b"nocsum",
    );
    want[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    assert_eq!(out, want);
}

#[test]
fn icmp_echo_crosses_a_mapping_with_its_identifier_untouched() {
    let mut f = fixture();
    let mut ip = ipv4(IDC_HOST, VPC_HOST, 64);
    ip.protocol = IpNumber::ICMP;
    let out = idc_to_vpc(&mut f, 101, ip, L4::Echo(0x7777, 3), b"ping");
    let mut want_ip = ipv4([100, 64, 2, 5], VPC_HOST, 63);
    want_ip.protocol = IpNumber::ICMP;
    assert_eq!(
        out,
        to_vpc_expected(&f, want_ip, L4::Echo(0x7777, 3), b"ping")
    );
}

/// The first `n` bytes of an IPv4 packet (no Ethernet): what an ICMP error
/// quotes.
fn quoted(ip: Ipv4Header, l4: L4, payload: &[u8], n: usize) -> Vec<u8> {
    let f = frame(([0; 6], [0; 6]), None, ip, l4, payload);
    f[14..14 + n].to_vec()
}

#[test]
fn icmp_errors_from_the_idc_have_their_quoted_packet_translated_back() {
    let mut f = fixture();
    // The VPC service (seen by the IDC as 192.168.60.1:5353) sent a UDP
    // datagram to 10.0.0.5:40000; the IDC's router 10.0.0.1 says the port
    // is unreachable, quoting the datagram's IP header and 8 UDP bytes.
    let service = [192, 168, 60, 1];
    let q_in = quoted(
        ipv4(service, IDC_HOST, 60),
        L4::Udp(5353, 40000),
        b"dns answer",
        28,
    );
    let mut outer = ipv4([10, 0, 0, 1], service, 64);
    outer.protocol = IpNumber::ICMP;
    let unreachable =
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
    let out = idc_to_vpc(&mut f, 100, outer, L4::Icmp(unreachable.clone()), &q_in);
    // Seen from the VPC: the error comes from 100.64.1.1 about the datagram
    // 172.16.0.10:53 -> 100.64.1.5:40000, exactly as the VPC host sent it.
    let q_out = quoted(
        ipv4(VPC_HOST, [100, 64, 1, 5], 60),
        L4::Udp(53, 40000),
        b"dns answer",
        28,
    );
    let mut want_ip = ipv4([100, 64, 1, 1], VPC_HOST, 63);
    want_ip.protocol = IpNumber::ICMP;
    assert_eq!(
        out,
        to_vpc_expected(&f, want_ip, L4::Icmp(unreachable.clone()), &q_out)
    );
}

#[test]
fn icmp_errors_from_the_vpc_have_their_quoted_packet_translated_back() {
    let mut f = fixture();
    // An IDC host (100.64.1.5 in the VPC) sent TCP to 172.16.0.10:80 through
    // the port mapping; a VPC router 172.16.0.1 answers "time exceeded".
    let q_in = quoted(
        ipv4([100, 64, 1, 5], VPC_HOST, 1),
        L4::Tcp(40000, 80),
        b"",
        28,
    );
    let mut outer = ipv4([172, 16, 0, 1], [100, 64, 1, 5], 64);
    outer.protocol = IpNumber::ICMP;
    let exceeded =
        Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit);
    let out = vpc_to_idc(&mut f, outer, L4::Icmp(exceeded.clone()), &q_in);
    // The IDC sees the error about its own packet 10.0.0.5:40000 ->
    // 192.168.60.1:8080. The router's own address is not mapped.
    let q_out = quoted(
        ipv4(IDC_HOST, [192, 168, 60, 1], 1),
        L4::Tcp(40000, 8080),
        b"",
        28,
    );
    let mut want_ip = ipv4([172, 16, 0, 1], IDC_HOST, 63);
    want_ip.protocol = IpNumber::ICMP;
    assert_eq!(
        out,
        to_idc_expected(&f, 100, want_ip, L4::Icmp(exceeded.clone()), &q_out)
    );
    // From the service host itself, its address is translated too.
    let mut outer = ipv4(VPC_HOST, [100, 64, 1, 5], 64);
    outer.protocol = IpNumber::ICMP;
    let unreachable =
        Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Port);
    let out = vpc_to_idc(&mut f, outer, L4::Icmp(unreachable.clone()), &q_in);
    let mut want_ip = ipv4([192, 168, 60, 1], IDC_HOST, 63);
    want_ip.protocol = IpNumber::ICMP;
    assert_eq!(
        out,
        to_idc_expected(&f, 100, want_ip, L4::Icmp(unreachable.clone()), &q_out)
    );
}

#[test]
fn a_truncated_quoted_packet_is_a_counted_nat_drop() {
    let mut f = fixture();
    let q = quoted(
        ipv4([192, 168, 60, 1], IDC_HOST, 60),
        L4::Udp(5353, 40000),
        b"x",
        12,
    );
    let mut outer = ipv4([10, 0, 0, 1], [192, 168, 60, 1], 64);
    outer.protocol = IpNumber::ICMP;
    let conn = f.conn.mac;
    let input = frame(
        (PEER_MAC, conn),
        Some(100),
        outer,
        L4::Icmp(Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::Port,
        )),
        &q,
    );
    assert_eq!(f.run_idc(&input).0, XDP_DROP);
    assert_eq!(f.tunnel(0).fate(Fate::NatIcmpMalformed), 1);
}

#[test]
fn fragments_follow_the_documented_policy() {
    let mut f = fixture();
    let conn = f.conn.mac;
    let frag = |dst: [u8; 4], offset_units: u16, more: bool| {
        let mut ip = ipv4(IDC_HOST, dst, 64);
        ip.protocol = IpNumber::UDP;
        ip.fragment_offset = offset_units.try_into().unwrap();
        ip.more_fragments = more;
        ip
    };
    // A later fragment to a port-mapped address carries no port: dropped.
    let input = frame(
        (PEER_MAC, conn),
        Some(100),
        frag([192, 168, 60, 1], 2, false),
        L4::Raw(IpNumber::UDP),
        b"tail of a datagram",
    );
    assert_eq!(f.run_idc(&input).0, XDP_DROP);
    assert_eq!(f.tunnel(0).fate(Fate::NatFragment), 1);
    // A later fragment to an IP-mapped address: the IP mappings apply.
    let input = frame(
        (PEER_MAC, conn),
        Some(100),
        frag([192, 168, 50, 7], 2, false),
        L4::Raw(IpNumber::UDP),
        b"tail",
    );
    let (action, out) = f.run_idc(&input);
    assert_eq!(action, XDP_REDIRECT);
    let mut want = frag([172, 16, 1, 7], 2, false);
    want.source = [100, 64, 1, 5];
    want.time_to_live = 63;
    let expected = frame(
        (f.vpc0.mac, VPC_HOST_MAC),
        None,
        want,
        L4::Raw(IpNumber::UDP),
        b"tail",
    );
    assert_eq!(out[14..], expected[14..]);
    // The first fragment of a port-mapped datagram carries the ports and is
    // translated (its UDP checksum covers the whole datagram and is adjusted
    // incrementally).
    let mut whole = Vec::new();
    PacketBuilder::ipv4(IDC_HOST, [192, 168, 60, 1], 64)
        .udp(5000, 5353)
        .write(&mut whole, &[7u8; 40])
        .unwrap();
    let first_part = &whole[20..20 + 24]; // UDP header + 16 bytes of data
    let input = frame(
        (PEER_MAC, conn),
        Some(100),
        frag([192, 168, 60, 1], 0, true),
        L4::Raw(IpNumber::UDP),
        first_part,
    );
    let (action, out) = f.run_idc(&input);
    assert_eq!(action, XDP_REDIRECT);
    let mut whole_out = Vec::new();
    PacketBuilder::ipv4([100, 64, 1, 5], VPC_HOST, 64)
        .udp(5000, 53)
        .write(&mut whole_out, &[7u8; 40])
        .unwrap();
    let mut want = frag(VPC_HOST, 0, true);
    want.source = [100, 64, 1, 5];
    want.time_to_live = 63;
    let expected = frame(
        (f.vpc0.mac, VPC_HOST_MAC),
        None,
        want,
        L4::Raw(IpNumber::UDP),
        &whole_out[20..20 + 24],
    );
    assert_eq!(out, expected);
}

/// IP mapping answers are cached per CPU (nat.rs, `MAPPING_CACHE`): a
/// mapping changed, added or removed by a reload applies to the very next
/// packet, in both directions.
#[test]
fn a_mapping_changed_by_a_reload_applies_to_the_next_packet() {
    let mut f = fixture();
    let send = |f: &mut Fixture| {
        idc_to_vpc(
            f,
            100,
            ipv4(IDC_HOST, VPC_HOST, 64),
            L4::Udp(40000, 9),
            b"x",
        )
    };
    let want = |f: &Fixture, src: [u8; 4]| {
        to_vpc_expected(f, ipv4(src, VPC_HOST, 63), L4::Udp(40000, 9), b"x")
    };
    for _ in 0..3 {
        let out = send(&mut f);
        assert_eq!(out, want(&f, [100, 64, 1, 5]));
    }
    // Changed.
    let moved = CONFIG.replacen(
        "mapped = \"100.64.1.0/24\"",
        "mapped = \"100.64.7.0/24\"",
        1,
    );
    f.reload(&moved);
    let out = send(&mut f);
    assert_eq!(
        out,
        want(&f, [100, 64, 7, 5]),
        "a cached mapping outlived the reload"
    );
    // The reverse direction follows the new mapping too.
    let out = vpc_to_idc(
        &mut f,
        ipv4(VPC_HOST, [100, 64, 7, 5], 64),
        L4::Udp(9, 40000),
        b"r",
    );
    let back = to_idc_expected(
        &f,
        100,
        ipv4(VPC_HOST, IDC_HOST, 63),
        L4::Udp(9, 40000),
        b"r",
    );
    assert_eq!(out, back);
    // Removed: the tunnel has no mapping left, the source passes as is.
    let start = moved
        .find("[[tunnel.peer_ip_mapping]]")
        .expect("first mapping");
    let end = start + moved[start..].find("\n\n").expect("end of the table");
    let removed = format!("{}{}", &moved[..start], &moved[end + 2..]);
    f.reload(&removed);
    let out = send(&mut f);
    assert_eq!(out, want(&f, IDC_HOST));
    // Added back.
    f.reload(CONFIG);
    let out = send(&mut f);
    assert_eq!(out, want(&f, [100, 64, 1, 5]));
}

// ---- flow cache (the fast path) ----
//
// A TCP/UDP flow's first packet takes the full pipeline, which records what
// it did; the next ones take the fast path (gateway-ebpf/src/flow_cache.rs).
// These prove that the fast path gives the very same bytes and counters.

/// Sends `input` twice on the connection (`idc`) or the VPC port: the first
/// must miss the flow cache, the second hit it, both forwarded as `want`.
fn both_paths_give(f: &mut Fixture, idc: bool, input: &[u8], want: &[u8]) {
    let run = |f: &mut Fixture| {
        if idc {
            f.run_idc(input)
        } else {
            f.run_vpc(input)
        }
    };
    let (h0, m0) = f.flow_cache();
    let first = run(f);
    let (h1, m1) = f.flow_cache();
    let second = run(f);
    let (h2, m2) = f.flow_cache();
    assert_eq!((h1 - h0, m1 - m0), (0, 1), "the first packet misses");
    assert_eq!((h2 - h1, m2 - m1), (1, 0), "the second packet hits");
    assert_eq!(first, (XDP_REDIRECT, want.to_vec()), "full pipeline");
    assert_eq!(second, (XDP_REDIRECT, want.to_vec()), "fast path");
}

#[test]
fn the_fast_path_gives_the_pipelines_bytes_for_every_translation() {
    let mut f = fixture();
    f.stay_on_this_cpu();
    let conn = f.conn.mac;
    let vpc = f.vpc0.mac;
    let service = [192, 168, 60, 1];
    let mapped = [100, 64, 1, 5];
    let idc = |ip, l4: L4, p: &[u8]| frame((PEER_MAC, conn), Some(100), ip, l4, p);
    let vpc_in = |ip, l4: L4, p: &[u8]| frame((VPC_HOST_MAC, vpc), None, ip, l4, p);
    // (from the IDC?, input, expected output)
    let mut cases = vec![
        // Peer mapping (source), UDP.
        (
            true,
            idc(ipv4(IDC_HOST, VPC_HOST, 64), L4::Udp(40000, 9), b"x"),
            to_vpc_expected(&f, ipv4(mapped, VPC_HOST, 63), L4::Udp(40000, 9), b"x"),
        ),
        // Peer mapping + port mapping (both addresses and a port), TCP.
        (
            true,
            idc(ipv4(IDC_HOST, service, 64), L4::Tcp(40001, 8080), b"GET /"),
            to_vpc_expected(&f, ipv4(mapped, VPC_HOST, 63), L4::Tcp(40001, 80), b"GET /"),
        ),
        // Its reply.
        (
            false,
            vpc_in(ipv4(VPC_HOST, mapped, 64), L4::Tcp(80, 40001), b"200 OK"),
            to_idc_expected(
                &f,
                100,
                ipv4(service, IDC_HOST, 63),
                L4::Tcp(8080, 40001),
                b"200 OK",
            ),
        ),
        // Port mapping, UDP, and its reply.
        (
            true,
            idc(ipv4(IDC_HOST, service, 64), L4::Udp(5000, 5353), b"q"),
            to_vpc_expected(&f, ipv4(mapped, VPC_HOST, 63), L4::Udp(5000, 53), b"q"),
        ),
        (
            false,
            vpc_in(ipv4(VPC_HOST, mapped, 64), L4::Udp(53, 5000), b"a"),
            to_idc_expected(
                &f,
                100,
                ipv4(service, IDC_HOST, 63),
                L4::Udp(5353, 5000),
                b"a",
            ),
        ),
        // Local IP mapping (destination), TCP, and its reply.
        (
            true,
            idc(
                ipv4(IDC_HOST, [192, 168, 50, 7], 64),
                L4::Tcp(40002, 443),
                b"hello",
            ),
            to_vpc_expected(
                &f,
                ipv4(mapped, [172, 16, 1, 7], 63),
                L4::Tcp(40002, 443),
                b"hello",
            ),
        ),
        (
            false,
            vpc_in(
                ipv4([172, 16, 1, 7], mapped, 64),
                L4::Tcp(443, 40002),
                b"hi",
            ),
            to_idc_expected(
                &f,
                100,
                ipv4([192, 168, 50, 7], IDC_HOST, 63),
                L4::Tcp(443, 40002),
                b"hi",
            ),
        ),
        // No mapping applies (an unmapped IDC address): TTL only.
        (
            true,
            idc(ipv4([10, 0, 9, 9], VPC_HOST, 9), L4::Udp(7, 7), b"plain"),
            to_vpc_expected(
                &f,
                ipv4([10, 0, 9, 9], VPC_HOST, 8),
                L4::Udp(7, 7),
                b"plain",
            ),
        ),
        // The other tunnel of the same connection, its own mapping.
        (
            true,
            frame(
                (PEER_MAC, conn),
                Some(101),
                ipv4(IDC_HOST, VPC_HOST, 64),
                L4::Udp(40000, 9),
                b"b",
            ),
            to_vpc_expected(
                &f,
                ipv4([100, 64, 2, 5], VPC_HOST, 63),
                L4::Udp(40000, 9),
                b"b",
            ),
        ),
    ];
    // A zero UDP checksum (none) stays zero on both paths.
    let mut input = idc(ipv4(IDC_HOST, VPC_HOST, 64), L4::Udp(1, 2), b"nocsum");
    input[18 + 20 + 6..18 + 20 + 8].copy_from_slice(&[0, 0]);
    let mut want = to_vpc_expected(&f, ipv4(mapped, VPC_HOST, 63), L4::Udp(1, 2), b"nocsum");
    want[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    cases.push((true, input, want));
    for (from_idc, input, want) in &cases {
        both_paths_give(&mut f, *from_idc, input, want);
    }
    // Every packet counted as the pipeline counts it.
    let (to_vpc, to_idc) = cases.iter().fold(
        (0, 0),
        |(v, i), c| {
            if c.0 {
                (v + 2, i)
            } else {
                (v, i + 2)
            }
        },
    );
    assert_eq!(f.gateway(0).tx_packets, to_vpc);
    assert_eq!(f.gateway(0).rx_packets, to_idc);
    assert_eq!(f.tunnel(0).tx_packets, 1 + to_idc, "ARP reply + replies");
    assert_eq!(
        f.tunnel(0).rx_packets + f.tunnel(1).rx_packets,
        2 + to_vpc,
        "ARP + data"
    );
}

#[test]
fn a_cached_flow_still_gets_every_check_of_the_pipeline() {
    let mut f = fixture();
    f.stay_on_this_cpu();
    let conn = f.conn.mac;
    let vpc = f.vpc0.mac;
    let flow = |ttl: u8, smac: [u8; 6], dmac: [u8; 6]| {
        frame(
            (smac, dmac),
            Some(100),
            ipv4(IDC_HOST, VPC_HOST, ttl),
            L4::Udp(40000, 9),
            b"x",
        )
    };
    let reply = frame(
        (VPC_HOST_MAC, vpc),
        None,
        ipv4(VPC_HOST, [100, 64, 1, 5], 64),
        L4::Udp(9, 40000),
        b"r",
    );
    for _ in 0..2 {
        assert_eq!(f.run_idc(&flow(64, PEER_MAC, conn)).0, XDP_REDIRECT);
        assert_eq!(f.run_vpc(&reply).0, XDP_REDIRECT);
    }
    let (hits, _) = f.flow_cache();
    assert_eq!(hits, 2, "both directions cached");
    // TTL 1: the pipeline drops it, counted.
    assert_eq!(f.run_idc(&flow(1, PEER_MAC, conn)).0, XDP_DROP);
    assert_eq!(f.tunnel(0).fate(Fate::TtlExceeded), 1);
    // Another host's frame on the trunk.
    assert_eq!(
        f.run_idc(&flow(64, PEER_MAC, [2, 9, 9, 9, 9, 9])).0,
        XDP_DROP
    );
    assert_eq!(f.tunnel(0).fate(Fate::OtherHost), 1);
    // The customer router's MAC changed: learned from the flow's next
    // packet, and the cached reply goes to the new MAC at once.
    let new_peer = [2, 0x1d, 0xc0, 0, 0, 0x77];
    let (action, _) = f.run_idc(&flow(64, new_peer, conn));
    assert_eq!(action, XDP_REDIRECT);
    let (action, out) = f.run_vpc(&reply);
    assert_eq!(action, XDP_REDIRECT);
    assert_eq!(&out[..6], &new_peer, "the reply follows the new peer MAC");
    // The line goes down: the cached reply is not sent on it.
    f.dp.set_tunnel_health(0, gateway_common::down_reason::LINK)
        .expect("health");
    assert_eq!(f.run_vpc(&reply).0, XDP_DROP);
    assert_eq!(f.gateway(0).fate(Fate::NexthopDown), 1);
    f.dp.set_tunnel_health(0, 0).expect("health");
    assert_eq!(f.run_vpc(&reply).0, XDP_REDIRECT);
}
