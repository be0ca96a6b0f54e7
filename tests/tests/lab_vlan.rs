//! `gatewayd lab-vlan`: VLAN sub-interfaces without the 8021q module
//! (gateway-ebpf/src/bin/lab_vlan.rs), the customer-router side of the
//! test lab.
//!
//! Needs root and a built gatewayd (`cargo build` first):
//!
//!     cargo test -p tests --test lab_vlan -- --test-threads=1
//!
//! Fails (never skips) when something is missing.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use etherparse::{
    ArpHardwareId, ArpOperation, ArpPacket, EtherType, IcmpEchoHeader, Icmpv4Header, Icmpv4Type,
    NetSlice, PacketBuilder, SlicedPacket, TransportSlice, VlanId,
};
use tests::{
    attach_lab_vlan, gatewayd_path, require_commands, require_root, veth_with, Frame, Lab, Netns,
    PacketSocket, VethOptions,
};

const ROUTER_TRUNK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const ROUTER_SUB200_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];
const SWITCH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];
const OTHER_TRUNK_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x01];
const OTHER_SUB200_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x03, 0x02];
const BROADCAST: [u8; 6] = [0xff; 6];

const WAIT: Duration = Duration::from_secs(3);

fn prerequisites() -> Result<PathBuf> {
    require_root()?;
    require_commands(&["ip", "tc", "ethtool", "ping"])?;
    let gatewayd = gatewayd_path();
    ensure!(
        gatewayd.is_file(),
        "gatewayd not found at {} (run `cargo build` first, or set GATEWAYD)",
        gatewayd.display()
    );
    Ok(gatewayd)
}

/// One echo request with the given source address; nobody may answer.
fn ping_once(ns: &Netns, from: &str, to: &str) {
    // Exit status 1 (no reply) is expected when the peer cannot answer.
    let _ = ns.exec(&["ping", "-c", "1", "-W", "1", "-I", from, to]);
}

fn expect(sock: &PacketSocket, what: &str, want: impl FnMut(&Frame) -> bool) -> Result<Frame> {
    sock.recv_matching(WAIT, want)?
        .with_context(|| format!("no frame within {WAIT:?}: {what}"))
}

/// An ICMP echo request or reply, as parsed from a frame, with its
/// checksums verified.
#[derive(Debug, PartialEq)]
struct Echo {
    src: [u8; 4],
    dst: [u8; 4],
    request: bool,
    id: u16,
    seq: u16,
    payload: Vec<u8>,
}

fn echo_of(frame: &Frame) -> Option<Echo> {
    let packet = SlicedPacket::from_ethernet(&frame.data).ok()?;
    let Some(NetSlice::Ipv4(ip)) = &packet.net else {
        return None;
    };
    let Some(TransportSlice::Icmpv4(icmp)) = &packet.transport else {
        return None;
    };
    let (request, IcmpEchoHeader { id, seq }) = match icmp.icmp_type() {
        Icmpv4Type::EchoRequest(h) => (true, h),
        Icmpv4Type::EchoReply(h) => (false, h),
        _ => return None,
    };
    Some(Echo {
        src: ip.header().source(),
        dst: ip.header().destination(),
        request,
        id,
        seq,
        payload: icmp.payload().to_vec(),
    })
}

/// The IPv4 header checksum and the ICMP checksum are right.
fn checksums_ok(frame: &Frame) -> Result<()> {
    let packet = SlicedPacket::from_ethernet(&frame.data)?;
    let Some(NetSlice::Ipv4(ip)) = &packet.net else {
        bail!("not IPv4: {:02x?}", frame.data);
    };
    let header = ip.header();
    ensure!(
        header.to_header().calc_header_checksum() == header.header_checksum(),
        "IPv4 header checksum wrong: {:02x?}",
        frame.data
    );
    let Some(TransportSlice::Icmpv4(icmp)) = &packet.transport else {
        bail!("not ICMP: {:02x?}", frame.data);
    };
    let want = Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload()).checksum;
    ensure!(
        icmp.checksum() == want,
        "ICMP checksum {:#06x}, want {want:#06x}: {:02x?}",
        icmp.checksum(),
        frame.data
    );
    Ok(())
}

