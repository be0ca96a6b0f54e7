//! Operating a node under traffic: config reloads, daemon crashes and
//! restarts, `--fresh` and `gatewayd down`, all with real packets through
//! the namespace lab. Zero loss is asserted from ping's own count.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;
use tests::{
    gatewayd_path,
    topology::{
        config_text, num, tunnel, BackgroundPing, GatewayLab, VPC_PROD_HOST, VPC_TEST_HOST,
    },
};

/// A lab with the daemon up, peers learned and neighbours frozen, so no
/// ARP exchange can make a packet wait or drop while a test counts.
fn ready_lab() -> Result<GatewayLab> {
    let mut lab = GatewayLab::build(&gatewayd_path())?;
    lab.start_daemon()?;
    lab.wait_peers_learned(Duration::from_secs(10))?;
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 2)?, (2, 2));
    assert_eq!(lab.ping_from_idc(VPC_TEST_HOST, 2)?, (2, 2));
    lab.freeze_neighbours()?;
    Ok(lab)
}

/// Changes that touch every kind of map entry but none of the traffic
/// between the IDC host (10.0.0.5) and the prod VPC: an extra tunnel with
/// its own VLAN, route and peer mapping; an extra connection (a port to
/// attach and detach) with a tunnel; an extra route on the tunnel that
/// carries the traffic (same gateway, same LPM trie); an extra VPC CIDR and
/// a port mapping on the other gateway.
fn churned_config(node: &str) -> String {
    config_text(node)
        .replace(
            "peer_ip = \"169.254.100.2\"\nroutes = [\"10.0.0.0/16\"]",
            "peer_ip = \"169.254.100.2\"\nroutes = [\"10.0.0.0/16\", \"10.77.0.0/16\"]",
        )
        .replace(
            "vpc_cidrs = [\"172.17.0.0/16\"]\ninterface = \"vpc-test\"\n",
            "vpc_cidrs = [\"172.17.0.0/16\", \"172.18.0.0/16\"]\ninterface = \"vpc-test\"\n\n[[gateway.local_port_mapping]]\nprotocol = \"udp\"\noriginal = \"172.17.0.10:53\"\nmapped = \"192.168.70.1:5353\"\n",
        )
        + r#"
[[tunnel]]
name = "dct-a-300"
connection = "line-a"
vlan = 300
gateway = "dcg-test"
local_ip = "169.254.130.1/30"
peer_ip = "169.254.130.2"
routes = ["10.30.0.0/16"]

[[tunnel.peer_ip_mapping]]
original = "10.31.0.0/24"
mapped = "100.64.31.0/24"

[[connection]]
name = "line-x"
interface = "extra0"

[[tunnel]]
name = "dct-x-100"
connection = "line-x"
vlan = 100
gateway = "dcg-test"
local_ip = "169.254.140.1/30"
peer_ip = "169.254.140.2"
routes = ["10.40.0.0/16"]
"#
}

#[test]
fn hundred_reloads_under_traffic_lose_no_packet() -> Result<()> {
    let lab = ready_lab()?;
    let basic = config_text(&lab.node);
    let churned = churned_config(&lab.node);
    assert_ne!(basic, churned);
    // The extra connection's port (its peer end stays unused).
    lab.gw.ip(&[
        "link", "add", "extra0", "type", "veth", "peer", "name", "extra1",
    ])?;
    lab.gw.link_up("extra0")?;
    lab.gw.link_up("extra1")?;
    let has_extra_link = |lab: &GatewayLab| -> Result<bool> {
        Ok(lab.pinned_links()?.keys().any(|k| k.starts_with("extra0@")))
    };

    // 2 ms apart for at least 10 s; the reloads (about 15 ms each) must
    // finish inside that window, or the test fails as proving nothing.
    let mut ping = BackgroundPing::start(&lab.idchost, VPC_PROD_HOST, 5_000, "0.002")?;
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for i in 0..100 {
        let text = if i % 2 == 0 { &churned } else { &basic };
        lab.write_config(text)?;
        lab.reload()?;
        if i == 0 {
            // The churn is real: the extra tunnels appear in the stats and
            // the extra port gets its XDP link.
            let stats = lab.stats_json()?;
            tunnel(&stats, "dct-a-300");
            tunnel(&stats, "dct-x-100");
            assert!(has_extra_link(&lab)?, "extra0 attached on reload");
        }
    }
    let took = started.elapsed();
    if !ping.running()? {
        bail!("100 reloads took {took:?}, longer than the traffic window; the test proves nothing");
    }
    let (sent, received) = ping.finish()?;
    println!("100 reloads in {took:?}; ping: {sent} sent, {received} received");
    assert_eq!(received, sent, "packets lost during 100 reloads");
    let stats = lab.stats_json()?;
    assert!(
        stats["tunnels"]
            .as_array()
            .is_some_and(|ts| ts.iter().all(|t| t["name"] != "dct-a-300")),
        "the last reload (basic config) removed the extra tunnel: {stats}"
    );
    assert!(!has_extra_link(&lab)?, "extra0 detached on reload");
    Ok(())
}

