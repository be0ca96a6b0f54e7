//! The BPF_PROG_TEST_RUN fixture shared by the datapath test files: a
//! network namespace holding the gateway's ports (entered by the test
//! thread with setns), the program loaded, the maps filled from a config.
#![allow(dead_code)]

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use etherparse::{ArpEthIpv4Packet, ArpOperation, PacketBuilder, VlanId};
use gateway_common::{map_names as names, Counters};
use gateway_user::{
    config::Config,
    datapath::Datapath,
    ebpf, netdev,
    plan::{self, Existing, NetDev},
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;
/// The fixture's ports are veths: frames answered locally leave by a
/// redirect to the ingress port (see `port_flags::TX_VIA_REDIRECT`).
pub const LOCAL_REPLY: u32 = XDP_REDIRECT;

pub const PEER_MAC: [u8; 6] = [0x02, 0x1d, 0xc0, 0, 0, 0x02];
pub const VPC_HOST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0xaa, 0x10];

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with the gateway's ports, the program loaded into it and the
/// maps filled from `CONFIG`.
/// Deletes the fixture's namespace and pins however the fixture ends, also
/// when its setup panics half way (e.g. the verifier rejects the program
/// after aya has already created and pinned the maps).
struct NsGuard(String, Option<std::path::PathBuf>);