/// (operation, sender MAC, sender IP, target IP) of an ARP frame.
type ArpFields = (ArpOperation, [u8; 6], [u8; 4], [u8; 4]);

fn arp_of(frame: &Frame) -> Option<ArpFields> {
    let packet = SlicedPacket::from_ethernet(&frame.data).ok()?;
    let Some(NetSlice::Arp(arp)) = &packet.net else {
        return None;
    };
    let arp = arp.to_packet().try_eth_ipv4().ok()?;
    Some((
        arp.operation,
        arp.sender_mac,
        arp.sender_ipv4,
        arp.target_ipv4,
    ))
}

fn tagged_echo_request(
    vlan: u16,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    seq: u16,
    payload: &[u8],
) -> Result<Vec<u8>> {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac)
        .single_vlan(VlanId::try_new(vlan)?)
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(0x4242, seq);
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, payload)?;
    Ok(frame)
}

fn tagged_arp_request(
    vlan: u16,
    src_mac: [u8; 6],
    src: [u8; 4],
    target: [u8; 4],
) -> Result<Vec<u8>> {
    let arp = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &src_mac,
        &src,
        &[0; 6],
        &target,
    )?;
    let builder = PacketBuilder::ethernet2(src_mac, BROADCAST)
        .single_vlan(VlanId::try_new(vlan)?)
        .arp(arp);
    let mut frame = Vec::with_capacity(builder.size());
    builder.write(&mut frame)?;
    Ok(frame)
}

fn filters(ns: &Netns, iface: &str, direction: &str, name: &str) -> Result<usize> {
    let out = ns.exec(&["tc", "filter", "show", "dev", iface, direction])?;
    Ok(out
        .lines()
        .filter(|l| l.contains(&format!(" {name} ")))
        .count())
}