#[test]
fn a_route_change_takes_effect_within_one_reload() -> Result<()> {
    let lab = ready_lab()?;
    let basic = config_text(&lab.node);
    // dcg-prod no longer routes the IDC host's prefix: replies from the VPC
    // have nowhere to go.
    let without = basic.replacen(
        "routes = [\"10.0.0.0/16\"]",
        "routes = [\"10.1.0.0/16\"]",
        1,
    );
    assert_ne!(basic, without);

    // A VPC packet no tunnel route covers is not the gateway's: it goes to
    // the node's kernel (which has no route back to the IDC either).
    let unrouted = |s: &Value| num(&s["gateways"][0]["to_kernel"]["local"]);
    lab.write_config(&without)?;
    lab.reload()?;
    let before = lab.stats_json()?;
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 3)?, (3, 0));
    let after = lab.stats_json()?;
    assert_eq!(
        unrouted(&after) - unrouted(&before),
        3,
        "every reply left unrouted right after the reload: {after}"
    );

    lab.write_config(&basic)?;
    lab.reload()?;
    assert_eq!(
        lab.ping_from_idc(VPC_PROD_HOST, 3)?,
        (3, 3),
        "route back right after the reload"
    );
    Ok(())
}

#[test]
fn a_rejected_reload_changes_nothing_and_says_why() -> Result<()> {
    let lab = ready_lab()?;
    let before = lab.stats_json()?;
    let broken = config_text(&lab.node).replace("vlan = 200", "vlan = 5000");
    lab.write_config(&broken)?;
    let err = lab
        .reload()
        .expect_err("a config with VLAN 5000 must be rejected");
    let msg = format!("{err:#}");
    assert!(msg.contains("5000"), "the error names the bad value: {msg}");
    assert_eq!(lab.ping_from_idc(VPC_TEST_HOST, 3)?, (3, 3));
    let after = lab.stats_json()?;
    assert_eq!(
        before["tunnels"].as_array().map(Vec::len),
        after["tunnels"].as_array().map(Vec::len)
    );
    Ok(())
}

#[test]
fn kill_9_and_restart_lose_no_packet_and_keep_counters() -> Result<()> {
    let mut lab = ready_lab()?;
    let links_before = lab.pinned_links()?;
    assert_eq!(
        links_before.len(),
        3,
        "one pinned link per port (line-a, vpc-prod, vpc-test): {links_before:?}"
    );

    // Echo requests: every frame received on the tunnel except the
    // router's answers to the daemon's health probes.
    let rx = |s: &Value| {
        let t = tunnel(s, "dct-a-100");
        num(&t["rx_packets"]) - num(&t["answered"]["arp_learned"])
    };
    let tx = |s: &Value| num(&tunnel(s, "dct-a-100")["tx_packets"]);
    let before = lab.stats_json()?;
    let mut ping = BackgroundPing::start(&lab.idchost, VPC_PROD_HOST, 3_000, "0.003")?;
    std::thread::sleep(Duration::from_millis(500));
    lab.kill_daemon()?;
    // Down for a while: the pinned program keeps forwarding alone.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        lab.pinned_links()?,
        links_before,
        "links untouched by the crash"
    );
    lab.start_daemon()?;
    if !ping.running()? {
        bail!("the restart outlasted the traffic window; the test proves nothing");
    }
    let (sent, received) = ping.finish()?;
    println!("kill -9 + restart under traffic: {sent} sent, {received} received");
    assert_eq!(received, sent, "packets lost across kill -9 and restart");

    // Counters continued through the crash and the restart (the restarted
    // daemon adopted the pinned maps): every request and reply is in them.
    let after = lab.stats_json()?;
    assert_eq!(
        rx(&after) - rx(&before),
        u64::from(sent),
        "echo requests counted"
    );
    assert_eq!(
        tx(&after) - tx(&before),
        u64::from(received),
        "echo replies counted"
    );

    // The same links now run the new program (bpf_link_update).
    let links_after = lab.pinned_links()?;
    for (name, (link, prog)) in &links_before {
        let (link2, prog2) = links_after[name];
        assert_eq!(link2, *link, "{name}: same link adopted");
        assert_ne!(
            prog2, *prog,
            "{name}: program replaced by the restarted daemon's"
        );
    }
    assert!(
        lab.log().contains("adopted the pinned XDP link"),
        "{}",
        lab.log()
    );
    Ok(())
}

