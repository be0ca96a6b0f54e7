//! Several lines for one customer, through BPF_PROG_TEST_RUN: next-hop
//! group selection (stable per flow, spread over equal priorities, down
//! members skipped, priority tiers) and the bandwidth cap, with byte-exact
//! output frames. Two tunnels of one gateway on the fixture's trunk port
//! (VLANs 100 and 300) stand for two lines: the output VLAN says which
//! line a frame took.

mod common;

use std::time::Instant;

use common::*;

use etherparse::PacketBuilder;
use gateway_common::{down_reason, Fate};

const VPC_HOST: [u8; 4] = [172, 16, 0, 10];
const IDC_HOST: [u8; 4] = [10, 0, 0, 5];
const LOCAL_A: [u8; 4] = [169, 254, 100, 1];
const PEER_A: [u8; 4] = [169, 254, 100, 2];
const LOCAL_B: [u8; 4] = [169, 254, 110, 1];
const PEER_B: [u8; 4] = [169, 254, 110, 2];
/// Tunnel ids follow the config order.
const LINE_A: u32 = 0;
const LINE_B: u32 = 1;

fn config(priority_a: u16, priority_b: u16, cap_a: Option<u32>) -> String {
    let cap = cap_a
        .map(|c| format!("bandwidth_mbps = {c}\n"))
        .unwrap_or_default();
    format!(
        r#"
[node]
name = "fixture"

[[connection]]
name = "line-a"
interface = "conn0"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.0/16"]
interface = "vpc0"

[[gateway]]
name = "dcg-test"
vpc = "vpc-test"
vpc_cidrs = ["172.17.0.0/16"]
interface = "vpc1"

[[tunnel]]
name = "line-a-100"
connection = "line-a"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.100.2"
routes = ["10.0.0.0/16"]
priority = {priority_a}
{cap}
[[tunnel]]
name = "line-b-300"
connection = "line-a"
vlan = 300
gateway = "dcg-prod"
local_ip = "169.254.110.1/30"
peer_ip = "169.254.110.2"
routes = ["10.0.0.0/16"]
priority = {priority_b}
"#
    )
}

fn fixture(priority_a: u16, priority_b: u16, cap_a: Option<u32>) -> Fixture {
    let mut f = Fixture::new(&config(priority_a, priority_b, cap_a));
    f.learn_peer(100, PEER_A, LOCAL_A);
    f.learn_peer(300, PEER_B, LOCAL_B);
    f
}

/// A UDP frame from the VPC host to the IDC host, flow told by source port.
fn from_vpc(f: &Fixture, sport: u16) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(VPC_HOST_MAC, f.vpc0.mac)
        .ipv4(VPC_HOST, IDC_HOST, 64)
        .udp(sport, 5001)
        .write(&mut v, b"one flow, one line")
        .unwrap();
    v
}

/// The same frame as it must leave on the line with `vlan`.
fn on_line(f: &Fixture, sport: u16, vlan: u16) -> Vec<u8> {
    let mut v = Vec::new();
    tagged(f.conn.mac, PEER_MAC, vlan)
        .ipv4(VPC_HOST, IDC_HOST, 63)
        .udp(sport, 5001)
        .write(&mut v, b"one flow, one line")
        .unwrap();
    v
}

/// Sends flow `sport` and returns the VLAN it left on, checking the whole
/// output frame byte for byte.
fn line_of(f: &mut Fixture, sport: u16) -> u16 {
    let frame = from_vpc(f, sport);
    let (action, out) = f.run_vpc(&frame);
    assert_eq!(action, XDP_REDIRECT, "flow {sport}");
    let vlan = u16::from_be_bytes([out[14], out[15]]) & 0x0fff;
    assert_eq!(out, on_line(f, sport, vlan), "flow {sport}: output frame");
    vlan
}