/// Router namespace (trunk veth + macvlan sub200, lab-vlan 100/200) facing
/// a "switch" namespace that only has raw sockets: its kernel has no
/// 8021q and drops tagged frames.
#[test]
fn router_tags_by_source_mac_and_answers_tagged_requests() -> Result<()> {
    let gatewayd = prerequisites()?;
    let mut lab = Lab::new()?;
    let router = lab.netns("router")?;
    let switch = lab.netns("switch")?;
    veth_with(
        &router,
        "trunk",
        &switch,
        "peer",
        &VethOptions {
            mac_a: Some(ROUTER_TRUNK_MAC),
            mac_b: Some(SWITCH_MAC),
            ..Default::default()
        },
    )?;
    router.macvlan("trunk", "sub200", Some(ROUTER_SUB200_MAC))?;
    router.add_addr("trunk", "10.0.100.1/24")?;
    router.add_addr("sub200", "10.0.200.1/24")?;
    // The switch side cannot answer ARP, so the router gets static entries.
    router.add_neigh("trunk", "10.0.100.2", SWITCH_MAC)?;
    router.add_neigh("sub200", "10.0.200.2", SWITCH_MAC)?;
    attach_lab_vlan(
        &router,
        &gatewayd,
        "trunk",
        &[(100, ROUTER_TRUNK_MAC), (200, ROUTER_SUB200_MAC)],
    )?;
    assert_eq!(filters(&router, "trunk", "egress", "lab_vlan_egress")?, 1);
    assert_eq!(filters(&router, "trunk", "ingress", "lab_vlan_ingress")?, 1);

    let wire = PacketSocket::open(&switch, "peer")?;
    let router_tap = PacketSocket::open(&router, "trunk")?;

    // 1. A ping from the trunk's own address leaves tagged VLAN 100, ICMP
    //    intact.
    ping_once(&router, "10.0.100.1", "10.0.100.2");
    let is_request_100 = |f: &Frame| {
        echo_of(f)
            .is_some_and(|e| e.request && e.src == [10, 0, 100, 1] && e.dst == [10, 0, 100, 2])
    };
    let seen = expect(
        &wire,
        "echo request 10.0.100.1 -> 10.0.100.2 at the switch",
        |f| !f.outgoing && is_request_100(f),
    )?;
    // The switch's kernel moved the tag out of the data (skb_vlan_untag)
    // before its packet socket saw the frame; `Frame` puts it back.
    println!(
        "switch got {:02x?}..., tag reported out of band: {:?}",
        &seen.data[..18],
        seen.out_of_band_tci
    );
    assert_eq!(seen.vlan_id(), Some(100), "{:02x?}", seen.data);
    assert_eq!(seen.src_mac(), Some(ROUTER_TRUNK_MAC));
    assert_eq!(seen.dst_mac(), Some(SWITCH_MAC));
    assert_eq!(
        seen.data.len(),
        18 + 20 + 8 + 56,
        "tag + IPv4 + ICMP + ping's 56 bytes"
    );
    checksums_ok(&seen)?;
    // The tag is in the frame data itself when it leaves the router, not in
    // skb metadata: the gateway's XDP program sees only the data.
    let sent = expect(
        &router_tap,
        "the same request leaving the router's trunk",
        |f| f.outgoing && is_request_100(f),
    )?;
    assert_eq!(sent.vlan_id(), Some(100));
    assert_eq!(
        sent.out_of_band_tci, None,
        "tag must be inline, not hw-accel"
    );
    assert_eq!(sent.data, seen.data, "bytes changed between the two ends");

    // 2. From sub200's address: VLAN 200 and sub200's MAC.
    ping_once(&router, "10.0.200.1", "10.0.200.2");
    let seen = expect(
        &wire,
        "echo request 10.0.200.1 -> 10.0.200.2 at the switch",
        |f| {
            !f.outgoing
                && echo_of(f).is_some_and(|e| {
                    e.request && e.src == [10, 0, 200, 1] && e.dst == [10, 0, 200, 2]
                })
        },
    )?;
    assert_eq!(seen.vlan_id(), Some(200), "{:02x?}", seen.data);
    assert_eq!(seen.src_mac(), Some(ROUTER_SUB200_MAC));
    checksums_ok(&seen)?;

    // 3. Not only IP: the router's ARP requests are tagged too.
    ping_once(&router, "10.0.100.1", "10.0.100.9");
    let seen = expect(&wire, "ARP who-has 10.0.100.9 at the switch", |f| {
        arp_of(f).is_some_and(|(op, _, _, target)| {
            op == ArpOperation::REQUEST && target == [10, 0, 100, 9]
        })
    })?;
    assert_eq!(seen.vlan_id(), Some(100), "{:02x?}", seen.data);
    assert_eq!(seen.dst_mac(), Some(BROADCAST));
    assert_eq!(
        arp_of(&seen).map(|(_, mac, ip, _)| (mac, ip)),
        Some((ROUTER_TRUNK_MAC, [10, 0, 100, 1]))
    );

    // 4. Tagged ARP request from the switch, VLAN 100: answered by the
    //    trunk, tagged 100.
    wire.send(&tagged_arp_request(
        100,
        SWITCH_MAC,
        [10, 0, 100, 2],
        [10, 0, 100, 1],
    )?)?;
    let reply = expect(&wire, "ARP reply for 10.0.100.1", |f| {
        !f.outgoing
            && arp_of(f)
                .is_some_and(|(op, _, ip, _)| op == ArpOperation::REPLY && ip == [10, 0, 100, 1])
    })?;
    assert_eq!(reply.vlan_id(), Some(100), "{:02x?}", reply.data);
    assert_eq!(reply.dst_mac(), Some(SWITCH_MAC));
    assert_eq!(arp_of(&reply).map(|a| a.1), Some(ROUTER_TRUNK_MAC));

    // 5. Tagged echo request, VLAN 100, to the trunk: tagged reply.
    let payload = b"lab-vlan says hello over vlan 100";
    wire.send(&tagged_echo_request(
        100,
        SWITCH_MAC,
        ROUTER_TRUNK_MAC,
        [10, 0, 100, 2],
        [10, 0, 100, 1],
        1,
        payload,
    )?)?;
    let reply = expect(&wire, "echo reply from 10.0.100.1", |f| {
        !f.outgoing && echo_of(f).is_some_and(|e| !e.request && e.src == [10, 0, 100, 1])
    })?;
    assert_eq!(reply.vlan_id(), Some(100), "{:02x?}", reply.data);
    assert_eq!(reply.src_mac(), Some(ROUTER_TRUNK_MAC));
    assert_eq!(
        echo_of(&reply),
        Some(Echo {
            src: [10, 0, 100, 1],
            dst: [10, 0, 100, 2],
            request: false,
            id: 0x4242,
            seq: 1,
            payload: payload.to_vec(),
        })
    );
    checksums_ok(&reply)?;

    // 6. VLAN 200 to sub200: the macvlan answers, tagged 200.
    wire.send(&tagged_echo_request(
        200,
        SWITCH_MAC,
        ROUTER_SUB200_MAC,
        [10, 0, 200, 2],
        [10, 0, 200, 1],
        2,
        b"vlan 200",
    )?)?;
    let reply = expect(&wire, "echo reply from 10.0.200.1", |f| {
        !f.outgoing && echo_of(f).is_some_and(|e| !e.request && e.src == [10, 0, 200, 1])
    })?;
    assert_eq!(reply.vlan_id(), Some(200), "{:02x?}", reply.data);
    assert_eq!(reply.src_mac(), Some(ROUTER_SUB200_MAC));
    assert_eq!(
        echo_of(&reply).map(|e| (e.seq, e.payload)),
        Some((2, b"vlan 200".to_vec()))
    );

    // 7. Wrong VLAN for the destination MAC (200 to the trunk, which is
    //    VLAN 100): a real sub-interface never sees it, so no reply.
    wire.send(&tagged_echo_request(
        200,
        SWITCH_MAC,
        ROUTER_TRUNK_MAC,
        [10, 0, 100, 2],
        [10, 0, 100, 1],
        3,
        b"wrong vlan",
    )?)?;
    let stray = wire.recv_matching(Duration::from_secs(1), |f| {
        !f.outgoing && echo_of(f).is_some_and(|e| !e.request && e.seq == 3)
    })?;
    assert!(
        stray.is_none(),
        "answered a frame on the wrong VLAN: {stray:02x?}"
    );

    // 8. Running lab-vlan again replaces programs and map (one filter per
    //    direction, new VLAN in effect).
    attach_lab_vlan(
        &router,
        &gatewayd,
        "trunk",
        &[(300, ROUTER_TRUNK_MAC), (200, ROUTER_SUB200_MAC)],
    )?;
    assert_eq!(filters(&router, "trunk", "egress", "lab_vlan_egress")?, 1);
    assert_eq!(filters(&router, "trunk", "ingress", "lab_vlan_ingress")?, 1);
    wire.drain()?;
    ping_once(&router, "10.0.100.1", "10.0.100.2");
    let seen = expect(&wire, "echo request after re-attach", |f| {
        !f.outgoing && is_request_100(f)
    })?;
    assert_eq!(seen.vlan_id(), Some(300), "{:02x?}", seen.data);
    Ok(())
}

