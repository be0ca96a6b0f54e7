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
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{attach_lab_vlan, veth_with, Lab, Netns, VethOptions};

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
    pub gatewayd: PathBuf,
    /// Node name (= lab prefix, unique), config file, scratch folder.
    pub node: String,
    pub config: PathBuf,
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    daemon: Option<Child>,
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

        let dir = std::env::temp_dir().join(format!("gatewayd-lab-{node}"));
        fs::create_dir_all(&dir)?;
        let config = dir.join("gateway.toml");
        fs::write(&config, config_for(&node, scenario))?;
        let run_dir = dir.join("run");
        Ok(GatewayLab {
            lab,
            gw,
            idc,
            idchost,
            vpc_prod,
            vpc_test,
            idc_b,
            scenario,
            gatewayd: gatewayd.to_owned(),
            node,
            config,
            dir,
            run_dir,
            daemon: None,
        })
    }

    /// `gatewayd` run inside the gateway namespace. `nsenter --net` (not
    /// `ip netns exec`) keeps the host's mounts, so the pins land in the
    /// host's /sys/fs/bpf where bpftool and a restarted daemon find them.
    pub fn gatewayd_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.gw.name()))
            .arg("--")
            .arg(&self.gatewayd)
            .arg("--run-dir")
            .arg(&self.run_dir)
            .args(args);
        cmd
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("gatewayd.log")
    }

    /// Starts `gatewayd run` and waits until it answers on its control
    /// socket. Its log goes to `log_path()`.
    pub fn start_daemon(&mut self) -> Result<()> {
        self.start_daemon_with(&[])
    }

    /// `start_daemon` with extra `gatewayd run` arguments (e.g. `--fresh`).
    /// The log of an earlier run is kept: this run's log is appended.
    pub fn start_daemon_with(&mut self, extra: &[&str]) -> Result<()> {
        self.start_daemon_env(extra, &[])
    }

    /// `start_daemon_with` plus environment variables for gatewayd.
    pub fn start_daemon_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> Result<()> {
        if self.daemon.is_some() {
            bail!("daemon already running");
        }
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let config = self.config.to_string_lossy().into_owned();
        let mut args = vec!["run", "-c", &config];
        args.extend_from_slice(extra);
        let mut cmd = self.gatewayd_cmd(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting gatewayd run")?;
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.daemon.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.daemon = None;
                    bail!(
                        "gatewayd run exited ({status}) during start:\n{}",
                        self.log()
                    );
                }
            }
            if self.stats_json().is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("gatewayd did not come up in 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM and wait: the daemon exits cleanly; the datapath (pinned
    /// maps and XDP links) stays and keeps forwarding.
    pub fn stop_daemon(&mut self) -> Result<()> {
        if let Some(mut child) = self.daemon.take() {
            match terminate(&mut child, Duration::from_secs(10))? {
                Some(status) if status.success() => {}
                Some(status) => bail!("gatewayd exited with {status}:\n{}", self.log()),
                None => bail!("gatewayd did not stop within 10 s of SIGTERM"),
            }
        }
        Ok(())
    }

    /// `gatewayd down`: the running daemon (if any) detaches, removes its
    /// pins and exits. Returns gatewayd's output.
    pub fn down(&mut self) -> Result<String> {
        let out = self
            .gatewayd_cmd(&["down", "--node", &self.node])
            .output()?;
        if !out.status.success() {
            bail!("gatewayd down: {}", String::from_utf8_lossy(&out.stderr));
        }
        if let Some(mut child) = self.daemon.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = child.try_wait()? {
                    if !status.success() {
                        bail!("gatewayd exited with {status} after down:\n{}", self.log());
                    }
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    bail!("gatewayd did not exit within 10 s of `gatewayd down`");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends `signal` to the running daemon.
    pub fn signal_daemon(&self, signal: i32) -> Result<()> {
        let child = self.daemon.as_ref().context("no daemon running")?;
        // nsenter execs gatewayd in place: the child's pid is gatewayd's.
        // SAFETY: signalling our own child.
        if unsafe { libc::kill(child.id() as i32, signal) } != 0 {
            bail!("kill: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// SIGKILL, as a crash or an OOM kill would: nothing is cleaned up.
    pub fn kill_daemon(&mut self) -> Result<()> {
        let mut child = self.daemon.take().context("no daemon running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Replaces the lab's config file (the daemon reads it on reload).
    pub fn write_config(&self, text: &str) -> Result<()> {
        // Write then rename: a reload never reads a half-written file.
        let tmp = self.config.with_extension("tmp");
        fs::write(&tmp, text)?;
        fs::rename(&tmp, &self.config)?;
        Ok(())
    }

    /// `gatewayd reload`; Err carries gatewayd's message.
    pub fn reload(&self) -> Result<()> {
        let out = self
            .gatewayd_cmd(&["reload", "--node", &self.node])
            .output()?;
        if !out.status.success() {
            bail!("gatewayd reload: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Where the daemon pins this node's maps and links.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new("/sys/fs/bpf/gatewayd").join(&self.node)
    }

    /// (link id, program id) of every pinned XDP link, by pin file name,
    /// as `bpftool link show pinned` reports them.
    pub fn pinned_links(&self) -> Result<std::collections::BTreeMap<String, (u64, u64)>> {
        let mut out = std::collections::BTreeMap::new();
        let dir = self.pin_dir().join("links");
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let text = crate::run(
                "bpftool",
                &["-j", "link", "show", "pinned", &path.to_string_lossy()],
            )?;
            let v: serde_json::Value = serde_json::from_str(&text)?;
            let id = v["id"].as_u64().context("bpftool: no link id")?;
            let prog = v["prog_id"].as_u64().context("bpftool: no prog_id")?;
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            out.insert(name.into_owned(), (id, prog));
        }
        Ok(out)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// `gatewayd stats --json` of the running daemon.
    pub fn stats_json(&self) -> Result<serde_json::Value> {
        let out = self
            .gatewayd_cmd(&["stats", "--json", "--node", &self.node])
            .output()?;
        if !out.status.success() {
            bail!("gatewayd stats: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `gatewayd stats` (the table).
    pub fn stats_table(&self) -> Result<String> {
        let out = self
            .gatewayd_cmd(&["stats", "--node", &self.node])
            .output()?;
        if !out.status.success() {
            bail!("gatewayd stats: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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

impl Drop for GatewayLab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = terminate(&mut child, Duration::from_secs(5));
        }
        let _ = fs::remove_dir_all(&self.dir);
        // A killed daemon leaves its pins; remove them with the lab.
        let _ = fs::remove_dir_all(Path::new("/sys/fs/bpf/gatewayd").join(&self.node));
    }
}

/// SIGTERM, then up to `grace` for the process to exit; killed after that.
/// Returns its exit status, or None if it had to be killed.
pub(crate) fn terminate(
    child: &mut Child,
    grace: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
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
