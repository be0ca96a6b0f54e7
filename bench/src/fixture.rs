//! The gateway in a throw-away network namespace with its ports (veths),
//! loaded from the embedded object and filled from a config or a plan; and
//! the one measuring loop every per-packet figure comes from.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::Array,
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use etherparse::PacketBuilder;
use gateway_common::{map_names as names, Counters, Fate};
use gateway_user::{
    config::Config,
    datapath::Datapath,
    ebpf, netdev,
    plan::{self, NetDev, Plan},
};
use tests::Netns;

use crate::{frames, sys::InNetns};

/// What `bench_nat_pop` (gateway-ebpf/src/bin/bench.rs) writes: the MACs
/// (destination, source) and the lab's mapped source.
const NAT_POP_MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0x0a, 2], [2, 0, 0, 0, 0x0a, 1]];
const NAT_POP_SOURCE: [u8; 4] = [100, 64, 1, 5];

pub const XDP_DROP: u32 = 1;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const PEER_MAC: [u8; 6] = [0x02, 0x1d, 0xc0, 0, 0, 0x02];
pub const VPC_HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xaa, 0x10];
pub const VPC_HOST: [u8; 4] = [172, 16, 0, 10];

/// The config every per-packet measurement starts from: one connection, one
/// gateway with a port mapping, a plain tunnel (VLAN 100) and one with a
/// peer IP mapping (VLAN 101).
pub const CONFIG: &str = r#"
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

[[gateway.local_port_mapping]]
protocol = "udp"
original = "172.16.0.10:53"
mapped = "192.168.60.1:5353"

[[tunnel]]
name = "plain-100"
connection = "line-a"
vlan = 100
gateway = "dcg"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.100.2"
routes = ["10.0.0.0/16"]

[[tunnel]]
name = "mapped-101"
connection = "line-a"
vlan = 101
gateway = "dcg"
local_ip = "169.254.101.1/30"
peer_ip = "169.254.101.2"
routes = ["10.1.0.0/16"]

[[tunnel.peer_ip_mapping]]
original = "10.1.0.0/24"
mapped = "100.64.1.0/24"
"#;

/// Removes the pins however the fixture ends.
struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct GatewayNs {
    // Field order is drop order: leave the namespace, close the program
    // and maps, remove the pins, delete the namespace.
    _entered: InNetns,
    pub dp: Datapath,
    pins: Pins,
    _ns: Netns,
    pub conn: NetDev,
    pub vpc: NetDev,
    pub config: Config,
}

impl GatewayNs {
    /// A namespace with veths conn0 and vpc0, a VPC host neighbour, the
    /// program loaded with fresh maps. Nothing applied yet. The calling
    /// thread stays inside the namespace until the value is dropped.
    pub fn new(config_text: &str) -> Result<GatewayNs> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "gwbench{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let ns = Netns::create(&name)?;
        for (a, b) in [("conn0", "conn0p"), ("vpc0", "vpc0p")] {
            ns.ip(&["link", "add", a, "type", "veth", "peer", "name", b])?;
            ns.link_up(a)?;
            ns.link_up(b)?;
        }
        ns.add_addr("vpc0", "172.16.0.1/16")?;
        ns.add_neigh("vpc0", "172.16.0.10", VPC_HOST_MAC)?;
        ns.enable_routing()?;
        let entered = InNetns::enter(&name)?;
        let bpffs = std::path::Path::new("/sys/fs/bpf");
        gateway_user::datapath::check_bpffs(bpffs)?;
        let pin_dir = std::path::Path::new(crate::leftovers::PIN_ROOT).join(&name);
        let pins = Pins(pin_dir.clone());
        let dp = Datapath::load(ebpf::gateway_object()?, &pin_dir)?;
        let config = Config::parse(config_text, "bench.toml").map_err(|e| anyhow!("{e}"))?;
        let dev = |n: &str| netdev::lookup(n).ok_or_else(|| anyhow!("{n} missing"));
        Ok(GatewayNs {
            conn: dev("conn0")?,
            vpc: dev("vpc0")?,
            _entered: entered,
            dp,
            pins,
            _ns: ns,
            config,
        })
    }

    pub fn pin_dir(&self) -> &std::path::Path {
        &self.pins.0
    }

    /// The plan of `config` on this namespace's ports.
    pub fn plan(&self, config: &Config) -> Result<Plan> {
        let existing = self.dp.existing()?;
        plan::build(config, &netdev::lookup, &existing).map_err(|e| anyhow!("{e:#}"))
    }

    pub fn apply_config(&mut self) -> Result<Plan> {
        let plan = self.plan(&self.config)?;
        self.dp.apply(&plan)?;
        Ok(plan)
    }

    /// Teaches the datapath the peer router's MAC on a VLAN (as its ARP
    /// request would).
    pub fn learn_peer(&mut self, vlan: u16, peer: [u8; 4], local: [u8; 4]) -> Result<()> {
        let frame = crate::frames::arp_request(vlan, peer, local);
        let (action, _) = self.dp.test_run(&frame, self.conn.ifindex)?;
        if action != XDP_REDIRECT {
            bail!("ARP request on VLAN {vlan} was not answered (action {action})");
        }
        Ok(())
    }

    /// Every counter slot a measurement may touch, by owner name.
    pub fn snapshot(&self, tunnels: u32) -> Result<Snapshot> {
        Snapshot::read(&self.dp, tunnels)
    }
}

