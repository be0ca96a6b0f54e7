//! `cargo xtask bench [--quick]`: runs the benchmark binary (release build
//! of the `gateway-bench` crate, which embeds the eBPF objects; this crate
//! must not depend on it, see main.rs) and checks the report it wrote.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{cmd, workspace_root};

/// Where the report goes: `<target>/bench/`.
pub fn out_dir() -> PathBuf {
    cmd::target_dir(&workspace_root()).join("bench")
}

/// Builds and runs the benchmark, then validates its report.
pub fn run(quick: bool) -> Result<()> {
    let out = out_dir();
    let shown = if quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };
    let mut c = cmd::cargo();
    c.current_dir(workspace_root())
        .args(["run", "--release", "-p", "gateway-bench", "--"])
        .arg("--out")
        .arg(&out)
        .args(["--command", shown]);
    if quick {
        c.arg("--quick");
    }
    println!("==> {}", cmd::describe(&c));
    let status = c.status().context("starting cargo run")?;
    if !status.success() {
        bail!("the benchmark failed ({status})");
    }
    validate(&out, quick)?;
    println!("report: {} (valid)", out.join("report.md").display());
    Ok(())
}

/// `gateway-bench --compare embedded embedded` for two turns: the A/B
/// tool runs to completion and prints a valid row per object (the same
/// object twice: every run valid, a ratio to (a) and program times).
pub fn compare_smoke() -> Result<()> {
    let mut c = cmd::cargo();
    c.current_dir(workspace_root())
        .args(["run", "--release", "-p", "gateway-bench", "--"])
        .args(["--compare", "embedded", "embedded"])
        .args(["--compare-turns", "2", "--compare-bpf-stats"]);
    println!("==> {}", cmd::describe(&c));
    let out = c.output().context("starting cargo run")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "gateway-bench --compare failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    print!("{text}");
    check_compare_table(&text)
}