/// Two customer-style routers, both with lab-vlan, back to back: ARP,
/// ping and TCP over both VLANs, including software GSO of tagged TCP
/// (TSO off, as on a veth whose peer has an XDP program).
#[test]
fn two_lab_vlan_routers_talk_tcp_over_the_tagged_trunk() -> Result<()> {
    let gatewayd = prerequisites()?;
    let mut lab = Lab::new()?;
    let a = lab.netns("a")?;
    let c = lab.netns("c")?;
    veth_with(
        &a,
        "trunk",
        &c,
        "trunk",
        &VethOptions {
            mac_a: Some(ROUTER_TRUNK_MAC),
            mac_b: Some(OTHER_TRUNK_MAC),
            ..Default::default()
        },
    )?;
    for (ns, sub_mac, host) in [(&a, ROUTER_SUB200_MAC, 1), (&c, OTHER_SUB200_MAC, 2)] {
        ns.macvlan("trunk", "sub200", Some(sub_mac))?;
        ns.add_addr("trunk", &format!("10.0.100.{host}/24"))?;
        ns.add_addr("sub200", &format!("10.0.200.{host}/24"))?;
        let trunk_mac = ns.mac("trunk")?;
        attach_lab_vlan(ns, &gatewayd, "trunk", &[(100, trunk_mac), (200, sub_mac)])?;
    }

    // ARP and ping both ways, on both VLANs (no static neighbours).
    a.exec(&["ping", "-c", "2", "-W", "2", "10.0.100.2"])?;
    a.exec(&["ping", "-c", "2", "-W", "2", "10.0.200.2"])?;
    c.exec(&["ping", "-c", "2", "-W", "2", "10.0.100.1"])?;
    c.exec(&["ping", "-c", "2", "-W", "2", "10.0.200.1"])?;

    // TCP with TSO on (GSO skbs cross the veth whole), both VLANs.
    tcp_echo(&c, "10.0.200.2", &a, 4 << 20)?;
    tcp_echo(&a, "10.0.100.1", &c, 4 << 20)?;

    // TSO off at A: the kernel segments A's tagged GSO skbs in software
    // after tc egress; every segment must carry the tag inline and fit
    // 1500 + 14 + 4 bytes.
    a.ethtool(&["-K", "trunk", "tso", "off"])?;
    let tap = PacketSocket::open(&a, "trunk")?;
    tcp_echo(&c, "10.0.200.2", &a, 4 << 20)?;
    let mut segments = 0;
    while let Some(frame) = tap.recv(Duration::ZERO)? {
        if !frame.outgoing {
            continue;
        }
        let Ok(packet) = frame.sliced() else { continue };
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            continue;
        };
        if tcp.payload().is_empty() {
            continue;
        }
        segments += 1;
        assert_eq!(
            frame.vlan_id(),
            Some(200),
            "untagged segment: {:02x?}",
            &frame.data[..18]
        );
        assert_eq!(frame.out_of_band_tci, None);
        assert!(
            frame.data.len() <= 1518,
            "{}-byte segment on the wire",
            frame.data.len()
        );
    }
    println!("checked {segments} TCP segments sent by A with TSO off");
    assert!(segments > 10, "only {segments} TCP segments captured");
    Ok(())
}

