//! `gatewayd`: the daemon and its CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use gateway_user::{
    config::Config,
    daemon::{self, Paths},
    stats::{render_table, Snapshot},
};

#[derive(Parser, Debug)]
#[command(
    name = "gatewayd",
    version,
    about = "XDP Direct Connect gateway: daemon and CLI"
)]
struct Cli {
    /// Log level (error, warn, info, debug, trace) or a tracing filter.
    #[arg(long, global = true, default_value = "info", env = "GATEWAYD_LOG")]
    log_level: String,
    /// Log lines as human-readable text or as one JSON object per line
    /// (timestamp, level, target, message and fields) for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "GATEWAYD_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// bpffs mount under which maps are pinned (<bpffs>/gatewayd/<node>/).
    #[arg(long, global = true, default_value = "/sys/fs/bpf")]
    bpffs: PathBuf,
    /// Folder of the daemon's control sockets.
    #[arg(long, global = true, default_value = "/run/gatewayd")]
    run_dir: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate a config file; print every error (file:line: value: rule).
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Load the XDP program, attach it to every configured port, fill the
    /// maps, and keep them equal to the config until SIGINT/SIGTERM.
    /// SIGHUP reloads the config. State pinned by an earlier run (maps,
    /// counters, learned peer MACs, XDP links) is adopted: traffic keeps
    /// flowing across restarts and upgrades. Stopping the daemon leaves the
    /// datapath running; `gatewayd down` removes it.
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// Remove everything an earlier run pinned and start from empty maps:
        /// detaches XDP until re-attached and resets counters and learned
        /// peer MACs.
        #[arg(long)]
        fresh: bool,
        /// Serve Prometheus metrics at http://ADDRESS/metrics (overrides
        /// `[node] metrics_address`; off when neither is set).
        #[arg(long, value_name = "ADDRESS:PORT")]
        metrics_address: Option<std::net::SocketAddr>,
    },
    /// Detach the datapath from every port and remove its pins (asks the
    /// running daemon to do it and exit, or does it itself when none runs).
    Down {
        #[arg(short, long, conflicts_with = "node")]
        config: Option<PathBuf>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Per-tunnel counters of the running daemon.
    Stats {
        /// Config of the node to ask (its [node] name picks the daemon).
        #[arg(short, long, conflicts_with = "node")]
        config: Option<PathBuf>,
        /// Node name of the daemon to ask (default: the only one running).
        #[arg(long)]
        node: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh in place every --interval with rates (pps, bits/s, drops/s)
        /// per tunnel and port, until interrupted (or --count refreshes).
        #[arg(long, short)]
        watch: bool,
        /// Seconds between refreshes of --watch.
        #[arg(long, default_value_t = 1.0, requires = "watch", value_parser = parse_interval)]
        interval: f64,
        /// Stop --watch after this many refreshes.
        #[arg(long, requires = "watch")]
        count: Option<u64>,
    },
    /// Ask the running daemon to re-read its config (like SIGHUP), and
    /// report whether it was applied.
    Reload {
        #[arg(short, long, conflicts_with = "node")]
        config: Option<PathBuf>,
        #[arg(long)]
        node: Option<String>,
    },
    /// Install this binary, the systemd unit `gatewayd@.service` and an
    /// example config (then: write /etc/gatewayd/NODE.toml and
    /// `systemctl enable --now gatewayd@NODE`).
    Install {
        /// Staging root to install under (packaging); `/` for the node itself.
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Prefix of the binary (`PREFIX/sbin/gatewayd`), as the unit runs it.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
    },
    /// Lab tooling: emulate a customer router's 802.1Q sub-interfaces on a
    /// trunk veth (tc programs that tag by source MAC and untag on ingress),
    /// for kernels without the 8021q module. Used by tests and the demo.
    #[command(hide = true)]
    LabVlan(gateway_user::lab::LabVlanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log_level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "gatewayd: --log-level {:?}: {e} (use error, warn, info, debug, trace or a tracing filter)",
                cli.log_level
            );
            return ExitCode::FAILURE;
        }
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().init(),
    }
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatewayd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let paths = Paths {
        bpffs: cli.bpffs,
        run_dir: cli.run_dir,
    };
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok (node {}, {} connections, {} gateways, {} tunnels)",
                    config.display(),
                    c.node.name,
                    c.connections.len(),
                    c.gateways.len(),
                    c.tunnels.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                eprintln!("{errors}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Run {
            config,
            fresh,
            metrics_address,
        } => {
            let options = daemon::RunOptions {
                start: if fresh {
                    daemon::Start::Fresh
                } else {
                    daemon::Start::Adopt
                },
                metrics_address,
            };
            runtime()?.block_on(daemon::run(&config, &paths, &options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Down { config, node } => {
            let node = node_for(&paths, config, node)?;
            let removed = runtime()?.block_on(daemon::down(&paths, &node))?;
            if removed.is_empty() {
                println!("node {node}: nothing pinned, nothing attached");
            } else {
                println!(
                    "node {node}: datapath detached, {} pins removed from {}",
                    removed.len(),
                    gateway_user::datapath::pin_dir(&paths.bpffs, &node).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats {
            config,
            node,
            watch: true,
            interval,
            count,
            ..
        } => {
            let socket = socket_for(&paths, config, node)?;
            runtime()?.block_on(watch_stats(&socket, interval, count))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats {
            config, node, json, ..
        } => {
            let socket = socket_for(&paths, config, node)?;
            let value = runtime()?.block_on(daemon::request(&socket, "stats"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                let snapshot: Snapshot = serde_json::from_value(value)?;
                print!("{}", render_table(&snapshot));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Install { root, prefix } => {
            for path in gateway_user::service::install(&root, &prefix)? {
                println!("installed {}", path.display());
            }
            if root == std::path::Path::new("/") {
                println!(
                    "next: write /etc/gatewayd/NODE.toml (see /etc/gatewayd/example.toml), then"
                );
                println!("      systemctl daemon-reload && systemctl enable --now gatewayd@NODE");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::LabVlan(args) => {
            gateway_user::lab::run_lab_vlan(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload { config, node } => {
            let socket = socket_for(&paths, config, node)?;
            runtime()?.block_on(daemon::request(&socket, "reload"))?;
            println!("reload applied");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err("an interval in seconds from 0.1 to 3600".into()),
    }
}

/// `gatewayd stats --watch`: a rates table per interval; on a terminal
/// each refresh redraws the screen, otherwise tables follow each other.
async fn watch_stats(socket: &std::path::Path, interval: f64, count: Option<u64>) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal();
    let fetch = || async {
        let value = daemon::request(socket, "stats").await?;
        let snapshot: Snapshot = serde_json::from_value(value)?;
        Ok::<_, anyhow::Error>((snapshot, std::time::Instant::now()))
    };
    let (mut prev, mut at) = fetch().await?;
    let mut shown = 0u64;
    while count.is_none_or(|n| shown < n) {
        tokio::time::sleep(std::time::Duration::from_secs_f64(interval)).await;
        let (cur, now) = fetch().await?;
        let secs = now.duration_since(at).as_secs_f64();
        let mut out = std::io::stdout().lock();
        if tty {
            // Home + clear: redraw in place.
            write!(out, "\x1b[H\x1b[2J")?;
        } else if shown > 0 {
            writeln!(out)?;
        }
        writeln!(
            out,
            "node {}  rates over {secs:.1} s  (every {interval} s; Ctrl-C to stop)",
            cur.node
        )?;
        write!(
            out,
            "{}",
            gateway_user::stats::render_rates(&prev, &cur, secs)
        )?;
        out.flush()?;
        (prev, at) = (cur, now);
        shown += 1;
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The node a `down` addresses: named, from a config, or the only one with
/// pins under the bpffs.
fn node_for(paths: &Paths, config: Option<PathBuf>, node: Option<String>) -> Result<String> {
    if let Some(path) = config {
        let c = Config::load(&path).map_err(|e| anyhow!("{e}"))?;
        return Ok(c.node.name);
    }
    if let Some(node) = node {
        return Ok(node);
    }
    let root = paths.bpffs.join("gatewayd");
    let nodes: Vec<String> = std::fs::read_dir(&root)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    match nodes.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no gatewayd node has pins under {}", root.display()),
        _ => bail!(
            "several nodes have pins under {} ({}); pick one with --node or -c",
            root.display(),
            nodes.join(", ")
        ),
    }
}

/// The control socket of the daemon a client command addresses.
fn socket_for(paths: &Paths, config: Option<PathBuf>, node: Option<String>) -> Result<PathBuf> {
    if let Some(path) = config {
        let c = Config::load(&path).map_err(|e| anyhow!("{e}"))?;
        return Ok(paths.socket(&c.node.name));
    }
    if let Some(node) = node {
        return Ok(paths.socket(&node));
    }
    let sockets: Vec<PathBuf> = std::fs::read_dir(&paths.run_dir)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match sockets.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "no gatewayd is running (no control socket in {})",
            paths.run_dir.display()
        ),
        _ => bail!(
            "several gatewayd nodes are running ({}); pick one with --node or -c",
            sockets
                .iter()
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}