/// Counter slots by owner ("tunnel:3", "gateway:0", ...), and the flow
/// cache's (hits, misses).
#[derive(Default)]
pub struct Snapshot(BTreeMap<String, Counters>, (u64, u64));

/// (owner, what) -> packets. `what` is "rx", "tx" or a fate name.
pub type Effects = BTreeMap<(String, String), u64>;

impl Snapshot {
    /// Tunnels 0..tunnels, connection 0, gateway 0, the node slot.
    pub fn read(dp: &Datapath, tunnels: u32) -> Result<Snapshot> {
        let mut s = Snapshot::default();
        for (map, prefix, n) in [
            (names::TUNNEL_COUNTERS, "tunnel", tunnels),
            (names::CONNECTION_COUNTERS, "connection", 1),
            (names::GATEWAY_COUNTERS, "gateway", 1),
            (names::NODE_COUNTERS, "node", 1),
        ] {
            for (id, c) in dp.counters(map, 0..n)? {
                s.0.insert(format!("{prefix}:{id}"), c);
            }
        }
        let flows = dp.flow_cache_stats()?;
        s.1 = (flows.hits, flows.misses);
        Ok(s)
    }

    /// Flow cache (hits, misses) between `self` and `later`.
    pub fn flow_cache_delta(&self, later: &Snapshot) -> (u64, u64) {
        (
            later.1 .0.wrapping_sub(self.1 .0),
            later.1 .1.wrapping_sub(self.1 .1),
        )
    }

    /// Packet counts that changed between `self` and `later`.
    pub fn delta(&self, later: &Snapshot) -> Effects {
        let mut out = Effects::new();
        for (owner, after) in &later.0 {
            let before = self.0.get(owner).copied().unwrap_or_default();
            let mut put = |what: &str, a: u64, b: u64| {
                if a != b {
                    out.insert((owner.clone(), what.to_owned()), a.wrapping_sub(b));
                }
            };
            put("rx", after.rx_packets, before.rx_packets);
            put("tx", after.tx_packets, before.tx_packets);
            for fate in Fate::ALL {
                put(fate.name(), after.fate(fate), before.fate(fate));
            }
        }
        out
    }
}

/// One frame, where it enters, and what it must do: the XDP action and the
/// counters it must move (one packet each).
#[derive(Clone)]
pub struct Probe {
    pub frame: Vec<u8>,
    pub ifindex: u32,
    pub action: u32,
    pub effects: Vec<(String, String)>,
}

/// `runs` probes cycling through `probes`, each with its own UDP source
/// port (at most 64,512 runs), so that every run is a new flow: the flow
/// cache misses and the full pipeline (with its table lookups) runs, as it
/// does for a flow's first packet. The UDP checksum is updated with the
/// port (RFC 1624).
pub fn new_flows(probes: &[Probe], runs: u64) -> Vec<Probe> {
    assert!(runs <= 64_512, "one source port per run");
    (0..runs as usize)
        .map(|i| {
            let mut p = probes[i % probes.len()].clone();
            set_udp_source_port(&mut p.frame, 1024 + i as u16);
            p
        })
        .collect()
}

/// Rewrites the source port of a UDP/IPv4 frame (tagged or not, no IP
/// options) and its checksum.
fn set_udp_source_port(frame: &mut [u8], port: u16) {
    let l4 = if frame[12..14] == [0x81, 0x00] {
        38
    } else {
        34
    };
    let old = u16::from_be_bytes([frame[l4], frame[l4 + 1]]);
    frame[l4..l4 + 2].copy_from_slice(&port.to_be_bytes());
    let check = u16::from_be_bytes([frame[l4 + 6], frame[l4 + 7]]);
    if check != 0 {
        let mut sum = (!check as u32) + (!old as u32) + port as u32;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        let new = match !(sum as u16) {
            0 => 0xffff,
            c => c,
        };
        frame[l4 + 6..l4 + 8].copy_from_slice(&new.to_be_bytes());
    }
}

