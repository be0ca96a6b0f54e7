//! The `ROUTES` hash (one hash probe per prefix length in use, longest
//! first) against the kernel's own LPM trie as the oracle: thousands of
//! random, nested prefixes and random destinations through the real
//! datapath (BPF_PROG_TEST_RUN, VPC -> IDC), every answer compared with the
//! trie's; then a diff that removes whole prefix lengths and adds others,
//! and the same comparison again.

mod common;

use std::collections::BTreeMap;

use aya::maps::{lpm_trie::Key, LpmTrie};
use common::*;
use gateway_common::{nexthop_kind, Route, RouteKey};
use gateway_user::plan::RouteEntryKey;

const TUNNELS: u16 = 16;

fn config() -> String {
    let mut s = String::from(
        r#"
[node]
name = "routefix"

[[connection]]
name = "line-a"
interface = "conn0"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.0/16"]
interface = "vpc0"
"#,
    );
    for v in 1..=TUNNELS {
        s.push_str(&format!(
            "\n[[tunnel]]\nname = \"t{v}\"\nconnection = \"line-a\"\nvlan = {v}\ngateway = \"dcg-prod\"\nlocal_ip = \"169.254.{v}.1/30\"\npeer_ip = \"169.254.{v}.2\"\nroutes = [\"10.{v}.0.0/16\"]\n"
        ));
    }
    s
}

/// Small deterministic generator (the test must be reproducible).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

/// Random prefixes inside 20.0.0.0/12, so that many nest (a /28 inside a
/// /24 inside a /16 ...), lengths 8..=32.
fn random_routes(
    rng: &mut Rng,
    n: usize,
    lens: &[u8],
    groups: &[u32],
) -> BTreeMap<RouteEntryKey, Route> {
    let mut out = BTreeMap::new();
    while out.len() < n {
        let len = lens[rng.next() as usize % lens.len()];
        let addr = 0x1400_0000 | (rng.next() & 0x000f_ffff);
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - len as u32)
        };
        out.insert(
            RouteEntryKey {
                gateway_id: 0,
                addr: (addr & mask).to_be_bytes(),
                prefix_len: len,
            },
            Route {
                kind: nexthop_kind::TUNNELS,
                group: groups[rng.next() as usize % groups.len()],
            },
        );
    }
    out
}

/// Compares the datapath with the oracle for `n` random destinations.
fn compare(
    f: &mut Fixture,
    oracle: &LpmTrie<aya::maps::MapData, RouteKey, Route>,
    vlan_of_group: &BTreeMap<u32, u16>,
    rng: &mut Rng,
    n: usize,
) -> (usize, usize) {
    let (mut routed, mut unrouted) = (0, 0);
    for i in 0..n {
        // Mostly inside the random routes' space, some anywhere.
        let dst = if i % 8 == 0 {
            rng.next() | 0x0100_0000
        } else {
            0x1400_0000 | (rng.next() & 0x000f_ffff)
        }
        .to_be_bytes();
        let want = oracle
            .get(&Key::new(64, RouteKey::new(0, dst)), 0)
            .ok()
            .filter(|r| r.kind == nexthop_kind::TUNNELS);
        let frame = udp_untagged(VPC_HOST_MAC, f.vpc0.mac, [172, 16, 0, 10], dst, 64);
        let (action, out) = f.run_vpc(&frame);
        match want {
            Some(route) => {
                assert_eq!(
                    action, XDP_REDIRECT,
                    "{dst:?}: oracle routes it ({route:?}), datapath gave action {action}"
                );
                let vlan = u16::from_be_bytes([out[14], out[15]]) & 0x0fff;
                assert_eq!(
                    Some(&vlan),
                    vlan_of_group.get(&route.group),
                    "{dst:?}: oracle says group {} (VLAN {:?}), datapath sent it on VLAN {vlan}",
                    route.group,
                    vlan_of_group.get(&route.group)
                );
                routed += 1;
            }
            None => {
                assert_eq!(
                    action, XDP_PASS,
                    "{dst:?}: the oracle has no tunnel route, datapath gave action {action}"
                );
                unrouted += 1;
            }
        }
    }
    (routed, unrouted)
}

