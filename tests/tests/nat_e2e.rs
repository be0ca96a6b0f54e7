//! Stateless NAT end to end: two IDCs with the same 10.0.0.0/24 on two
//! lines, a VPC web service behind a port mapping reached with curl, and
//! traceroute across the mappings. Needs root and `cargo build` first.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};
use tests::{
    gatewayd_path,
    topology::{
        GatewayLab, Scenario, IDC_A_HOST_MAPPED, IDC_B_HOST_MAPPED, VPC_MAPPED_HOST_AS_SEEN,
        VPC_PROD_HOST, WEB_MAPPED,
    },
    Netns,
};

fn nat_lab() -> Result<GatewayLab> {
    let mut lab = GatewayLab::build_scenario(&gatewayd_path(), Scenario::OverlappingIdcs)?;
    lab.start_daemon()?;
    lab.wait_peers_learned(Duration::from_secs(10))?;
    Ok(lab)
}

fn idc_b_host(lab: &GatewayLab) -> &Netns {
    &lab.idc_b.as_ref().expect("overlapping-IDC lab").1
}

/// A TCP service on the VPC host that answers each connection with the
/// address it sees the client at. Serves `n` connections.
fn who_am_i_server(
    lab: &GatewayLab,
    port: u16,
    n: usize,
) -> Result<thread::JoinHandle<Result<Vec<String>>>> {
    let listener = lab
        .vpc_prod
        .run_in(move || Ok(TcpListener::bind((VPC_PROD_HOST, port))?))?;
    Ok(thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (mut s, peer) = listener.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line)?;
            // Hold both connections open at the same time for a moment.
            thread::sleep(Duration::from_millis(200));
            writeln!(s, "{} {}", peer.ip(), line.trim())?;
            seen.push(peer.ip().to_string());
        }
        Ok(seen)
    }))
}

fn ask(ns: &Netns, server: String, tag: &'static str) -> Result<String> {
    ns.run_in(move || {
        let addr: std::net::SocketAddr = server.parse()?;
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("client {tag}: connect {addr}"))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        writeln!(c, "{tag}")?;
        let mut reply = String::new();
        BufReader::new(c).read_line(&mut reply)?;
        Ok(reply.trim().to_owned())
    })
}

#[test]
fn overlapping_idcs_talk_to_one_vpc_host_at_the_same_time() -> Result<()> {
    let lab = nat_lab()?;
    let server = who_am_i_server(&lab, 7000, 2)?;
    // Both IDC hosts are 10.0.0.5; both connect at the same time.
    let target = format!("{VPC_PROD_HOST}:7000");
    let (a, b) = thread::scope(|s| {
        let a = s.spawn(|| ask(&lab.idchost, target.clone(), "idc-a"));
        let b = s.spawn(|| ask(idc_b_host(&lab), target.clone(), "idc-b"));
        (a.join().expect("a"), b.join().expect("b"))
    });
    // Each reply reached the IDC that asked, and the VPC host saw each IDC
    // at its own mapped address.
    assert_eq!(a?, format!("{IDC_A_HOST_MAPPED} idc-a"));
    assert_eq!(b?, format!("{IDC_B_HOST_MAPPED} idc-b"));
    let mut seen = server.join().expect("server")?;
    seen.sort();
    assert_eq!(seen, vec![IDC_A_HOST_MAPPED, IDC_B_HOST_MAPPED]);
    // And bulk TCP through both mappings.
    lab.tcp_transfer(&lab.vpc_prod, VPC_PROD_HOST, 2 << 20)?;
    Ok(())
}

#[test]
fn a_vpc_web_service_is_reached_through_its_port_mapping_with_curl() -> Result<()> {
    let lab = nat_lab()?;
    let listener = lab
        .vpc_prod
        .run_in(|| Ok(TcpListener::bind((VPC_PROD_HOST, 80))?))?;
    let server = thread::spawn(move || -> Result<String> {
        let (mut s, peer) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(s.try_clone()?);
        let mut request = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            request.push_str(&line);
        }
        let body = format!("hello from {VPC_PROD_HOST}:80, you are {}\n", peer.ip());
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        Ok(request)
    });
    let out = lab
        .idchost
        .command(
            "curl",
            &["-sS", "--max-time", "10", &format!("http://{WEB_MAPPED}/")],
        )
        .output()
        .context("running curl (cargo xtask setup installs it)")?;
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        body,
        format!("hello from {VPC_PROD_HOST}:80, you are {IDC_A_HOST_MAPPED}\n")
    );
    let request = server.join().expect("server")?;
    assert!(
        request.contains(&format!("Host: {WEB_MAPPED}")),
        "{request}"
    );
    Ok(())
}

/// Hop addresses of `traceroute -n` (a `*` hop gives "*").
fn traceroute(ns: &Netns, dst: &str) -> Result<Vec<String>> {
    let out = ns
        .command("traceroute", &["-n", "-q", "2", "-w", "1", "-m", "6", dst])
        .output()
        .context("running traceroute (cargo xtask setup installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(text
        .lines()
        .skip(1)
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .find(|w| *w != "*")
                .unwrap_or("*")
                .to_owned()
        })
        .collect())
}

#[test]
fn traceroute_across_the_mappings_shows_translated_addresses() -> Result<()> {
    let lab = nat_lab()?;
    // From IDC A to the VPC host it knows as 192.168.50.7: the last hop (the
    // VPC host's port-unreachable, whose quoted probe must be translated
    // back for traceroute to recognise it) shows the mapped address.
    let hops = traceroute(&lab.idchost, VPC_MAPPED_HOST_AS_SEEN)?;
    assert_eq!(
        hops.first().map(String::as_str),
        Some("10.0.0.1"),
        "{hops:?}"
    );
    assert_eq!(
        hops.last().map(String::as_str),
        Some(VPC_MAPPED_HOST_AS_SEEN),
        "{hops:?}"
    );
    // From the VPC to IDC A's host as the VPC knows it (100.64.1.5): the
    // customer router's time-exceeded and the host's port-unreachable come
    // back translated.
    let hops = traceroute(&lab.vpc_prod, IDC_A_HOST_MAPPED)?;
    assert!(hops.contains(&"169.254.100.2".to_owned()), "{hops:?}");
    assert_eq!(
        hops.last().map(String::as_str),
        Some(IDC_A_HOST_MAPPED),
        "{hops:?}"
    );
    Ok(())
}
