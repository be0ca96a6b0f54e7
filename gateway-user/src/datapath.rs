//! The one typed facade over the XDP program and its maps. Nothing else in
//! the daemon opens a map by name.
//!
//! Maps are pinned under `<bpffs>/gatewayd/<node>/<MAP>` (aya reuses a map
//! that is already pinned there), so `bpftool map dump pinned` works and a
//! restarted daemon finds the state the datapath kept.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context, Result};
use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, ProgramArray,
    },
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use gateway_common::{
    bandwidth_dir, gateway_flags, limits, map_names as names, Counters, DestCacheStats, Gateway,
    IpMapping, MappingKey, NexthopGroup, PeerNeigh, Port, PortMapping, PortMappingKey, Route,
    RoutePrefixKey, RoutePrefixLens, TokenBucket, Tunnel, TunnelHealth, VlanKey, PIPELINE_PROGRAM,
    XDP_PROGRAM,
};
use tracing::{debug, info};

use crate::plan::{self, Existing, MappingEntryKey, Plan, RouteEntryKey};

/// Where a node's pins live.
pub fn pin_dir(bpffs: &Path, node: &str) -> PathBuf {
    bpffs.join("gatewayd").join(node)
}

/// Checks that `path` (or its closest existing ancestor) is on a bpffs.
pub fn check_bpffs(bpffs: &Path) -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = bpffs.to_string_lossy();
    let found = mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_, mount_point, fstype) = (f.next(), f.next(), f.next());
        fstype == Some("bpf") && mount_point == Some(want.as_ref())
    });
    if !found {
        bail!(
            "{} is not a bpffs mount; mount it with `mount -t bpf bpf {}` (cargo xtask setup does this)",
            want,
            want
        );
    }
    Ok(())
}

/// Sub-folder of a node's pin folder holding one pinned XDP link per port.
pub const LINKS_DIR: &str = "links";