#[test]
fn fresh_resets_state_and_down_removes_the_datapath() -> Result<()> {
    let mut lab = ready_lab()?;
    let rx = |s: &Value| num(&tunnel(s, "dct-a-100")["rx_packets"]);
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 20)?, (20, 20));
    let counted = rx(&lab.stats_json()?);
    assert!(counted >= 22);

    // SIGTERM leaves the datapath: traffic flows with no daemon.
    lab.stop_daemon()?;
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 3)?, (3, 3));

    // An upgrade that changed a cache's layout: the daemon replaces the
    // cache (it holds nothing that must survive) and keeps everything else,
    // counters included.
    pin_map_of_another_shape(&lab.pin_dir(), "FLOW_CACHE")?;
    lab.start_daemon()?;
    assert!(
        lab.log().contains("FLOW_CACHE: recreated"),
        "the daemon says it replaced the cache:\n{}",
        lab.log()
    );
    assert!(rx(&lab.stats_json()?) >= counted, "counters kept");
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 3)?, (3, 3));
    let flow_cache = lab.pin_dir().join("FLOW_CACHE");
    let flow_cache_pin = || -> Result<String> {
        tests::run(
            "bpftool",
            &["map", "show", "pinned", &flow_cache.to_string_lossy()],
        )
    };
    let shown = flow_cache_pin()?;
    let want = format!(
        "value {}B",
        std::mem::size_of::<gateway_common::FlowCacheSet>()
    );
    assert!(
        shown.contains(&want),
        "FLOW_CACHE not recreated with {want}: {shown}"
    );
    lab.stop_daemon()?;

    // An "upgrade" whose map layout differs: a pinned map of another shape.
    // Adopting it would make both sides read entries of the wrong size, so
    // run refuses, names the map, and points at --fresh; traffic goes on.
    // A cache of another shape beside it stays as it is: a refused start
    // changes nothing.
    pin_map_of_another_shape(&lab.pin_dir(), "NODE_COUNTERS")?;
    pin_map_of_another_shape(&lab.pin_dir(), "FLOW_CACHE")?;
    let err = lab.start_daemon().expect_err("incompatible pinned map");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("NODE_COUNTERS: pinned (key 4, value 8, entries 1)")
            && msg.contains("--fresh"),
        "{msg}"
    );
    let shown = flow_cache_pin()?;
    assert!(
        shown.contains("value 8B"),
        "a refused start replaced FLOW_CACHE: {shown}"
    );
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 3)?, (3, 3));

    lab.start_daemon_with(&["--fresh"])?;
    assert!(
        lab.log().contains("--fresh: removed"),
        "--fresh says it resets state:\n{}",
        lab.log()
    );
    let stats = lab.stats_json()?;
    // At most the customer router's answers to the daemon's ARP probes
    // (the learned peer MACs were reset too).
    assert!(rx(&stats) <= 3, "counters reset by --fresh: {stats}");
    lab.wait_peers_learned(Duration::from_secs(10))?;
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 2)?, (2, 2));

    let out = lab.down()?;
    assert!(out.contains("datapath detached"), "{out}");
    assert!(!lab.pin_dir().exists(), "pins removed by down");
    // Nothing forwards any more: no XDP on the ports.
    let ifaces = lab.gw.ip(&["-d", "link", "show"])?;
    assert!(
        !ifaces.contains("prog/xdp"),
        "XDP still attached:\n{ifaces}"
    );
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 2)?.1, 0);

    // down without a daemon, with nothing pinned: says so, succeeds.
    let out = lab.down()?;
    assert!(out.contains("nothing pinned"), "{out}");
    Ok(())
}

/// The pinned pipeline arrays (`<pin dir>/PIPELINE_<entry program id>`)
/// as (program id, path).
fn pipeline_pins(lab: &GatewayLab) -> Result<Vec<(u64, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(lab.pin_dir())? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // PIPELINE_UNAVAILABLE is a map of its own, not a program id.
        if let Some(Ok(id)) = name.strip_prefix("PIPELINE_").map(str::parse) {
            out.push((id, path));
        }
    }
    Ok(out)
}