/// How a path's packets must meet the flow cache (proven from its
/// counters, like the path itself).
#[derive(Clone, Copy, PartialEq)]
pub enum Flow {
    /// The same flow every run: forwarded on the fast path (at most 1 % of
    /// runs miss, when the slot ages out after 100 jiffies and is refilled).
    Cached,
    /// A new flow every run: every packet misses and takes the full
    /// pipeline (which then fills a slot).
    New,
    /// TCP/UDP the fast path cannot serve: every packet misses.
    Missed,
    /// Not TCP/UDP: never looked up.
    NotLooked,
}

/// Checks the flow cache counts of a measurement against `flow`; marks it invalid if they do not match.
pub fn check_flow(t: &mut Timing, flow: Flow) {
    let (hits, misses) = t.flow_cache;
    let ok = match flow {
        Flow::Cached => hits + misses == t.runs && misses * 100 <= t.runs,
        Flow::New | Flow::Missed => (hits, misses) == (0, t.runs),
        Flow::NotLooked => (hits, misses) == (0, 0),
    };
    if !ok && t.valid {
        t.valid = false;
        t.why_invalid = Some(format!(
            "flow cache: {hits} hits, {misses} misses in {} runs",
            t.runs
        ));
    }
}

pub fn effect(owner: &str, what: &str) -> (String, String) {
    (owner.to_owned(), what.to_owned())
}

/// Result of one measurement.
#[derive(Clone, Debug, Default)]
pub struct Timing {
    /// Per-packet cost: mean of the per-run kernel times after dropping the
    /// slowest 10% (interrupts, preemption).
    pub ns: f64,
    pub runs: u64,
    /// Every run took the intended path: the action matched every time and
    /// the counters moved by exactly the expected amounts, nothing else.
    pub valid: bool,
    pub why_invalid: Option<String>,
    /// Flow cache (hits, misses) during the runs: which path the packets
    /// took (the counters above are the same on both).
    pub flow_cache: (u64, u64),
}

/// Runs `runs` packets, one BPF_PROG_TEST_RUN each (repeat = 1, so every
/// run starts from the frame as given: the gateway rewrites frames, and
/// with `repeat` > 1 every run after the first would see its own output),
/// cycling through `probes`. The kernel's per-run time excludes the
/// syscall. Proves the path from the counters.
pub fn measure(gw: &mut GatewayNs, probes: &[Probe], runs: u64, tunnels: u32) -> Result<Timing> {
    let before = gw.snapshot(tunnels)?;
    let mut times = Vec::with_capacity(runs as usize);
    let mut expected = Effects::new();
    let mut wrong_action = 0u64;
    for i in 0..runs {
        let p = &probes[(i % probes.len() as u64) as usize];
        let (action, _, took) = gw.dp.test_run_repeat(&p.frame, p.ifindex, 1)?;
        if action != p.action {
            wrong_action += 1;
        }
        times.push(took.as_nanos() as f64);
        for e in &p.effects {
            *expected.entry(e.clone()).or_default() += 1;
        }
    }
    let after = gw.snapshot(tunnels)?;
    let why = check(&expected, &before.delta(&after), wrong_action);
    Ok(Timing {
        ns: trimmed_mean(&mut times),
        runs,
        valid: why.is_none(),
        why_invalid: why,
        flow_cache: before.flow_cache_delta(&after),
    })
}

/// The same frame `repeat` times in ONE test run. Only valid for a path
/// whose output frame takes the same path again; the counters decide.
pub fn measure_repeat(
    gw: &mut GatewayNs,
    probe: &Probe,
    repeat: u32,
    tunnels: u32,
) -> Result<Timing> {
    let before = gw.snapshot(tunnels)?;
    let (_, _, took) = gw.dp.test_run_repeat(&probe.frame, probe.ifindex, repeat)?;
    let after = gw.snapshot(tunnels)?;
    let mut expected = Effects::new();
    for e in &probe.effects {
        expected.insert(e.clone(), repeat as u64);
    }
    let why = check(&expected, &before.delta(&after), 0);
    Ok(Timing {
        ns: took.as_nanos() as f64,
        runs: repeat as u64,
        valid: why.is_none(),
        why_invalid: why,
        flow_cache: before.flow_cache_delta(&after),
    })
}

fn check(expected: &Effects, seen: &Effects, wrong_action: u64) -> Option<String> {
    // Bytes are not compared; rx/tx/fates must match exactly, and nothing
    // else may have moved.
    let mut problems = Vec::new();
    if wrong_action > 0 {
        problems.push(format!("{wrong_action} runs returned another XDP action"));
    }
    for (k, n) in expected {
        let got = seen.get(k).copied().unwrap_or(0);
        if got != *n {
            problems.push(format!("{} {}: expected {n}, counted {got}", k.0, k.1));
        }
    }
    for (k, n) in seen {
        if !expected.contains_key(k) {
            problems.push(format!("{} {}: unexpected {n}", k.0, k.1));
        }
    }
    if problems.is_empty() {
        None
    } else {
        problems.truncate(4);
        Some(problems.join("; "))
    }
}

