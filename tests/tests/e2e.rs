//! End to end: the real `gatewayd run` in a gateway namespace between a
//! customer IDC (router with an 802.1Q trunk, a host behind it) and two
//! VPCs; real ping and TCP. See tests/src/topology.rs for the picture.
//! Needs root; run `cargo build` first (the tests start target/*/gatewayd).

use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use tests::{
    gatewayd_path,
    topology::{
        num, ping, tunnel, GatewayLab, IDC_HOST, LOCAL_IP_100, LOCAL_IP_200, UNKNOWN_VLAN_DST,
        VPC_PROD_HOST, VPC_TEST_HOST,
    },
};

#[test]
fn idc_and_vpcs_talk_through_the_gateway() -> Result<()> {
    let mut lab = GatewayLab::build(&gatewayd_path())?;
    lab.start_daemon()?;
    // The daemon ARPs for both customer routers; the datapath learns them.
    lab.wait_peers_learned(Duration::from_secs(10))?;

    // The customer router resolves (ARP) and pings the gateway's
    // interconnect address on each VLAN: answered by the XDP program.
    // (The router learns the gateway's MAC from every health probe, one per
    // 200 ms per tunnel; flush it right before pinging so it has to ask,
    // and try again if a probe slipped in between.)
    for (name, local) in [("dct-a-100", LOCAL_IP_100), ("dct-a-200", LOCAL_IP_200)] {
        let mut pings = 0;
        for _ in 0..10 {
            lab.idc.ip(&["neigh", "flush", "all"])?;
            assert_eq!(ping(&lab.idc, local, 3)?, (3, 3));
            pings += 3;
            let stats = lab.stats_json()?;
            let t = tunnel(&stats, name);
            assert_eq!(num(&t["answered"]["icmp_echo_replied"]), pings, "{t}");
            if num(&t["answered"]["arp_replied"]) >= 1 {
                break;
            }
        }
        let stats = lab.stats_json()?;
        let t = tunnel(&stats, name);
        assert!(num(&t["answered"]["arp_replied"]) >= 1, "{t}");
    }

    // IDC host <-> VPC hosts, both tunnels on one connection, two gateways.
    // The first packet towards each VPC host takes the kernel slow path
    // (neighbour not resolved yet) and must not be lost.
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 5)?, (5, 5));
    assert_eq!(lab.ping_from_idc(VPC_TEST_HOST, 5)?, (5, 5));
    // ... and from the VPC side.
    assert_eq!(ping(&lab.vpc_prod, IDC_HOST, 3)?, (3, 3));

    // A real TCP transfer each way of the first tunnel's VPC.
    lab.tcp_transfer(&lab.vpc_prod, VPC_PROD_HOST, 4 << 20)?;
    lab.tcp_transfer(&lab.vpc_test, VPC_TEST_HOST, 1 << 20)?;

    let stats = lab.stats_json()?;
    let t100 = tunnel(&stats, "dct-a-100");
    assert_eq!(t100["gateway"], "dcg-prod");
    assert_eq!(t100["connection"], "line-a");
    assert_eq!(t100["vlan"], 100);
    // 4 MiB in at most 1500-byte packets, plus the pings.
    assert!(num(&t100["rx_bytes"]) > 4 << 20, "{t100}");
    assert!(num(&t100["rx_packets"]) > 2800, "{t100}");
    let t200 = tunnel(&stats, "dct-a-200");
    assert!(num(&t200["rx_bytes"]) > 1 << 20, "{t200}");
    assert!(num(&t200["tx_packets"]) > 5, "{t200}");

    // The datapath's own log lines (aya-log) reach the daemon's log.
    assert!(
        lab.log().contains("peer router MAC"),
        "no eBPF log line in the daemon log:\n{}",
        lab.log()
    );
    // The table form prints one row per tunnel.
    let table = lab.stats_table()?;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("dct-a-100") && l.contains("dcg-prod")),
        "{table}"
    );
    lab.stop_daemon()?;
    Ok(())
}

