//! Network-namespace toolkit for the integration tests and the demo.
//!
//! Thin, readable wrappers over iproute2 (`ip`), `ethtool` and raw
//! `AF_PACKET` sockets. Everything returns `anyhow::Result` with the failed
//! command line and its stderr in the message; nothing panics on an
//! expected error, so the demo can use it as well as the tests.
//!
//! * [`run`] / [`sh`]: run a command, get its stdout.
//! * [`Netns`]: one named network namespace, deleted on drop.
//! * [`Lab`]: a set of namespaces with a per-instance unique name prefix,
//!   so parallel or crashed runs do not collide.
//! * [`veth`] / [`veth_with`]: a veth pair between two namespaces.
//! * [`attach_lab_vlan`]: VLAN sub-interfaces without 8021q (the lab
//!   kernel has no VLAN devices): `gatewayd lab-vlan` tags and untags on a
//!   trunk veth; see gateway-ebpf/src/bin/lab_vlan.rs.
//! * [`PacketSocket`]: send and capture raw Ethernet frames, 802.1Q tags
//!   included.
//!
//! Needs root, and `ip` (iproute2) and `ethtool` on PATH.

use std::{
    ffi::{CString, OsStr},
    fs::File,
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};

pub mod daemon;
pub mod demo;
pub mod lines;
pub mod topology;

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// Runs `cmd args...`; returns its stdout. Fails with the command line, the
/// exit status and stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    run_os(
        cmd.as_ref(),
        &args.iter().map(OsStr::new).collect::<Vec<_>>(),
    )
}

/// Runs one shell line (`sh -c LINE`); returns its stdout.
pub fn sh(line: &str) -> Result<String> {
    run("sh", &["-c", line])
}

fn run_os(cmd: &OsStr, args: &[&OsStr]) -> Result<String> {
    let line = command_line(cmd, args);
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn command_line(cmd: &OsStr, args: &[&OsStr]) -> String {
    std::iter::once(cmd)
        .chain(args.iter().copied())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Fails unless the process runs as root (namespaces, eBPF, raw sockets).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (network namespaces, eBPF, raw sockets): e.g. `sudo -E cargo test ...`");
    }
    Ok(())
}

