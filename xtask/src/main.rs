//! `cargo xtask`: bootstrap, test and demo entry points for the workspace.
//!
//! This crate must compile on a fresh machine, so it depends on nothing that
//! builds eBPF (no gateway-user, no aya-build): only anyhow and clap.

mod bench;
mod cmd;
mod setup;
mod test;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Workspace tasks: setup, test, demo, install, bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install whatever is missing: nightly, rust-src, bpf-linker, Debian
    /// tools (bpftool, iproute2, ...), bpffs. Idempotent.
    Setup,
    /// Run setup, then fmt, clippy, build, unit tests and the kernel tiers
    /// (root only). Arguments after `--` go to the kernel-tier test binaries.
    Test {
        /// Only setup and the unit tier (gateway-common, gateway-user,
        /// gateway-bench, xtask): no lints, no kernel tiers, no root needed
        /// if setup has nothing to do.
        #[arg(long)]
        quick_unit: bool,
        /// Passed to the kernel-tier test binaries, e.g. a test name filter.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Run setup, build, then the gateway on a throw-away veth-namespace
    /// topology with the example config: traffic both ways, drops, stats
    /// (root only). Cleans up, also on Ctrl-C.
    Demo,
    /// Run setup, build gatewayd in release mode and install it with its
    /// systemd unit (`gatewayd install`): /usr/local/sbin/gatewayd,
    /// /etc/systemd/system/gatewayd@.service, /etc/gatewayd/example.toml.
    Install {
        /// Arguments for `gatewayd install` (e.g. --root DIR --prefix /opt).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run setup, then the benchmarks (release build, root only): per-packet
    /// cost vs a floor program, lab line rate vs the Linux kernel, scale.
    /// Writes target/bench/report.md, report.json and scale.svg.
    Bench {
        /// Small tables and short runs (what `cargo xtask test` runs).
        #[arg(long)]
        quick: bool,
    },
}

/// The workspace root: the parent of this crate's manifest directory, so the
/// tasks work from any cwd inside the repository.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

pub const ROOT_HINT: &str = "run as root (needs apt-get, bpffs, XDP)";

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Task::Setup => match setup::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Task::Test {
            quick_unit,
            test_args,
        } => test::run(quick_unit, &test_args),
        Task::Demo => demo(),
        Task::Install { args } => install(&args),
        Task::Bench { quick } => bench(quick),
    }
}

fn bench(quick: bool) -> ExitCode {
    if !cmd::is_root() {
        eprintln!("cargo xtask bench: {ROOT_HINT}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = setup::run() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    match bench::run(quick) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn install(args: &[String]) -> ExitCode {
    if let Err(e) = setup::run() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let root = workspace_root();
    println!("==> cargo build --release -p gateway-user");
    let built = cmd::cargo()
        .args(["build", "--release", "-p", "gateway-user"])
        .current_dir(&root)
        .status();
    if !matches!(built, Ok(s) if s.success()) {
        eprintln!("install: cargo build --release failed ({built:?})");
        return ExitCode::FAILURE;
    }
    let gatewayd = cmd::target_dir(&root).join("release").join("gatewayd");
    println!("==> {} install {}", gatewayd.display(), args.join(" "));
    match std::process::Command::new(&gatewayd)
        .arg("install")
        .args(args)
        .status()
    {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        other => {
            eprintln!("install: gatewayd install failed ({other:?})");
            ExitCode::FAILURE
        }
    }
}

fn demo() -> ExitCode {
    if !cmd::is_root() {
        eprintln!("cargo xtask demo: {ROOT_HINT}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = setup::run() {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let root = workspace_root();
    println!("==> cargo build");
    let status = cmd::cargo().arg("build").current_dir(&root).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("demo: cargo build failed ({s})");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("demo: cannot run cargo: {e}");
            return ExitCode::FAILURE;
        }
    }
    let gatewayd = cmd::target_dir(&root).join("debug").join("gatewayd");
    println!("==> demo with {}", gatewayd.display());
    match ::tests::demo::run(&gatewayd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_after_double_dash_reach_the_kernel_tier() {
        let cli =
            Cli::try_parse_from(["xtask", "test", "--", "datapath::arp", "--nocapture"]).unwrap();
        match cli.command {
            Task::Test {
                quick_unit,
                test_args,
            } => {
                assert!(!quick_unit);
                assert_eq!(test_args, ["datapath::arp", "--nocapture"]);
            }
            _ => panic!("parsed as another task"),
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
