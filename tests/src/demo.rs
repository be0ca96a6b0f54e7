//! `cargo xtask demo`: the gateway's main job on a throw-away topology (see
//! `topology`): start `gatewayd run` with the example config, send real
//! traffic both ways over two tunnels of one trunk, show what is dropped,
//! print the per-tunnel stats, stop, clean up (also on Ctrl-C or failure).

use std::{
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Result};

use crate::topology::{
    config_for, ping, GatewayLab, Scenario, IDC_A_HOST_MAPPED, IDC_B_HOST_MAPPED, IDC_HOST,
    LOCAL_IP_100, LOCAL_IP_200, UNKNOWN_VLAN_DST, VPC_MAPPED_HOST_AS_SEEN, VPC_PROD_HOST,
    VPC_TEST_HOST, WEB_MAPPED,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

fn step(title: &str) -> Result<()> {
    check_interrupt()?;
    println!("\n--- {title}");
    Ok(())
}

fn show_ping(label: &str, (sent, received): (u32, u32)) {
    println!("    {label}: {received}/{sent} replies");
}

pub fn run(gatewayd: &Path) -> Result<()> {
    // Ctrl-C / SIGTERM: stop at the next step; dropping the lab removes the
    // daemon, the namespaces and the pins. (ping and gatewayd get the same
    // Ctrl-C from the terminal and end on their own.)
    // SAFETY: installing an async-signal-safe handler (one atomic store).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    println!("Building the lab topology (network namespaces):");
    println!(
        r#"
  IDC A host 10.0.0.5 -- router A ==802.1Q trunk==> [line-a] gateway node [vpc-prod] -- VPC host 172.16.0.10 (+172.16.1.7)
                          VLAN 100 -> tunnel dct-a-100 -> gateway dcg-prod   [vpc-test] -- VPC host 172.17.0.10
                          VLAN 200 -> tunnel dct-a-200 -> gateway dcg-test
                          VLAN 999 -> (not configured: dropped)
  IDC B host 10.0.0.5 -- router B ==802.1Q trunk==> [line-b]
                          VLAN 100 -> tunnel dct-b-100 -> gateway dcg-prod
  NAT: IDC A's 10.0.0.0/24 appears in the VPC as 100.64.1.0/24, IDC B's as 100.64.2.0/24;
       IDCs see VPC 172.16.1.0/24 as 192.168.50.0/24 and the service 172.16.0.10:80 as 192.168.60.1:8080"#
    );
    let mut lab = GatewayLab::build_scenario(gatewayd, Scenario::OverlappingIdcs)?;
    println!("\nExample config ({}):\n", lab.config.display());
    for line in config_for(&lab.node, Scenario::OverlappingIdcs).lines() {
        println!("    {line}");
    }

    step("gatewayd run -c gateway.toml (in the gateway namespace)")?;
    lab.start_daemon()?;
    lab.wait_peers_learned(Duration::from_secs(10))?;
    println!(
        "    running; maps pinned under /sys/fs/bpf/gatewayd/{}/",
        lab.node
    );
    println!("    customer routers' MACs learned from the daemon's tagged ARP probes");

    step("customer router -> gateway interconnect addresses (ARP + ping answered in XDP)")?;
    lab.idc.ip(&["neigh", "flush", "all"])?;
    show_ping(
        &format!("ping {LOCAL_IP_100} (VLAN 100)"),
        ping(&lab.idc, LOCAL_IP_100, 3)?,
    );
    show_ping(
        &format!("ping {LOCAL_IP_200} (VLAN 200)"),
        ping(&lab.idc, LOCAL_IP_200, 3)?,
    );

    step("IDC host <-> VPC hosts, two tunnels on one line, two gateways")?;
    show_ping(
        &format!("{IDC_HOST} -> {VPC_PROD_HOST} (dct-a-100 / dcg-prod)"),
        lab.ping_from_idc(VPC_PROD_HOST, 5)?,
    );
    show_ping(
        &format!("{IDC_HOST} -> {VPC_TEST_HOST} (dct-a-200 / dcg-test)"),
        lab.ping_from_idc(VPC_TEST_HOST, 5)?,
    );
    show_ping(
        &format!("{VPC_TEST_HOST} -> {IDC_HOST} (from the VPC side, dcg-test has no mapping)"),
        ping(&lab.vpc_test, IDC_HOST, 5)?,
    );

    step("TCP: 16 MiB from the IDC host to the VPC host, every byte checked")?;
    let bytes = 16 << 20;
    let took = lab.tcp_transfer(&lab.vpc_prod, VPC_PROD_HOST, bytes)?;
    println!(
        "    {} MiB in {:.2} s ({:.0} Mbit/s through veth and the XDP program)",
        bytes >> 20,
        took.as_secs_f64(),
        bytes as f64 * 8.0 / took.as_secs_f64() / 1e6
    );

    step("Two IDCs with the same 10.0.0.0/24, told apart by peer IP mappings")?;
    let (router_b, host_b) = lab.idc_b.clone().expect("overlapping-IDC lab");
    let _ = &router_b;
    show_ping(
        "IDC A 10.0.0.5 -> 172.16.0.10",
        lab.ping_from_idc(VPC_PROD_HOST, 3)?,
    );
    show_ping(
        "IDC B 10.0.0.5 -> 172.16.0.10",
        ping(&host_b, VPC_PROD_HOST, 3)?,
    );
    show_ping(
        &format!("VPC host -> {IDC_A_HOST_MAPPED} (IDC A's host)"),
        ping(&lab.vpc_prod, IDC_A_HOST_MAPPED, 3)?,
    );
    show_ping(
        &format!("VPC host -> {IDC_B_HOST_MAPPED} (IDC B's host)"),
        ping(&lab.vpc_prod, IDC_B_HOST_MAPPED, 3)?,
    );
    show_ping(
        &format!("IDC A -> {VPC_MAPPED_HOST_AS_SEEN} (VPC 172.16.1.7 via local IP mapping)"),
        lab.ping_from_idc(VPC_MAPPED_HOST_AS_SEEN, 3)?,
    );

    step("A VPC web service through its port mapping (curl from IDC A)")?;
    let listener = lab
        .vpc_prod
        .run_in(|| Ok(std::net::TcpListener::bind((VPC_PROD_HOST, 80))?))?;
    let server = std::thread::spawn(move || -> Result<()> {
        use std::io::{BufRead, Write};
        let (mut s, peer) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut reader = std::io::BufReader::new(s.try_clone()?);
        let mut line = String::new();
        while reader.read_line(&mut line)? > 2 {
            line.clear();
        }
        let body = format!("hello from {VPC_PROD_HOST}:80, you are {}\n", peer.ip());
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        Ok(())
    });
    let out = lab
        .idchost
        .command(
            "curl",
            &["-sS", "--max-time", "5", &format!("http://{WEB_MAPPED}/")],
        )
        .output()?;
    print!(
        "    curl http://{WEB_MAPPED}/ -> {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let _ = server.join();

    step("traceroute -n 192.168.50.7 from IDC A (ICMP errors translated back)")?;
    let out = lab
        .idchost
        .command(
            "traceroute",
            &[
                "-n",
                "-q",
                "1",
                "-w",
                "1",
                "-m",
                "5",
                VPC_MAPPED_HOST_AS_SEEN,
            ],
        )
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    {line}");
    }
    println!("    (hop 2 is the gateway itself: it does not answer TTL expiry yet)");

    step("IDC host -> 172.31.0.10 over VLAN 999, which no tunnel uses")?;
    show_ping(
        &format!("{IDC_HOST} -> {UNKNOWN_VLAN_DST}"),
        lab.ping_from_idc(UNKNOWN_VLAN_DST, 3)?,
    );
    println!("    (dropped by the gateway; counted as unknown_vlan on connection line-a)");

    step("gatewayd killed (-9) and restarted while the IDC host pings every 5 ms")?;
    let mut background =
        crate::topology::BackgroundPing::start(&lab.idchost, VPC_TEST_HOST, 600, "0.005")?;
    std::thread::sleep(Duration::from_millis(300));
    lab.kill_daemon()?;
    println!("    daemon gone; the pinned XDP program keeps forwarding");
    std::thread::sleep(Duration::from_millis(800));
    lab.start_daemon()?;
    println!(
        "    restarted: pinned maps and links adopted, program swapped in with bpf_link_update"
    );
    let still_running = background.running()?;
    let (sent, received) = background.finish()?;
    println!(
        "    {sent} echo requests, {received} replies{}",
        if still_running {
            ""
        } else {
            " (the ping ended before the restart did)"
        }
    );

    step("gatewayd stats")?;
    print!("{}", lab.stats_table()?);

    step("eBPF-side log lines in the daemon's log")?;
    for line in lab.log().lines().filter(|l| l.contains("peer router MAC")) {
        println!("    {line}");
    }

    step("gatewayd down (detaches XDP, removes the pins, the daemon exits) and the lab")?;
    print!("    {}", lab.down()?);
    drop(lab);
    println!("    done");
    Ok(())
}