#[test]
fn stats_count_exactly_the_packets_sent_and_unknown_vlans_are_dropped() -> Result<()> {
    let mut lab = GatewayLab::build(&gatewayd_path())?;
    lab.start_daemon()?;
    lab.wait_peers_learned(Duration::from_secs(10))?;
    // Warm up every cache, then pin them: no ARP may run while counting.
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 2)?, (2, 2));
    lab.freeze_neighbours()?;
    std::thread::sleep(Duration::from_millis(200));

    let before = lab.stats_json()?;
    const N: u32 = 20;
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, N)?, (N, N));
    // Over VLAN 999 nothing comes back: the gateway has no such tunnel.
    assert_eq!(lab.ping_from_idc(UNKNOWN_VLAN_DST, 4)?.1, 0);
    let after = lab.stats_json()?;

    // 56 bytes of ping data: ICMP 64 + IPv4 20 + Ethernet 14 + 802.1Q 4.
    const FRAME: u64 = 102;
    let (b, a) = (tunnel(&before, "dct-a-100"), tunnel(&after, "dct-a-100"));
    let delta = |k: &str| num(&a[k]) - num(&b[k]);
    // The daemon's health probes run all along: the router's ARP replies
    // (tagged, 46 bytes) arrive on the tunnel too, each counted as
    // answered.arp_learned.
    const ARP_FRAME: u64 = 46;
    let probe_replies = num(&a["answered"]["arp_learned"]) - num(&b["answered"]["arp_learned"]);
    assert!(probe_replies > 0, "health probes answered while counting");
    assert_eq!(
        delta("rx_packets") - probe_replies,
        N as u64,
        "echo requests received from the IDC"
    );
    assert_eq!(
        delta("rx_bytes") - probe_replies * ARP_FRAME,
        N as u64 * FRAME
    );
    assert_eq!(
        delta("tx_packets"),
        N as u64,
        "echo replies sent to the IDC"
    );
    assert_eq!(delta("tx_bytes"), N as u64 * FRAME);
    for (reason, n) in a["drops"].as_object().expect("drops") {
        assert_eq!(n, &b["drops"][reason], "drop counter {reason} moved");
    }
    // The other tunnel sees nothing but its own probe replies.
    let other = (tunnel(&before, "dct-a-200"), tunnel(&after, "dct-a-200"));
    let other_delta = |s: &str, k: &str| num(&other.1[s][k]) - num(&other.0[s][k]);
    assert_eq!(
        num(&other.1["rx_packets"]) - num(&other.0["rx_packets"]),
        other_delta("answered", "arp_learned"),
        "other tunnel untouched"
    );

    let conn = |s: &Value| num(&s["connections"][0]["drops"]["unknown_vlan"]);
    assert_eq!(
        conn(&after) - conn(&before),
        4,
        "unknown VLAN frames counted per connection"
    );
    lab.stop_daemon()?;
    Ok(())
}

#[test]
fn check_reports_every_error_and_run_refuses_a_missing_interface() -> Result<()> {
    let lab = GatewayLab::build(&gatewayd_path())?;
    let bad = lab.dir.join("bad.toml");
    std::fs::write(
        &bad,
        tests::topology::config_text(&lab.node)
            .replace("vlan = 200", "vlan = 5000")
            .replace("interface = \"vpc-test\"", "interface = \"no-such-if\""),
    )?;
    let bad_s = bad.to_string_lossy().into_owned();
    let out = lab.gatewayd_cmd(&["check", "-c", &bad_s]).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml:") && err.contains("\"5000\""),
        "{err}"
    );
    // check does not look at interfaces; run does, and says which.
    std::fs::write(
        &bad,
        tests::topology::config_text(&lab.node)
            .replace("interface = \"vpc-test\"", "interface = \"no-such-if\""),
    )?;
    let out = lab.gatewayd_cmd(&["check", "-c", &bad_s]).output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = lab.gatewayd_cmd(&["run", "-c", &bad_s]).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("no-such-if") && err.contains("no such network interface"),
        "{err}"
    );

    // Without privileges: a clear refusal, not a kernel errno.
    let good = lab.dir.join("good.toml");
    std::fs::write(&good, tests::topology::config_text(&lab.node))?;
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gw.name()))
        .args([
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ])
        .arg(&lab.gatewayd)
        .args(["--run-dir", "/tmp", "run", "-c"])
        .arg(&good)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs root"), "{err}");
    Ok(())
}
