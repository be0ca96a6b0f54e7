//! 3. Scale: per-packet cost, load time and kernel memory with growing
//!    route tables, NAT mapping tables and tunnel counts. Each size gets a
//!    fresh namespace and fresh maps, so load time is the time to fill them
//!    from empty and memory is what that size alone takes.

use std::{net::Ipv4Addr, time::Instant};

use anyhow::{Context, Result};
use gateway_common::map_names as names;
use gateway_user::config::{Config, IpMappingCfg};
use ipnet::Ipv4Net;

use crate::{
    fixture::{
        check_flow, effect, measure, new_flows, BenchProgram, Flow, GatewayNs, Probe, CONFIG,
        VPC_HOST, VPC_HOST_MAC, XDP_REDIRECT,
    },
    frames,
    report::ScalePoint,
    sys,
};

/// Distinct destinations (frames) per measurement: spread over the table,
/// so the lookups walk many paths, not one hot entry.
const DESTINATIONS: usize = 4096;

const LOCAL_100: [u8; 4] = [169, 254, 100, 1];
const PEER_100: [u8; 4] = [169, 254, 100, 2];

/// Prefix lengths of the random tables (length, weight): mostly /24 as in
/// IDC customer tables, some shorter and longer ones; 6 lengths in use.
pub const FEW_LENGTHS: &[(u8, u32)] = &[(16, 5), (20, 10), (22, 10), (24, 60), (28, 10), (32, 5)];

/// 23 lengths in use, shaped like an Internet table (mostly /24, /22,
/// /23; every length from /16 to /32 present). The hash probes every
/// length longer than the match, so this is its harder case.
pub const MANY_LENGTHS: &[(u8, u32)] = &[
    (8, 1),
    (10, 1),
    (12, 1),
    (13, 1),
    (14, 1),
    (15, 1),
    (16, 3),
    (17, 2),
    (18, 2),
    (19, 4),
    (20, 5),
    (21, 5),
    (22, 8),
    (23, 9),
    (24, 50),
    (25, 1),
    (26, 1),
    (27, 1),
    (28, 1),
    (29, 1),
    (30, 1),
    (31, 1),
    (32, 1),
];

/// Random customer prefixes with lengths drawn from `lens`, from all of
/// the unicast space except what the bench config uses; canonical and
/// distinct.
pub fn random_routes(n: usize, seed: u64, lens: &[(u8, u32)]) -> Vec<Ipv4Net> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut seen = std::collections::HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    let total: u32 = lens.iter().map(|(_, w)| w).sum();
    while out.len() < n {
        let pick = rng.u32(0..total);
        let mut acc = 0;
        let mut len = 24;
        for &(l, w) in lens {
            acc += w;
            if pick < acc {
                len = l;
                break;
            }
        }
        let addr = rng.u32(0x0100_0000..0xe000_0000);
        let first = addr >> 24;
        // Reserved or used by the bench config: 10/8, 100.64/10, 127/8,
        // 169.254/16, 172.16/12, 192.168/16.
        if first == 10
            || first == 127
            || (addr & 0xffc0_0000) == 0x6440_0000
            || (addr & 0xffff_0000) == 0xa9fe_0000
            || (addr & 0xfff0_0000) == 0xac10_0000
            || (addr & 0xffff_0000) == 0xc0a8_0000
        {
            continue;
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let net = addr & mask;
        if seen.insert((net, len)) {
            out.push(Ipv4Net::new(Ipv4Addr::from(net), len).expect("valid prefix"));
        }
    }
    out
}

/// A random host inside a prefix.
fn host_in(net: &Ipv4Net, rng: &mut fastrand::Rng) -> [u8; 4] {
    let base = u32::from(net.network());
    let host_bits = 32 - net.prefix_len() as u32;
    let host = if host_bits == 0 {
        0
    } else {
        rng.u32(..) & ((1u64 << host_bits) - 1) as u32
    };
    (base | host).to_be_bytes()
}

