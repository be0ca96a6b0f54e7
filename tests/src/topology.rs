//! The reference topology: one gateway node between a customer's IDC and
//! two VPCs, built from network namespaces. Used by the end-to-end tests and
//! by `cargo xtask demo`.
//!
//! ```text
//!  idchost            idc (customer router)               gw (gatewayd)              vpc-prod / vpc-test
//!  eth0 10.0.0.5 ---- lan 10.0.0.1
//!                     trunk    169.254.100.2 VLAN 100 ==\
//!                     trunk200 169.254.200.2 VLAN 200 ===>= line-a (connection)
//!                     trunk999 169.254.99.2  VLAN 999 ==/   vpc-prod 172.16.0.1 ---- eth0 172.16.0.10
//!                                                            vpc-test 172.17.0.1 ---- eth0 172.17.0.10
//! ```
//! VLAN 100 is tunnel dct-a-100 to gateway dcg-prod (VPC 172.16.0.0/16),
//! VLAN 200 is dct-a-200 to dcg-test (172.17.0.0/16); VLAN 999 is not
//! configured (the gateway must drop it). The kernel here has no 8021q, so
//! the router's VLAN sub-interfaces are the trunk veth plus macvlans, tagged
//! and untagged by `gatewayd lab-vlan` (tc).

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{attach_lab_vlan, daemon::Daemon, veth_with, Lab, Netns, VethOptions};

pub const IDC_HOST: &str = "10.0.0.5";
pub const VPC_PROD_HOST: &str = "172.16.0.10";
pub const VPC_TEST_HOST: &str = "172.17.0.10";
pub const LOCAL_IP_100: &str = "169.254.100.1";
pub const LOCAL_IP_200: &str = "169.254.200.1";
/// Reached over VLAN 999, which the gateway does not know.
pub const UNKNOWN_VLAN_DST: &str = "172.31.0.10";

const TRUNK_MAC: [u8; 6] = [0x02, 0x1d, 0xc0, 0x00, 0x01, 0x00];
const TRUNK200_MAC: [u8; 6] = [0x02, 0x1d, 0xc0, 0x00, 0x02, 0x00];
const TRUNK999_MAC: [u8; 6] = [0x02, 0x1d, 0xc0, 0x00, 0x09, 0x99];
const TRUNK_B_MAC: [u8; 6] = [0x02, 0x1d, 0xc0, 0x0b, 0x01, 0x00];

/// The example config of the demo: the issue's schema, for this topology.
pub fn config_text(node: &str) -> String {
    config_for(node, Scenario::Basic)
}

/// Which lab to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// One IDC, one trunk, two tunnels to two gateways.
    Basic,
    /// Basic plus a second IDC on a second line using the same 10.0.0.0/24,
    /// told apart by peer IP mappings; the VPC side published through a
    /// local IP mapping and a port mapping.
    OverlappingIdcs,
}

pub const IDC_B_LOCAL_IP: &str = "169.254.110.1";
/// How the VPC sees IDC A's and IDC B's 10.0.0.5.
pub const IDC_A_HOST_MAPPED: &str = "100.64.1.5";
pub const IDC_B_HOST_MAPPED: &str = "100.64.2.5";
/// The VPC web service 172.16.0.10:80 as IDCs see it.
pub const WEB_MAPPED: &str = "192.168.60.1:8080";
/// A second VPC host address, in the local IP mapping's range, and how
/// IDCs see it.
pub const VPC_MAPPED_HOST: &str = "172.16.1.7";
pub const VPC_MAPPED_HOST_AS_SEEN: &str = "192.168.50.7";

const NAT_CONFIG: &str = r#"
# A second customer IDC on its own line, with the same private range as the
# first: both are published into the VPC under distinct prefixes.
[[connection]]
name = "line-b"
interface = "line-b"

[[tunnel]]
name = "dct-b-100"
connection = "line-b"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.110.1/30"
peer_ip = "169.254.110.2"
# The VPC reaches this IDC only through the mapped prefix.
routes = []

