//! `cargo xtask test`: setup, lints, build, unit tier, kernel tiers. Stops at
//! the first failing step and prints a summary of the steps run so far.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use crate::{cmd, setup, workspace_root, ROOT_HINT};

struct StepResult {
    name: &'static str,
    passed: bool,
    took: Duration,
}

fn banner(name: &str) {
    println!("==> {name}");
}

/// Runs one cargo invocation as a step; true if it exited 0.
fn cargo_step(name: &'static str, build: impl FnOnce(&mut Command)) -> (bool, String) {
    let mut c = cmd::cargo();
    c.current_dir(workspace_root());
    build(&mut c);
    banner(&format!("{name}: {}", cmd::describe(&c)));
    match c.status() {
        Ok(s) if s.success() => (true, String::new()),
        Ok(s) => (false, format!("`{}` failed ({s})", cmd::describe(&c))),
        Err(e) => (
            false,
            format!("could not start `{}`: {e}", cmd::describe(&c)),
        ),
    }
}

fn print_summary(results: &[StepResult]) {
    println!();
    println!("==> summary");
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in results {
        println!(
            "{}  {:width$}  {:>7.1}s",
            if r.passed { "PASS" } else { "FAIL" },
            r.name,
            r.took.as_secs_f64(),
        );
    }
}

pub fn run(quick_unit: bool, test_args: &[String]) -> ExitCode {
    // The unit tier alone needs no root; everything else loads XDP programs.
    if !quick_unit && !cmd::is_root() {
        eprintln!("cargo xtask test: {ROOT_HINT}");
        return ExitCode::FAILURE;
    }

    type Step<'a> = (&'static str, Box<dyn FnOnce() -> (bool, String) + 'a>);
    let mut steps: Vec<Step> = Vec::new();
    steps.push((
        "setup",
        Box::new(|| {
            banner("setup");
            match setup::run() {
                Ok(()) => (true, String::new()),
                Err(e) => (false, e.to_string()),
            }
        }),
    ));
    if !quick_unit {
        steps.push((
            "fmt",
            Box::new(|| {
                cargo_step("fmt", |c| {
                    c.args(["fmt", "--all", "--check"]);
                })
            }),
        ));
        steps.push((
            "clippy",
            Box::new(|| {
                cargo_step("clippy", |c| {
                    c.args(["clippy", "--all-targets", "--", "-D", "warnings"]);
                })
            }),
        ));
        steps.push((
            "build",
            Box::new(|| {
                cargo_step("build", |c| {
                    c.arg("build");
                })
            }),
        ));
    }
    steps.push((
        "unit tests",
        Box::new(|| {
            cargo_step("unit tests", |c| {
                c.args([
                    "test",
                    "-p",
                    "gateway-common",
                    "-p",
                    "gateway-user",
                    "-p",
                    "gateway-bench",
                    "-p",
                    "xtask",
                ])
                .env("RUST_BACKTRACE", "1");
            })
        }),
    ));
    if !quick_unit {
        // The daemon's own map tests need root and a bpffs, so the unit
        // tier marks them #[ignore]; this step runs exactly those.
        steps.push((
            "daemon map tests",
            Box::new(move || {
                cargo_step("daemon map tests", |c| {
                    c.args([
                        "test",
                        "-p",
                        "gateway-user",
                        "--lib",
                        "--",
                        "--ignored",
                        "--test-threads=1",
                    ])
                    .env("RUST_BACKTRACE", "1");
                })
            }),
        ));
        steps.push((
            "kernel tests",
            Box::new(move || {
                cargo_step("kernel tests", |c| {
                    // One thread: the tests share kernel state (netns names,
                    // bpffs pins).
                    c.args(["test", "-p", "tests", "--", "--test-threads=1"])
                        .args(test_args)
                        .env("RUST_BACKTRACE", "1");
                })
            }),
        ));
        // Runs to completion and writes a report in which every
        // measurement is present and valid; how fast is not asserted.
        steps.push((
            "bench --quick",
            Box::new(|| {
                banner("bench --quick: cargo xtask bench --quick, then the report is validated; then --compare");
                match crate::bench::run(true).and_then(|()| crate::bench::compare_smoke()) {
                    Ok(()) => (true, String::new()),
                    Err(e) => (false, format!("{e:#}")),
                }
            }),
        ));
    }

    let mut results = Vec::new();
    for (name, step) in steps {
        let start = Instant::now();
        let (passed, why) = step();
        results.push(StepResult {
            name,
            passed,
            took: start.elapsed(),
        });
        if !passed {
            eprintln!("\n{name} FAILED: {why}");
            print_summary(&results);
            return ExitCode::FAILURE;
        }
    }
    print_summary(&results);
    ExitCode::SUCCESS
}