fn point(table: &str, size: u64, gw: &GatewayNs, load: f64, maps: &[&str]) -> Result<ScalePoint> {
    let mut memlock = 0;
    for m in maps {
        memlock += sys::map_memlock(&gw.pin_dir().join(m))?;
    }
    Ok(ScalePoint {
        table: table.into(),
        size,
        ns: 0.0,
        vs_smallest: 0.0,
        load_ms: load * 1e3,
        memlock_bytes: memlock,
        total_memlock_bytes: sys::pinned_memlock(gw.pin_dir())?,
        valid: false,
        why_invalid: None,
        cache_hit_rate: None,
    })
}

/// Routes: VPC -> IDC (the direction that looks up customer prefixes),
/// every destination inside a random route of the table.
pub fn routes(sizes: &[u64], runs: u64, rounds: usize) -> Result<Vec<ScalePoint>> {
    let all = random_routes(
        *sizes.iter().max().unwrap_or(&0) as usize,
        0x5eed,
        FEW_LENGTHS,
    );
    by_rounds(sizes, rounds, |n| {
        let mut gw = GatewayNs::new(CONFIG)?;
        let mut config: Config = gw.config.clone();
        config.tunnels[0]
            .routes
            .extend(all[..n as usize].iter().copied());
        let plan = gw.plan(&config)?;
        let started = Instant::now();
        gw.dp.apply(&plan)?;
        let load = started.elapsed().as_secs_f64();
        gw.learn_peer(100, PEER_100, LOCAL_100)?;
        let mut rng = fastrand::Rng::with_seed(n);
        let probes: Vec<Probe> = (0..DESTINATIONS)
            .map(|_| {
                let net = &all[rng.usize(..n as usize)];
                Probe {
                    frame: frames::udp_untagged(
                        VPC_HOST_MAC,
                        gw.vpc.mac,
                        VPC_HOST,
                        40000,
                        host_in(net, &mut rng),
                        53,
                    ),
                    ifindex: gw.vpc.ifindex,
                    action: XDP_REDIRECT,
                    effects: vec![effect("gateway:0", "rx"), effect("tunnel:0", "tx")],
                }
            })
            .collect();
        let mut p = point("routes", n, &gw, load, &route_maps())?;
        measure_new_flows(&mut gw, &mut p, &probes, runs, 2)?;
        Ok(p)
    })
}