fn set_down(f: &mut Fixture, tunnel: u32, down: u32) {
    f.dp.set_tunnel_health(tunnel, down).expect("health write");
}

#[test]
fn a_flow_stays_on_one_line_and_flows_spread_over_equal_lines() {
    let mut f = fixture(100, 100, None);
    let flows: Vec<u16> = (20000..20200).collect();
    let first: Vec<u16> = flows.iter().map(|s| line_of(&mut f, *s)).collect();
    for _ in 0..3 {
        for (s, vlan) in flows.iter().zip(&first) {
            assert_eq!(line_of(&mut f, *s), *vlan, "flow {s} changed lines");
        }
    }
    let on_a = first.iter().filter(|v| **v == 100).count();
    let on_b = first.iter().filter(|v| **v == 300).count();
    assert_eq!(on_a + on_b, flows.len());
    // 200 flows over two lines: each within +-20 % of 100.
    assert!((80..=120).contains(&on_a), "line A got {on_a} of 200 flows");
    assert_eq!(f.tunnel(LINE_A).tx_packets, 1 + 4 * on_a as u64); // + ARP reply
    assert_eq!(f.tunnel(LINE_B).tx_packets, 1 + 4 * on_b as u64);
}

#[test]
fn a_down_member_is_skipped_and_its_flows_return_when_it_is_back() {
    let mut f = fixture(100, 100, None);
    let flows: Vec<u16> = (30000..30064).collect();
    let before: Vec<u16> = flows.iter().map(|s| line_of(&mut f, *s)).collect();
    assert!(before.contains(&100) && before.contains(&300));

    for reason in [down_reason::PROBES, down_reason::LINK] {
        set_down(&mut f, LINE_A, reason);
        for s in &flows {
            assert_eq!(line_of(&mut f, *s), 300, "flow {s} with line A down");
        }
        set_down(&mut f, LINE_A, 0);
        let after: Vec<u16> = flows.iter().map(|s| line_of(&mut f, *s)).collect();
        assert_eq!(after, before, "flows return to their line");
    }
}

#[test]
fn flows_on_lines_that_stay_up_never_move() {
    // Three equal lines (VLANs 100, 300, 400): when one fails, only its
    // flows move; when it returns, exactly those flows come back.
    let config = config(100, 100, None).replace(
        "[[tunnel]]\nname = \"line-b-300\"",
        "[[tunnel]]\nname = \"line-c-400\"\nconnection = \"line-a\"\nvlan = 400\ngateway = \"dcg-prod\"\nlocal_ip = \"169.254.120.1/30\"\npeer_ip = \"169.254.120.2\"\nroutes = [\"10.0.0.0/16\"]\n\n[[tunnel]]\nname = \"line-b-300\"",
    );
    let mut f = Fixture::new(&config);
    f.learn_peer(100, PEER_A, LOCAL_A);
    f.learn_peer(300, PEER_B, LOCAL_B);
    f.learn_peer(400, [169, 254, 120, 2], [169, 254, 120, 1]);
    let flows: Vec<u16> = (41000..41150).collect();
    let before: Vec<u16> = flows.iter().map(|s| line_of(&mut f, *s)).collect();
    for vlan in [100, 300, 400] {
        let n = before.iter().filter(|v| **v == vlan).count();
        assert!((30..=70).contains(&n), "VLAN {vlan} got {n} of 150 flows");
    }
    // Tunnel ids follow the config order: line-a-100 = 0, line-c-400 = 1.
    set_down(&mut f, 1, down_reason::PROBES);
    for (s, old) in flows.iter().zip(&before) {
        let now = line_of(&mut f, *s);
        if *old == 400 {
            assert_ne!(now, 400, "flow {s} still on the down line");
        } else {
            assert_eq!(now, *old, "flow {s} moved although its line stayed up");
        }
    }
    set_down(&mut f, 1, 0);
    let after: Vec<u16> = flows.iter().map(|s| line_of(&mut f, *s)).collect();
    assert_eq!(after, before, "flows return to their line");
}