[[tunnel.peer_ip_mapping]]
original = "10.0.0.0/24"
mapped = "100.64.2.0/24"
"#;

pub fn config_for(node: &str, scenario: Scenario) -> String {
    let basic = basic_config(node);
    if scenario == Scenario::Basic {
        return basic;
    }
    // IDC A's tunnel gets its own peer mapping; dcg-prod publishes a VPC
    // range and a web service to the IDCs.
    basic
        .replace(
            "routes = [\"10.0.0.0/16\"]\n\n[[tunnel]]\nname = \"dct-a-200\"",
            "routes = []\n\n[[tunnel.peer_ip_mapping]]\noriginal = \"10.0.0.0/24\"\nmapped = \"100.64.1.0/24\"\n\n[[tunnel]]\nname = \"dct-a-200\"",
        )
        .replace(
            "interface = \"vpc-prod\"\n",
            "interface = \"vpc-prod\"\n\n[[gateway.local_ip_mapping]]\noriginal = \"172.16.1.0/24\"\nmapped = \"192.168.50.0/24\"\n\n[[gateway.local_port_mapping]]\nprotocol = \"tcp\"\noriginal = \"172.16.0.10:80\"\nmapped = \"192.168.60.1:8080\"\n",
        )
        + NAT_CONFIG
}

fn basic_config(node: &str) -> String {
    format!(
        r#"# Example gatewayd config: one connection (trunk) carrying two tunnels
# to two gateways (one per VPC).
[node]
name = "{node}"

[[connection]]
name = "line-a"
interface = "line-a"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.0/16"]
interface = "vpc-prod"

[[gateway]]
name = "dcg-test"
vpc = "vpc-test"
vpc_cidrs = ["172.17.0.0/16"]
interface = "vpc-test"

[[tunnel]]
name = "dct-a-100"
connection = "line-a"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.100.2"
routes = ["10.0.0.0/16"]

[[tunnel]]
name = "dct-a-200"
connection = "line-a"
vlan = 200
gateway = "dcg-test"
local_ip = "169.254.200.1/30"
peer_ip = "169.254.200.2"
routes = ["10.0.0.0/16"]
"#
    )
}

pub struct GatewayLab {
    pub lab: Lab,
    pub gw: Arc<Netns>,
    pub idc: Arc<Netns>,
    pub idchost: Arc<Netns>,
    pub vpc_prod: Arc<Netns>,
    pub vpc_test: Arc<Netns>,
    /// The second IDC (router, host) of `Scenario::OverlappingIdcs`.
    pub idc_b: Option<(Arc<Netns>, Arc<Netns>)>,
    pub scenario: Scenario,
    /// gatewayd in the `gw` namespace (its methods are the lab's, by Deref).
    pub daemon: Daemon,
}

impl std::ops::Deref for GatewayLab {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for GatewayLab {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

fn quiet_namespace(ns: &Netns) -> Result<()> {
    // No IPv6: router solicitations, MLD and DAD would be counted on the
    // tunnels and make exact packet counts impossible.
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    Ok(())
}

impl GatewayLab {
    /// Builds the namespaces and links; the daemon is not started.
    pub fn build(gatewayd: &Path) -> Result<GatewayLab> {
        Self::build_scenario(gatewayd, Scenario::Basic)
    }

