//! Prometheus `/metrics`: the same counters as `gatewayd stats`, read from
//! the maps at scrape time (no second copy that could drift).
//!
//! Off unless `[node] metrics_address` (or `gatewayd run --metrics-address`)
//! is set. Served with hyper (HTTP/1.1); the text is encoded by
//! `prometheus-client` in the OpenMetrics format Prometheus scrapes.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::{body::Bytes, header, Request, Response, StatusCode};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tracing::{info, warn};

use crate::stats::{PortStats, Snapshot, TunnelStats};

/// Labels of a per-tunnel series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabels {
    tunnel: String,
    gateway: String,
    connection: String,
    vlan: String,
}

impl TunnelLabels {
    fn of(t: &TunnelStats) -> Self {
        Self {
            tunnel: t.name.clone(),
            gateway: t.gateway.clone(),
            connection: t.connection.clone(),
            vlan: t.vlan.to_string(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelDirection {
    #[prometheus(flatten)]
    tunnel: TunnelLabels,
    /// `idc_to_vpc` (received from the customer) or `vpc_to_idc`.
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelReason {
    #[prometheus(flatten)]
    tunnel: TunnelLabels,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortDirection {
    name: String,
    interface: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortReason {
    name: String,
    interface: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Drop reasons that belong to NAT (also in the general drop counters).
const NAT_REASONS: [&str; 2] = ["nat_fragment", "nat_icmp_malformed"];

type Counters<L> = Family<L, Counter>;

fn counter<
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Counters<L> {
    let family = Counters::<L>::default();
    registry.register(name, help, family.clone());
    family
}

/// The exposition text for one snapshot.
pub fn render(s: &Snapshot) -> Result<String> {
    let mut r = Registry::default();
    let packets = counter::<TunnelDirection>(
        &mut r,
        "gatewayd_tunnel_packets",
        "Frames on a tunnel by direction (idc_to_vpc = received from the customer router)",
    );
    let bytes = counter::<TunnelDirection>(
        &mut r,
        "gatewayd_tunnel_bytes",
        "Bytes of whole frames on a tunnel (802.1Q tag included) by direction",
    );
    let drops = counter::<TunnelReason>(
        &mut r,
        "gatewayd_tunnel_drops",
        "Frames of a tunnel the datapath dropped, by reason",
    );
    let nat_drops = counter::<TunnelReason>(
        &mut r,
        "gatewayd_nat_drops",
        "Frames of a tunnel dropped because they cannot be translated statelessly, by reason",
    );
    let answered = counter::<TunnelReason>(
        &mut r,
        "gatewayd_tunnel_answered",
        "Frames of a tunnel answered by the datapath itself (ARP, ICMP echo, probe replies)",
    );
    let to_kernel = counter::<TunnelReason>(
        &mut r,
        "gatewayd_tunnel_to_kernel",
        "Frames of a tunnel handed to the node's kernel, by reason",
    );
    let peer = Family::<TunnelLabels, Gauge>::default();
    r.register(
        "gatewayd_tunnel_peer_resolved",
        "1 when the customer router's MAC is learned (VPC->IDC traffic can flow)",
        peer.clone(),
    );
    let up = Family::<TunnelLabels, Gauge>::default();
    r.register(
        "gatewayd_tunnel_up",
        "1 when the tunnel's line is healthy (probes answered, link up) and may carry traffic",
        up.clone(),
    );
    let since = Family::<TunnelLabels, Gauge>::default();
    r.register(
        "gatewayd_tunnel_state_since_seconds",
        "Unix time at which the tunnel entered its current up/down state",
        since.clone(),
    );
    for t in &s.tunnels {
        let l = TunnelLabels::of(t);
        if let Some(h) = &t.health {
            up.get_or_create(&l).set(i64::from(h.state == "up"));
            since.get_or_create(&l).set((h.since_unix_ms / 1000) as i64);
        }
        for (direction, p, b) in [
            ("idc_to_vpc", t.rx_packets, t.rx_bytes),
            ("vpc_to_idc", t.tx_packets, t.tx_bytes),
        ] {
            let d = TunnelDirection {
                tunnel: l.clone(),
                direction,
            };
            packets.get_or_create(&d).inc_by(p);
            bytes.get_or_create(&d).inc_by(b);
        }
        for (family, fates) in [
            (&drops, &t.drops),
            (&answered, &t.answered),
            (&to_kernel, &t.to_kernel),
        ] {
            for (reason, n) in fates {
                let key = TunnelReason {
                    tunnel: l.clone(),
                    reason: reason.clone(),
                };
                family.get_or_create(&key).inc_by(*n);
                if std::ptr::eq(family, &drops) && NAT_REASONS.contains(&reason.as_str()) {
                    nat_drops.get_or_create(&key).inc_by(*n);
                }
            }
        }
        peer.get_or_create(&l).set(i64::from(t.peer_mac.is_some()));
    }
    ports(
        &mut r,
        "connection",
        "a connection (trunk port) not tied to a tunnel (untagged, unknown VLAN, ...)",
        &s.connections,
    );
    ports(
        &mut r,
        "gateway",
        "a gateway's VPC port not tied to a tunnel (no route, unknown destination, ...)",
        &s.gateways,
    );
    let reloads = counter::<ResultLabel>(
        &mut r,
        "gatewayd_reloads",
        "Config reloads by result (rejected reloads change nothing)",
    );
    reloads
        .get_or_create(&ResultLabel { result: "applied" })
        .inc_by(s.daemon.reloads_applied);
    reloads
        .get_or_create(&ResultLabel { result: "rejected" })
        .inc_by(s.daemon.reloads_rejected);
    for (name, help, counts) in [
        (
            "gatewayd_dest_cache_lookups",
            "Destination cache lookups by result (a miss pays the route lookup and the kernel FIB)",
            &s.dest_cache,
        ),
        (
            "gatewayd_flow_cache_lookups",
            "Flow cache lookups of TCP/UDP packets by result (a hit is forwarded on the fast path, a miss takes the full pipeline)",
            &s.flow_cache,
        ),
    ] {
        let lookups = counter::<ResultLabel>(&mut r, name, help);
        lookups
            .get_or_create(&ResultLabel { result: "hit" })
            .inc_by(counts.hits);
        lookups
            .get_or_create(&ResultLabel { result: "miss" })
            .inc_by(counts.misses);
    }
    let unavailable = Counter::<u64>::default();
    r.register(
        "gatewayd_pipeline_unavailable_frames",
        "Frames dropped because the entry program had no pipeline program to hand a flow cache miss to (its pinned PIPELINE array emptied): 0 unless the pins were tampered with",
        unavailable.clone(),
    );
    unavailable.inc_by(s.pipeline_unavailable);
    let mut out = String::new();
    encode(&mut out, &r).context("encoding metrics")?;
    Ok(out)
}

/// Per-port series (`gatewayd_<kind>_packets_total` and `..._drops_total`).
fn ports(r: &mut Registry, kind: &str, what: &str, stats: &[PortStats]) {
    let packets = counter::<PortDirection>(
        r,
        &format!("gatewayd_{kind}_packets"),
        &format!("Frames on {what}, by direction (rx = received on the port)"),
    );
    let drops = counter::<PortReason>(
        r,
        &format!("gatewayd_{kind}_drops"),
        &format!("Frames on {what} that the datapath dropped, by reason"),
    );
    for p in stats {
        for (direction, n) in [("rx", p.rx_packets), ("tx", p.tx_packets)] {
            packets
                .get_or_create(&PortDirection {
                    name: p.name.clone(),
                    interface: p.interface.clone(),
                    direction,
                })
                .inc_by(n);
        }
        for (reason, n) in &p.drops {
            drops
                .get_or_create(&PortReason {
                    name: p.name.clone(),
                    interface: p.interface.clone(),
                    reason: reason.clone(),
                })
                .inc_by(*n);
        }
    }
}

/// Something that produces the current snapshot (the daemon's state).
pub type SnapshotSource = Arc<dyn Fn() -> Result<Snapshot> + Send + Sync>;

/// Binds the endpoint; fails (and with it `gatewayd run`) when the address
/// is taken or not local, so a typo is seen at start, not at the first scrape.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("metrics endpoint: cannot listen on {addr}"))
}

/// Serves `GET /metrics` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, source: SnapshotSource) {
    if let Ok(addr) = listener.local_addr() {
        info!("metrics: serving http://{addr}/metrics");
    }
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let source = source.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let source = source.clone();
                async move { Ok::<_, Infallible>(respond(&req, &source)) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

fn respond<B>(req: &Request<B>, source: &SnapshotSource) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, kind: &str, body: String| {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        if let Ok(v) = header::HeaderValue::from_str(kind) {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        resp
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "gatewayd serves GET /metrics only\n".into(),
        );
    }
    match source().and_then(|s| render(&s)) {
        Ok(text) => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("reading the counters failed: {e:#}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::DaemonStats;

    fn snapshot() -> Snapshot {
        let fates = |names: &[&str]| names.iter().map(|n| (n.to_string(), 0)).collect();
        let mut drops: std::collections::BTreeMap<String, u64> =
            fates(&["no_route", "nat_fragment", "nat_icmp_malformed"]);
        drops.insert("nat_fragment".into(), 7);
        Snapshot {
            node: "gw-1".into(),
            tunnels: vec![TunnelStats {
                name: "dct-a-100".into(),
                gateway: "dcg-prod".into(),
                connection: "line-a".into(),
                vlan: 100,
                rx_packets: 5,
                rx_bytes: 510,
                tx_packets: 4,
                tx_bytes: 408,
                drops,
                answered: fates(&["arp_replied"]),
                to_kernel: fates(&["neigh_missing"]),
                peer_mac: Some("02:00:00:00:00:01".into()),
                health: Some(crate::health::LineStatus {
                    state: "down".into(),
                    since_unix_ms: 1_700_000_000_500,
                    reason: "link down on eth1".into(),
                }),
                ..Default::default()
            }],
            connections: vec![PortStats {
                name: "line-a".into(),
                interface: "eth1".into(),
                rx_packets: 9,
                drops: [("unknown_vlan".to_string(), 3)].into_iter().collect(),
                ..Default::default()
            }],
            gateways: vec![],
            daemon: DaemonStats {
                reloads_applied: 2,
                reloads_rejected: 1,
            },
            dest_cache: crate::stats::DestCacheCounts {
                hits: 90,
                misses: 10,
            },
            flow_cache: crate::stats::DestCacheCounts {
                hits: 70,
                misses: 30,
            },
            pipeline_unavailable: 3,
        }
    }

    #[test]
    fn tunnel_series_carry_every_label() {
        let text = render(&snapshot()).unwrap();
        for line in [
            r#"gatewayd_tunnel_packets_total{tunnel="dct-a-100",gateway="dcg-prod",connection="line-a",vlan="100",direction="idc_to_vpc"} 5"#,
            r#"gatewayd_tunnel_bytes_total{tunnel="dct-a-100",gateway="dcg-prod",connection="line-a",vlan="100",direction="vpc_to_idc"} 408"#,
            r#"gatewayd_tunnel_drops_total{tunnel="dct-a-100",gateway="dcg-prod",connection="line-a",vlan="100",reason="nat_fragment"} 7"#,
            r#"gatewayd_nat_drops_total{tunnel="dct-a-100",gateway="dcg-prod",connection="line-a",vlan="100",reason="nat_fragment"} 7"#,
            r#"gatewayd_tunnel_peer_resolved{tunnel="dct-a-100",gateway="dcg-prod",connection="line-a",vlan="100"} 1"#,
            r#"gatewayd_connection_drops_total{name="line-a",interface="eth1",reason="unknown_vlan"} 3"#,
            r#"gatewayd_tunnel_up{tunnel="dct-a-100",gateway="dcg-prod",connection="line-a",vlan="100"} 0"#,
            r#"gatewayd_tunnel_state_since_seconds{tunnel="dct-a-100",gateway="dcg-prod",connection="line-a",vlan="100"} 1700000000"#,
            r#"gatewayd_reloads_total{result="rejected"} 1"#,
            r#"gatewayd_dest_cache_lookups_total{result="hit"} 90"#,
            r#"gatewayd_dest_cache_lookups_total{result="miss"} 10"#,
            r#"gatewayd_flow_cache_lookups_total{result="hit"} 70"#,
            r#"gatewayd_flow_cache_lookups_total{result="miss"} 30"#,
            "gatewayd_pipeline_unavailable_frames_total 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line} in:\n{text}"
            );
        }
        // NAT drops only list NAT reasons.
        assert!(!text
            .lines()
            .any(|l| l.starts_with("gatewayd_nat_drops_total") && l.contains("no_route")));
        assert!(text.ends_with("# EOF\n"), "OpenMetrics terminator");
    }

    #[test]
    fn only_get_metrics_is_served() {
        let source: SnapshotSource = Arc::new(|| Ok(snapshot()));
        let get = |method: &str, path: &str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(())
                .unwrap();
            respond(&req, &source).status()
        };
        assert_eq!(get("GET", "/metrics"), StatusCode::OK);
        assert_eq!(get("GET", "/"), StatusCode::NOT_FOUND);
        assert_eq!(get("POST", "/metrics"), StatusCode::NOT_FOUND);
        let failing: SnapshotSource = Arc::new(|| anyhow::bail!("map gone"));
        let req = Request::builder().uri("/metrics").body(()).unwrap();
        assert_eq!(
            respond(&req, &failing).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