/// The one program every pinned link runs.
fn linked_program(lab: &GatewayLab) -> Result<u64> {
    let progs: std::collections::BTreeSet<u64> = lab
        .pinned_links()?
        .values()
        .map(|(_, prog)| *prog)
        .collect();
    assert_eq!(
        progs.len(),
        1,
        "every port runs the same program: {progs:?}"
    );
    Ok(progs.into_iter().next().unwrap_or_default())
}

#[test]
fn the_pipeline_program_outlives_the_daemon_and_is_pinned_once_per_program() -> Result<()> {
    // ICMP never takes the flow cache's fast path: every echo below runs
    // the full pipeline, the program the entry program tail-calls.
    let mut lab = ready_lab()?;
    let first = linked_program(&lab)?;
    let pins = pipeline_pins(&lab)?;
    assert_eq!(
        pins.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![first],
        "one pipeline array, pinned under the running program's id"
    );

    // Without a daemon (after SIGTERM, after kill -9) the pinned array
    // keeps the pipeline reachable; each start pins its own program's and
    // removes the one it replaced.
    lab.stop_daemon()?;
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 3)?, (3, 3));
    let mut running = first;
    for _ in 0..2 {
        lab.start_daemon()?;
        let now = linked_program(&lab)?;
        assert_ne!(now, running, "the restart loaded its own program");
        running = now;
        let pins = pipeline_pins(&lab)?;
        assert_eq!(
            pins.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![running],
            "the replaced program's pipeline array was removed"
        );
        lab.kill_daemon()?;
        assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 3)?, (3, 3));
    }
    lab.start_daemon()?;
    let pins = pipeline_pins(&lab)?;
    assert!(
        lab.log()
            .contains("removed the pipeline of a program no port runs any more"),
        "{}",
        lab.log()
    );
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 3)?, (3, 3));
    assert_eq!(num(&lab.stats_json()?["pipeline_unavailable"]), 0);

    // Tampering: the array's pin removed while no daemon holds it. The
    // kernel empties the array; the entry program drops what it cannot
    // hand on, and counts it.
    lab.stop_daemon()?;
    std::fs::remove_file(&pins[0].1)?;
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 3)?.1, 0, "no pipeline");
    lab.start_daemon()?;
    let stats = lab.stats_json()?;
    assert!(
        num(&stats["pipeline_unavailable"]) >= 3,
        "the dropped echo requests are counted: {stats}"
    );
    let table = lab.stats_table()?;
    assert!(
        table.contains("WARNING:") && table.contains("no pipeline program"),
        "{table}"
    );
    // The restart loaded a pipeline again.
    lab.wait_peers_learned(Duration::from_secs(10))?;
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 3)?, (3, 3));
    assert_eq!(pipeline_pins(&lab)?.len(), 1);
    Ok(())
}

/// Replaces the pinned map `name` with a per-CPU array of another shape
/// (key 4, value 8, 1 entry), as an earlier gatewayd with another layout
/// would have left it.
fn pin_map_of_another_shape(pin_dir: &std::path::Path, name: &str) -> Result<()> {
    let pin = pin_dir.join(name);
    std::fs::remove_file(&pin)?;
    tests::run(
        "bpftool",
        &[
            "map",
            "create",
            &pin.to_string_lossy(),
            "type",
            "percpu_array",
            "key",
            "4",
            "value",
            "8",
            "entries",
            "1",
            "name",
            name,
        ],
    )?;
    Ok(())
}

/// The value of the one sample of `metric` whose labels include all of
/// `labels` (`key="value"` pairs) in an OpenMetrics text.
fn sample(text: &str, metric: &str, labels: &[&str]) -> u64 {
    let hits: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .collect();
    assert_eq!(hits.len(), 1, "{metric} {labels:?}: {hits:?}\n{text}");
    hits[0]
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {}", hits[0]))
}