    pub fn build_scenario(gatewayd: &Path, scenario: Scenario) -> Result<GatewayLab> {
        let mut lab = Lab::new()?;
        let node = lab.prefix().to_owned();
        let gw = lab.netns("gw")?;
        let idc = lab.netns("idc")?;
        let idchost = lab.netns("idchost")?;
        let vpc_prod = lab.netns("vpcprod")?;
        let vpc_test = lab.netns("vpctest")?;
        for ns in [&gw, &idc, &idchost, &vpc_prod, &vpc_test] {
            quiet_namespace(ns)?;
        }
        // Frames the gateway's XDP program redirects (or XDP_TXes) into a
        // veth reach the peer only if the peer has GRO on (platform.md).
        let into_peer = VethOptions {
            gro_b: true,
            ..Default::default()
        };
        veth_with(
            &gw,
            "line-a",
            &idc,
            "trunk",
            &VethOptions {
                mac_b: Some(TRUNK_MAC),
                gro_b: true,
                ..Default::default()
            },
        )?;
        veth_with(&gw, "vpc-prod", &vpc_prod, "eth0", &into_peer)?;
        veth_with(&gw, "vpc-test", &vpc_test, "eth0", &into_peer)?;
        veth_with(&idc, "lan", &idchost, "eth0", &VethOptions::default())?;
        // Frames must reach the gateway with complete checksums, as they do
        // on a wire. A veth offloads TX checksums (CHECKSUM_PARTIAL); once
        // XDP has turned such an skb into a raw frame and redirected it, the
        // checksum is never completed and TCP stalls.
        for (ns, iface) in [
            (&idchost, "eth0"),
            (&idc, "lan"),
            (&idc, "trunk"),
            (&vpc_prod, "eth0"),
            (&vpc_test, "eth0"),
            (&gw, "line-a"),
            (&gw, "vpc-prod"),
            (&gw, "vpc-test"),
        ] {
            ns.ethtool(&["-K", iface, "tx", "off"])?;
        }

        // The gateway node: addresses on the VPC ports (the VPCs' router),
        // forwarding for the kernel slow path. Nothing on line-a: tunnels
        // live only in the XDP program's maps.
        gw.add_addr("vpc-prod", "172.16.0.1/16")?;
        gw.add_addr("vpc-test", "172.17.0.1/16")?;
        gw.enable_routing()?;

        // VPC hosts.
        vpc_prod.add_addr("eth0", "172.16.0.10/16")?;
        vpc_prod.ip(&["route", "add", "default", "via", "172.16.0.1"])?;
        vpc_test.add_addr("eth0", "172.17.0.10/16")?;
        vpc_test.ip(&["route", "add", "default", "via", "172.17.0.1"])?;

        // The customer router: one sub-interface per VLAN on the trunk.
        idc.macvlan("trunk", "trunk200", Some(TRUNK200_MAC))?;
        idc.macvlan("trunk", "trunk999", Some(TRUNK999_MAC))?;
        idc.add_addr("trunk", "169.254.100.2/30")?;
        idc.add_addr("trunk200", "169.254.200.2/30")?;
        idc.add_addr("trunk999", "169.254.99.2/30")?;
        idc.add_addr("lan", "10.0.0.1/24")?;
        idc.add_route("172.16.0.0/16", "169.254.100.1")?;
        idc.add_route("172.17.0.0/16", "169.254.200.1")?;
        idc.add_route("172.31.0.0/16", "169.254.99.1")?;
        idc.enable_routing()?;
        attach_lab_vlan(
            &idc,
            gatewayd,
            "trunk",
            &[(100, TRUNK_MAC), (200, TRUNK200_MAC), (999, TRUNK999_MAC)],
        )?;
        idchost.add_addr("eth0", "10.0.0.5/24")?;
        idchost.ip(&["route", "add", "default", "via", "10.0.0.1"])?;

        let idc_b = if scenario == Scenario::OverlappingIdcs {
            // What IDC A reaches through dcg-prod's mappings.
            idc.add_route("192.168.50.0/24", "169.254.100.1")?;
            idc.add_route("192.168.60.0/24", "169.254.100.1")?;
            vpc_prod.add_addr("eth0", "172.16.1.7/16")?;
            // IDC B: the same addresses as IDC A, on its own line.
            let router = lab.netns("idcb")?;
            let host = lab.netns("idchostb")?;
            for ns in [&router, &host] {
                quiet_namespace(ns)?;
            }
            veth_with(
                &gw,
                "line-b",
                &router,
                "trunk",
                &VethOptions {
                    mac_b: Some(TRUNK_B_MAC),
                    gro_b: true,
                    ..Default::default()
                },
            )?;
            veth_with(&router, "lan", &host, "eth0", &VethOptions::default())?;
            for (ns, iface) in [
                (&host, "eth0"),
                (&router, "lan"),
                (&router, "trunk"),
                (&gw, "line-b"),
            ] {
                ns.ethtool(&["-K", iface, "tx", "off"])?;
            }
            gw.enable_routing()?;
            router.add_addr("trunk", "169.254.110.2/30")?;
            router.add_addr("lan", "10.0.0.1/24")?;
            for dst in ["172.16.0.0/16", "192.168.50.0/24", "192.168.60.0/24"] {
                router.add_route(dst, "169.254.110.1")?;
            }
            router.enable_routing()?;
            attach_lab_vlan(&router, gatewayd, "trunk", &[(100, TRUNK_B_MAC)])?;
            host.add_addr("eth0", "10.0.0.5/24")?;
            host.ip(&["route", "add", "default", "via", "10.0.0.1"])?;
            Some((router, host))
        } else {
            None
        };

        let daemon = Daemon::new(
            gatewayd,
            gw.clone(),
            &node,
            &format!("gatewayd-lab-{node}"),
            &config_for(&node, scenario),
        )?;
        Ok(GatewayLab {
            lab,
            gw,
            idc,
            idchost,
            vpc_prod,
            vpc_test,
            idc_b,
            scenario,
            daemon,
        })
    }