/// Route lookup alone, the LPM trie against the gateway's hash code on
/// the same routes and the same frames (bench object copies of the maps,
/// see gateway-ebpf/src/bin/bench.rs). Returns two series.
/// `suffix` names the series (e.g. ", 23 lengths").
pub fn route_lookup(
    sizes: &[u64],
    runs: u64,
    rounds: usize,
    lens: &[(u8, u32)],
    suffix: &str,
) -> Result<Vec<ScalePoint>> {
    use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie};
    use gateway_common::{nexthop_kind, Route, RouteKey, RoutePrefixKey, RoutePrefixLens};

    let all = random_routes(*sizes.iter().max().unwrap_or(&0) as usize, 0x5eed, lens);
    // Every size's tables first, each in a bench object of its own, so the
    // rounds below can measure the sizes side by side.
    struct Table {
        n: u64,
        b: BenchProgram,
        frames: Vec<Vec<u8>>,
        trie_load: f64,
        hash_load: f64,
        trie_mem: u64,
        hash_mem: u64,
        cache_before: (u64, u64),
        best: [f64; 3],
        valid: [bool; 3],
    }
    let mut tables = Vec::new();
    for &n in sizes {
        let mut b = BenchProgram::load_with(
            "bench_route_trie",
            &["bench_route_hash", "bench_route_cached"],
        )?;
        let route = Route {
            kind: nexthop_kind::TUNNELS,
            group: 0,
        };
        let mut lens = 0u64;
        let started = Instant::now();
        {
            let mut trie: LpmTrie<_, RouteKey, Route> =
                LpmTrie::try_from(b.ebpf.map_mut("ROUTE_ORACLE").context("ROUTE_ORACLE")?)?;
            for net in &all[..n as usize] {
                let key = RouteKey::new(0, net.network().octets());
                trie.insert(&Key::new(32 + net.prefix_len() as u32, key), route, 0)?;
            }
        }
        let trie_load = started.elapsed().as_secs_f64();
        let started = Instant::now();
        {
            let mut hash: HashMap<_, RoutePrefixKey, Route> =
                HashMap::try_from(b.ebpf.map_mut("ROUTES").context("ROUTES")?)?;
            for net in &all[..n as usize] {
                let key = RoutePrefixKey::new(0, net.network().octets(), net.prefix_len());
                hash.insert(key, route, 0)?;
                lens |= 1 << net.prefix_len();
            }
            let mut l: Array<_, RoutePrefixLens> = Array::try_from(
                b.ebpf
                    .map_mut("ROUTE_PREFIX_LENS")
                    .context("ROUTE_PREFIX_LENS")?,
            )?;
            l.set(0, RoutePrefixLens { lens }, 0)?;
        }
        let hash_load = started.elapsed().as_secs_f64();
        let mut rng = fastrand::Rng::with_seed(n);
        let frames: Vec<Vec<u8>> = (0..DESTINATIONS)
            .map(|_| {
                let net = &all[rng.usize(..n as usize)];
                frames::udp_untagged(
                    VPC_HOST_MAC,
                    VPC_HOST_MAC,
                    VPC_HOST,
                    40000,
                    host_in(net, &mut rng),
                    53,
                )
            })
            .collect();
        let memlock = |b: &BenchProgram, m: &str| -> Result<u64> {
            use std::os::fd::{AsFd, AsRawFd};
            let map = b.ebpf.map(m).with_context(|| m.to_owned())?;
            let data: &aya::maps::MapData = match map {
                aya::maps::Map::LpmTrie(d) | aya::maps::Map::HashMap(d) => d,
                _ => anyhow::bail!("{m}: unexpected map type"),
            };
            sys::fdinfo(data.fd().as_fd().as_raw_fd(), "memlock")
        };
        let trie_mem = memlock(&b, "ROUTE_ORACLE")?;
        let hash_mem = memlock(&b, "ROUTES")?;
        let cache_before = dest_cache_stats(&b)?;
        tables.push(Table {
            n,
            b,
            frames,
            trie_load,
            hash_load,
            trie_mem,
            hash_mem,
            cache_before,
            best: [f64::INFINITY; 3],
            valid: [true; 3],
        });
    }
    // Interleaved, the same frames per size: in every round every size,
    // the first size rotating from round to round, and per size trie,
    // hash, cached; the best round of each. A slow spell of a shared
    // machine then lands on all sizes of a round, not on one size's every
    // round, and cancels out of the ratios against the smallest table.
    for round in 0..rounds {
        let k = tables.len().max(1);
        for t in 0..tables.len() {
            let table = &mut tables[(t + round) % k];
            for (i, prog) in ["bench_route_trie", "bench_route_hash", "bench_route_cached"]
                .into_iter()
                .enumerate()
            {
                table.b.switch(prog);
                let mut times = Vec::with_capacity(runs as usize);
                for r in 0..runs {
                    let f = &table.frames[(r % table.frames.len() as u64) as usize];
                    let (action, ns) = table.b.run(f, 1, 1)?;
                    // Every destination lies inside a route.
                    table.valid[i] &= action == crate::fixture::XDP_TX;
                    times.push(ns);
                }
                table.best[i] = table.best[i].min(crate::fixture::trimmed_mean(&mut times));
            }
        }
    }
    let mut trie_points = Vec::new();
    let mut hash_points = Vec::new();
    let mut cached_points = Vec::new();
    for table in &tables {
        let (n, best, valid) = (table.n, table.best, table.valid);
        let cache_after = dest_cache_stats(&table.b)?;
        let (hits, misses) = (
            cache_after.0 - table.cache_before.0,
            cache_after.1 - table.cache_before.1,
        );
        let hit_rate = hits as f64 / (hits + misses).max(1) as f64;
        for (i, (points, load, mem)) in [
            (&mut trie_points, table.trie_load, table.trie_mem),
            (&mut hash_points, table.hash_load, table.hash_mem),
            (&mut cached_points, table.hash_load, table.hash_mem),
        ]
        .into_iter()
        .enumerate()
        {
            points.push(ScalePoint {
                table: match i {
                    0 => format!("lookup: LPM trie{suffix}"),
                    1 => format!("lookup: ROUTES hash{suffix}"),
                    _ => format!("lookup: destination cache + ROUTES hash{suffix}"),
                },
                size: n,
                ns: best[i],
                vs_smallest: 0.0,
                load_ms: load * 1e3,
                memlock_bytes: mem,
                total_memlock_bytes: mem,
                valid: valid[i],
                why_invalid: (!valid[i]).then(|| "a destination inside a route found none".into()),
                cache_hit_rate: (i == 2).then_some(hit_rate),
            });
        }
        eprintln!(
            "  lookup {n:>8}{suffix}: trie {:6.1} ns, hash {:6.1} ns, cached {:6.1} ns ({:.1} % hits)",
            best[0],
            best[1],
            best[2],
            hit_rate * 100.0
        );
    }
    let mut out = ratios(trie_points);
    out.extend(ratios(hash_points));
    out.extend(ratios(cached_points));
    Ok(out)
}

