//! `gatewayd run`: load, fill, attach, then keep the maps equal to the
//! config until told to stop. Also the control socket that `gatewayd stats`
//! and `gatewayd reload` talk to.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use anyhow::{anyhow, bail, Context, Result};
use gateway_common::{map_names as names, FateKind};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    datapath::{self, Datapath},
    ebpf, health, kernel_events, metrics, netdev,
    plan::{self, Plan},
    probe::Prober,
    stats::{fates_of, DaemonStats, DestCacheCounts, PortStats, Snapshot, TunnelStats},
};

#[derive(Clone, Debug)]
pub struct Paths {
    /// bpffs mount under which pins go (`<bpffs>/gatewayd/<node>/`).
    pub bpffs: PathBuf,
    /// Folder of the control sockets (`<run_dir>/<node>.sock`).
    pub run_dir: PathBuf,
}

impl Paths {
    pub fn socket(&self, node: &str) -> PathBuf {
        self.run_dir.join(format!("{node}.sock"))
    }
}

struct State {
    config_path: PathBuf,
    node: String,
    dp: Datapath,
    plan: Plan,
    /// ifindex -> interface name of every port the program is attached to.
    ports: BTreeMap<u32, String>,
    /// The metrics endpoint in use (changing it needs a restart).
    metrics_address: Option<std::net::SocketAddr>,
    daemon_stats: DaemonStats,
    /// Health of every tunnel's line (probes, link state).
    lines: health::Lines,
}

fn load_config(path: &Path) -> Result<Config> {
    let config = Config::load(path).map_err(|e| anyhow!("{e}"))?;
    config
        .check_interfaces(netdev::exists)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(config)
}

impl State {
    /// Builds the plan for `config` and makes the datapath match it:
    /// detach removed ports, write the maps (as a diff), attach new ports.
    fn converge(&mut self, config: &Config) -> Result<()> {
        let existing = self.dp.existing()?;
        // Built before anything changes: a config the plan rejects (e.g.
        // too many tunnels) leaves the datapath untouched.
        let plan = plan::build(config, &netdev::lookup, &existing)?;
        let wanted: BTreeMap<u32, String> = plan
            .connection_meta
            .iter()
            .chain(&plan.gateway_meta)
            .map(|m| (m.ifindex, m.interface.clone()))
            .collect();
        let removed: Vec<u32> = self
            .ports
            .keys()
            .filter(|i| !wanted.contains_key(i))
            .copied()
            .collect();
        for ifindex in removed {
            self.dp.detach(ifindex)?;
            if let Some(name) = self.ports.remove(&ifindex) {
                info!("detached XDP from {name}");
            }
        }
        let stats = self.dp.apply(&plan)?;
        for (ifindex, name) in &wanted {
            if netdev::enable_forwarding(name)? {
                info!("{name}: enabled net.ipv4.conf.{name}.forwarding (needed by bpf_fib_lookup and the slow path)");
            }
            if !self.ports.contains_key(ifindex) {
                self.dp.attach(name, *ifindex)?;
                self.ports.insert(*ifindex, name.clone());
                if netdev::driver(name).as_deref() == Some("veth") {
                    info!("{name} is a veth: frames sent to it reach its peer only if the peer has XDP or GRO on (ethtool -K PEER gro on); local replies use a redirect instead of XDP_TX");
                }
            }
        }
        for c in &config.connections {
            if netdev::rp_filter_active(&c.interface) {
                warn!("{}: rp_filter is on; packets the kernel forwards on the slow path (unresolved VPC neighbour) will be dropped. Set net.ipv4.conf.{{all,{}}}.rp_filter=0", c.interface, c.interface);
            }
        }
        info!(
            tunnels = plan.tunnels.len(),
            gateways = plan.gateways.len(),
            routes = plan.routes.len(),
            changed = stats.changed,
            removed = stats.removed,
            "datapath in step with the config"
        );
        self.plan = plan;
        Ok(())
    }

    /// Re-reads the config; on any error nothing changes.
    fn reload(&mut self) -> Result<()> {
        let result = self.reload_inner();
        match result {
            Ok(()) => self.daemon_stats.reloads_applied += 1,
            Err(_) => self.daemon_stats.reloads_rejected += 1,
        }
        result
    }

