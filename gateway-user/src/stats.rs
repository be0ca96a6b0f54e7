//! Per-tunnel counters as the operator sees them: a table or JSON.
//! rx = received from the IDC on the tunnel, tx = sent to the IDC.

use std::collections::BTreeMap;

use gateway_common::{Counters, Fate, FateKind};
use serde::{Deserialize, Serialize};

pub use crate::health::LineStatus;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub node: String,
    pub tunnels: Vec<TunnelStats>,
    pub connections: Vec<PortStats>,
    pub gateways: Vec<PortStats>,
    #[serde(default)]
    pub daemon: DaemonStats,
    /// The datapath's destination cache, summed over CPUs.
    #[serde(default)]
    pub dest_cache: DestCacheCounts,
    /// The datapath's flow cache (its fast path), summed over CPUs.
    #[serde(default)]
    pub flow_cache: DestCacheCounts,
    /// Frames dropped because the entry program found no pipeline program
    /// to hand a flow cache miss to (its pinned `PIPELINE` array empty):
    /// 0 unless the pins were tampered with.
    #[serde(default)]
    pub pipeline_unavailable: u64,
}

/// Cache lookups since the maps were created. Destination cache: answered
/// from the cache (hits) or by the route lookup and kernel FIB (misses).
/// Flow cache: TCP/UDP packets forwarded on the fast path (hits) or handed
/// to the full pipeline (misses).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DestCacheCounts {
    pub hits: u64,
    pub misses: u64,
}

/// The daemon's own activity since it started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DaemonStats {
    pub reloads_applied: u64,
    pub reloads_rejected: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TunnelStats {
    pub name: String,
    pub gateway: String,
    pub connection: String,
    pub vlan: u16,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Every drop reason, zero or not, so the schema is stable.
    pub drops: BTreeMap<String, u64>,
    /// Frames the datapath answered itself (ARP, ICMP echo, probe replies).
    pub answered: BTreeMap<String, u64>,
    /// Frames handed to the kernel.
    pub to_kernel: BTreeMap<String, u64>,
    /// The customer router's MAC as learned by the datapath.
    pub peer_mac: Option<String>,
    /// Lower wins among tunnels announcing the same prefix.
    #[serde(default)]
    pub priority: u16,
    /// Cap per direction; None = no cap.
    #[serde(default)]
    pub bandwidth_mbps: Option<u32>,
    /// Line health (up/down, since, why); None before the first check.
    #[serde(default)]
    pub health: Option<LineStatus>,
}

/// A connection (trunk port) or a gateway's VPC port: frames not tied to a
/// tunnel. For a gateway, rx = received from the VPC, tx = sent into it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PortStats {
    pub name: String,
    pub interface: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub drops: BTreeMap<String, u64>,
    pub to_kernel: BTreeMap<String, u64>,
}

pub fn fates_of(c: &Counters, kind: FateKind) -> BTreeMap<String, u64> {
    Fate::ALL
        .iter()
        .filter(|f| f.kind() == kind)
        .map(|f| (f.name().to_owned(), c.fate(*f)))
        .collect()
}