#[test]
fn the_standby_line_carries_nothing_until_the_primary_is_down() {
    // Line B has the better (lower) priority: it is the primary.
    let mut f = fixture(200, 50, None);
    let flows: Vec<u16> = (40000..40064).collect();
    for s in &flows {
        assert_eq!(line_of(&mut f, *s), 300, "flow {s} on the primary");
    }
    assert_eq!(
        f.tunnel(LINE_A).tx_packets,
        1,
        "standby: only its ARP reply"
    );

    set_down(&mut f, LINE_B, down_reason::PROBES);
    for s in &flows {
        assert_eq!(line_of(&mut f, *s), 100, "flow {s} on the standby");
    }

    // Both down: a counted drop on the gateway, nothing sent.
    set_down(&mut f, LINE_A, down_reason::LINK);
    let frame = from_vpc(&f, 40000);
    assert_eq!(f.run_vpc(&frame).0, XDP_DROP);
    assert_eq!(f.gateway(0).fate(Fate::NexthopDown), 1);

    // The primary back: traffic returns to it.
    set_down(&mut f, LINE_B, 0);
    for s in &flows {
        assert_eq!(line_of(&mut f, *s), 300, "flow {s} back on the primary");
    }
}

#[test]
fn a_capped_tunnel_drops_beyond_its_burst_and_counts_rate_limited_both_ways() {
    // 1 Mbit/s: the bucket holds two jumbo frames (18432 bytes); a test
    // run takes microseconds, so a few hundred frames overrun it.
    let mut f = fixture(100, 200, Some(1));
    let (mut passed, mut limited) = (0u64, 0u64);
    let started = Instant::now();
    let frame = from_vpc(&f, 50000);
    let wire_len = on_line(&f, 50000, 100).len() as u64;
    for _ in 0..1000 {
        match f.run_vpc(&frame) {
            (XDP_REDIRECT, out) => {
                assert_eq!(out, on_line(&f, 50000, 100));
                passed += 1;
            }
            (XDP_DROP, _) => limited += 1,
            (other, _) => panic!("unexpected action {other}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let t = f.tunnel(LINE_A);
    assert_eq!(t.fate(Fate::RateLimited), limited);
    assert_eq!(t.tx_packets - 1, passed);
    // Burst plus what 1 Mbit/s adds while the loop ran, plus one frame.
    let allowed = 18432.0 + elapsed * 125_000.0 + wire_len as f64;
    assert!(limited > 0, "nothing limited");
    assert!(
        (passed * wire_len) as f64 <= allowed,
        "{passed} frames of {wire_len} B passed in {elapsed:.3}s, allowed {allowed:.0} B"
    );
    assert!(
        passed * wire_len >= 18432 - wire_len,
        "the burst must pass: {passed} frames"
    );

    // IDC -> VPC on the same tunnel has its own bucket.
    let conn_mac = f.conn.mac;
    let frame = udp_tagged(100, conn_mac, IDC_HOST, VPC_HOST, 64);
    let mut idc_limited = 0;
    for _ in 0..1000 {
        let (action, _) = f.run_idc(&frame);
        if action == XDP_DROP {
            idc_limited += 1;
        } else {
            assert_eq!(action, XDP_REDIRECT);
        }
    }
    assert!(idc_limited > 0, "IDC -> VPC not capped");
    assert_eq!(
        f.tunnel(LINE_A).fate(Fate::RateLimited),
        limited + idc_limited
    );
    // The uncapped line B is not limited.
    set_down(&mut f, LINE_A, down_reason::PROBES);
    for _ in 0..300 {
        assert_eq!(f.run_vpc(&from_vpc(&f, 50000)).0, XDP_REDIRECT);
    }
    assert_eq!(f.tunnel(LINE_B).fate(Fate::RateLimited), 0);
}