/// Destination cache (hits, misses) of a bench object, summed over CPUs.
fn dest_cache_stats(b: &BenchProgram) -> Result<(u64, u64)> {
    let map = b
        .ebpf
        .map(names::DEST_CACHE_STATS)
        .context("DEST_CACHE_STATS")?;
    let s = gateway_user::datapath::read_cache_stats(map)?;
    Ok((s.hits, s.misses))
}

/// The maps a route table lives in.
pub fn route_maps() -> Vec<&'static str> {
    vec![names::ROUTES, names::ROUTE_PREFIX_LENS]
}

/// NAT: N host peer mappings on the mapped tunnel; IDC -> VPC frames from
/// sources spread over them.
pub fn nat(sizes: &[u64], runs: u64, rounds: usize) -> Result<Vec<ScalePoint>> {
    by_rounds(sizes, rounds, |n| {
        let mut gw = GatewayNs::new(CONFIG)?;
        let mut config: Config = gw.config.clone();
        config.tunnels[1].peer_ip_mappings = (0..n as u32)
            .map(|i| IpMappingCfg {
                original: Ipv4Addr::from(0x0a80_0000 + i).into(),
                mapped: Ipv4Addr::from(0x6450_0000 + i).into(),
                line: 0,
            })
            .collect();
        let plan = gw.plan(&config)?;
        let started = Instant::now();
        gw.dp.apply(&plan)?;
        let load = started.elapsed().as_secs_f64();
        let mut rng = fastrand::Rng::with_seed(n);
        let probes: Vec<Probe> = (0..DESTINATIONS)
            .map(|_| {
                let src = (0x0a80_0000 + rng.u32(..n as u32)).to_be_bytes();
                Probe {
                    frame: frames::udp_tagged(101, gw.conn.mac, src, VPC_HOST),
                    ifindex: gw.conn.ifindex,
                    action: XDP_REDIRECT,
                    effects: vec![
                        effect("connection:0", "rx"),
                        effect("tunnel:1", "rx"),
                        effect("gateway:0", "tx"),
                    ],
                }
            })
            .collect();
        let mut p = point("nat", n, &gw, load, &[names::IP_MAPPINGS])?;
        measure_new_flows(&mut gw, &mut p, &probes, runs, 2)?;
        Ok(p)
    })
}

/// The config with `n` tunnels on the one connection (VLANs 1..=n), each
/// with its own /24, as an operator would write it.
fn tunnels_config(n: u64) -> String {
    let mut s = String::from(
        r#"
[node]
name = "bench"

[[connection]]
name = "line-a"
interface = "conn0"

[[gateway]]
name = "dcg"
vpc = "vpc"
vpc_cidrs = ["172.16.0.0/16"]
interface = "vpc0"
"#,
    );
    for i in 0..n {
        let (hi, lo) = (i / 64, (i % 64) * 4);
        s.push_str(&format!(
            "\n[[tunnel]]\nname = \"t{v}\"\nconnection = \"line-a\"\nvlan = {v}\ngateway = \"dcg\"\nlocal_ip = \"169.254.{hi}.{l}/30\"\npeer_ip = \"169.254.{hi}.{p}\"\nroutes = [\"10.{a}.{b}.0/24\"]\n",
            v = i + 1,
            l = lo + 1,
            p = lo + 2,
            a = i / 256,
            b = i % 256,
        ));
    }
    s
}