fn nonzero(m: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = m
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

/// Aligned table: one row per tunnel, then connections and gateways.
pub fn render_table(s: &Snapshot) -> String {
    let mut rows: Vec<Vec<String>> = vec![vec![
        "TUNNEL".into(),
        "GATEWAY".into(),
        "CONNECTION".into(),
        "VLAN".into(),
        "STATE".into(),
        "RX_PKTS".into(),
        "RX_BYTES".into(),
        "TX_PKTS".into(),
        "TX_BYTES".into(),
        "DROPS".into(),
        "ANSWERED".into(),
    ]];
    for t in &s.tunnels {
        rows.push(vec![
            t.name.clone(),
            t.gateway.clone(),
            t.connection.clone(),
            t.vlan.to_string(),
            state_cell(t, now_unix_ms()),
            t.rx_packets.to_string(),
            t.rx_bytes.to_string(),
            t.tx_packets.to_string(),
            t.tx_bytes.to_string(),
            nonzero(&t.drops),
            nonzero(&t.answered),
        ]);
    }
    let mut out = align(&rows);
    let mut ports: Vec<Vec<String>> = vec![vec![
        "PORT".into(),
        "INTERFACE".into(),
        "RX_PKTS".into(),
        "TX_PKTS".into(),
        "DROPS".into(),
        "TO_KERNEL".into(),
    ]];
    for (kind, list) in [("connection", &s.connections), ("gateway", &s.gateways)] {
        for p in list {
            ports.push(vec![
                format!("{kind} {}", p.name),
                p.interface.clone(),
                p.rx_packets.to_string(),
                p.tx_packets.to_string(),
                nonzero(&p.drops),
                nonzero(&p.to_kernel),
            ]);
        }
    }
    out.push('\n');
    out.push_str(&align(&ports));
    out.push_str(&pipeline_warning(s));
    out
}

/// `gatewayd stats --watch`: rates between two snapshots `secs` apart, one
/// row per tunnel (pps and bits/s each way, drops/s with the reasons that
/// moved), then the ports' drop rates.
pub fn render_rates(prev: &Snapshot, cur: &Snapshot, secs: f64) -> String {
    let secs = secs.max(1e-3);
    let now_ms = now_unix_ms();
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
    let moved = |now: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>| {
        let parts: Vec<String> = now
            .iter()
            .filter_map(|(k, v)| {
                let r = rate(*v, before.get(k).copied().unwrap_or(0));
                (r > 0.0).then(|| format!("{k}={}", si(r)))
            })
            .collect();
        if parts.is_empty() {
            "-".to_owned()
        } else {
            parts.join(" ")
        }
    };
    let mut rows: Vec<Vec<String>> = vec![vec![
        "TUNNEL".into(),
        "GATEWAY".into(),
        "CONNECTION".into(),
        "VLAN".into(),
        "RX_PPS".into(),
        "RX_BPS".into(),
        "TX_PPS".into(),
        "TX_BPS".into(),
        "DROPS/S".into(),
        "PEER".into(),
        "STATE".into(),
    ]];
    for t in &cur.tunnels {
        // A tunnel new since the last refresh counts from zero.
        let p = prev
            .tunnels
            .iter()
            .find(|p| p.name == t.name)
            .cloned()
            .unwrap_or_default();
        rows.push(vec![
            t.name.clone(),
            t.gateway.clone(),
            t.connection.clone(),
            t.vlan.to_string(),
            si(rate(t.rx_packets, p.rx_packets)),
            si(8.0 * rate(t.rx_bytes, p.rx_bytes)),
            si(rate(t.tx_packets, p.tx_packets)),
            si(8.0 * rate(t.tx_bytes, p.tx_bytes)),
            moved(&t.drops, &p.drops),
            t.peer_mac.clone().unwrap_or_else(|| "unresolved".into()),
            state_cell(t, now_ms),
        ]);
    }
    let mut out = align(&rows);
    let mut ports: Vec<Vec<String>> = vec![vec![
        "PORT".into(),
        "INTERFACE".into(),
        "RX_PPS".into(),
        "TX_PPS".into(),
        "DROPS/S".into(),
    ]];
    for (kind, now, before) in [
        ("connection", &cur.connections, &prev.connections),
        ("gateway", &cur.gateways, &prev.gateways),
    ] {
        for c in now {
            let b = before
                .iter()
                .find(|b| b.name == c.name)
                .cloned()
                .unwrap_or_default();
            ports.push(vec![
                format!("{kind} {}", c.name),
                c.interface.clone(),
                si(rate(c.rx_packets, b.rx_packets)),
                si(rate(c.tx_packets, b.tx_packets)),
                moved(&c.drops, &b.drops),
            ]);
        }
    }
    out.push('\n');
    out.push_str(&align(&ports));
    out.push_str(&pipeline_warning(cur));
    out
}

/// A line under the tables when the entry program dropped frames for want
/// of its pipeline program (`Snapshot::pipeline_unavailable`).
fn pipeline_warning(s: &Snapshot) -> String {
    if s.pipeline_unavailable == 0 {
        return String::new();
    }
    format!(
        "\nWARNING: {} frames dropped with no pipeline program to run (its pinned PIPELINE_<program id> array in the pin folder was removed or emptied): restart gatewayd to load it again\n",
        s.pipeline_unavailable
    )
}

/// 1234567.0 -> "1.23M": rates at a glance.
fn si(v: f64) -> String {
    for (limit, suffix) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if v >= limit {
            return format!("{:.2}{suffix}", v / limit);
        }
    }
    if v == 0.0 || v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// "up 12s (3 probes answered)", "down 0.8s (link down on line-a)".
fn state_cell(t: &TunnelStats, now_ms: u64) -> String {
    match &t.health {
        Some(h) => {
            let age = now_ms.saturating_sub(h.since_unix_ms);
            let age = if age < 10_000 {
                format!("{:.1}s", age as f64 / 1000.0)
            } else {
                format!("{}s", age / 1000)
            };
            format!("{} {age} ({})", h.state, h.reason)
        }
        None => "-".to_owned(),
    }
}

fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_aligned_and_json_has_issue_schema() {
        let mut c = Counters::default();
        c.fates[Fate::UnknownVlan as usize] = 3;
        let s = Snapshot {
            node: "gw-1".into(),
            tunnels: vec![TunnelStats {
                name: "dct-a-100".into(),
                gateway: "dcg-prod".into(),
                connection: "line-a".into(),
                vlan: 100,
                rx_packets: 5,
                drops: fates_of(&c, FateKind::Drop),
                health: Some(LineStatus {
                    state: "down".into(),
                    since_unix_ms: now_unix_ms() - 1500,
                    reason: "link down on eth1".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let table = render_table(&s);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TUNNEL"));
        assert_eq!(lines[0].find("VLAN"), lines[1].find("  100").map(|p| p + 2));
        assert!(lines[1].contains("unknown_vlan=3"));
        assert!(
            lines[1].contains("down 1.5s (link down on eth1)"),
            "{}",
            lines[1]
        );
        let json: serde_json::Value = serde_json::to_value(&s).unwrap();
        let t = &json["tunnels"][0];
        for key in [
            "name",
            "gateway",
            "connection",
            "vlan",
            "rx_packets",
            "rx_bytes",
            "tx_packets",
            "tx_bytes",
            "drops",
        ] {
            assert!(t.get(key).is_some(), "missing {key}");
        }
        assert_eq!(t["drops"]["unknown_vlan"], 3);
        assert_eq!(t["drops"]["no_route"], 0);
        assert_eq!(t["drops"]["rate_limited"], 0);
        assert_eq!(t["health"]["state"], "down");
        assert_eq!(t["health"]["reason"], "link down on eth1");
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let tunnel = |rx: u64, no_route: u64| TunnelStats {
            name: "dct-a-100".into(),
            gateway: "g".into(),
            connection: "c".into(),
            vlan: 100,
            rx_packets: rx,
            rx_bytes: rx * 100,
            drops: [("no_route".to_string(), no_route)].into_iter().collect(),
            ..Default::default()
        };
        let prev = Snapshot {
            tunnels: vec![tunnel(1_000, 4)],
            ..Default::default()
        };
        let mut cur = Snapshot {
            tunnels: vec![tunnel(3_001_000, 10)],
            ..Default::default()
        };
        // A tunnel added between the two snapshots counts from zero.
        cur.tunnels.push(TunnelStats {
            name: "dct-new".into(),
            gateway: "g".into(),
            connection: "c".into(),
            tx_packets: 20,
            ..Default::default()
        });
        let text = render_rates(&prev, &cur, 2.0);
        let row = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name}:\n{text}"))
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let a = row("dct-a-100");
        // 3M packets in 2 s; 300 MB * 8 bits in 2 s.
        assert_eq!(
            a[4..10],
            ["1.50M", "1.20G", "0", "0", "no_route=3.0", "unresolved"]
        );
        let n = row("dct-new");
        assert_eq!(n[6], "10", "{text}");
    }
}