/// Sends `len` pseudo-random bytes from `client_ns` to `server_ip` in
/// `server_ns`, which echoes them back; checks they return unchanged.
fn tcp_echo(server_ns: &Netns, server_ip: &str, client_ns: &Netns, len: usize) -> Result<()> {
    let ip: Ipv4Addr = server_ip.parse()?;
    let listener = server_ns.run_in(move || Ok(TcpListener::bind((ip, 0))?))?;
    let addr: SocketAddr = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    let server = std::thread::spawn(move || -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match listener.accept() {
                Ok((conn, _)) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(Instant::now() < deadline, "no connection within 10 s");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut data = Vec::new();
        conn.read_to_end(&mut data)?;
        conn.write_all(&data)?;
        Ok(())
    });

    let data: Vec<u8> = (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut conn =
        client_ns.run_in(move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?))?;
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    conn.set_write_timeout(Some(Duration::from_secs(20)))?;
    let started = Instant::now();
    conn.write_all(&data)?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut back = Vec::with_capacity(len);
    conn.read_to_end(&mut back)?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("echo server panicked"))??;
    ensure!(back.len() == len, "{} of {len} bytes came back", back.len());
    ensure!(back == data, "echoed bytes differ");
    println!(
        "tcp echo {len} bytes via {server_ip}:{} in {:?}",
        addr.port(),
        started.elapsed()
    );
    Ok(())
}