    fn reload_inner(&mut self) -> Result<()> {
        let config = load_config(&self.config_path)?;
        if config.node.name != self.node {
            bail!(
                "node.name changed from {:?} to {:?}; that needs a restart (it names the pin folder)",
                self.node,
                config.node.name
            );
        }
        self.converge(&config)?;
        if config.node.metrics_address.is_some()
            && config.node.metrics_address != self.metrics_address
        {
            warn!(
                "node.metrics_address changed to {:?}; the endpoint stays where it is until gatewayd restarts",
                config.node.metrics_address
            );
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let tunnel_counters = self.dp.counters(
            names::TUNNEL_COUNTERS,
            self.plan.tunnel_meta.iter().map(|t| t.id),
        )?;
        let peers = self
            .dp
            .peer_macs(self.plan.tunnel_meta.iter().map(|t| t.id))?;
        let lines = self.lines.status();
        let tunnels = self
            .plan
            .tunnel_meta
            .iter()
            .map(|m| {
                let c = tunnel_counters.get(&m.id).copied().unwrap_or_default();
                TunnelStats {
                    name: m.name.clone(),
                    gateway: m.gateway.clone(),
                    connection: m.connection.clone(),
                    vlan: m.vlan,
                    rx_packets: c.rx_packets,
                    rx_bytes: c.rx_bytes,
                    tx_packets: c.tx_packets,
                    tx_bytes: c.tx_bytes,
                    drops: fates_of(&c, FateKind::Drop),
                    answered: fates_of(&c, FateKind::Answered),
                    to_kernel: fates_of(&c, FateKind::Kernel),
                    peer_mac: peers.get(&m.id).map(netdev::format_mac),
                    priority: m.priority,
                    bandwidth_mbps: m.bandwidth_mbps,
                    health: lines.get(&m.id).cloned(),
                }
            })
            .collect();
        let port_stats = |map: &str, meta: &[plan::NamedId]| -> Result<Vec<PortStats>> {
            let counters = self.dp.counters(map, meta.iter().map(|m| m.id))?;
            Ok(meta
                .iter()
                .map(|m| {
                    let c = counters.get(&m.id).copied().unwrap_or_default();
                    PortStats {
                        name: m.name.clone(),
                        interface: m.interface.clone(),
                        rx_packets: c.rx_packets,
                        rx_bytes: c.rx_bytes,
                        tx_packets: c.tx_packets,
                        tx_bytes: c.tx_bytes,
                        drops: fates_of(&c, FateKind::Drop),
                        to_kernel: fates_of(&c, FateKind::Kernel),
                    }
                })
                .collect())
        };
        Ok(Snapshot {
            node: self.node.clone(),
            tunnels,
            connections: port_stats(names::CONNECTION_COUNTERS, &self.plan.connection_meta)?,
            gateways: port_stats(names::GATEWAY_COUNTERS, &self.plan.gateway_meta)?,
            daemon: self.daemon_stats.clone(),
            dest_cache: {
                let c = self.dp.dest_cache_stats()?;
                DestCacheCounts {
                    hits: c.hits,
                    misses: c.misses,
                }
            },
            flow_cache: {
                let c = self.dp.flow_cache_stats()?;
                DestCacheCounts {
                    hits: c.hits,
                    misses: c.misses,
                }
            },
            pipeline_unavailable: self.dp.pipeline_unavailable()?,
        })
    }

    /// `gatewayd down`: detach from every port and remove all pins.
    fn down(&mut self) -> Result<Vec<PathBuf>> {
        self.dp.detach_all()?;
        for name in self.ports.values() {
            info!("detached XDP from {name}");
        }
        self.ports.clear();
        datapath::remove_pins(self.dp.pin_dir())
    }
}

fn preflight() -> Result<()> {
    // SAFETY: trivial libc call.
    if unsafe { libc::geteuid() } != 0 {
        bail!("gatewayd run needs root (CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN for XDP and bpffs pins)");
    }
    // Kernels before 5.x refuse BTF maps / big per-CPU arrays; the load
    // error is then the kernel's own. Raise the memlock limit for old kernels
    // that still account BPF memory to it.
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    Ok(())
}

/// How `gatewayd run` treats state pinned by an earlier daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// Adopt pinned maps and links: counters, learned peer MACs and the
    /// attachments carry on, traffic never stops.
    Adopt,
    /// Remove every pin first and start from empty maps.
    Fresh,
}

/// What `gatewayd run` was asked for on its command line.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub start: Start,
    /// Overrides `[node] metrics_address`.
    pub metrics_address: Option<std::net::SocketAddr>,
}