    /// Waits until the datapath has learned the peer MACs of both tunnels
    /// (from the daemon's ARP probes).
    pub fn wait_peers_learned(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.stats_json()?;
            let learned = stats["tunnels"]
                .as_array()
                .map(|ts| ts.iter().all(|t| t["peer_mac"].is_string()))
                .unwrap_or(false);
            if learned {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("peer MACs not learned within {timeout:?}: {stats}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ping` from the IDC host; returns (sent, received).
    pub fn ping_from_idc(&self, dst: &str, count: u32) -> Result<(u32, u32)> {
        ping(&self.idchost, dst, count)
    }

    /// Makes every neighbour entry on the path permanent, so no ARP
    /// refresh runs while packets are being counted.
    pub fn freeze_neighbours(&self) -> Result<()> {
        let line_a = self.gw.mac("line-a")?;
        let vpc_prod = self.gw.mac("vpc-prod")?;
        let vpc_test = self.gw.mac("vpc-test")?;
        self.idc.add_neigh("trunk", LOCAL_IP_100, line_a)?;
        self.idc.add_neigh("trunk200", LOCAL_IP_200, line_a)?;
        self.idc.add_neigh("trunk999", "169.254.99.1", line_a)?;
        self.idc
            .add_neigh("lan", IDC_HOST, self.idchost.mac("eth0")?)?;
        self.idchost
            .add_neigh("eth0", "10.0.0.1", self.idc.mac("lan")?)?;
        self.vpc_prod.add_neigh("eth0", "172.16.0.1", vpc_prod)?;
        self.vpc_test.add_neigh("eth0", "172.17.0.1", vpc_test)?;
        self.gw
            .add_neigh("vpc-prod", VPC_PROD_HOST, self.vpc_prod.mac("eth0")?)?;
        self.gw
            .add_neigh("vpc-test", VPC_TEST_HOST, self.vpc_test.mac("eth0")?)?;
        Ok(())
    }
}

impl GatewayLab {
    /// Sends `bytes` over TCP from the IDC host to a listener on `server_ip`
    /// in `server_ns`, which checks every byte arrived in order (it echoes
    /// a checksum back). Returns the transfer time.
    pub fn tcp_transfer(
        &self,
        server_ns: &Netns,
        server_ip: &str,
        bytes: usize,
    ) -> Result<Duration> {
        let listener = server_ns.run_in(|| Ok(TcpListener::bind((server_ip, 5001))?))?;
        let server = std::thread::spawn(move || -> Result<(usize, u64)> {
            let (mut s, _) = listener.accept()?;
            s.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut buf = vec![0u8; 65536];
            let (mut total, mut sum) = (0usize, 0u64);
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                for b in &buf[..n] {
                    sum = checksum_step(sum, *b, total);
                    total += 1;
                }
            }
            s.write_all(&sum.to_be_bytes())?;
            Ok((total, sum))
        });
        let addr: std::net::SocketAddr = format!("{server_ip}:5001").parse()?;
        let started = Instant::now();
        let (sent_sum, echoed) = self.idchost.run_in(move || {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("TCP connect to {addr}"))?;
            c.set_read_timeout(Some(Duration::from_secs(20)))?;
            let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
            let sum = data
                .iter()
                .enumerate()
                .fold(0u64, |s, (i, b)| checksum_step(s, *b, i));
            c.write_all(&data)?;
            c.shutdown(std::net::Shutdown::Write)?;
            let mut echo = [0u8; 8];
            c.read_exact(&mut echo)?;
            Ok((sum, u64::from_be_bytes(echo)))
        })?;
        let elapsed = started.elapsed();
        let (total, sum) = server
            .join()
            .map_err(|_| anyhow::anyhow!("TCP server thread panicked"))??;
        if total != bytes || sum != sent_sum || echoed != sent_sum {
            bail!("TCP transfer corrupted: {total} of {bytes} bytes arrived, checksums {sum:x}/{sent_sum:x}/{echoed:x}");
        }
        Ok(elapsed)
    }
}

fn checksum_step(sum: u64, byte: u8, index: usize) -> u64 {
    sum.wrapping_mul(31)
        .wrapping_add(byte as u64 ^ (index as u64 & 0xff))
}

/// The entry of tunnel `name` in a `gatewayd stats --json` document.
pub fn tunnel<'a>(stats: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    stats["tunnels"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .unwrap_or_else(|| panic!("tunnel {name} missing in {stats}"))
}

/// A counter of a stats document.
pub fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// A ping running in the background (continuous traffic while a test
/// reloads or restarts the daemon).
pub struct BackgroundPing {
    child: Child,
    count: u32,
}

impl BackgroundPing {
    /// `count` echo requests every `interval` seconds (root may go below
    /// 0.2 s) from `ns` to `dst`.
    pub fn start(ns: &Netns, dst: &str, count: u32, interval: &str) -> Result<BackgroundPing> {
        let count_s = count.to_string();
        let child = ns
            .command(
                "ping",
                &["-n", "-q", "-c", &count_s, "-i", interval, "-W", "2", dst],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ping")?;
        Ok(BackgroundPing { child, count })
    }

    /// Whether ping is still sending (the traffic window still covers now).
    pub fn running(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Waits for ping to finish; returns (transmitted, received).
    pub fn finish(self) -> Result<(u32, u32)> {
        let out = self.child.wait_with_output()?;
        let (tx, rx) = parse_ping(&String::from_utf8_lossy(&out.stdout))?;
        if tx != self.count {
            bail!("ping sent {tx} of {} requests", self.count);
        }
        Ok((tx, rx))
    }
}

/// `ping -c COUNT` in `ns`; returns (transmitted, received).
pub fn ping(ns: &Netns, dst: &str, count: u32) -> Result<(u32, u32)> {
    let count_s = count.to_string();
    let out = ns
        .command(
            "ping",
            &["-n", "-q", "-c", &count_s, "-i", "0.05", "-W", "1", dst],
        )
        .output()?;
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

/// (transmitted, received) from ping's summary.
fn parse_ping(text: &str) -> Result<(u32, u32)> {
    // "5 packets transmitted, 5 received, 0% packet loss, time 4006ms"
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("unexpected ping output: {text}"))?;
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    if nums.len() < 2 {
        bail!("unexpected ping output: {line}");
    }
    Ok((nums[0], nums[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_idcs_config_extends_the_basic_one() {
        let c = config_for("n", Scenario::OverlappingIdcs);
        assert!(c.contains("mapped = \"100.64.1.0/24\""), "{c}");
        assert!(c.contains("mapped = \"192.168.60.1:8080\""), "{c}");
        assert!(c.contains("name = \"dct-b-100\""), "{c}");
        assert_eq!(c.matches("[[tunnel.peer_ip_mapping]]").count(), 2, "{c}");
    }
}