/// Tunnels: IDC -> VPC frames on VLANs spread over all tunnels.
pub fn tunnels(sizes: &[u64], runs: u64, rounds: usize) -> Result<Vec<ScalePoint>> {
    by_rounds(sizes, rounds, |n| {
        let text = tunnels_config(n);
        let mut gw = GatewayNs::new(&text)?;
        let plan = gw.plan(&gw.config.clone())?;
        let started = Instant::now();
        gw.dp.apply(&plan)?;
        let load = started.elapsed().as_secs_f64();
        let mut rng = fastrand::Rng::with_seed(n);
        let conn = gw.conn.ifindex;
        let probes: Vec<Probe> = (0..DESTINATIONS)
            .map(|_| {
                let vlan = rng.u16(1..=n as u16);
                let id = plan.tunnel_by_vlan[&(conn, vlan)].id;
                Ok(Probe {
                    frame: frames::udp_tagged(vlan, gw.conn.mac, [10, 9, 0, 5], VPC_HOST),
                    ifindex: conn,
                    action: XDP_REDIRECT,
                    effects: vec![
                        effect("connection:0", "rx"),
                        effect(&format!("tunnel:{id}"), "rx"),
                        effect("gateway:0", "tx"),
                    ],
                })
            })
            .collect::<Result<_>>()
            .context("probes")?;
        let mut p = point(
            "tunnels",
            n,
            &gw,
            load,
            &[names::TUNNEL_BY_VLAN, names::TUNNELS, names::NEXTHOP_GROUPS],
        )?;
        let max_id = plan.tunnels.keys().max().copied().unwrap_or(0) + 1;
        measure_new_flows(&mut gw, &mut p, &probes, runs, max_id)?;
        Ok(p)
    })
}

/// Measures every size `rounds` times, on a fresh gateway each time, the
/// sizes in turn (the first rotating from round to round). A size's cost
/// is its fastest round and its load time the shortest, so a slow spell
/// of a shared machine, which spoils a stretch of one round, does not
/// decide a ratio against the smallest size (measured size by size, it
/// did: 100 routes read 1165 ns and 1000 routes 770 ns in one run). A
/// size is valid only if every round was: one packet on a wrong path is a
/// fault, not noise.
fn by_rounds(
    sizes: &[u64],
    rounds: usize,
    mut one: impl FnMut(u64) -> Result<ScalePoint>,
) -> Result<Vec<ScalePoint>> {
    let mut best: Vec<Option<ScalePoint>> = vec![None; sizes.len()];
    for round in 0..rounds.max(1) {
        for k in 0..sizes.len() {
            let i = (k + round) % sizes.len();
            let p = one(sizes[i])?;
            best[i] = Some(match best[i].take() {
                None => p,
                Some(mut b) => {
                    if !p.valid && b.valid {
                        b.valid = false;
                        b.why_invalid = p.why_invalid;
                    }
                    b.load_ms = b.load_ms.min(p.load_ms);
                    b.ns = b.ns.min(p.ns);
                    b
                }
            });
        }
    }
    Ok(ratios(best.into_iter().flatten().collect()))
}

/// Measures `probes` at one table size as new flows (`new_flows`: every
/// run misses the flow cache and takes the full pipeline, proven from its
/// counts) into `p`, and shows the result.
fn measure_new_flows(
    gw: &mut GatewayNs,
    p: &mut ScalePoint,
    probes: &[Probe],
    runs: u64,
    tunnels: u32,
) -> Result<()> {
    let mut t = measure(gw, &new_flows(probes, runs), runs, tunnels)?;
    check_flow(&mut t, Flow::New);
    p.ns = t.ns;
    p.valid = t.valid;
    p.why_invalid = t.why_invalid;
    eprintln!(
        "  {:<7} {:>8}: {:6.1} ns/packet, load {:8.1} ms",
        p.table, p.size, p.ns, p.load_ms
    );
    Ok(())
}

/// Fills `vs_smallest`: cost at each size over the cost at the smallest.
fn ratios(mut points: Vec<ScalePoint>) -> Vec<ScalePoint> {
    if let Some(base) = points.first().map(|p| p.ns) {
        for p in &mut points {
            p.vs_smallest = p.ns / base;
        }
    }
    points
}