impl Drop for NsGuard {
    fn drop(&mut self) {
        if let Some(pins) = &self.1 {
            let _ = std::fs::remove_dir_all(pins);
        }
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

pub struct Fixture {
    ns: NsGuard,
    pub dp: Datapath,
    pub conn: NetDev,
    pub vpc0: NetDev,
    pub vpc1: NetDev,
    host_ns: File,
    config: String,
}

impl Fixture {
    pub fn new(config: &str) -> Self {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the datapath fixtures need root (BPF_PROG_TEST_RUN, network namespaces)"
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let ns = format!(
            "gwfix{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        sh(&["ip", "netns", "add", &ns]);
        let mut guard = NsGuard(ns.clone(), None);
        let ipn = |args: &[&str]| {
            let mut v = vec!["ip", "-n", ns.as_str()];
            v.extend_from_slice(args);
            sh(&v);
        };
        ipn(&["link", "set", "lo", "up"]);
        for (a, b) in [("conn0", "conn0p"), ("vpc0", "vpc0p"), ("vpc1", "vpc1p")] {
            ipn(&["link", "add", a, "type", "veth", "peer", "name", b]);
            ipn(&["link", "set", a, "up"]);
            ipn(&["link", "set", b, "up"]);
        }
        ipn(&["addr", "add", "172.16.0.1/16", "dev", "vpc0"]);
        ipn(&["addr", "add", "172.17.0.1/16", "dev", "vpc1"]);
        ipn(&[
            "neigh",
            "replace",
            "172.16.0.10",
            "lladdr",
            "02:00:00:00:aa:10",
            "dev",
            "vpc0",
            "nud",
            "permanent",
        ]);
        // A host of the local_ip_mapping range of the NAT fixtures.
        ipn(&[
            "neigh",
            "replace",
            "172.16.1.7",
            "lladdr",
            "02:00:00:00:aa:10",
            "dev",
            "vpc0",
            "nud",
            "permanent",
        ]);
        ipn(&[
            "neigh",
            "replace",
            "172.17.0.10",
            "lladdr",
            "02:00:00:00:bb:10",
            "dev",
            "vpc1",
            "nud",
            "permanent",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sysctl",
            "-qw",
            "net.ipv4.conf.all.forwarding=1",
        ]);

        // Enter the namespace on this thread only: BPF_PROG_TEST_RUN resolves
        // the ingress ifindex and the FIB in the caller's namespace.
        let host_ns = File::open("/proc/thread-self/ns/net").expect("own netns");
        let target = File::open(format!("/run/netns/{ns}")).expect("netns file");
        assert_eq!(
            unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns: {}",
            std::io::Error::last_os_error()
        );

        let bpffs = std::path::Path::new("/sys/fs/bpf");
        gateway_user::datapath::check_bpffs(bpffs).expect("bpffs (cargo xtask setup mounts it)");
        let pin_dir = bpffs.join("gatewayd-fixtures").join(&ns);
        guard.1 = Some(pin_dir.clone());
        let mut dp = Datapath::load(ebpf::gateway_object().expect("object"), &pin_dir)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let parsed = Config::parse(config, "fixture.toml").unwrap_or_else(|e| panic!("{e}"));
        let plan = plan::build(&parsed, &netdev::lookup, &Existing::default()).expect("plan");
        dp.apply(&plan).expect("apply");
        let dev = |n: &str| netdev::lookup(n).unwrap_or_else(|| panic!("{n} missing"));
        Fixture {
            conn: dev("conn0"),
            vpc0: dev("vpc0"),
            vpc1: dev("vpc1"),
            ns: guard,
            dp,
            host_ns,
            config: config.to_owned(),
        }
    }

    pub fn run(&mut self, frame: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
        let (action, out) = self
            .dp
            .test_run(frame, ifindex)
            .unwrap_or_else(|e| panic!("test run: {e:#}"));
        assert_ne!(action, XDP_ABORTED, "XDP_ABORTED for {frame:02x?}");
        (action, out)
    }

    pub fn run_idc(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let i = self.conn.ifindex;
        self.run(frame, i)
    }

    pub fn run_vpc(&mut self, frame: &[u8]) -> (u32, Vec<u8>) {
        let i = self.vpc0.ifindex;
        self.run(frame, i)
    }

    pub fn counters(&self, map: &str, id: u32) -> Counters {
        self.dp
            .counters(map, std::iter::once(id))
            .expect("counters")[&id]
    }
    pub fn tunnel(&self, id: u32) -> Counters {
        self.counters(names::TUNNEL_COUNTERS, id)
    }
    pub fn connection(&self) -> Counters {
        self.counters(names::CONNECTION_COUNTERS, 0)
    }
    pub fn gateway(&self, id: u32) -> Counters {
        self.counters(names::GATEWAY_COUNTERS, id)
    }

    /// Destination cache (hits, misses) so far, summed over CPUs.
    pub fn dest_cache(&self) -> (u64, u64) {
        let s = self.dp.dest_cache_stats().expect("destination cache stats");
        (s.hits, s.misses)
    }

    /// Flow cache (hits, misses) so far, summed over CPUs.
    pub fn flow_cache(&self) -> (u64, u64) {
        let s = self.dp.flow_cache_stats().expect("flow cache stats");
        (s.hits, s.misses)
    }

    /// Keeps the test thread on the CPU it runs on: the datapath's caches
    /// are per CPU, so a test that counts their hits must not migrate.
    pub fn stay_on_this_cpu(&self) {
        // SAFETY: plain syscalls on this thread with a local cpu_set_t.
        unsafe {
            let cpu = libc::sched_getcpu();
            assert!(cpu >= 0, "sched_getcpu failed");
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0,
                "sched_setaffinity failed"
            );
        }
    }

    /// Teaches the datapath the peer router's MAC on VLAN 100 (as its first
    /// ARP request would).
    pub fn learn_peer(&mut self, vlan: u16, peer_ip: [u8; 4], local_ip: [u8; 4]) {
        let frame = arp_request(vlan, PEER_MAC, peer_ip, local_ip);
        let (action, _) = self.run_idc(&frame);
        assert_eq!(action, LOCAL_REPLY);
    }

    /// Applies another config, as a reload does.
    pub fn reload(&mut self, config: &str) {
        let parsed = Config::parse(config, "fixture.toml").unwrap_or_else(|e| panic!("{e}"));
        let existing = self.dp.existing().expect("existing");
        let plan = plan::build(&parsed, &netdev::lookup, &existing).expect("plan");
        self.dp.apply(&plan).expect("apply");
        self.config = config.to_owned();
    }

    /// Runs `ip` inside the fixture's namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", self.ns.0.as_str()];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// Re-applies the config with the connection port's flags replaced.
    pub fn set_connection_port_flags(&mut self, flags: u16) {
        let config = Config::parse(&self.config, "fixture.toml").expect("fixture config");
        let existing = self.dp.existing().expect("existing");
        let mut plan = plan::build(&config, &netdev::lookup, &existing).expect("plan");
        let conn = self.conn.ifindex;
        plan.ports.get_mut(&conn).expect("conn0 port").flags = flags;
        self.dp.apply(&plan).expect("apply");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        unsafe { libc::setns(self.host_ns.as_raw_fd(), libc::CLONE_NEWNET) };
        let dir = self.dp.pin_dir().to_owned();
        let _ = std::fs::remove_dir_all(&dir);
        // The namespace goes with `self.ns` (NsGuard).
    }
}

// ---- frame builders (etherparse computes every length and checksum) ----

pub fn tagged(
    src: [u8; 6],
    dst: [u8; 6],
    vlan: u16,
) -> etherparse::PacketBuilderStep<etherparse::VlanHeader> {
    PacketBuilder::ethernet2(src, dst).single_vlan(VlanId::try_new(vlan).unwrap())
}

pub fn udp_tagged(vlan: u16, dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let mut v = Vec::new();
    tagged(PEER_MAC, dst_mac, vlan)
        .ipv4(src, dst, ttl)
        .udp(40000, 53)
        .write(&mut v, b"direct connect payload")
        .unwrap();
    v
}

pub fn udp_untagged(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ttl: u8,
) -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4(src, dst, ttl)
        .udp(40000, 53)
        .write(&mut v, b"direct connect payload")
        .unwrap();
    v
}

pub fn arp_request(vlan: u16, sender_mac: [u8; 6], sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut v = Vec::new();
    tagged(sender_mac, [0xff; 6], vlan)
        .arp(
            ArpEthIpv4Packet {
                operation: ArpOperation::REQUEST,
                sender_mac,
                sender_ipv4: sender,
                target_mac: [0; 6],
                target_ipv4: target,
            }
            .into(),
        )
        .write(&mut v)
        .unwrap();
    v
}