/// Pinned XDP links under a node's pin folder.
pub fn link_pins(pin_dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(pin_dir.join(LINKS_DIR))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Each loaded program's `PIPELINE` array is pinned in the node's pin
/// folder as `PIPELINE_<entry program id>` (see `load_pipeline`): a file
/// beside the maps, so that every gatewayd, an older one after a rollback
/// included, removes it with the maps (`down`, `--fresh`). (bpffs refuses
/// a dot in a name; `PIPELINE_UNAVAILABLE`, a map, has no number after
/// the prefix.)
const PIPELINE_PIN_PREFIX: &str = "PIPELINE_";

/// Pinned `PIPELINE` arrays in a node's pin folder, by entry program id.
fn pipeline_pins(pin_dir: &Path) -> Vec<(u32, PathBuf)> {
    std::fs::read_dir(pin_dir)
        .map(|d| {
            d.filter_map(|e| {
                let path = e.ok()?.path();
                let name = path.file_name()?.to_str()?;
                let id = name.strip_prefix(PIPELINE_PIN_PREFIX)?.parse().ok()?;
                Some((id, path))
            })
            .collect()
        })
        .unwrap_or_default()
}

/// Removes everything gatewayd pinned for a node: the XDP links first (each
/// removal detaches the program from its port once no process holds the
/// link), then the maps and the programs' pipeline arrays. Returns what
/// was removed.
pub fn remove_pins(pin_dir: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for pin in link_pins(pin_dir) {
        std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        removed.push(pin);
    }
    let _ = std::fs::remove_dir(pin_dir.join(LINKS_DIR));
    if let Ok(entries) = std::fs::read_dir(pin_dir) {
        for e in entries.flatten() {
            let path = e.path();
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    if pin_dir.exists() {
        std::fs::remove_dir(pin_dir).with_context(|| format!("removing {}", pin_dir.display()))?;
    }
    Ok(removed)
}

/// Maps that only cache what the datapath recomputes on a miss: when an
/// upgrade changed one's layout, its pin is replaced rather than refused.
const CACHES: &[&str] = &[names::DEST_CACHE, names::MAPPING_CACHE, names::FLOW_CACHE];

/// Refuses to adopt pinned maps whose shape differs from what `object`
/// defines (an upgrade that changed a key, value or capacity): aya would
/// reuse them as they are, and user space and the program would then read
/// and write entries of the wrong size. A cache of another shape is
/// unpinned instead, so the program gets a new one: it holds nothing that
/// must survive (the old program, while still attached, keeps its own).
pub fn check_pinned_maps(object: &[u8], pin_dir: &Path) -> Result<()> {
    let obj = aya_obj::Object::parse(object).context("parsing the embedded eBPF object")?;
    let mut mismatches = Vec::new();
    let mut stale_caches = Vec::new();
    for name in names::ALL {
        let pin = pin_dir.join(name);
        if !pin.exists() {
            continue;
        }
        let Some(want) = obj.maps.get(*name) else {
            continue;
        };
        let info = aya::maps::MapInfo::from_pin(&pin)
            .with_context(|| format!("reading pinned map {}", pin.display()))?;
        // The type and flags too: an LPM trie and a hash can share key
        // and value sizes (ROUTES was a trie, now is a hash).
        let want_type = aya_obj::generated::bpf_map_type::try_from(want.map_type())
            .ok()
            .and_then(|t| aya::maps::MapType::try_from(t).ok());
        let have = (
            info.map_type().ok(),
            info.map_flags(),
            info.key_size(),
            info.value_size(),
            info.max_entries(),
        );
        let need = (
            want_type,
            want.map_flags(),
            want.key_size(),
            want.value_size(),
            want.max_entries(),
        );
        if have == need {
            continue;
        }
        if CACHES.contains(name) {
            // Replaced below, once no other map makes run refuse.
            stale_caches.push((name, pin, have.3, have.4, need.3, need.4));
            continue;
        }
        let kind = |t: Option<aya::maps::MapType>| {
            t.map_or_else(|| "an unknown type".to_owned(), |t| format!("{t:?}"))
        };
        mismatches.push(format!(
            "{name}: pinned (key {}, value {}, entries {}) as {} with flags {:#x} but this gatewayd needs (key {}, value {}, entries {}) as {} with flags {:#x}",
            have.2,
            have.3,
            have.4,
            kind(have.0),
            have.1,
            need.2,
            need.3,
            need.4,
            kind(need.0),
            need.1
        ));
    }
    if !mismatches.is_empty() {
        bail!(
            "the maps pinned in {} were made by a gatewayd with a different map layout:\n  {}\n`gatewayd run --fresh` recreates them: XDP is detached until re-attached, counters and learned peer MACs reset",
            pin_dir.display(),
            mismatches.join("\n  ")
        );
    }
    for (name, pin, have_value, have_entries, need_value, need_entries) in stale_caches {
        std::fs::remove_file(&pin)
            .with_context(|| format!("removing {} to recreate it", pin.display()))?;
        info!(
            "{name}: recreated (pinned with value size {have_value}, entries {have_entries}; this gatewayd needs {need_value}, {need_entries}): a cache, nothing lost"
        );
    }
    Ok(())
}

/// The program's attachment to one port: a bpf_link pinned at `pin`; `fd`
/// keeps it open while the daemon runs.
struct PortLink {
    pin: PathBuf,
    fd: FdLink,
}

pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    links: BTreeMap<u32, PortLink>,
    /// Array map name -> ids of its active slots, as of the last successful
    /// `apply` (the daemon is the only writer of these arrays). Reading an
    /// array then visits only those slots, not all 65536 of NEXTHOP_GROUPS:
    /// a reload reads the maps in a few ms instead of ~80k syscalls. Empty
    /// (full scan) until the first apply, and again after a failed one.
    active_slots: BTreeMap<&'static str, BTreeSet<u32>>,
}

impl Datapath {
    /// Loads the program and creates (or reuses) the pinned maps.
    pub fn load(object: &[u8], pin_dir: &Path) -> Result<Self> {
        check_pinned_maps(object, pin_dir)?;
        std::fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating pin folder {}", pin_dir.display()))?;
        let mut loader = EbpfLoader::new();
        for name in names::ALL {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let ebpf = loader.load(object).map_err(|e| {
            anyhow!(
                "loading the eBPF object failed: {e}\n(pinned maps of an incompatible earlier version in {}? `gatewayd run --fresh` recreates them, resetting counters and learned state)",
                pin_dir.display()
            )
        })?;
        let mut dp = Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            links: BTreeMap::new(),
            active_slots: BTreeMap::new(),
        };
        dp.program()?.load().map_err(|e| {
            // The verifier's log is the one thing an operator (or a CI run)
            // needs when the kernel refuses the program: print it whole.
            anyhow!("the kernel rejected the XDP program: {e}")
        })?;
        dp.load_pipeline()?;
        Ok(dp)
    }

    /// Loads the full pipeline, the program the entry program tail-calls
    /// on a flow cache miss, into this object's `PIPELINE` array, and pins
    /// the array at `<pin dir>/PIPELINE_<entry program id>`.
    ///
    /// The pin is what keeps the datapath whole without a daemon: the
    /// kernel empties a program array when its last user-space reference
    /// goes, and the XDP links (pinned) keep only the entry program. It is
    /// per program: during an upgrade the old entry program, still
    /// attached until its links are switched, keeps jumping to its own
    /// pipeline, which shares its layout of `FLOW_PENDING` and the cache.
    /// `remove_stale_pipelines` removes the arrays of programs no link
    /// runs any more. An object without the program (an older build,
    /// `gateway-bench --compare`) runs its pipeline inline: nothing to do.
    fn load_pipeline(&mut self) -> Result<()> {
        let Some(prog) = self.ebpf.program_mut(PIPELINE_PROGRAM) else {
            return Ok(());
        };
        let prog: &mut Xdp = prog.try_into()?;
        prog.load()
            .map_err(|e| anyhow!("the kernel rejected the XDP program {PIPELINE_PROGRAM}: {e}"))?;
        let fd = prog.fd()?.try_clone()?;
        let entry_id = self.program()?.info()?.id();
        let mut array: ProgramArray<_> = ProgramArray::try_from(self.map_mut(names::PIPELINE)?)?;
        array
            .set(0, &fd, 0)
            .context("filling the PIPELINE program array")?;
        let pin = self
            .pin_dir
            .join(format!("{PIPELINE_PIN_PREFIX}{entry_id}"));
        self.map(names::PIPELINE)?
            .pin(&pin)
            .with_context(|| format!("pinning the PIPELINE program array at {}", pin.display()))?;
        Ok(())
    }

    /// Removes the pinned pipeline arrays (see `load_pipeline`) of entry
    /// programs that no pinned link runs and that are not this one: those
    /// of earlier runs, once their links were switched to this program.
    /// Returns what was removed.
    pub fn remove_stale_pipelines(&mut self) -> Result<Vec<PathBuf>> {
        let mut running = BTreeSet::from([self.program()?.info()?.id()]);
        for pin in link_pins(&self.pin_dir) {
            let link: FdLink = PinnedLink::from_pin(&pin)
                .with_context(|| format!("opening pinned link {}", pin.display()))?
                .into();
            let info = link
                .info()
                .with_context(|| format!("reading pinned link {}", pin.display()))?;
            running.insert(info.program_id());
        }
        let mut removed = Vec::new();
        for (id, pin) in pipeline_pins(&self.pin_dir) {
            if !running.contains(&id) {
                std::fs::remove_file(&pin)
                    .with_context(|| format!("removing {}", pin.display()))?;
                removed.push(pin);
            }
        }
        Ok(removed)
    }

    /// Runs the program on one frame through BPF_PROG_TEST_RUN, as if it
    /// arrived on `ingress_ifindex` (which must exist: the FIB lookup and
    /// the port map use it). Returns the XDP action and the output frame.
    pub fn test_run(&mut self, frame: &[u8], ingress_ifindex: u32) -> Result<(u32, Vec<u8>)> {
        let (action, out, _) = self.test_run_repeat(frame, ingress_ifindex, 1)?;
        Ok((action, out))
    }

    /// Like `test_run`, `repeat` times; also returns the kernel's average
    /// time per run. With `repeat > 1` every run after the first sees the
    /// previous run's output frame, so only use it for paths that leave the
    /// frame unchanged or verify the path from the counters.
    pub fn test_run_repeat(
        &mut self,
        frame: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<(u32, Vec<u8>, std::time::Duration)> {
        use aya::programs::{TestRun, TestRunOptions};
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex (u32 each).
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        // Room for a pushed VLAN tag and more.
        let mut out = vec![0u8; frame.len() + 256];
        let result = self.program()?.test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            repeat,
            ..Default::default()
        })?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out, result.duration))
    }

    /// The XDP program's fd, for its kernel statistics
    /// (`/proc/self/fdinfo`: run_time_ns, run_cnt with bpf_stats on).
    pub fn program_raw_fd(&mut self) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd, AsRawFd};
        Ok(self.program()?.fd()?.as_fd().as_raw_fd())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Hands the aya-log ring buffer to the caller (who drains it into the
    /// daemon's log). Must be kept alive while the program runs.
    pub fn take_logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("eBPF log lines unavailable: {e}");
                None
            }
        }
    }

    fn program(&mut self) -> Result<&mut Xdp> {
        let prog = self
            .ebpf
            .program_mut(XDP_PROGRAM)
            .ok_or_else(|| anyhow!("program {XDP_PROGRAM} missing from the eBPF object"))?;
        Ok(prog.try_into()?)
    }

    /// Makes `interface` run this program, keeping the attachment pinned
    /// (`<pin dir>/links/<interface>@<ifindex>`) so it outlives the daemon:
    /// a link a previous daemon pinned for this port is adopted and switched
    /// to this program atomically (`bpf_link_update`: no frame ever sees the
    /// port without a program); otherwise a new link is created, in native
    /// (driver) mode, falling back to generic (skb) mode with a warning.
    pub fn attach(&mut self, interface: &str, ifindex: u32) -> Result<()> {
        if self.links.contains_key(&ifindex) {
            return Ok(());
        }
        let pin = self.link_pin(interface, ifindex);
        if pin.exists() {
            match self.adopt(&pin) {
                Ok(fd) => {
                    info!("{interface}: adopted the pinned XDP link; program replaced atomically");
                    self.links.insert(ifindex, PortLink { pin, fd });
                    return Ok(());
                }
                Err(e) => {
                    // Typically the interface was deleted and recreated: the
                    // old link is defunct (ENOLINK). Attach afresh.
                    tracing::warn!(
                        "{interface}: pinned XDP link unusable ({e:#}); attaching a new one"
                    );
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let prog = self.program()?;
        let id = match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
            Ok(link) => link,
            Err(native) => {
                tracing::warn!(
                    "{interface}: native XDP refused ({native}); using generic (skb) mode, which is much slower"
                );
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .with_context(|| format!("attaching XDP to {interface}"))?
            }
        };
        let link = prog.take_link(id)?;
        // Kernels before 5.9 have no bpf_link for XDP (aya then falls back
        // to netlink, which cannot be pinned): refuse rather than run a
        // datapath that dies with the daemon.
        let fd = FdLink::try_from(link).map_err(|e| {
            anyhow!("{interface}: the kernel gave no XDP bpf_link ({e}); gatewayd needs Linux >= 5.9 so the datapath survives daemon restarts")
        })?;
        std::fs::create_dir_all(self.pin_dir.join(LINKS_DIR))?;
        let pinned = fd
            .pin(&pin)
            .with_context(|| format!("pinning the XDP link of {interface} at {}", pin.display()))?;
        info!("attached XDP to {interface} (ifindex {ifindex})");
        self.links.insert(
            ifindex,
            PortLink {
                pin,
                fd: pinned.into(),
            },
        );
        Ok(())
    }

    /// Switches a pinned link to this program (`bpf_link_update`).
    fn adopt(&mut self, pin: &Path) -> Result<FdLink> {
        let fd: FdLink = PinnedLink::from_pin(pin)?.into();
        let link = XdpLink::try_from(fd)?;
        let prog = self.program()?;
        let id = prog.attach_to_link(link)?;
        Ok(FdLink::try_from(prog.take_link(id)?)?)
    }

    fn link_pin(&self, interface: &str, ifindex: u32) -> PathBuf {
        self.pin_dir
            .join(LINKS_DIR)
            .join(format!("{interface}@{ifindex}"))
    }

    /// Detaches the program from a port and removes its pinned link.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        if let Some(PortLink { pin, fd }) = self.links.remove(&ifindex) {
            // The attachment ends when the pin and the last fd are gone.
            std::fs::remove_file(&pin)
                .with_context(|| format!("removing pinned link {}", pin.display()))?;
            drop(fd);
        }
        Ok(())
    }

    pub fn detach_all(&mut self) -> Result<()> {
        let ifindexes: Vec<u32> = self.links.keys().copied().collect();
        for ifindex in ifindexes {
            self.detach(ifindex)?;
        }
        Ok(())
    }

    /// Pinned links of ports this daemon has not attached (yet): after
    /// `converge`, the ports a previous config had and this one dropped.
    pub fn stray_link_pins(&self) -> Vec<PathBuf> {
        let held: Vec<&Path> = self.links.values().map(|l| l.pin.as_path()).collect();
        link_pins(&self.pin_dir)
            .into_iter()
            .filter(|p| !held.contains(&p.as_path()))
            .collect()
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }

    fn has_map(&self, name: &str) -> bool {
        self.ebpf.map(name).is_some()
    }

    /// Ids in use in the maps, so a new plan keeps them.
    pub fn existing(&self) -> Result<Existing> {
        let mut existing = Existing::default();
        let by_vlan: HashMap<_, VlanKey, Tunnel> =
            HashMap::try_from(self.map(names::TUNNEL_BY_VLAN)?)?;
        for entry in by_vlan.iter() {
            let (k, t) = entry?;
            existing.tunnels.insert((k.ifindex, k.vlan), t.id);
        }
        let ports: HashMap<_, u32, Port> = HashMap::try_from(self.map(names::PORTS)?)?;
        for entry in ports.iter() {
            let (ifindex, p) = entry?;
            match p.role {
                gateway_common::port_role::CONNECTION => {
                    existing.connections.insert(ifindex, p.id);
                }
                gateway_common::port_role::VPC => {
                    existing.gateways.insert(ifindex, p.id);
                }
                _ => {}
            }
        }
        for (id, g) in self.groups()? {
            // Stored sorted by priority; the plan keys member sets by id.
            let mut members = g.tunnels[..(g.count as usize).min(limits::MAX_NEXTHOPS)].to_vec();
            members.sort_unstable();
            existing.groups.insert(members, id);
        }
        Ok(existing)
    }

    fn groups(&self) -> Result<BTreeMap<u32, NexthopGroup>> {
        self.array_entries(names::NEXTHOP_GROUPS, |g: &NexthopGroup| g.count != 0)
    }

    /// The active entries of an array map (`active` tells an entry from an
    /// unused slot), reading only the known active slots when there are.
    fn array_entries<V: aya::Pod>(
        &self,
        name: &'static str,
        active: impl Fn(&V) -> bool,
    ) -> Result<BTreeMap<u32, V>> {
        let array: Array<_, V> = Array::try_from(self.map(name)?)?;
        let mut out = BTreeMap::new();
        match self.active_slots.get(name) {
            Some(ids) => {
                for id in ids {
                    let v = array.get(id, 0)?;
                    if active(&v) {
                        out.insert(*id, v);
                    }
                }
            }
            None => {
                for (id, v) in array.iter().enumerate() {
                    let v = v?;
                    if active(&v) {
                        out.insert(id as u32, v);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Makes the maps equal to `plan`, touching only what differs, in an
    /// order where every intermediate state is one a packet may safely see:
    /// referenced objects (groups, tunnels, gateways) before the entries that
    /// reference them (ports, VLAN classifier, routes); removals in the
    /// opposite order.
    ///
    /// NAT translations (`IP_MAPPINGS`, `PORT_MAPPINGS`) count as referenced
    /// objects: they are written before the classifier entry of a new tunnel
    /// and before the route to a mapped prefix, so no packet of a mapped
    /// tunnel or prefix ever passes untranslated; they are removed last.
    pub fn apply(&mut self, plan: &Plan) -> Result<ApplyStats> {
        let applied = self.apply_maps(plan);
        // Whatever was written, even by a failed apply: cached routes from
        // before it must not outlive it.
        let bumped = self.invalidate_dest_cache();
        let stats = applied?;
        bumped?;
        Ok(stats)
    }

    /// Makes every destination cache slot stale: the datapath compares a
    /// slot's generation with this one (see gateway-ebpf/src/dest_cache.rs).
    pub fn invalidate_dest_cache(&mut self) -> Result<()> {
        if !self.has_map(names::DEST_CACHE_GENERATION) {
            return Ok(());
        }
        let mut generation: Array<_, u32> =
            Array::try_from(self.map_mut(names::DEST_CACHE_GENERATION)?)?;
        let next = generation.get(&0, 0)?.wrapping_add(1);
        generation
            .set(0, next, 0)
            .context("bumping the destination cache generation")
    }

    fn apply_maps(&mut self, plan: &Plan) -> Result<ApplyStats> {
        let mut stats = ApplyStats::default();
        // An object without the NAT maps still serves configs without NAT;
        // one with NAT fails here, before anything is written.
        for (name, needed) in [
            (names::IP_MAPPINGS, !plan.ip_mappings.is_empty()),
            (names::PORT_MAPPINGS, !plan.port_mappings.is_empty()),
        ] {
            if needed && !self.has_map(name) {
                bail!("the config has NAT mappings but map {name} is missing from the eBPF object");
            }
        }
        let current = self.read_config_maps()?;
        // Until this apply completes, the slots in use are not known.
        self.active_slots.clear();

        // 1. new tunnels start with clean counters and no learned peer MAC;
        //    a changed peer address forgets the MAC too.
        for (id, t) in &plan.tunnels {
            let fresh = match current.tunnels.get(id) {
                Some(old) => old.flags == 0 || old.peer_ip != t.peer_ip,
                None => true,
            };
            if fresh {
                self.reset_tunnel_state(*id)?;
            }
        }
        // 2. groups, tunnels, gateways (arrays: upsert in place), mappings
        {
            let mut groups: Array<_, NexthopGroup> =
                Array::try_from(self.map_mut(names::NEXTHOP_GROUPS)?)?;
            stats.changed += upserts(&plan.groups, &current.groups, |id, g| {
                groups.set(*id, g, 0).context("writing a next-hop group")
            })?;
        }
        {
            let mut tunnels: Array<_, Tunnel> = Array::try_from(self.map_mut(names::TUNNELS)?)?;
            stats.changed += upserts(&plan.tunnels, &current.tunnels, |id, t| {
                tunnels.set(*id, t, 0).context("writing a tunnel")
            })?;
        }
        {
            let mut gateways: Array<_, Gateway> = Array::try_from(self.map_mut(names::GATEWAYS)?)?;
            stats.changed += upserts(&plan.gateways, &current.gateways, |id, g| {
                gateways.set(*id, g, 0).context("writing a gateway")
            })?;
        }
        if !plan.ip_mappings.is_empty() || !current.ip_mappings.is_empty() {
            let mut mappings: LpmTrie<_, MappingKey, IpMapping> =
                LpmTrie::try_from(self.map_mut(names::IP_MAPPINGS)?)?;
            stats.changed += upserts(&plan.ip_mappings, &current.ip_mappings, |k, m| {
                mappings
                    .insert(&Key::new(k.trie_prefix_len(), k.key), m, 0)
                    .context("writing an IP mapping")
            })?;
        }
        if !plan.port_mappings.is_empty() || !current.port_mappings.is_empty() {
            let mut mappings: HashMap<_, PortMappingKey, PortMapping> =
                HashMap::try_from(self.map_mut(names::PORT_MAPPINGS)?)?;
            stats.changed += upserts(&plan.port_mappings, &current.port_mappings, |k, m| {
                mappings.insert(k, m, 0).context("writing a port mapping")
            })?;
        }
        // 3. ports, classifier, routes: upserts
        {
            let mut ports: HashMap<_, u32, Port> = HashMap::try_from(self.map_mut(names::PORTS)?)?;
            stats.changed += upserts(&plan.ports, &current.ports, |ifindex, p| {
                ports.insert(ifindex, p, 0).context("writing a port")
            })?;
        }
        {
            let mut by_vlan: HashMap<_, VlanKey, Tunnel> =
                HashMap::try_from(self.map_mut(names::TUNNEL_BY_VLAN)?)?;
            stats.changed += upserts(&plan.tunnel_by_vlan, &current.tunnel_by_vlan, |k, t| {
                by_vlan
                    .insert(Plan::vlan_key(*k), t, 0)
                    .context("writing the VLAN classifier")
            })?;
        }
        // Routes: the datapath probes only the prefix lengths a gateway's
        // bitmap names, so the bitmap must cover every length in the hash
        // at all times: the union of old and new before any route is
        // written, exactly the new set once the removals are done. A stale
        // bit costs a probe; a missing one would hide routes.
        let lens_now = self.route_prefix_lens()?;
        let lens_want = plan::route_prefix_lens(plan.routes.keys());
        let mut lens_union = lens_now.clone();
        for (g, bits) in &lens_want {
            *lens_union.entry(*g).or_default() |= bits;
        }
        self.write_route_prefix_lens(&lens_now, &lens_union)?;
        {
            let mut routes: HashMap<_, RoutePrefixKey, Route> =
                HashMap::try_from(self.map_mut(names::ROUTES)?)?;
            stats.changed += upserts(&plan.routes, &current.routes, |k, r| {
                routes
                    .insert(k.prefix_key(), r, 0)
                    .context("writing a route")
            })?;
            // 4. removals, referencing entries first
            stats.removed += removals(&current.routes, &plan.routes, |k| {
                routes.remove(&k.prefix_key()).context("removing a route")
            })?;
        }
        self.write_route_prefix_lens(&lens_union, &lens_want)?;
        {
            let mut by_vlan: HashMap<_, VlanKey, Tunnel> =
                HashMap::try_from(self.map_mut(names::TUNNEL_BY_VLAN)?)?;
            stats.removed += removals(&current.tunnel_by_vlan, &plan.tunnel_by_vlan, |k| {
                Ok(by_vlan.remove(&Plan::vlan_key(*k))?)
            })?;
        }
        {
            let mut ports: HashMap<_, u32, Port> = HashMap::try_from(self.map_mut(names::PORTS)?)?;
            stats.removed += removals(&current.ports, &plan.ports, |ifindex| {
                Ok(ports.remove(ifindex)?)
            })?;
        }
        // (The NAT maps may be absent from the object; a non-empty current
        // content means they were read, so they exist.)
        if !current.ip_mappings.is_empty() {
            let mut mappings: LpmTrie<_, MappingKey, IpMapping> =
                LpmTrie::try_from(self.map_mut(names::IP_MAPPINGS)?)?;
            stats.removed += removals(&current.ip_mappings, &plan.ip_mappings, |k| {
                mappings
                    .remove(&Key::new(k.trie_prefix_len(), k.key))
                    .context("removing an IP mapping")
            })?;
        }
        if !current.port_mappings.is_empty() {
            let mut mappings: HashMap<_, PortMappingKey, PortMapping> =
                HashMap::try_from(self.map_mut(names::PORT_MAPPINGS)?)?;
            stats.removed += removals(&current.port_mappings, &plan.port_mappings, |k| {
                mappings.remove(k).context("removing a port mapping")
            })?;
        }
        // Arrays have no removal: a slot is cleared to its inactive value.
        {
            let mut tunnels: Array<_, Tunnel> = Array::try_from(self.map_mut(names::TUNNELS)?)?;
            stats.removed += removals(&current.tunnels, &plan.tunnels, |id| {
                Ok(tunnels.set(*id, Tunnel::default(), 0)?)
            })?;
        }
        {
            let mut gateways: Array<_, Gateway> = Array::try_from(self.map_mut(names::GATEWAYS)?)?;
            stats.removed += removals(&current.gateways, &plan.gateways, |id| {
                Ok(gateways.set(*id, Gateway::default(), 0)?)
            })?;
        }
        {
            let mut groups: Array<_, NexthopGroup> =
                Array::try_from(self.map_mut(names::NEXTHOP_GROUPS)?)?;
            stats.removed += removals(&current.groups, &plan.groups, |id| {
                Ok(groups.set(*id, NexthopGroup::default(), 0)?)
            })?;
        }
        for (name, ids) in [
            (names::TUNNELS, plan.tunnels.keys().copied().collect()),
            (names::GATEWAYS, plan.gateways.keys().copied().collect()),
            (names::NEXTHOP_GROUPS, plan.groups.keys().copied().collect()),
            (
                names::ROUTE_PREFIX_LENS,
                lens_want.keys().copied().collect(),
            ),
        ] {
            self.active_slots.insert(name, ids);
        }
        debug!(?stats, "applied plan");
        Ok(stats)
    }

    /// `ROUTE_PREFIX_LENS` of every gateway that has a bit set.
    pub fn route_prefix_lens(&self) -> Result<BTreeMap<u32, u64>> {
        Ok(self
            .array_entries(names::ROUTE_PREFIX_LENS, |l: &RoutePrefixLens| l.lens != 0)?
            .into_iter()
            .map(|(g, l)| (g, l.lens))
            .collect())
    }

    /// Writes the gateways' bitmaps that differ between `have` and `want`
    /// (a gateway missing from `want` gets 0).
    fn write_route_prefix_lens(
        &mut self,
        have: &BTreeMap<u32, u64>,
        want: &BTreeMap<u32, u64>,
    ) -> Result<()> {
        let mut lens: Array<_, RoutePrefixLens> =
            Array::try_from(self.map_mut(names::ROUTE_PREFIX_LENS)?)?;
        for g in have.keys().chain(want.keys()) {
            let w = want.get(g).copied().unwrap_or(0);
            if have.get(g).copied().unwrap_or(0) != w {
                lens.set(*g, RoutePrefixLens { lens: w }, 0)
                    .context("writing a gateway's route prefix lengths")?;
            }
        }
        Ok(())
    }

    fn reset_tunnel_state(&mut self, id: u32) -> Result<()> {
        let mut peers: Array<_, PeerNeigh> = Array::try_from(self.map_mut(names::PEER_NEIGH)?)?;
        peers.set(id, PeerNeigh::default(), 0)?;
        // A new tunnel starts up, with full buckets.
        let mut health: Array<_, TunnelHealth> =
            Array::try_from(self.map_mut(names::TUNNEL_HEALTH)?)?;
        health.set(id, TunnelHealth::default(), 0)?;
        let mut buckets: Array<_, TokenBucket> = Array::try_from(self.map_mut(names::BANDWIDTH)?)?;
        for dir in [bandwidth_dir::TO_VPC, bandwidth_dir::TO_IDC] {
            buckets.set(2 * id + dir, TokenBucket::default(), 0)?;
        }
        let mut counters: PerCpuArray<_, Counters> =
            PerCpuArray::try_from(self.map_mut(names::TUNNEL_COUNTERS)?)?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        counters.set(
            id,
            PerCpuValues::try_from(vec![Counters::default(); cpus])?,
            0,
        )?;
        Ok(())
    }

    /// Current contents of the configuration maps (arrays: active slots only).
    pub fn read_config_maps(&self) -> Result<Plan> {
        let mut p = Plan::default();
        let ports: HashMap<_, u32, Port> = HashMap::try_from(self.map(names::PORTS)?)?;
        for e in ports.iter() {
            let (k, v) = e?;
            p.ports.insert(k, v);
        }
        let by_vlan: HashMap<_, VlanKey, Tunnel> =
            HashMap::try_from(self.map(names::TUNNEL_BY_VLAN)?)?;
        for e in by_vlan.iter() {
            let (k, v) = e?;
            p.tunnel_by_vlan.insert((k.ifindex, k.vlan), v);
        }
        p.tunnels = self.array_entries(names::TUNNELS, |t: &Tunnel| t.flags != 0)?;
        p.gateways = self.array_entries(names::GATEWAYS, |g: &Gateway| {
            g.flags & gateway_flags::ACTIVE != 0
        })?;
        let routes: HashMap<_, RoutePrefixKey, Route> =
            HashMap::try_from(self.map(names::ROUTES)?)?;
        for e in routes.iter() {
            let (k, v) = e?;
            p.routes.insert(RouteEntryKey::from_prefix_key(&k), v);
        }
        p.groups = self.groups()?;
        // Absent from an object built before NAT: nothing to read.
        if self.has_map(names::IP_MAPPINGS) {
            let mappings: LpmTrie<_, MappingKey, IpMapping> =
                LpmTrie::try_from(self.map(names::IP_MAPPINGS)?)?;
            for e in mappings.iter() {
                let (k, v) = e?;
                p.ip_mappings
                    .insert(MappingEntryKey::from_trie(k.prefix_len(), k.data()), v);
            }
        }
        if self.has_map(names::PORT_MAPPINGS) {
            let mappings: HashMap<_, PortMappingKey, PortMapping> =
                HashMap::try_from(self.map(names::PORT_MAPPINGS)?)?;
            for e in mappings.iter() {
                let (k, v) = e?;
                p.port_mappings.insert(k, v);
            }
        }
        Ok(p)
    }

    /// Learned peer MAC of the given tunnel ids.
    pub fn peer_macs(&self, ids: impl Iterator<Item = u32>) -> Result<BTreeMap<u32, [u8; 6]>> {
        let peers: Array<_, PeerNeigh> = Array::try_from(self.map(names::PEER_NEIGH)?)?;
        let mut out = BTreeMap::new();
        for id in ids {
            let p = peers.get(&id, 0)?;
            if p.valid != 0 {
                out.insert(id, p.mac);
            }
        }
        Ok(out)
    }

    /// Counters summed over CPUs, for the given ids of a counter map.
    pub fn counters(
        &self,
        map: &str,
        ids: impl Iterator<Item = u32>,
    ) -> Result<BTreeMap<u32, Counters>> {
        read_counters(self.map(map)?, ids)
    }

    /// Destination cache hits and misses, summed over CPUs (zeros for an
    /// object without the cache).
    pub fn dest_cache_stats(&self) -> Result<DestCacheStats> {
        if !self.has_map(names::DEST_CACHE_STATS) {
            return Ok(DestCacheStats::default());
        }
        read_cache_stats(self.map(names::DEST_CACHE_STATS)?)
    }

    /// Frames the entry program dropped because its `PIPELINE` array was
    /// empty, summed over CPUs (0 for an object without the map).
    pub fn pipeline_unavailable(&self) -> Result<u64> {
        if !self.has_map(names::PIPELINE_UNAVAILABLE) {
            return Ok(0);
        }
        let counts: PerCpuArray<&MapData, u64> =
            PerCpuArray::try_from(self.map(names::PIPELINE_UNAVAILABLE)?)?;
        Ok(counts.get(&0, 0)?.iter().sum())
    }

    /// Flow cache hits and misses, summed over CPUs (zeros for an object
    /// without the cache).
    pub fn flow_cache_stats(&self) -> Result<DestCacheStats> {
        if !self.has_map(names::FLOW_CACHE_STATS) {
            return Ok(DestCacheStats::default());
        }
        read_cache_stats(self.map(names::FLOW_CACHE_STATS)?)
    }

    /// `TUNNEL_HEALTH` of the given tunnel ids: the `down_reason` bits (0 =
    /// up).
    pub fn tunnel_health(&self, ids: impl Iterator<Item = u32>) -> Result<BTreeMap<u32, u32>> {
        let health: Array<_, TunnelHealth> = Array::try_from(self.map(names::TUNNEL_HEALTH)?)?;
        let mut out = BTreeMap::new();
        for id in ids {
            out.insert(id, health.get(&id, 0)?.down);
        }
        Ok(out)
    }

    /// Marks a tunnel up (`down == 0`) or down: one aligned 4-byte write,
    /// seen at once by every next-hop group holding the tunnel, then a new
    /// cache generation, so no cached flow keeps the old choice.
    pub fn set_tunnel_health(&mut self, id: u32, down: u32) -> Result<()> {
        let mut health: Array<_, TunnelHealth> =
            Array::try_from(self.map_mut(names::TUNNEL_HEALTH)?)?;
        health
            .set(id, TunnelHealth { down }, 0)
            .with_context(|| format!("writing the health of tunnel {id}"))?;
        // Cached flows hold the tunnel their group picked (flow_cache.rs).
        self.invalidate_dest_cache()
    }
}

/// Writes (with `write`) every entry of `want` that `have` lacks or holds
/// differently; returns how many were written.
fn upserts<K: Ord, V: PartialEq>(
    want: &BTreeMap<K, V>,
    have: &BTreeMap<K, V>,
    mut write: impl FnMut(&K, &V) -> Result<()>,
) -> Result<usize> {
    let mut n = 0;
    for (k, v) in want {
        if have.get(k) != Some(v) {
            write(k, v)?;
            n += 1;
        }
    }
    Ok(n)
}

/// Removes (with `remove`) every key of `have` that `want` lacks; returns
/// how many were removed.
fn removals<K: Ord, V, W>(
    have: &BTreeMap<K, V>,
    want: &BTreeMap<K, W>,
    mut remove: impl FnMut(&K) -> Result<()>,
) -> Result<usize> {
    let mut n = 0;
    for k in have.keys() {
        if !want.contains_key(k) {
            remove(k)?;
            n += 1;
        }
    }
    Ok(n)
}

/// `DEST_CACHE_STATS[0]` or `FLOW_CACHE_STATS[0]` summed over CPUs (the
/// daemon's maps or a bench object's copy).
pub fn read_cache_stats(map: &aya::maps::Map) -> Result<DestCacheStats> {
    let stats: PerCpuArray<&MapData, DestCacheStats> = PerCpuArray::try_from(map)?;
    Ok(stats
        .get(&0, 0)?
        .iter()
        .fold(DestCacheStats::default(), |sum, s| DestCacheStats {
            hits: sum.hits + s.hits,
            misses: sum.misses + s.misses,
        }))
}

pub fn read_counters(
    map: &aya::maps::Map,
    ids: impl Iterator<Item = u32>,
) -> Result<BTreeMap<u32, Counters>> {
    let arr: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(map)?;
    let mut out = BTreeMap::new();
    for id in ids {
        let per_cpu = arr.get(&id, 0)?;
        let mut sum = Counters::default();
        for c in per_cpu.iter() {
            sum.add(c);
        }
        out.insert(id, sum);
    }
    Ok(out)
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ApplyStats {
    pub changed: usize,
    pub removed: usize,
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        config::{Config, IpMappingCfg},
        plan::{self, NetDev},
    };

    const NAT: &str = r#"
[node]
name = "gw-1"

[[connection]]
name = "line-a"
interface = "eth1"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.0/16"]
interface = "eth2"

[[gateway.local_ip_mapping]]
original = "172.16.1.0/24"
mapped   = "192.168.50.0/24"

[[gateway.local_port_mapping]]
protocol = "tcp"
original = "172.16.0.10:80"
mapped   = "192.168.60.1:8080"

[[tunnel]]
name = "idc-a"
connection = "line-a"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.100.2"
routes = ["10.0.0.0/24"]

[[tunnel.peer_ip_mapping]]
original = "10.0.0.0/24"
mapped   = "100.64.1.0/24"
"#;

    /// Interfaces that need not exist: the maps are filled, nothing is
    /// attached.
    fn netdev(name: &str) -> Option<NetDev> {
        let n: u32 = name.strip_prefix("eth")?.parse().ok()?;
        Some(NetDev {
            ifindex: 1000 + n,
            mac: [2, 0, 0, 0, 0, n as u8],
            port_flags: 0,
        })
    }

    fn plan_of(config: &Config, dp: &Datapath) -> Plan {
        let existing = dp.existing().expect("existing ids");
        plan::build(config, &netdev, &existing).expect("plan")
    }

    /// `ROUTES` was an LPM trie and is now a hash of the same key and
    /// value sizes: a trie pinned by an older gatewayd must be refused by
    /// type, not adopted (the datapath would read trie entries as hash
    /// entries). Needs root, a bpffs and bpftool.
    #[test]
    #[ignore = "needs root and a bpffs: run by the kernel tier of `cargo xtask test`"]
    fn a_routes_trie_pinned_by_an_older_gatewayd_is_refused() {
        let pin_dir = Path::new("/sys/fs/bpf")
            .join("gatewayd-unit")
            .join(format!("trie-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pin_dir);
        std::fs::create_dir_all(&pin_dir).expect("pin folder");
        let pin = pin_dir.join(names::ROUTES);
        let out = std::process::Command::new("bpftool")
            .args(["map", "create"])
            .arg(&pin)
            .args(["type", "lpm_trie", "key", "12", "value", "8"])
            .args(["entries", "1100000", "name", "ROUTES", "flags", "1"])
            .output()
            .expect("bpftool (cargo xtask setup installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let object = crate::ebpf::gateway_object().expect("eBPF object");
        let refused = Datapath::load(object, &pin_dir).err();
        let _ = std::fs::remove_dir_all(&pin_dir);
        let msg = format!("{:#}", refused.expect("the trie was adopted"));
        assert!(
            msg.contains("ROUTES: pinned (key 12, value 8, entries 1100000) as LpmTrie")
                && msg.contains("--fresh"),
            "{msg}"
        );
    }

    /// Applies NAT plans to real maps and reads them back: additions,
    /// changes and removals land, the map contents equal the plan, and
    /// 100,000 mappings load in seconds. Needs root and a bpffs at
    /// /sys/fs/bpf (`cargo xtask setup`); run with
    /// `cargo test -p gateway-user -- --ignored --nocapture nat_maps`.
    #[test]
    #[ignore = "needs root and a bpffs: run by the kernel tier of `cargo xtask test`"]
    fn nat_maps_apply_as_a_diff() {
        let pin_dir = Path::new("/sys/fs/bpf")
            .join("gatewayd-unit")
            .join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&pin_dir);
        let object = crate::ebpf::gateway_object().expect("eBPF object");
        let mut dp = Datapath::load(object, &pin_dir).unwrap_or_else(|e| panic!("{e:#}"));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut config = Config::parse(NAT, "t.toml").expect("valid");
            let plan = plan_of(&config, &dp);
            assert!(!plan.ip_mappings.is_empty() && !plan.port_mappings.is_empty());
            dp.apply(&plan).expect("apply");
            let read = dp.read_config_maps().expect("read");
            assert_eq!(read.ip_mappings, plan.ip_mappings);
            assert_eq!(read.port_mappings, plan.port_mappings);
            assert_eq!(read.routes, plan.routes);

            // Change one mapping, drop the port mapping: a diff.
            config.tunnels[0].peer_ip_mappings[0].mapped = "100.64.7.0/24".parse().unwrap();
            config.gateways[0].local_port_mappings.clear();
            let plan2 = plan_of(&config, &dp);
            let stats = dp.apply(&plan2).expect("apply changed");
            let read = dp.read_config_maps().expect("read");
            assert_eq!(read.ip_mappings, plan2.ip_mappings);
            assert!(read.port_mappings.is_empty());
            assert_eq!(read.routes, plan2.routes);
            // PEER_SRC value, PEER_DST key, the mapped route, the
            // gateway (its PORT_MAPPINGS flag cleared): written; old
            // PEER_DST, old route, 4 port entries: removed.
            assert_eq!((stats.changed, stats.removed), (4, 6), "{stats:?}");
            let gateway = read.gateways.values().next().expect("the gateway");
            assert_eq!(gateway.flags & gateway_flags::PORT_MAPPINGS, 0);
            let again = dp.apply(&plan2).expect("apply unchanged");
            assert_eq!((again.changed, again.removed), (0, 0));

            // The scale target: 100,000 peer mappings.
            config.tunnels[0].peer_ip_mappings = (0..100_000u32)
                .map(|i| IpMappingCfg {
                    original: Ipv4Addr::from(0x0a80_0000 + i).into(),
                    mapped: Ipv4Addr::from(0x6450_0000 + i).into(),
                    line: 0,
                })
                .collect();
            let plan3 = plan_of(&config, &dp);
            let started = std::time::Instant::now();
            let stats = dp.apply(&plan3).expect("apply 100k");
            println!(
                "applied 100000 peer mappings ({} map writes, {} removals) in {:?}",
                stats.changed,
                stats.removed,
                started.elapsed()
            );
            let read = dp.read_config_maps().expect("read");
            assert_eq!(read.ip_mappings.len(), plan3.ip_mappings.len());
            assert_eq!(read.routes.len(), plan3.routes.len());

            // Back to no NAT at all: every entry is removed.
            let plain = Plan {
                ip_mappings: BTreeMap::new(),
                port_mappings: BTreeMap::new(),
                ..plan2.clone()
            };
            let started = std::time::Instant::now();
            dp.apply(&plain).expect("apply without NAT");
            println!("removed them in {:?}", started.elapsed());
            let read = dp.read_config_maps().expect("read");
            assert!(read.ip_mappings.is_empty() && read.port_mappings.is_empty());
        }));
        drop(dp);
        let _ = std::fs::remove_dir_all(&pin_dir);
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
