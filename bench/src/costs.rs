//! 1. Per-packet program cost of each datapath path against the floor
//!    program, measured in the same namespace, interleaved, same method.

use anyhow::Result;

use crate::{
    fixture::{
        effect, measure, measure_repeat, BenchProgram, GatewayNs, Probe, Timing, CONFIG, VPC_HOST,
        VPC_HOST_MAC, XDP_DROP, XDP_REDIRECT, XDP_TX,
    },
    frames,
    report::{Control, PathCost},
};

const LOCAL_100: [u8; 4] = [169, 254, 100, 1];
const PEER_100: [u8; 4] = [169, 254, 100, 2];

/// The paths the issue names, each with its frame and the counters it must
/// move.
fn paths(gw: &GatewayNs) -> Vec<(&'static str, Probe)> {
    let conn = gw.conn.ifindex;
    let vpc = gw.vpc.ifindex;
    let conn_mac = gw.conn.mac;
    vec![
        (
            "IDC->VPC plain",
            Probe {
                frame: frames::udp_tagged(100, conn_mac, [10, 0, 0, 5], VPC_HOST),
                ifindex: conn,
                action: XDP_REDIRECT,
                effects: vec![
                    effect("connection:0", "rx"),
                    effect("tunnel:0", "rx"),
                    effect("gateway:0", "tx"),
                ],
            },
        ),
        (
            "IDC->VPC peer IP mapping",
            Probe {
                frame: frames::udp_tagged(101, conn_mac, [10, 1, 0, 5], VPC_HOST),
                ifindex: conn,
                action: XDP_REDIRECT,
                effects: vec![
                    effect("connection:0", "rx"),
                    effect("tunnel:1", "rx"),
                    effect("gateway:0", "tx"),
                ],
            },
        ),
        (
            "VPC->IDC port mapping",
            Probe {
                frame: frames::udp_untagged(
                    VPC_HOST_MAC,
                    gw.vpc.mac,
                    VPC_HOST,
                    53,
                    [10, 0, 0, 5],
                    40000,
                ),
                ifindex: vpc,
                action: XDP_REDIRECT,
                effects: vec![effect("gateway:0", "rx"), effect("tunnel:0", "tx")],
            },
        ),
        (
            "ARP reply",
            Probe {
                frame: frames::arp_request(100, PEER_100, LOCAL_100),
                ifindex: conn,
                // veth port: answers leave by a redirect to the port itself.
                action: XDP_REDIRECT,
                effects: vec![
                    effect("connection:0", "rx"),
                    effect("tunnel:0", "rx"),
                    effect("tunnel:0", "arp_replied"),
                    effect("tunnel:0", "tx"),
                ],
            },
        ),
        (
            "unknown VLAN drop",
            Probe {
                frame: frames::udp_tagged(999, conn_mac, [10, 0, 0, 5], VPC_HOST),
                ifindex: conn,
                action: XDP_DROP,
                effects: vec![
                    effect("connection:0", "rx"),
                    effect("connection:0", "unknown_vlan"),
                ],
            },
        ),
    ]
}

#[derive(Default)]
pub struct Costs {
    pub floor: Timing,
    pub paths: Vec<PathCost>,
    pub control: Control,
}

pub fn run(runs: u64, rounds: usize) -> Result<Costs> {
    let mut gw = GatewayNs::new(CONFIG)?;
    gw.apply_config()?;
    gw.learn_peer(100, PEER_100, LOCAL_100)?;
    let mut floor = BenchProgram::load("bench_floor")?;
    let paths = paths(&gw);
    let floor_frame = paths[0].1.frame.clone();
    let conn = gw.conn.ifindex;

    // Interleave rounds (floor, every path) so slow phases of a noisy
    // machine hit all of them alike; keep each one's best round.
    let mut best_floor: Option<Timing> = None;
    let mut best: Vec<Option<Timing>> = vec![None; paths.len()];
    for _ in 0..rounds {
        let f = floor.measure(&floor_frame, conn, runs, XDP_TX)?;
        best_floor = Some(pick(best_floor, f));
        for (i, (_, probe)) in paths.iter().enumerate() {
            let t = measure(&mut gw, std::slice::from_ref(probe), runs, 2)?;
            best[i] = Some(pick(best[i].take(), t));
        }
    }
    let floor_t = best_floor.expect("at least one round");
    let out = paths
        .iter()
        .zip(best)
        .map(|((name, _), t)| {
            let t = t.expect("at least one round");
            PathCost {
                name: (*name).to_owned(),
                ns: t.ns,
                vs_floor: t.ns / floor_t.ns,
                runs: t.runs,
                valid: t.valid,
                why_invalid: t.why_invalid,
            }
        })
        .collect();

    // The control: the rewriting path in ONE test run with repeat. Every
    // run after the first sees the untagged frame the first one produced,
    // so the counters must flag it; if they did not, the validation above
    // could not be trusted either.
    let repeated = measure_repeat(&mut gw, &paths[0].1, 100, 2)?;
    let control = Control {
        what: "IDC->VPC plain as one test run with repeat=100".into(),
        detected_invalid: !repeated.valid,
        detail: repeated
            .why_invalid
            .unwrap_or_else(|| "counters matched (unexpected)".into()),
    };
    Ok(Costs {
        floor: floor_t,
        paths: out,
        control,
    })
}

/// The faster of two valid rounds; an invalid round always wins, so a
/// single wrong path makes the whole measurement invalid.
fn pick(a: Option<Timing>, b: Timing) -> Timing {
    match a {
        None => b,
        Some(a) if !a.valid => a,
        Some(_) if !b.valid => b,
        Some(a) => {
            if b.ns < a.ns {
                Timing {
                    runs: a.runs + b.runs,
                    ..b
                }
            } else {
                Timing {
                    runs: a.runs + b.runs,
                    ..a
                }
            }
        }
    }
}