pub fn trimmed_mean(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let keep = ((v.len() as f64) * 0.9).ceil().max(1.0) as usize;
    v[..keep].iter().sum::<f64>() / keep as f64
}

/// A benchmark-only program (gateway-ebpf/src/bin/bench.rs) loaded and
/// ready for test runs.
pub struct BenchProgram {
    pub ebpf: Ebpf,
    pub name: &'static str,
}

impl BenchProgram {
    pub fn load(name: &'static str) -> Result<BenchProgram> {
        Self::load_with(name, &[])
    }

    /// Loads `name` and `also` (more programs of the same object, sharing
    /// its maps; run them with `switch`).
    pub fn load_with(name: &'static str, also: &[&'static str]) -> Result<BenchProgram> {
        if ebpf::BENCH_OBJECT.is_empty() {
            bail!("built without eBPF objects (AYA_BUILD_SKIP); run `cargo xtask setup`");
        }
        let mut ebpf = Ebpf::load(ebpf::BENCH_OBJECT).context("loading the bench object")?;
        for n in std::iter::once(&name).chain(also) {
            let prog: &mut Xdp = ebpf
                .program_mut(n)
                .with_context(|| format!("{n} missing from the bench object"))?
                .try_into()?;
            prog.load()
                .map_err(|e| anyhow!("the kernel rejected {n}: {e}"))?;
        }
        Ok(BenchProgram { ebpf, name })
    }

    /// Makes `run`/`measure` use another loaded program of the object.
    pub fn switch(&mut self, name: &'static str) {
        self.name = name;
    }

    pub fn prog(&mut self) -> Result<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(self.name)
            .context("program vanished")?
            .try_into()?)
    }

    /// One test run; returns the action and the kernel's time for it.
    pub fn run(&mut self, frame: &[u8], ifindex: u32, repeat: u32) -> Result<(u32, f64)> {
        let (action, ns, _) = self.run_out(frame, ifindex, repeat)?;
        Ok((action, ns))
    }

    /// Where `bench_swap_redirect` and `bench_nat_pop` redirect to.
    pub fn set_target(&mut self, ifindex: u32) -> Result<()> {
        let mut target: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("BENCH_TARGET").context("BENCH_TARGET")?)?;
        target.set(0, ifindex, 0)?;
        Ok(())
    }

    /// Proves with one test run that `bench_nat_pop` (this program) does
    /// the gateway's frame work on `frame` (`frames::udp_tagged` from
    /// 10.x.0.5 to VPC_HOST): XDP_REDIRECT, and byte for byte the frame
    /// the gateway sends for it with the lab's peer IP mapping (source
    /// 100.64.1.5, TTL 63, tag popped, checksums as etherparse computes
    /// them from scratch), but the MACs, which are constants here.
    pub fn check_nat_pop(&mut self, frame: &[u8], ifindex: u32) -> Result<()> {
        let mut want = Vec::new();
        PacketBuilder::ethernet2(NAT_POP_MACS[1], NAT_POP_MACS[0])
            .ipv4(NAT_POP_SOURCE, VPC_HOST, 63)
            .udp(40000, 53)
            .write(&mut want, &[0x5a; frames::PAYLOAD_TAGGED])?;
        let (action, _, out) = self.run_out(frame, ifindex, 1)?;
        if action != XDP_REDIRECT || out != want {
            bail!(
                "bench_nat_pop does not do the gateway's frame work: action {action}, frame {out:02x?}, want XDP_REDIRECT and {want:02x?}"
            );
        }
        Ok(())
    }

    /// `run`, and the frame as the program left it.
    pub fn run_out(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(u32, f64, Vec<u8>)> {
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let mut out = vec![0u8; frame.len() + 256];
        let r = self.prog()?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, r.duration.as_nanos() as f64, out))
    }

    /// Like `measure`: `runs` runs of one packet each; valid if every run
    /// returned `action` (the floor has no counters; its one branch is
    /// decided by the action).
    pub fn measure(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        runs: u64,
        action: u32,
    ) -> Result<Timing> {
        let mut times = Vec::with_capacity(runs as usize);
        let mut wrong = 0;
        for _ in 0..runs {
            let (a, ns) = self.run(frame, ifindex, 1)?;
            if a != action {
                wrong += 1;
            }
            times.push(ns);
        }
        Ok(Timing {
            ns: trimmed_mean(&mut times),
            runs,
            valid: wrong == 0,
            why_invalid: (wrong > 0).then(|| format!("{wrong} runs returned another action")),
            flow_cache: (0, 0),
        })
    }
}