/// The `--compare` table holds one row per object, each with its ratios
/// to (a) and (a2), a program time and no invalid run.
fn check_compare_table(text: &str) -> Result<()> {
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("| embedded |"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    if rows.len() != 2 {
        bail!(
            "--compare printed {} rows for 2 objects:\n{text}",
            rows.len()
        );
    }
    for r in rows {
        // "", object, ratio to (a), ratio to (a2), Mpps, CPU ns, program
        // ns, invalid, "".
        if r.len() != 9 {
            bail!("--compare row with {} columns, want 7: {r:?}", r.len() - 2);
        }
        let ratio_ok = |c: &str| c.ends_with(')') && c.contains("x (");
        let numbers_ok = [r[4], r[5], r[6]]
            .iter()
            .all(|v| v.parse::<f64>().is_ok_and(|x| x > 0.0));
        if !ratio_ok(r[2]) || !ratio_ok(r[3]) || !numbers_ok || r[7] != "0" {
            bail!("--compare row without its two ratios, a rate, CPU and program times, or with invalid runs: {r:?}");
        }
    }
    Ok(())
}

/// The paths of part 1 the report must have (the gateway's frame work
/// alone, then the forwarding paths twice: the flow cached, and a new flow
/// through the full pipeline).
const PATHS: &[&str] = &[
    "the gateway's frame work alone: source NAT, TTL, tag pop, MACs, redirect (bench_nat_pop, no table, no counter)",
    "IDC->VPC plain (flow cached: fast path)",
    "IDC->VPC plain, a new flow (full pipeline)",
    "IDC->VPC peer IP mapping (flow cached: fast path)",
    "IDC->VPC peer IP mapping, a new flow (full pipeline)",
    "VPC->IDC port mapping (flow cached: fast path)",
    "VPC->IDC port mapping, a new flow (full pipeline)",
    "ARP reply",
    "unknown VLAN drop",
];
const LAB: &[&str] = &["a", "a2", "b", "c", "d"];
const TABLES: &[&str] = &[
    "routes",
    "lookup: LPM trie",
    "lookup: ROUTES hash",
    "lookup: destination cache + ROUTES hash",
    "nat",
    "tunnels",
];

fn num(v: &Value, what: &str) -> Result<f64> {
    let n = v
        .as_f64()
        .with_context(|| format!("{what} is missing or not a number"))?;
    if !n.is_finite() || n <= 0.0 {
        bail!("{what} = {n}: not a positive measurement");
    }
    Ok(n)
}

fn valid(v: &Value, what: &str) -> Result<()> {
    if v["valid"].as_bool() != Some(true) {
        bail!(
            "{what} is not a valid measurement: {}",
            v["why_invalid"].as_str().unwrap_or("(no reason given)")
        );
    }
    Ok(())
}

/// Checks that every measurement is present, valid and a positive number
/// (not how fast anything is: performance is reported, not asserted), and
/// that report.md and scale.svg were written.
pub fn validate(dir: &Path, quick: bool) -> Result<()> {
    let path = dir.join("report.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let r: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    if r["quick"].as_bool() != Some(quick) {
        bail!(
            "{} is from another kind of run (quick = {})",
            path.display(),
            r["quick"]
        );
    }
    num(&r["floor_ns"], "floor ns/packet")?;
    let costs = r["costs"].as_array().context("costs missing")?;
    for p in PATHS {
        let c = costs
            .iter()
            .find(|c| c["name"] == *p)
            .with_context(|| format!("per-packet cost of {p:?} missing"))?;
        valid(c, p)?;
        num(&c["ns"], &format!("{p} ns/packet"))?;
        num(&c["vs_floor"], &format!("{p} x floor"))?;
    }
    if r["control"]["detected_invalid"].as_bool() != Some(true) {
        bail!("the repeat-mode control was not flagged invalid: the path validation cannot be trusted");
    }
    let lab = r["lab"].as_array().context("lab missing")?;
    for k in LAB {
        let l = lab
            .iter()
            .find(|l| l["key"] == *k)
            .with_context(|| format!("lab forwarder ({k}) missing"))?;
        valid(l, &format!("lab ({k})"))?;
        num(&l["mpps"], &format!("lab ({k}) Mpps"))?;
        num(&l["cpu_ns_per_packet"], &format!("lab ({k}) CPU ns/packet"))?;
    }
    for k in ["a", "a2", "b"] {
        let l = lab.iter().find(|l| l["key"] == k).context("lab")?;
        num(
            &l["bpf_ns_per_packet"],
            &format!("lab ({k}) bpf_stats ns/packet"),
        )?;
    }
    // The lab targets are judged by the turns in which (a), (b) and (c)
    // were all valid.
    let turns = r["lab_turns"].as_array().context("lab turns missing")?;
    if turns.is_empty() {
        bail!("no lab turn with (a), (b) and (c) all valid: the lab targets cannot be judged");
    }
    for t in turns {
        for k in [
            "a_mpps", "b_mpps", "c_mpps", "a_cpu_ns", "b_cpu_ns", "c_cpu_ns",
        ] {
            num(&t[k], &format!("lab turn {k}"))?;
        }
    }
    let scale = r["scale"].as_array().context("scale missing")?;
    for t in TABLES {
        let points: Vec<&Value> = scale.iter().filter(|p| p["table"] == *t).collect();
        if points.len() < 3 {
            bail!("scale {t:?}: {} sizes, want at least 3", points.len());
        }
        for p in points {
            let what = format!("scale {t} at {}", p["size"]);
            valid(p, &what)?;
            num(&p["ns"], &what)?;
            num(&p["vs_smallest"], &what)?;
            num(&p["load_ms"], &format!("{what} load time"))?;
            num(&p["memlock_bytes"], &format!("{what} memory"))?;
        }
    }
    let targets = r["targets"].as_array().context("targets missing")?;
    if targets.len() != 3 {
        bail!("{} targets evaluated, want 3", targets.len());
    }
    for f in ["report.md", "scale.svg"] {
        let p = dir.join(f);
        let len = std::fs::metadata(&p)
            .with_context(|| format!("{} missing", p.display()))?
            .len();
        if len == 0 {
            bail!("{} is empty", p.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_compare_table;

    const OK: &str = "| object | ... |\n\
        | embedded | 0.950x (0.900x - 1.000x) | 0.990x (0.950x - 1.020x) | 2.50 | 300.0 | 120.0 | 0 |\n\
        | embedded | 1.010x (0.950x - 1.050x) | 1.050x (1.000x - 1.100x) | 2.60 | 290.0 | 118.0 | 0 |\n";

    #[test]
    fn compare_table_with_two_valid_rows_passes() {
        check_compare_table(OK).unwrap();
    }

    #[test]
    fn compare_table_with_invalid_runs_a_missing_row_or_time_fails() {
        assert!(check_compare_table(&OK.replacen("| 0 |", "| 1 |", 1)).is_err());
        assert!(check_compare_table(&OK.lines().take(2).collect::<Vec<_>>().join("\n")).is_err());
        assert!(check_compare_table(&OK.replace("120.0", "-")).is_err());
        assert!(check_compare_table(&OK.replace("0.950x (0.900x - 1.000x)", "-")).is_err());
        assert!(check_compare_table(&OK.replace("0.990x (0.950x - 1.020x)", "-")).is_err());
        // The table before (a2): one ratio.
        assert!(check_compare_table(&OK.replace("| 0.990x (0.950x - 1.020x) ", "")).is_err());
    }
}