#[test]
fn metrics_scrape_and_stats_watch_show_the_traffic() -> Result<()> {
    let mut lab = GatewayLab::build(&gatewayd_path())?;
    // Inside the gateway namespace (the daemon runs there): its loopback.
    let addr = "127.0.0.1:9469";
    lab.start_daemon_with(&["--metrics-address", addr, "--log-level", "debug"])?;
    lab.wait_peers_learned(Duration::from_secs(10))?;
    assert_eq!(lab.ping_from_idc(VPC_PROD_HOST, 5)?, (5, 5));
    assert_eq!(
        lab.ping_from_idc(tests::topology::UNKNOWN_VLAN_DST, 2)?.1,
        0
    );

    // A real scrape over HTTP, as Prometheus does it.
    let url = format!("http://{addr}/metrics");
    let scrape = || lab.gw.exec(&["curl", "-sS", "--fail", "-D", "-", &url]);
    let text = scrape()?;
    assert!(
        text.to_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{text}"
    );
    let stats = lab.stats_json()?;
    let t = tunnel(&stats, "dct-a-100");
    let labels = [
        "tunnel=\"dct-a-100\"",
        "gateway=\"dcg-prod\"",
        "connection=\"line-a\"",
        "vlan=\"100\"",
    ];
    let with = |extra: &'static str| {
        let mut l = labels.to_vec();
        l.push(extra);
        l
    };
    let rx = sample(
        &text,
        "gatewayd_tunnel_packets_total",
        &with("direction=\"idc_to_vpc\""),
    );
    let tx = sample(
        &text,
        "gatewayd_tunnel_packets_total",
        &with("direction=\"vpc_to_idc\""),
    );
    // The scrape and the stats read the same maps; between the two only a
    // health probe answer (one per 200 ms) may have arrived.
    assert!(
        (rx..=rx + 2).contains(&num(&t["rx_packets"])),
        "scrape {rx}, stats {}",
        num(&t["rx_packets"])
    );
    assert_eq!(tx, num(&t["tx_packets"]));
    assert!(rx >= 5 && tx >= 5, "rx {rx} tx {tx}");
    assert_eq!(
        sample(
            &text,
            "gatewayd_tunnel_drops_total",
            &with("reason=\"no_route\"")
        ),
        0
    );
    assert_eq!(
        sample(
            &text,
            "gatewayd_connection_drops_total",
            &["name=\"line-a\"", "reason=\"unknown_vlan\""]
        ),
        2,
        "per-connection drops"
    );
    assert_eq!(
        sample(
            &text,
            "gatewayd_nat_drops_total",
            &with("reason=\"nat_fragment\"")
        ),
        0
    );
    assert_eq!(sample(&text, "gatewayd_tunnel_peer_resolved", &labels), 1);
    // 5 echo requests to one VPC host and 5 replies back: the destination
    // cache answered most of them (each CPU misses a destination once, and
    // the daemon's ticks may invalidate it on kernel events).
    let hits = sample(
        &text,
        "gatewayd_dest_cache_lookups_total",
        &["result=\"hit\""],
    );
    let misses = sample(
        &text,
        "gatewayd_dest_cache_lookups_total",
        &["result=\"miss\""],
    );
    assert!(hits + misses >= 10, "hits {hits} misses {misses}");
    assert!(hits >= 1, "hits {hits} misses {misses}");
    assert_eq!(
        num(&stats["dest_cache"]["hits"]) + num(&stats["dest_cache"]["misses"]),
        hits + misses,
        "stats --json and the scrape read the same counters"
    );
    // Anything but GET /metrics is a 404.
    assert!(lab
        .gw
        .exec(&["curl", "-sS", "--fail", &format!("http://{addr}/")])
        .is_err());

    // stats --watch: rates per tunnel while traffic runs on one of them.
    let ping = BackgroundPing::start(&lab.idchost, VPC_PROD_HOST, 300, "0.01")?;
    let out = lab
        .gatewayd_cmd(&[
            "stats",
            "--node",
            &lab.node,
            "--watch",
            "--interval",
            "0.5",
            "--count",
            "2",
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let watch = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = watch
        .lines()
        .filter(|l| l.starts_with("dct-a-"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "two refreshes of two tunnels:\n{watch}");
    for row in &rows {
        // TUNNEL GATEWAY CONNECTION VLAN RX_PPS ...
        let rx_pps: f64 = row[4].parse().unwrap_or(-1.0);
        // The idle tunnel receives only the router's answers to the health
        // probes (5/s), the busy one 50+ echo requests/s on top.
        if row[0] == "dct-a-100" {
            assert!(rx_pps > 20.0, "traffic shows as a rate:\n{watch}");
        } else {
            assert!(rx_pps <= 10.0, "idle tunnel:\n{watch}");
        }
        // ... PEER STATE: each line's health, as the prober sees it.
        assert_eq!(row[10], "up", "line state in --watch:\n{watch}");
    }
    assert_eq!(ping.finish()?.1, 300);

    // eBPF-side aya-log lines reach the daemon's structured log, and the
    // level flag lets debug lines through.
    let log = lab.log();
    assert!(log.contains("peer router MAC"), "{log}");
    assert!(log.contains("DEBUG"), "--log-level debug:\n{log}");
    // A second scrape after the traffic: the counters only grew.
    let again = scrape()?;
    assert!(
        sample(
            &again,
            "gatewayd_tunnel_packets_total",
            &with("direction=\"idc_to_vpc\"")
        ) >= rx + 300
    );
    Ok(())
}

#[test]
fn run_refuses_a_taken_metrics_address_before_touching_anything() -> Result<()> {
    let mut lab = GatewayLab::build(&gatewayd_path())?;
    // Something already listens on the port in the gateway namespace.
    let _taken = lab
        .gw
        .run_in(|| Ok(std::net::TcpListener::bind("127.0.0.1:9470")?))?;
    let err = lab
        .start_daemon_with(&["--metrics-address", "127.0.0.1:9470"])
        .expect_err("port taken");
    let msg = format!("{err:#}");
    assert!(msg.contains("cannot listen on 127.0.0.1:9470"), "{msg}");
    assert!(
        !lab.pin_dir().exists(),
        "nothing pinned by the failed start"
    );
    Ok(())
}

#[test]
fn bpftool_shows_field_names_for_every_pinned_map() -> Result<()> {
    let mut lab = GatewayLab::build(&gatewayd_path())?;
    lab.start_daemon()?;
    let mut maps = 0;
    let mut pipelines = 0;
    for entry in std::fs::read_dir(lab.pin_dir())? {
        let path = entry?.path();
        if path.is_dir() {
            continue; // links/
        }
        maps += 1;
        let text = tests::run(
            "bpftool",
            &["-j", "map", "dump", "pinned", &path.to_string_lossy()],
        )?;
        let dump: Value = serde_json::from_str(&text)?;
        let entries = dump.as_array().expect("a JSON array");
        // With BTF, bpftool adds a "formatted" rendering (field names) to
        // every entry; without it only hex bytes. Empty maps prove nothing.
        if let Some(first) = entries.first() {
            assert!(
                first.get("formatted").is_some(),
                "{}: no BTF field names in {first}",
                path.display()
            );
        }
        // A pipeline array (`PIPELINE_<entry program id>`) holds the id of
        // the pipeline program that entry program jumps to.
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if let Some(Ok(entry)) = name.strip_prefix("PIPELINE_").map(str::parse::<u64>) {
            let prog = entries[0]["formatted"]["value"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: no program id in {dump}"));
            let prog_name = |id: u64| -> Result<Value> {
                let shown: Value = serde_json::from_str(&tests::run(
                    "bpftool",
                    &["-j", "prog", "show", "id", &id.to_string()],
                )?)?;
                Ok(shown["name"].clone())
            };
            assert_eq!(prog_name(prog)?, "gateway_pipeline", "{name}");
            assert_eq!(prog_name(entry)?, "gateway", "{name}");
            pipelines += 1;
        }
    }
    assert!(maps >= 13, "every map pinned ({maps})");
    assert_eq!(pipelines, 1, "one pipeline array for the running program");
    let tunnels = tests::run(
        "bpftool",
        &[
            "map",
            "dump",
            "pinned",
            &lab.pin_dir().join("TUNNEL_BY_VLAN").to_string_lossy(),
        ],
    )?;
    assert!(tunnels.contains("\"peer_ip\""), "{tunnels}");
    Ok(())
}

#[test]
fn json_logs_are_one_object_per_line_including_ebpf_lines() -> Result<()> {
    let mut lab = GatewayLab::build(&gatewayd_path())?;
    lab.start_daemon_with(&["--log-format", "json"])?;
    lab.wait_peers_learned(Duration::from_secs(10))?;
    let log = lab.log();
    let mut ebpf_line = None;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        let message = v["fields"]["message"].as_str().unwrap_or_default();
        if message.contains("peer router MAC") {
            ebpf_line = Some(v.clone());
        }
    }
    let ebpf_line = ebpf_line.unwrap_or_else(|| panic!("no eBPF log line in:\n{log}"));
    assert_eq!(ebpf_line["level"], "INFO", "{ebpf_line}");
    Ok(())
}