pub async fn run(config_path: &Path, paths: &Paths, options: &RunOptions) -> Result<()> {
    let start = options.start;
    let config = load_config(config_path)?;
    preflight()?;
    datapath::check_bpffs(&paths.bpffs)?;
    let node = config.node.name.clone();
    let socket_path = paths.socket(&node);
    claim_socket(&socket_path).await?;
    let metrics_address = options.metrics_address.or(config.node.metrics_address);
    // Bound before anything is loaded: a taken port fails the start cleanly.
    let metrics_listener = match metrics_address {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };

    let pin_dir = datapath::pin_dir(&paths.bpffs, &node);
    if start == Start::Fresh && pin_dir.exists() {
        let removed = datapath::remove_pins(&pin_dir)?;
        warn!(
            "--fresh: removed {} pins in {}: XDP detached from every port until attached again; counters, learned peer MACs and all other state reset",
            removed.len(),
            pin_dir.display()
        );
    }
    let pins_existed = pin_dir.exists();
    if pins_existed {
        info!(
            "adopting the pinned state in {} (maps and XDP links of the previous run; `gatewayd run --fresh` resets it)",
            pin_dir.display()
        );
    }
    let mut dp = match Datapath::load(ebpf::gateway_object()?, &pin_dir) {
        Ok(dp) => dp,
        Err(e) => {
            // aya pins the maps before the verifier sees the program: a
            // failed first start must not leave them behind.
            if !pins_existed {
                let _ = datapath::remove_pins(&pin_dir);
            }
            return Err(e);
        }
    };
    let logger = dp.take_logger();
    let mut state = State {
        config_path: config_path.to_owned(),
        node: node.clone(),
        dp,
        plan: Plan::default(),
        ports: BTreeMap::new(),
        metrics_address,
        daemon_stats: DaemonStats::default(),
        lines: health::Lines::default(),
    };
    if let Err(e) = state.converge(&config) {
        if !pins_existed {
            let _ = state.down();
        }
        // An adopted datapath keeps running as it was.
        return Err(e);
    }
    // Ports an earlier config had and this one has not.
    for pin in state.dp.stray_link_pins() {
        std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        info!(
            "detached XDP from a port no longer in the config (removed {})",
            pin.display()
        );
    }
    // The pipelines of the programs this start replaced on every port. A
    // leftover costs a few KiB and is retried at the next start: no reason
    // to stop a datapath that runs.
    match state.dp.remove_stale_pipelines() {
        Ok(removed) => {
            for pin in removed {
                info!(
                    "removed the pipeline of a program no port runs any more ({})",
                    pin.display()
                );
            }
        }
        Err(e) => warn!("{e:#}: pipelines of replaced programs left pinned until the next start"),
    }
    info!(
        "node {node}: running; maps and links pinned in {}",
        pin_dir.display()
    );
    let state = Arc::new(Mutex::new(state));

    if let Some(logger) = logger {
        tokio::spawn(drain_ebpf_log(logger));
    }
    std::fs::create_dir_all(&paths.run_dir)?;
    let listener = UnixListener::bind(&socket_path)
        .with_context(|| format!("binding control socket {}", socket_path.display()))?;
    let (down_tx, mut down_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(serve_control(listener, state.clone(), down_tx));
    let kernel_changed = match kernel_events::watch() {
        Ok(changed) => Some(changed),
        Err(e) => {
            warn!("{e:#}: cached VPC neighbours follow kernel changes only as they age out (within 1 s)");
            None
        }
    };
    tokio::spawn(watch_lines(state.clone(), kernel_changed));
    if let Some(listener) = metrics_listener {
        let state = state.clone();
        tokio::spawn(metrics::serve(
            listener,
            Arc::new(move || lock(&state).snapshot()),
        ));
    }
    crate::service::notify_ready();

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let stop = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = down_rx.recv() => break "down",
            _ = hup.recv() => {
                info!("SIGHUP: reloading {}", config_path.display());
                crate::service::notify_reloading();
                let result = lock(&state).reload();
                match result {
                    Ok(()) => info!("reload applied"),
                    Err(e) => error!("reload rejected, running state unchanged:\n{e:#}"),
                }
                crate::service::notify_ready();
            }
        }
    };
    crate::service::notify_stopping();
    let _ = std::fs::remove_file(&socket_path);
    if stop == "down" {
        // `down` already detached and removed the pins (and answered).
        info!("gatewayd down: datapath removed, exiting");
    } else {
        info!("{stop}: stopping; the datapath keeps forwarding on its pinned state (`gatewayd run` adopts it, `gatewayd down` removes it)");
    }
    Ok(())
}

