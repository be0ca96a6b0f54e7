//! The two-line topology: one customer IDC reaching one gateway over two
//! connections (lines), a tunnel on each, both announcing the same
//! prefix. Used by the line failover, load-balancing and bandwidth-cap
//! tests.
//!
//! ```text
//!  idc (customer router)                          gw (gatewayd)                 vpc
//!  lo      10.0.0.1/32 (the IDC service address)
//!  trunk-a 169.254.100.2 VLAN 100 ============== line-a  (tunnel dct-a)
//!  trunk-b 169.254.110.2 VLAN 100 ============== line-b  (tunnel dct-b)
//!                                                 vpc-prod 172.16.0.1 ------ eth0 172.16.0.10
//! ```
//! VPC -> IDC traffic is what the gateway's next-hop group steers, so the
//! tests send UDP flows from the VPC host to 10.0.0.1 and count per line
//! with the tunnels' counters.

use std::{
    collections::BTreeMap,
    net::UdpSocket,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{attach_lab_vlan, daemon::Daemon, veth_with, Lab, Netns, VethOptions};

pub const IDC_SERVICE: &str = "10.0.0.1";
pub const VPC_HOST: &str = "172.16.0.10";
pub const UDP_PORT: u16 = 9000;
const TRUNK_A_MAC: [u8; 6] = [0x02, 0x1d, 0xc0, 0x0a, 0x01, 0x00];
const TRUNK_B_MAC: [u8; 6] = [0x02, 0x1d, 0xc0, 0x0b, 0x01, 0x00];

/// Per-line settings of the config.
#[derive(Clone, Copy, Debug)]
pub struct LineSettings {
    pub priority: u16,
    pub bandwidth_mbps: Option<u32>,
}

impl Default for LineSettings {
    fn default() -> Self {
        Self {
            priority: 100,
            bandwidth_mbps: None,
        }
    }
}

pub fn config(node: &str, a: LineSettings, b: LineSettings) -> String {
    let cap = |s: LineSettings| {
        s.bandwidth_mbps
            .map(|c| format!("bandwidth_mbps = {c}\n"))
            .unwrap_or_default()
    };
    format!(
        r#"# One IDC on two lines to one gateway (default health timers).
[node]
name = "{node}"

[[connection]]
name = "line-a"
interface = "line-a"

[[connection]]
name = "line-b"
interface = "line-b"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.0/16"]
interface = "vpc-prod"

[[tunnel]]
name = "dct-a"
connection = "line-a"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.100.2"
routes = ["10.0.0.0/16"]
priority = {pa}
{ca}
[[tunnel]]
name = "dct-b"
connection = "line-b"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.110.1/30"
peer_ip = "169.254.110.2"
routes = ["10.0.0.0/16"]
priority = {pb}
{cb}"#,
        pa = a.priority,
        pb = b.priority,
        ca = cap(a),
        cb = cap(b),
    )
}

pub struct TwoLineLab {
    pub lab: Lab,
    pub gw: Arc<Netns>,
    pub idc: Arc<Netns>,
    pub vpc: Arc<Netns>,
    /// gatewayd in the `gw` namespace (its methods are the lab's, by Deref).
    pub daemon: Daemon,
}

impl std::ops::Deref for TwoLineLab {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl std::ops::DerefMut for TwoLineLab {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl TwoLineLab {
    pub fn build(gatewayd: &Path, a: LineSettings, b: LineSettings) -> Result<TwoLineLab> {
        let mut lab = Lab::new()?;
        let node = lab.prefix().to_owned();
        let gw = lab.netns("gw")?;
        let idc = lab.netns("idc")?;
        let vpc = lab.netns("vpc")?;
        for ns in [&gw, &idc, &vpc] {
            ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
        }
        // Redirected frames reach a veth peer only with GRO on there.
        for (gw_if, idc_if, mac) in [
            ("line-a", "trunk-a", TRUNK_A_MAC),
            ("line-b", "trunk-b", TRUNK_B_MAC),
        ] {
            veth_with(
                &gw,
                gw_if,
                &idc,
                idc_if,
                &VethOptions {
                    mac_b: Some(mac),
                    gro_b: true,
                    ..Default::default()
                },
            )?;
        }
        veth_with(
            &gw,
            "vpc-prod",
            &vpc,
            "eth0",
            &VethOptions {
                gro_b: true,
                ..Default::default()
            },
        )?;
        for (ns, iface) in [
            (&gw, "line-a"),
            (&gw, "line-b"),
            (&gw, "vpc-prod"),
            (&idc, "trunk-a"),
            (&idc, "trunk-b"),
            (&vpc, "eth0"),
        ] {
            ns.ethtool(&["-K", iface, "tx", "off"])?;
        }
        gw.add_addr("vpc-prod", "172.16.0.1/16")?;
        gw.enable_routing()?;
        vpc.add_addr("eth0", "172.16.0.10/16")?;
        vpc.ip(&["route", "add", "default", "via", "172.16.0.1"])?;

        // The customer router: one address per line, the service address
        // on lo, reachable over either line (no reverse-path filter).
        idc.add_addr("trunk-a", "169.254.100.2/30")?;
        idc.add_addr("trunk-b", "169.254.110.2/30")?;
        idc.add_addr("lo", "10.0.0.1/32")?;
        for key in ["all", "default", "trunk-a", "trunk-b", "lo"] {
            idc.sysctl(&format!("net.ipv4.conf.{key}.rp_filter"), "0")?;
        }
        idc.add_route("172.16.0.0/16", "169.254.100.1")?;
        attach_lab_vlan(&idc, gatewayd, "trunk-a", &[(100, TRUNK_A_MAC)])?;
        attach_lab_vlan(&idc, gatewayd, "trunk-b", &[(100, TRUNK_B_MAC)])?;

        let daemon = Daemon::new(
            gatewayd,
            gw.clone(),
            &node,
            &format!("gatewayd-lines-{node}"),
            &config(&node, a, b),
        )?;
        Ok(TwoLineLab {
            lab,
            gw,
            idc,
            vpc,
            daemon,
        })
    }

    /// Starts the daemon and waits until both peers are learned and both
    /// tunnels are up.
    pub fn start_daemon(&mut self) -> Result<()> {
        self.daemon.start_daemon()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let stats = self
                .stats_json()
                .with_context(|| format!("gatewayd stopped answering:\n{}", self.log()))?;
            let ready = stats["tunnels"].as_array().is_some_and(|ts| {
                ts.iter()
                    .all(|t| t["peer_mac"].is_string() && t["health"]["state"] == "up")
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("lines not up within 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Counters of tunnel `name` ("dct-a", "dct-b").
    pub fn tunnel(&self, name: &str) -> Result<LineCounters> {
        let stats = self.stats_json()?;
        let t = stats["tunnels"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["name"] == name))
            .with_context(|| format!("tunnel {name} missing: {stats}"))?;
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        Ok(LineCounters {
            // Frames the datapath answered itself (ARP, ping) are not data.
            data_tx_packets: n(&t["tx_packets"])
                - n(&t["answered"]["arp_replied"])
                - n(&t["answered"]["icmp_echo_replied"]),
            tx_bytes: n(&t["tx_bytes"]),
            rate_limited: n(&t["drops"]["rate_limited"]),
            state: t["health"]["state"].as_str().unwrap_or("").to_owned(),
            reason: t["health"]["reason"].as_str().unwrap_or("").to_owned(),
        })
    }

    /// Both tunnels' counters once they have stopped moving (unchanged
    /// over 200 ms, at most 3 s): frames still queued in a veth ring on a
    /// busy machine are counted before a test compares totals.
    pub fn settled(&self) -> Result<(LineCounters, LineCounters)> {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut last = (self.tunnel("dct-a")?, self.tunnel("dct-b")?);
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let now = (self.tunnel("dct-a")?, self.tunnel("dct-b")?);
            let moved = now.0.tx_bytes != last.0.tx_bytes || now.1.tx_bytes != last.1.tx_bytes;
            last = now;
            if !moved || Instant::now() > deadline {
                return Ok(last);
            }
        }
    }

    /// The IDC namespace's UDP and IP error counters (`nstat`), for
    /// failure messages: tells packets the receiver's kernel dropped from
    /// packets that never arrived.
    pub fn idc_udp_errors(&self) -> String {
        match self.idc.command("nstat", &["-az"]).output() {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| {
                    (l.starts_with("Udp") || l.starts_with("Ip")) && l.contains("Err")
                        || l.contains("Discard")
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("(nstat: {e})"),
        }
    }

    /// Both tunnels' full `stats --json` entries, for failure messages.
    pub fn tunnels_json(&self) -> String {
        match self.stats_json() {
            Ok(s) => serde_json::to_string_pretty(&s["tunnels"]).unwrap_or_default(),
            Err(e) => format!("(stats unavailable: {e:#})"),
        }
    }

    /// Waits until tunnel `name` is in `state` ("up"/"down").
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Result<LineCounters> {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.tunnel(name)?;
            if t.state == state {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} not {state} within {timeout:?}: {t:?}\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Takes line A's link down (its IDC end, so the gateway's port loses
    /// carrier) or brings it back.
    pub fn set_link_a(&self, up: bool) -> Result<()> {
        self.idc
            .ip(&[
                "link",
                "set",
                "dev",
                "trunk-a",
                if up { "up" } else { "down" },
            ])
            .map(drop)
    }

    /// The customer router on line A stops (or resumes) answering while
    /// the link stays up: without its VLAN emulation the router's kernel
    /// drops every tagged frame, probes and data alike.
    pub fn set_router_a_answering(&self, answering: bool) -> Result<()> {
        if answering {
            attach_lab_vlan(&self.idc, &self.gatewayd, "trunk-a", &[(100, TRUNK_A_MAC)])
        } else {
            self.idc
                .command("tc", &["qdisc", "del", "dev", "trunk-a", "clsact"])
                .output()
                .context("tc qdisc del")
                .and_then(|o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        bail!("tc qdisc del: {}", String::from_utf8_lossy(&o.stderr))
                    }
                })
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct LineCounters {
    pub data_tx_packets: u64,
    pub tx_bytes: u64,
    pub rate_limited: u64,
    pub state: String,
    pub reason: String,
}

/// What the receiver saw of one flow.
#[derive(Clone, Debug, Default)]
pub struct FlowTrace {
    pub received: u64,
    /// Largest time between two consecutive packets of the flow.
    pub max_gap: Duration,
    /// Packets that arrived with a lower sequence number than one before.
    pub reordered: u64,
}

/// UDP flows from the VPC host to the IDC service: `flows` sockets with
/// fixed source ports (so the flow hash, and the line, of each is
/// reproducible), `pps` packets per second in total, round robin, each
/// carrying (flow, sequence). `during` runs on the calling thread while
/// traffic flows, given the start time.
pub struct UdpFlows {
    pub flows: u16,
    pub pps: u32,
    pub payload: usize,
    pub duration: Duration,
}

/// Result of a [`UdpFlows`] run.
pub struct FlowsReport {
    pub sent: u64,
    /// First to last send.
    pub send_time: Duration,
    /// Longest time between two sends: how steady the offered load was
    /// (the sender is a user-space thread on a shared machine).
    pub max_send_gap: Duration,
    /// Every time between two sends longer than 5 ms.
    pub pauses: Vec<Duration>,
    pub traces: BTreeMap<u16, FlowTrace>,
}

impl UdpFlows {
    pub fn run<T>(
        &self,
        lab: &TwoLineLab,
        during: impl FnOnce(Instant) -> Result<T>,
    ) -> Result<(FlowsReport, T)> {
        let receiver = lab.idc.run_in(|| {
            let s = UdpSocket::bind((IDC_SERVICE, UDP_PORT))?;
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
            // Room for seconds of traffic: the receiver is a user-space
            // thread on a shared 2-CPU machine, and a pause of it must not
            // show up as packets the gateway lost (the default buffer holds
            // about 100 ms of these flows).
            let bytes: libc::c_int = 16 << 20;
            // SAFETY: setsockopt on an open socket with a c_int argument.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&s),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &bytes as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                bail!(
                    "SO_RCVBUFFORCE on the receiver: {}",
                    std::io::Error::last_os_error()
                );
            }
            Ok(s)
        })?;
        let flows = self.flows;
        let senders: Vec<UdpSocket> = lab.vpc.run_in(|| {
            (0..flows)
                .map(|i| {
                    let s = UdpSocket::bind((VPC_HOST, 20000 + i))?;
                    s.connect((IDC_SERVICE, UDP_PORT))?;
                    Ok(s)
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let (payload, pps, duration) = (self.payload.max(12), self.pps, self.duration);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop_rx = stop.clone();
        let rx = std::thread::spawn(move || -> BTreeMap<u16, FlowTrace> {
            let mut traces: BTreeMap<u16, (FlowTrace, u64, Instant)> = BTreeMap::new();
            let mut buf = vec![0u8; 65536];
            loop {
                match receiver.recv(&mut buf) {
                    Ok(n) if n >= 12 => {
                        let now = Instant::now();
                        let flow = u16::from_be_bytes([buf[0], buf[1]]);
                        let seq = u64::from_be_bytes(buf[4..12].try_into().unwrap());
                        let e = traces.entry(flow).or_insert((FlowTrace::default(), 0, now));
                        if e.0.received > 0 {
                            e.0.max_gap = e.0.max_gap.max(now - e.2);
                            if seq < e.1 {
                                e.0.reordered += 1;
                            }
                        }
                        e.0.received += 1;
                        e.1 = e.1.max(seq);
                        e.2 = now;
                    }
                    _ => {
                        if stop_rx.load(std::sync::atomic::Ordering::SeqCst) {
                            break;
                        }
                    }
                }
            }
            traces.into_iter().map(|(k, v)| (k, v.0)).collect()
        });
        let tx = std::thread::spawn(move || -> Result<(u64, Duration, Vec<Duration>)> {
            // Best effort: a higher priority keeps the pace steadier while
            // other work shares the CPUs.
            // SAFETY: plain syscalls on this thread.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10) };
            let mut buf = vec![0u8; payload];
            let mut pauses = Vec::new();
            let started = Instant::now();
            let mut sent = 0u64;
            let mut last = started;
            // Paced in 1 ms batches.
            while started.elapsed() < duration {
                let due = (started.elapsed().as_secs_f64() * pps as f64) as u64;
                while sent < due {
                    let flow = (sent % senders.len() as u64) as u16;
                    let seq = sent / senders.len() as u64;
                    buf[0..2].copy_from_slice(&flow.to_be_bytes());
                    buf[4..12].copy_from_slice(&seq.to_be_bytes());
                    senders[flow as usize].send(&buf)?;
                    let now = Instant::now();
                    if sent > 0 && now - last > Duration::from_millis(5) {
                        pauses.push(now - last);
                    }
                    sent += 1;
                    last = now;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            Ok((sent, last - started, pauses))
        });
        let started = Instant::now();
        let during_result = during(started);
        let (sent, send_time, pauses) = tx
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let traces = rx
            .join()
            .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
        Ok((
            FlowsReport {
                sent,
                send_time,
                max_send_gap: pauses.iter().max().copied().unwrap_or_default(),
                pauses,
                traces,
            },
            during_result?,
        ))
    }
}
