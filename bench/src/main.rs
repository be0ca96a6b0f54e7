//! `gateway-bench`, run by `cargo xtask bench [--quick]`: measures the
//! gateway against baselines in the same run on the same machine, so the
//! results are ratios that hold on a noisy shared machine.
//!
//! 1. per-packet program cost of each path vs a floor program (costs.rs);
//! 2. lab line rate with live frames through namespaces: a trivial
//!    forwarder, the gateway, the Linux kernel with stateless and with
//!    conntrack NAT (lab.rs);
//! 3. cost, load time and memory as tables grow (scale.rs).
//!
//! Writes report.json, report.md and scale.svg to `--out`.

mod costs;
mod fixture;
mod frames;
mod lab;
mod leftovers;
mod plot;
mod report;
mod scale;
mod sys;

use std::{path::PathBuf, time::Instant};

use anyhow::{bail, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "gateway-bench", about = "Benchmarks of the XDP gateway (root)")]
struct Cli {
    /// Small tables and short runs (for `cargo xtask test`).
    #[arg(long)]
    quick: bool,
    /// Folder for report.json, report.md and scale.svg.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Run only these parts (costs, lab, routes, nat, tunnels); the report
    /// then lacks the others. For working on one part.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// How the run was started, for the report.
    #[arg(long, default_value = "cargo xtask bench")]
    command: String,
    /// Instead of the benchmark: the lab's trivial forwarder (a), the
    /// gateway's frame work alone (a2) and the gateway built from each of
    /// these eBPF object files (e.g. the `gateway` object in
    /// target/release/build/gateway-user-*/out/ of two commits; `embedded`
    /// is this binary's own), side by side in one lab; prints each one's
    /// (b)/(a) and (b)/(a2).
    #[arg(long, num_args = 1.., value_name = "OBJECT")]
    compare: Vec<PathBuf>,
    /// Turns of `--compare`: ~0.4 s each per object; 40 tell a 5 %
    /// difference apart on a shared 2-vCPU VM, 20 often do not.
    #[arg(long, default_value_t = 40)]
    compare_turns: usize,
    /// `--compare` with bpf_stats on: also each program's own time per
    /// packet (its two clock reads included, and the rates carry them).
    #[arg(long)]
    compare_bpf_stats: bool,
}

/// Frames per run of `--compare`: short runs, many turns.
const COMPARE_FRAMES: u32 = 300_000;

/// The CPU the per-packet and scale test runs are made on.
const MEASURE_CPU: usize = 1;

struct Plan {
    runs: u64,
    rounds: usize,
    lab_frames: u32,
    lab_rounds: usize,
    /// Side-by-side turns of (a), (b), (c) per lab round.
    lab_turns: usize,
    routes: Vec<u64>,
    nat: Vec<u64>,
    tunnels: Vec<u64>,
    scale_runs: u64,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("gateway-bench: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<()> {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF_PROG_TEST_RUN, XDP, network namespaces)");
    }
    if sys::online_cpus() < 2 {
        bail!("needs 2 CPUs: the lab keeps the generator and the forwarder on different CPUs");
    }
    for what in leftovers::sweep()? {
        eprintln!("removed, left by an interrupted run: {what}");
    }
    if !cli.compare.is_empty() {
        sys::pin_to_cpu(0, MEASURE_CPU)?;
        eprintln!(
            "==> compare: (a), (a2) and {} gateway objects, {} turns",
            cli.compare.len(),
            cli.compare_turns
        );
        let table = lab::compare(
            &cli.compare,
            COMPARE_FRAMES,
            cli.compare_turns,
            cli.compare_bpf_stats,
        )?;
        println!("{table}");
        return Ok(());
    }
    let plan = if cli.quick {
        Plan {
            runs: 2_000,
            rounds: 2,
            lab_frames: 300_000,
            lab_rounds: 1,
            lab_turns: 2,
            routes: vec![100, 1_000, 10_000],
            nat: vec![1, 100, 1_000],
            tunnels: vec![1, 64, 512],
            scale_runs: 4_096,
        }
    } else {
        Plan {
            runs: 20_000,
            rounds: 5,
            lab_frames: 2_000_000,
            lab_rounds: 5,
            lab_turns: 4,
            routes: vec![100, 1_000, 10_000, 100_000, 1_000_000],
            nat: vec![1, 100, 1_000, 10_000, 100_000],
            tunnels: vec![1, 16, 256, 1_024, 4_094],
            scale_runs: 40_960,
        }
    };
    let started = Instant::now();
    let started_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);

    let part = |p: &str| cli.only.is_empty() || cli.only.iter().any(|o| o == p);
    // Test runs on one CPU: per-CPU state (counters, the destination
    // cache) stays warm instead of being split over the CPUs the thread
    // would wander between.
    sys::pin_to_cpu(0, MEASURE_CPU)?;
    let costs = if part("costs") {
        eprintln!(
            "==> 1. per-packet cost ({} runs x {} rounds per path)",
            plan.runs, plan.rounds
        );
        costs::run(plan.runs, plan.rounds)?
    } else {
        costs::Costs::default()
    };
    let lab = if part("lab") {
        eprintln!("==> 2. lab line rate ({} frames per run)", plan.lab_frames);
        Some(lab::run(plan.lab_frames, plan.lab_rounds, plan.lab_turns)?)
    } else {
        None
    };
    sys::pin_to_cpu(0, MEASURE_CPU)?;
    eprintln!("==> 3. scale");
    let mut scale = Vec::new();
    if part("routes") {
        scale.extend(scale::routes(&plan.routes, plan.scale_runs, plan.rounds)?);
        scale.extend(scale::route_lookup(
            &plan.routes,
            plan.scale_runs,
            plan.rounds,
            scale::FEW_LENGTHS,
            "",
        )?);
        // The hash's harder case; the full run only (time).
        if !cli.quick {
            scale.extend(scale::route_lookup(
                &plan.routes,
                plan.scale_runs,
                plan.rounds,
                scale::MANY_LENGTHS,
                ", 23 lengths",
            )?);
        }
    }
    if part("nat") {
        scale.extend(scale::nat(&plan.nat, plan.scale_runs, plan.rounds)?);
    }
    if part("tunnels") {
        scale.extend(scale::tunnels(&plan.tunnels, plan.scale_runs, plan.rounds)?);
    }

    let mut report = report::Report {
        machine: sys::machine(),
        command: cli.command.clone(),
        quick: cli.quick,
        started_unix,
        floor_ns: costs.floor.ns,
        floor_runs: costs.floor.runs,
        costs: costs.paths,
        control: costs.control,
        lab: lab.as_ref().map(|l| l.rates.clone()).unwrap_or_default(),
        lab_notes: lab.as_ref().map(|l| l.notes.clone()).unwrap_or_default(),
        lab_turns: lab.map(|l| l.turns).unwrap_or_default(),
        scale,
        targets: Vec::new(),
        duration_s: started.elapsed().as_secs_f64(),
    };
    report.targets();
    report.write(&cli.out)?;
    println!("{}", report.markdown());
    println!("wrote {}", cli.out.join("report.md").display());
    Ok(())
}