fn lock(state: &Arc<Mutex<State>>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding the lock is a bug; keep serving regardless.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Refuses to start twice for one node; removes a stale socket.
async fn claim_socket(path: &Path) -> Result<()> {
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "a gatewayd for this node is already running (control socket {})",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    Ok(())
}

async fn drain_ebpf_log(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the ring buffer's fd is owned by `logger`, which the AsyncFd
    // owns; it stays open and unchanged until the AsyncFd is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    let mut fd = match registered {
        Ok(fd) => fd,
        Err(e) => {
            warn!("eBPF log lines unavailable: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}

/// One request per connection: a command line in, a JSON document out.
async fn serve_control(
    listener: UnixListener,
    state: Arc<Mutex<State>>,
    down: tokio::sync::mpsc::Sender<()>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let down = down.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match line.trim() {
                "stats" => match lock(&state).snapshot() {
                    Ok(s) => serde_json::to_string(&s).unwrap_or_default(),
                    Err(e) => error_json(&format!("{e:#}")),
                },
                "reload" => {
                    let result = lock(&state).reload();
                    match result {
                        Ok(()) => {
                            info!("reload (control socket) applied");
                            serde_json::json!({"ok": true}).to_string()
                        }
                        Err(e) => {
                            error!("reload rejected, running state unchanged:\n{e:#}");
                            error_json(&format!("{e:#}"))
                        }
                    }
                }
                "down" => {
                    let result = lock(&state).down();
                    match result {
                        Ok(removed) => {
                            let _ = down.try_send(());
                            serde_json::json!({"ok": true, "removed": removed}).to_string()
                        }
                        Err(e) => error_json(&format!("{e:#}")),
                    }
                }
                other => error_json(&format!("unknown command {other:?}")),
            };
            let _ = write.write_all(reply.as_bytes()).await;
            let _ = write.shutdown().await;
        });
    }
}

fn error_json(message: &str) -> String {
    serde_json::json!({"ok": false, "error": message}).to_string()
}

/// Probes every tunnel's customer router and watches the connections'
/// links (see health.rs); the probes also teach the datapath peer MACs.
/// On the same tick, applies kernel routing changes to the destination
/// cache (see kernel_events.rs).
async fn watch_lines(state: Arc<Mutex<State>>, kernel_changed: Option<kernel_events::Changed>) {
    let prober = match Prober::new() {
        Ok(p) => Some(p),
        Err(e) => {
            error!("cannot open a packet socket for health probes: {e}; line health follows link state only and VPC->IDC traffic waits for the IDC to send first");
            None
        }
    };
    let mut tick = tokio::time::interval(health::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let frames = {
            let mut s = lock(&state);
            let State {
                dp, plan, lines, ..
            } = &mut *s;
            if kernel_changed.as_ref().is_some_and(|c| c.take()) {
                if let Err(e) = dp.invalidate_dest_cache() {
                    warn!("invalidating the destination cache: {e:#}");
                }
            }
            lines.tick(dp, plan, prober.is_some())
        };
        let Some(prober) = &prober else {
            continue;
        };
        for (ifindex, frame) in frames {
            if let Err(e) = prober.send(ifindex, &frame) {
                warn!("health probe on ifindex {ifindex}: {e}");
            }
        }
    }
}

/// `gatewayd down`: a running daemon is asked to detach, remove its pins and
/// exit; without one, the pins are removed here (removing a link's pin
/// detaches the program from that port).
pub async fn down(paths: &Paths, node: &str) -> Result<Vec<PathBuf>> {
    let socket = paths.socket(node);
    if UnixStream::connect(&socket).await.is_ok() {
        let answer = request(&socket, "down").await?;
        let removed = answer
            .get("removed")
            .and_then(|r| r.as_array())
            .map(|r| {
                r.iter()
                    .filter_map(|p| p.as_str().map(PathBuf::from))
                    .collect()
            })
            .unwrap_or_default();
        return Ok(removed);
    }
    preflight()?;
    datapath::remove_pins(&datapath::pin_dir(&paths.bpffs, node))
}

/// Client side of the control socket.
pub async fn request(socket: &Path, command: &str) -> Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "no gatewayd is running for this node (cannot connect to {})",
            socket.display()
        )
    })?;
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut buf = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stream, &mut buf).await?;
    let value: serde_json::Value =
        serde_json::from_str(&buf).context("malformed answer from gatewayd")?;
    if value.get("ok") == Some(&serde_json::Value::Bool(false)) {
        bail!(
            "{}",
            value
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("gatewayd reported an error")
        );
    }
    Ok(value)
}