/// Fails naming every command of `cmds` that is not on PATH.
pub fn require_commands(cmds: &[&str]) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = cmds
        .iter()
        .copied()
        .filter(|cmd| !std::env::split_paths(&path).any(|dir| dir.join(cmd).is_file()))
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing commands: {} (Debian: apt-get install iproute2 ethtool iputils-ping)",
            missing.join(", ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------

/// A named network namespace (`ip netns`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace (deleting a stale one of the same name first)
    /// and brings its `lo` up.
    pub fn create(name: &str) -> Result<Netns> {
        if Path::new("/run/netns").join(name).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.link_up("lo")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `args` inside the namespace (`ip netns exec`); returns stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A `Command` that runs `program args` inside the namespace, for
    /// callers that want their own stdio or environment.
    pub fn command(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .args(args);
        cmd
    }

    /// Starts `args` inside the namespace without waiting (stdin null,
    /// stdout/stderr inherited). The caller owns the child.
    pub fn spawn(&self, args: &[&str]) -> Result<Child> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| anyhow!("spawn in {}: empty command", self.name))?;
        self.command(program, rest)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start `{}` in netns {}", args.join(" "), self.name))
    }

    /// `ip -n NS args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    pub fn link_up(&self, iface: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", iface, "up"]).map(drop)
    }

    /// `ip addr add CIDR dev IFACE`, e.g. `add_addr("trunk", "10.0.100.1/24")`.
    pub fn add_addr(&self, iface: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", iface]).map(drop)
    }

    /// `ip route replace DST via VIA` (DST may be `default`).
    pub fn add_route(&self, dst: &str, via: &str) -> Result<()> {
        self.ip(&["route", "replace", dst, "via", via]).map(drop)
    }

    /// `ip route replace DST dev IFACE`.
    pub fn add_route_dev(&self, dst: &str, iface: &str) -> Result<()> {
        self.ip(&["route", "replace", dst, "dev", iface]).map(drop)
    }

    /// A permanent neighbour entry: `ip neigh replace IP lladdr MAC dev IFACE`.
    pub fn add_neigh(&self, iface: &str, ip: &str, mac: [u8; 6]) -> Result<()> {
        let mac = format_mac(&mac);
        self.ip(&[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac,
            "dev",
            iface,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// A macvlan (mode bridge) on `lower`, with `mac` if given, brought up.
    /// Returns its name.
    pub fn macvlan(&self, lower: &str, name: &str, mac: Option<[u8; 6]>) -> Result<String> {
        let mac = mac.map(|m| format_mac(&m));
        let mut args = vec!["link", "add", "link", lower, "name", name];
        if let Some(mac) = &mac {
            args.extend(["address", mac.as_str()]);
        }
        args.extend(["type", "macvlan", "mode", "bridge"]);
        self.ip(&args)?;
        self.link_up(name)?;
        Ok(name.to_owned())
    }

    /// `ethtool args...` inside the namespace.
    pub fn ethtool(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ethtool"];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    /// GRO on or off. A veth that receives `XDP_REDIRECT`ed frames needs
    /// GRO on (or an XDP program of its own), or the frames vanish.
    pub fn set_gro(&self, iface: &str, on: bool) -> Result<()> {
        let state = if on { "on" } else { "off" };
        self.ethtool(&["-K", iface, "gro", state]).map(drop)
    }

    /// Writes a sysctl of the namespace, e.g. `sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run_in(|| {
            std::fs::write(&path, value)
                .with_context(|| format!("sysctl {key}={value} ({})", path.display()))
        })
        .with_context(|| format!("in netns {}", self.name))
    }

    /// Makes the namespace a router: IPv4 forwarding on, and `rp_filter`
    /// off everywhere (all, default and every existing interface), since
    /// lab topologies are often asymmetric.
    pub fn enable_routing(&self) -> Result<()> {
        self.run_in(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .context("net.ipv4.ip_forward=1")?;
            for entry in std::fs::read_dir("/proc/sys/net/ipv4/conf")? {
                let path = entry?.path().join("rp_filter");
                std::fs::write(&path, "0")
                    .with_context(|| format!("writing 0 to {}", path.display()))?;
            }
            Ok(())
        })
        .with_context(|| format!("enabling routing in netns {}", self.name))
    }

    /// The interface's MAC address.
    pub fn mac(&self, iface: &str) -> Result<[u8; 6]> {
        let link = self.link_json(iface)?;
        let address = link["address"]
            .as_str()
            .ok_or_else(|| anyhow!("{iface} in {} has no MAC address", self.name))?;
        parse_mac(address).ok_or_else(|| anyhow!("{iface} in {}: bad MAC {address:?}", self.name))
    }

    /// The interface's index.
    pub fn ifindex(&self, iface: &str) -> Result<u32> {
        let link = self.link_json(iface)?;
        link["ifindex"]
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| anyhow!("{iface} in {} has no ifindex", self.name))
    }

    fn link_json(&self, iface: &str) -> Result<serde_json::Value> {
        let out = self.ip(&["-j", "link", "show", "dev", iface])?;
        let mut links: Vec<serde_json::Value> = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j link show dev {iface}`: {out}"))?;
        if links.is_empty() {
            bail!("no interface {iface} in netns {}", self.name);
        }
        Ok(links.swap_remove(0))
    }

    /// Runs `f` on a thread that has entered the namespace; sockets it
    /// creates stay in the namespace and may be used from any thread
    /// afterwards.
    pub fn run_in<T, F>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce() -> Result<T> + Send,
    {
        let path = Path::new("/run/netns").join(&self.name);
        let ns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    // SAFETY: `ns` is an open netns file; setns only changes
                    // this (short-lived) thread's network namespace.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error())
                            .with_context(|| format!("setns into {}", path.display()));
                    }
                    f()
                })
                .join()
                .map_err(|_| anyhow!("code run inside netns {} panicked", self.name))?
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// Options of [`veth_with`]. `Default` = kernel-chosen MACs, GRO as the
/// kernel sets it (off), default MTU.
#[derive(Debug, Default, Clone)]
pub struct VethOptions {
    pub mac_a: Option<[u8; 6]>,
    pub mac_b: Option<[u8; 6]>,
    /// Turn GRO on at the A end: needed when frames are `XDP_REDIRECT`ed
    /// into B (A receives them) and A has no XDP program.
    pub gro_a: bool,
    /// Same for the B end.
    pub gro_b: bool,
    pub mtu: Option<u32>,
}

/// A veth pair `a_ns:a_name` <-> `b_ns:b_name`, both ends up.
pub fn veth(a_ns: &Netns, a_name: &str, b_ns: &Netns, b_name: &str) -> Result<()> {
    veth_with(a_ns, a_name, b_ns, b_name, &VethOptions::default())
}

/// [`veth`] with MACs, GRO and MTU.
pub fn veth_with(
    a_ns: &Netns,
    a_name: &str,
    b_ns: &Netns,
    b_name: &str,
    opts: &VethOptions,
) -> Result<()> {
    let mac_a = opts.mac_a.map(|m| format_mac(&m));
    let mac_b = opts.mac_b.map(|m| format_mac(&m));
    // Created inside A, the peer directly in B: no name ever exists in the
    // host namespace, so parallel labs may reuse interface names.
    let mut args = vec!["link", "add", a_name];
    if let Some(mac) = &mac_a {
        args.extend(["address", mac.as_str()]);
    }
    args.extend(["type", "veth", "peer", "name", b_name, "netns", b_ns.name()]);
    if let Some(mac) = &mac_b {
        args.extend(["address", mac.as_str()]);
    }
    a_ns.ip(&args)?;
    if let Some(mtu) = opts.mtu {
        let mtu = mtu.to_string();
        a_ns.ip(&["link", "set", "dev", a_name, "mtu", &mtu])?;
        b_ns.ip(&["link", "set", "dev", b_name, "mtu", &mtu])?;
    }
    if opts.gro_a {
        a_ns.set_gro(a_name, true)?;
    }
    if opts.gro_b {
        b_ns.set_gro(b_name, true)?;
    }
    a_ns.link_up(a_name)?;
    b_ns.link_up(b_name)?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Lab: namespaces with a unique prefix
// ---------------------------------------------------------------------------

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A set of namespaces named `<prefix>-<role>`, where the prefix
/// (`gwt<pid % 1000>-<n>`) is unique per `Lab` in this process and
/// unlikely to clash with another process. Namespaces are deleted when the
/// `Lab` and every handle returned by [`Lab::netns`] are dropped.
pub struct Lab {
    prefix: String,
    namespaces: Vec<Arc<Netns>>,
}

impl Lab {
    /// Needs root.
    pub fn new() -> Result<Lab> {
        require_root()?;
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        Ok(Lab {
            prefix: format!("gwt{:03}-{n}", std::process::id() % 1000),
            namespaces: Vec::new(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Creates namespace `<prefix>-<role>` (e.g. role "router").
    pub fn netns(&mut self, role: &str) -> Result<Arc<Netns>> {
        let ns = Arc::new(Netns::create(&format!("{}-{role}", self.prefix))?);
        self.namespaces.push(Arc::clone(&ns));
        Ok(ns)
    }

    /// A namespace made with [`Lab::netns`], by role.
    pub fn get(&self, role: &str) -> Option<Arc<Netns>> {
        let name = format!("{}-{role}", self.prefix);
        self.namespaces.iter().find(|ns| ns.name == name).cloned()
    }

    /// Every namespace of the lab, in creation order.
    pub fn namespaces(&self) -> &[Arc<Netns>] {
        &self.namespaces
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Newest first; each is deleted once its last handle goes.
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

// ---------------------------------------------------------------------------
// gatewayd
// ---------------------------------------------------------------------------

/// The `gatewayd` binary: `$GATEWAYD` if set, else the first `gatewayd`
/// found walking up from this executable (tests run from
/// `target/<profile>/deps`, next to `target/<profile>/gatewayd`), else
/// plain `gatewayd` (looked up on PATH). `cargo test -p tests` does not
/// build it: run `cargo build` first.
pub fn gatewayd_path() -> PathBuf {
    if let Some(path) = std::env::var_os("GATEWAYD") {
        return PathBuf::from(path);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let candidate = dir.join("gatewayd");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("gatewayd")
}

/// Emulates VLAN sub-interfaces on trunk `iface` of `ns`: runs
/// `gatewayd lab-vlan --interface IFACE --vlan VID=MAC...` there. Frames
/// sent from MAC leave tagged VID (inline); tagged frames are untagged on
/// receive (a unicast one only if its VLAN is its destination MAC's). MACs
/// are the trunk's own and those of macvlans (mode bridge) on top of it.
///
/// Also sets `arp_ignore=1` and `arp_announce=2` in the namespace: all
/// sub-interfaces share one wire, so without them a broadcast ARP request
/// on one VLAN would be answered on every VLAN.
pub fn attach_lab_vlan(
    ns: &Netns,
    gatewayd: &Path,
    iface: &str,
    vlans: &[(u16, [u8; 6])],
) -> Result<()> {
    if gatewayd.components().count() > 1 && !gatewayd.is_file() {
        bail!(
            "{} does not exist: build it first (`cargo build`) or set GATEWAYD",
            gatewayd.display()
        );
    }
    ns.sysctl("net.ipv4.conf.all.arp_ignore", "1")?;
    ns.sysctl("net.ipv4.conf.all.arp_announce", "2")?;
    let specs: Vec<String> = vlans
        .iter()
        .map(|(vid, mac)| format!("{vid}={}", format_mac(mac)))
        .collect();
    let mut args: Vec<&OsStr> = vec![
        "netns".as_ref(),
        "exec".as_ref(),
        ns.name().as_ref(),
        gatewayd.as_os_str(),
        "lab-vlan".as_ref(),
        "--interface".as_ref(),
        iface.as_ref(),
    ];
    for spec in &specs {
        args.extend(["--vlan".as_ref(), OsStr::new(spec)]);
    }
    run_os("ip".as_ref(), &args).map(drop)
}

// ---------------------------------------------------------------------------
// MAC addresses
// ---------------------------------------------------------------------------

/// `02:00:00:00:01:01`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Six hex bytes separated by `:`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

// ---------------------------------------------------------------------------
// Raw frames
// ---------------------------------------------------------------------------

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The frame as on the wire. The kernel moves a received 802.1Q tag out
    /// of the data into metadata before packet sockets see it; such a tag is
    /// put back here (at offset 12), and also reported in `out_of_band_tci`.
    pub data: Vec<u8>,
    /// Sent by this host (`PACKET_OUTGOING`) rather than received.
    pub outgoing: bool,
    /// The TCI the kernel reported out of band, if any. `None` with a tag in
    /// `data` means the tag was inline in the skb itself.
    pub out_of_band_tci: Option<u16>,
}

impl Frame {
    pub fn dst_mac(&self) -> Option<[u8; 6]> {
        self.data.get(0..6)?.try_into().ok()
    }

    pub fn src_mac(&self) -> Option<[u8; 6]> {
        self.data.get(6..12)?.try_into().ok()
    }

    /// The VLAN id of the outer 802.1Q tag, if tagged.
    pub fn vlan_id(&self) -> Option<u16> {
        match self.data.get(12..16)? {
            [0x81, 0x00, hi, lo] => Some(u16::from_be_bytes([*hi, *lo]) & 0x0fff),
            _ => None,
        }
    }

    /// The frame sliced by etherparse (Ethernet, VLAN tags, ARP/IP, L4).
    pub fn sliced(&self) -> Result<etherparse::SlicedPacket<'_>> {
        etherparse::SlicedPacket::from_ethernet(&self.data)
            .map_err(|e| anyhow!("unparsable frame ({e}): {:02x?}", self.data))
    }
}

/// A raw `AF_PACKET` socket bound to one interface of one namespace
/// (`ETH_P_ALL`: every frame in and out). Sends frames as given (802.1Q
/// tags included) and captures with `PACKET_AUXDATA`, so tags the kernel
/// moved out of band are reported.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    iface: String,
}

// From <linux/if_packet.h>.
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_OUTGOING: u8 = 4;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const TP_STATUS_VLAN_TPID_VALID: u32 = 1 << 6;

#[repr(C)]
#[derive(Clone, Copy)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}

impl PacketSocket {
    /// Opens the socket inside `ns`, bound to `iface`, with nothing queued.
    pub fn open(ns: &Netns, iface: &str) -> Result<PacketSocket> {
        let ifname = CString::new(iface)?;
        let fd = ns
            .run_in(move || {
                let proto = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: plain socket(2).
                let raw = unsafe {
                    libc::socket(
                        libc::AF_PACKET,
                        libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                        libc::c_int::from(proto),
                    )
                };
                if raw < 0 {
                    return Err(io::Error::last_os_error()).context("socket(AF_PACKET)");
                }
                // SAFETY: `raw` is a fresh descriptor owned by nobody else.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
                if ifindex == 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("no interface {ifname:?}"));
                }
                // SAFETY: all-zero is a valid sockaddr_ll.
                let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = proto;
                addr.sll_ifindex = ifindex as i32;
                // SAFETY: `addr` is a valid sockaddr_ll of the given size.
                let rc = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&addr as *const libc::sockaddr_ll).cast(),
                        size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error()).context("bind(AF_PACKET)");
                }
                let one: libc::c_int = 1;
                // SAFETY: an int option of the right size.
                let rc = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_PACKET,
                        PACKET_AUXDATA,
                        (&one as *const libc::c_int).cast(),
                        size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if rc != 0 {
                    return Err(io::Error::last_os_error()).context("PACKET_AUXDATA");
                }
                Ok(fd)
            })
            .with_context(|| format!("packet socket on {iface} in netns {}", ns.name()))?;
        let sock = PacketSocket {
            fd,
            iface: iface.to_owned(),
        };
        // Frames of other interfaces may have arrived before bind().
        sock.drain()?;
        Ok(sock)
    }

    /// Sends one complete Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: `frame` is a valid buffer of the given length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!("sending a {}-byte frame on {}", frame.len(), self.iface)
            });
        }
        Ok(())
    }

    /// Discards every frame queued so far.
    pub fn drain(&self) -> Result<()> {
        while self.recv(Duration::ZERO)?.is_some() {}
        Ok(())
    }

    /// The next frame, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<Option<Frame>> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(err).context("poll");
        }
        if ready == 0 {
            return Ok(None);
        }

        let mut buf = vec![0u8; 70_000];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut control = [0u64; 16];
        let mut from = MaybeUninit::<libc::sockaddr_ll>::zeroed();
        // SAFETY: all-zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = from.as_mut_ptr().cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>();
        // SAFETY: msg points at live buffers of the stated sizes.
        let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(err).with_context(|| format!("recvmsg on {}", self.iface));
        }
        buf.truncate(n as usize);
        // SAFETY: the kernel filled the address (zeroed before otherwise).
        let from = unsafe { from.assume_init() };

        let mut out_of_band = None;
        // SAFETY: walking the control messages the kernel wrote into `msg`.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == PACKET_AUXDATA {
                    let aux: TpacketAuxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                        let tpid = if aux.tp_status & TP_STATUS_VLAN_TPID_VALID != 0 {
                            aux.tp_vlan_tpid
                        } else {
                            0x8100
                        };
                        out_of_band = Some((tpid, aux.tp_vlan_tci));
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        if let Some((tpid, tci)) = out_of_band {
            if buf.len() >= 12 {
                let mut tag = [0u8; 4];
                tag[..2].copy_from_slice(&tpid.to_be_bytes());
                tag[2..].copy_from_slice(&tci.to_be_bytes());
                buf.splice(12..12, tag);
            }
        }
        Ok(Some(Frame {
            data: buf,
            outgoing: from.sll_pkttype == PACKET_OUTGOING,
            out_of_band_tci: out_of_band.map(|(_, tci)| tci),
        }))
    }

    /// The first frame within `timeout` for which `want` is true (others
    /// are discarded), or `None`.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        mut want: impl FnMut(&Frame) -> bool,
    ) -> Result<Option<Frame>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left)? {
                Some(frame) if want(&frame) => return Ok(Some(frame)),
                Some(_) => {}
                None if left.is_zero() => return Ok(None),
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = [0x02, 0, 0, 0, 0x01, 0xab];
        assert_eq!(format_mac(&mac), "02:00:00:00:01:ab");
        assert_eq!(parse_mac("02:00:00:00:01:ab"), Some(mac));
        assert_eq!(parse_mac("2:0:0:0:1:AB"), Some(mac));
        assert_eq!(parse_mac("02:00:00:00:01"), None);
        assert_eq!(parse_mac("02:00:00:00:01:ab:cd"), None);
    }

    #[test]
    fn vlan_id_of_frames() {
        let mut data = vec![0u8; 12];
        data.extend([0x81, 0x00, 0x20, 0x64, 0x08, 0x00]);
        let frame = Frame {
            data,
            outgoing: false,
            out_of_band_tci: None,
        };
        assert_eq!(frame.vlan_id(), Some(100));
        let untagged = Frame {
            data: vec![0u8; 14],
            outgoing: false,
            out_of_band_tci: None,
        };
        assert_eq!(untagged.vlan_id(), None);
    }
}