#[test]
fn routes_hash_answers_like_the_lpm_trie() {
    let mut f = Fixture::new(&config());
    // Every tunnel's peer MAC, so every routed packet leaves tagged.
    for v in 1..=TUNNELS {
        f.learn_peer(v, [169, 254, v as u8, 2], [169, 254, v as u8, 1]);
    }
    let mut plan = f.dp.read_config_maps().expect("read");
    let tunnels = plan.tunnels.clone();
    let vlan_of_group: BTreeMap<u32, u16> = plan
        .groups
        .iter()
        .map(|(id, g)| (*id, tunnels[&g.tunnels[0]].vlan))
        .collect();
    let groups: Vec<u32> = vlan_of_group.keys().copied().collect();
    assert_eq!(groups.len(), TUNNELS as usize);

    let mut bench = aya::Ebpf::load(gateway_user::ebpf::BENCH_OBJECT).expect("bench object");
    let mut oracle: LpmTrie<_, RouteKey, Route> =
        LpmTrie::try_from(bench.take_map("ROUTE_ORACLE").expect("ROUTE_ORACLE")).expect("trie");
    let fill = |oracle: &mut LpmTrie<_, RouteKey, Route>,
                routes: &BTreeMap<RouteEntryKey, Route>| {
        for (k, r) in routes {
            oracle
                .insert(&Key::new(k.trie_prefix_len(), k.data()), r, 0)
                .expect("oracle insert");
        }
    };

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let first = random_routes(
        &mut rng,
        20_000,
        &[8, 12, 16, 19, 20, 22, 24, 26, 28, 30, 32],
        &groups,
    );
    plan.routes.extend(first.clone());
    f.dp.apply(&plan).expect("apply");
    fill(&mut oracle, &plan.routes);
    let (routed, unrouted) = compare(&mut f, &oracle, &vlan_of_group, &mut rng, 5_000);
    assert!(
        routed > 3_000 && unrouted > 100,
        "routed {routed}, unrouted {unrouted}: the sample must exercise both"
    );

    // A diff: every /24 and /8 route goes (whole prefix lengths disappear
    // and the datapath must stop probing them), others are added at new
    // lengths, some routes change group.
    for (k, _) in first
        .iter()
        .filter(|(k, _)| k.prefix_len == 24 || k.prefix_len == 8)
    {
        plan.routes.remove(k);
        oracle
            .remove(&Key::new(k.trie_prefix_len(), k.data()))
            .expect("oracle remove");
    }
    let more = random_routes(&mut rng, 5_000, &[9, 23, 25, 31], &groups);
    for (k, r) in plan
        .routes
        .iter_mut()
        .filter(|(k, _)| k.prefix_len == 16)
        .take(500)
    {
        r.group = groups[(r.group as usize + 1) % groups.len()];
        oracle
            .insert(&Key::new(k.trie_prefix_len(), k.data()), *r, 0)
            .expect("oracle update");
    }
    plan.routes.extend(more.clone());
    fill(&mut oracle, &more);
    f.dp.apply(&plan).expect("apply diff");
    assert_eq!(f.dp.read_config_maps().expect("read").routes, plan.routes);
    let lens = f.dp.route_prefix_lens().expect("lens")[&0];
    assert_eq!(
        lens & (1 << 24 | 1 << 8),
        0,
        "lengths without routes are still probed: {lens:#x}"
    );
    assert_ne!(lens & (1 << 9 | 1 << 23 | 1 << 25 | 1 << 31), 0);
    let (routed, unrouted) = compare(&mut f, &oracle, &vlan_of_group, &mut rng, 5_000);
    assert!(
        routed > 2_000 && unrouted > 100,
        "routed {routed}, unrouted {unrouted}"
    );
}
