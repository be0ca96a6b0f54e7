//! Per-tunnel counters as the operator sees them: a table or JSON.
//! rx = received from the IDC on the tunnel, tx = sent to the IDC.

use std::collections::BTreeMap;

use gateway_common::{Counters, Fate, FateKind};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    pub node: String,
    pub tunnels: Vec<TunnelStats>,
    pub connections: Vec<PortStats>,
    pub gateways: Vec<PortStats>,
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
    out
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
                ..Default::default()
            }],
            ..Default::default()
        };
        let table = render_table(&s);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("TUNNEL"));
        assert_eq!(lines[0].find("VLAN"), lines[1].find("  100").map(|p| p + 2));
        assert!(lines[1].contains("unknown_vlan=3"));
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
    }
}
