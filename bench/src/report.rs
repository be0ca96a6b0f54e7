//! The results: one JSON document (`report.json`, read back by
//! `cargo xtask test`), its Markdown rendering (`report.md`, also printed
//! to the terminal) and the cost-vs-table-size plot (`scale.svg`).

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PathCost {
    pub name: String,
    /// Program time per packet (ns).
    pub ns: f64,
    /// ns / floor ns.
    pub vs_floor: f64,
    pub runs: u64,
    pub valid: bool,
    pub why_invalid: Option<String>,
    /// Share of the runs forwarded on the flow cache's fast path (None:
    /// not TCP/UDP, never looked up).
    #[serde(default)]
    pub flow_cache_hits: Option<f64>,
}

/// The self-check of the path validation (see costs.rs).
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Control {
    pub what: String,
    pub detected_invalid: bool,
    pub detail: String,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LabRate {
    /// a, b, c, d.
    pub key: String,
    pub name: String,
    /// Frames delivered to the sink per second (millions).
    pub mpps: f64,
    /// Frames the generator produced per second (millions).
    pub offered_mpps: f64,
    pub delivered: u64,
    /// mpps / mpps of (a).
    pub vs_line_rate: f64,
    /// Busy time of the forwarding CPU per delivered packet (ns).
    pub cpu_ns_per_packet: f64,
    /// The XDP program's own run time per packet from bpf_stats, where the
    /// forwarder is an XDP program.
    pub bpf_ns_per_packet: Option<f64>,
    pub valid: bool,
    pub why_invalid: Option<String>,
}

/// One lab turn: (a), (a2), (b) and (c) measured one right after the other.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct LabTurn {
    pub a_mpps: f64,
    pub b_mpps: f64,
    pub c_mpps: f64,
    /// Forwarding CPU ns per packet of each (`LabRate::cpu_ns_per_packet`).
    #[serde(default)]
    pub a_cpu_ns: f64,
    #[serde(default)]
    pub b_cpu_ns: f64,
    #[serde(default)]
    pub c_cpu_ns: f64,
    /// (a2), the gateway's frame work alone, in the same turn: None when
    /// its run was invalid (the turn still counts for the targets).
    #[serde(default)]
    pub a2_mpps: Option<f64>,
    #[serde(default)]
    pub a2_cpu_ns: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct ScalePoint {
    /// routes, nat, tunnels.
    pub table: String,
    pub size: u64,
    pub ns: f64,
    /// ns / ns at the smallest size of the same table.
    pub vs_smallest: f64,
    /// Time to write the table into fresh maps (ms).
    pub load_ms: f64,
    /// Kernel memory of the table's own maps (bytes, memlock).
    pub memlock_bytes: u64,
    /// Kernel memory of all the gateway's maps (bytes, memlock).
    pub total_memlock_bytes: u64,
    pub valid: bool,
    pub why_invalid: Option<String>,
    /// Share of lookups the destination cache answered (cached series).
    #[serde(default)]
    pub cache_hit_rate: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Target {
    pub name: String,
    pub want: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Report {
    pub machine: String,
    pub command: String,
    pub quick: bool,
    pub started_unix: u64,
    pub floor_ns: f64,
    pub floor_runs: u64,
    pub costs: Vec<PathCost>,
    pub control: Control,
    pub lab: Vec<LabRate>,
    pub lab_notes: Vec<String>,
    /// Every valid lab turn, for the ratios the targets are judged by.
    #[serde(default)]
    pub lab_turns: Vec<LabTurn>,
    pub scale: Vec<ScalePoint>,
    pub targets: Vec<Target>,
    pub duration_s: f64,
}

/// Median and quartiles of a sample.
pub struct Spread {
    pub n: usize,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Option<Spread> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            // Linear interpolation between the closest ranks.
            let pos = q * (v.len() - 1) as f64;
            let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        };
        Some(Spread {
            n: v.len(),
            q1: at(0.25),
            median: at(0.5),
            q3: at(0.75),
        })
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn ok(valid: bool) -> &'static str {
    if valid {
        "valid"
    } else {
        "INVALID"
    }
}

impl Report {
    pub fn targets(&mut self) {
        let mut t = Vec::new();
        // Judged by the median over the lab's turns of the ratio within a
        // turn; the best runs (the rates table) for context.
        let best = |k: &str| self.lab.iter().find(|r| r.key == k).map(|r| r.mpps);
        let ratios = |f: fn(&LabTurn) -> f64| -> Option<Spread> {
            Spread::of(self.lab_turns.iter().map(f).collect())
        };
        // (a2), the gateway's frame work alone, in the turns where it was
        // valid: what the lab leaves of the line rate to any forwarder
        // doing the gateway's job.
        let with_a2 = |f: fn(&LabTurn, f64) -> f64| -> Option<Spread> {
            Spread::of(
                self.lab_turns
                    .iter()
                    .filter_map(|t| t.a2_mpps.map(|a2| f(t, a2)))
                    .collect(),
            )
        };
        let bound = match (
            with_a2(|t, a2| a2 / t.a_mpps),
            with_a2(|t, a2| t.b_mpps / a2),
        ) {
            (Some(a2), Some(b)) => format!(
                "; the gateway's frame work alone (a2) reaches {:.2}x (a) (quartiles {:.2}x - {:.2}x), and the gateway {:.2}x (a2)",
                a2.median, a2.q1, a2.q3, b.median
            ),
            _ => String::new(),
        };
        if let (Some(m), Some(a), Some(b)) = (ratios(|t| t.b_mpps / t.a_mpps), best("a"), best("b"))
        {
            t.push(Target {
                name: "gateway (b) vs lab line rate (a)".into(),
                want: ">= 0.9x".into(),
                measured: format!(
                    "{:.2}x (median of {} turns; quartiles {:.2}x - {:.2}x; best runs {b:.2} / {a:.2} Mpps = {:.2}x; per core, a/b of forwarding CPU ns/packet: {:.2}x{bound})",
                    m.median, m.n, m.q1, m.q3, b / a,
                    ratios(|t| t.a_cpu_ns / t.b_cpu_ns).map(|r| r.median).unwrap_or(0.0)
                ),
                met: m.median >= 0.9,
            });
        }
        if let (Some(m), Some(b), Some(c)) = (ratios(|t| t.b_mpps / t.c_mpps), best("b"), best("c"))
        {
            t.push(Target {
                name: "gateway (b) vs kernel stateless NAT (c)".into(),
                want: ">= 5x".into(),
                measured: format!(
                    "{:.2}x (median of {} turns; quartiles {:.2}x - {:.2}x; best runs {b:.2} / {c:.2} Mpps = {:.2}x; the lab line rate (a) itself is {:.2}x (c){}, and no forwarder delivers more than the line rate; per core, c/b of forwarding CPU ns/packet: {:.2}x)",
                    m.median, m.n, m.q1, m.q3, b / c,
                    ratios(|t| t.a_mpps / t.c_mpps).map(|r| r.median).unwrap_or(0.0),
                    with_a2(|t, a2| a2 / t.c_mpps)
                        .map(|r| format!(", the gateway's frame work alone (a2) {:.2}x (c)", r.median))
                        .unwrap_or_default(),
                    ratios(|t| t.c_cpu_ns / t.b_cpu_ns).map(|r| r.median).unwrap_or(0.0)
                ),
                met: m.median >= 5.0,
            });
        }
        // The route lookup alone (the datapath's code on its map type),
        // with the LPM trie and the whole VPC -> IDC path for context.
        let ratio = |table: &str| -> Option<(u64, f64, f64)> {
            let pts: Vec<&ScalePoint> = self.scale.iter().filter(|p| p.table == table).collect();
            let base = pts.iter().find(|p| p.size == 100)?.ns;
            let big = pts
                .iter()
                .filter(|p| p.size <= 100_000)
                .max_by_key(|p| p.size)?;
            Some((big.size, big.ns, base))
        };
        // The datapath's lookup: the destination cache in front of the
        // hash. The hash alone is what a miss costs; the trie for context.
        if let Some((n, big, base)) = ratio("lookup: destination cache + ROUTES hash") {
            let mut measured = format!("{:.2}x ({big:.1} / {base:.1} ns)", big / base);
            if let Some((_, b, a)) = ratio("lookup: ROUTES hash") {
                measured.push_str(&format!("; on a cache miss (hash) {:.2}x", b / a));
            }
            if let Some((_, b, a)) = ratio("lookup: LPM trie") {
                measured.push_str(&format!("; LPM trie {:.2}x", b / a));
            }
            if let Some((_, b, a)) = ratio("routes") {
                measured.push_str(&format!("; whole VPC->IDC path {:.2}x", b / a));
            }
            t.push(Target {
                name: format!("route lookup cost at {n} routes vs 100 routes"),
                want: "<= 1.5x (at 100k routes)".into(),
                measured,
                met: big / base <= 1.5,
            });
        }
        self.targets = t;
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmark report\n");
        let _ = writeln!(s, "- machine: {}", self.machine);
        let _ = writeln!(s, "- command: `{}`", self.command);
        let _ = writeln!(
            s,
            "- run took {:.0} s{}\n",
            self.duration_s,
            if self.quick {
                " (quick: small sizes, short runs; the figures are noisy)"
            } else {
                ""
            }
        );

        let _ = writeln!(s, "## Targets\n");
        let _ = writeln!(
            s,
            "| target | want | measured | met |\n| --- | --- | --- | --- |"
        );
        for t in &self.targets {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.name,
                t.want,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }

        let _ = writeln!(s, "\n## 1. Per-packet program cost (BPF_PROG_TEST_RUN)\n");
        if self.floor_runs == 0 {
            let _ = writeln!(s, "Not run (`--only` left out costs).");
        } else {
            let _ = writeln!(s, "Each run is one test run of one packet (repeat = 1: the gateway rewrites frames, and with `repeat` every run after the first would process its own output). The kernel's own per-run time, mean of the fastest 90%, best of the rounds. Every path is proven from the gateway's counters: the XDP action of every run and the exact counter deltas (rx, tx, fates) of all runs, nothing else moved; and from the flow cache's hit and miss counts: a cached flow's runs hit (at most 1 % miss, when the slot ages out, after 100 jiffies), a new flow's every run misses and takes the full pipeline. The gateway's frame work alone (`bench_nat_pop`, the lab's (a2)) has no counters: it is proven by one test run whose output must equal, byte for byte, the gateway's rewrite of the same frame (but the MACs), and by the action of every run.\n");
            let _ = writeln!(
            s,
            "| path | ns/packet | x floor | flow cache hits | runs | check |\n| --- | ---: | ---: | ---: | ---: | --- |"
        );
            let _ = writeln!(
                s,
                "| floor: parse Ethernet, swap MACs, XDP_TX | {:.1} | 1.00 | - | {} | valid |",
                self.floor_ns, self.floor_runs
            );
            for c in &self.costs {
                let _ = writeln!(
                    s,
                    "| {} | {:.1} | {:.2} | {} | {} | {}{} |",
                    c.name,
                    c.ns,
                    c.vs_floor,
                    c.flow_cache_hits
                        .map(|h| format!("{:.1} %", h * 100.0))
                        .unwrap_or_else(|| "-".into()),
                    c.runs,
                    ok(c.valid),
                    c.why_invalid
                        .as_deref()
                        .map(|w| format!(": {w}"))
                        .unwrap_or_default()
                );
            }
            let _ = writeln!(
                s,
                "\nControl: {} -> {} ({}).",
                self.control.what,
                if self.control.detected_invalid {
                    "flagged invalid by the counters, as it must be"
                } else {
                    "NOT flagged: the validation is broken"
                },
                self.control.detail
            );
        }
        let _ = writeln!(s, "\n## 2. Lab line rate (live frames, namespaces)\n");
        if self.lab.is_empty() {
            let _ = writeln!(s, "Not run (`--only` left out lab).");
        } else {
            let _ = writeln!(s, "| | forwarder | delivered Mpps | x line rate (a) | offered Mpps | forwarding CPU ns/packet | XDP program ns/packet (bpf_stats) | check |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |");
            for r in &self.lab {
                let _ = writeln!(
                    s,
                    "| ({}) | {} | {:.3} | {:.2} | {:.3} | {:.0} | {} | {}{} |",
                    r.key,
                    r.name,
                    r.mpps,
                    r.vs_line_rate,
                    r.offered_mpps,
                    r.cpu_ns_per_packet,
                    r.bpf_ns_per_packet
                        .map(|v| format!("{v:.1}"))
                        .unwrap_or_else(|| "-".into()),
                    ok(r.valid),
                    r.why_invalid
                        .as_deref()
                        .map(|w| format!(": {w}"))
                        .unwrap_or_default()
                );
            }
            for n in &self.lab_notes {
                let _ = writeln!(s, "\n{n}");
            }
            if !self.lab_turns.is_empty() {
                let turns: Vec<String> = self
                    .lab_turns
                    .iter()
                    .map(|t| {
                        let or_dash = |v: Option<f64>, digits: usize| {
                            v.map_or("-".to_owned(), |v| format!("{v:.digits$}"))
                        };
                        format!(
                            "{:.2} / {} / {:.2} / {:.2} ({:.2}x, {:.1}x; CPU {:.0} / {} / {:.0} / {:.0} ns)",
                            t.a_mpps,
                            or_dash(t.a2_mpps, 2),
                            t.b_mpps,
                            t.c_mpps,
                            t.b_mpps / t.a_mpps,
                            t.b_mpps / t.c_mpps,
                            t.a_cpu_ns,
                            or_dash(t.a2_cpu_ns, 0),
                            t.b_cpu_ns,
                            t.c_cpu_ns
                        )
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "\nEvery turn, Mpps of (a) / (a2) / (b) / (c), the ratios b/a and b/c, and the forwarding CPU ns/packet of each: {}.",
                    turns.join("; ")
                );
            }
        }
        let _ = writeln!(s, "\n## 3. Scale\n");
        let _ = writeln!(s, "Fresh maps for every size. ns/packet from test runs cycling through 4096 different destinations (or sources, or VLANs) spread over the table, every run a new flow (its own UDP source port; proven from the flow cache's counts: every run missed it), so every run takes the full pipeline and its table lookups, as a flow's first packet does; the flow's later packets cost the fast path's flat figure of part 1 at any table size; load = time to write the table into the maps (`Datapath::apply`); memory = the kernel's memlock accounting of the table's maps (all of the gateway's maps in brackets). Every size is measured in several rounds, the sizes in turn (the first rotating from round to round; the lookup series with all sizes loaded side by side, each round running trie, hash and cached one after the other): a size's ns/packet is its fastest round and its load time the shortest, so a slow spell of a shared machine does not decide a ratio; a size is valid only if every round was.\n");
        let _ = writeln!(s, "| table | size | ns/packet | x smallest | cache hits | load ms | memory | check |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for p in &self.scale {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.2} | {} | {:.1} | {} ({}) | {}{} |",
                p.table,
                p.size,
                p.ns,
                p.vs_smallest,
                p.cache_hit_rate
                    .map(|r| format!("{:.1} %", r * 100.0))
                    .unwrap_or_else(|| "-".into()),
                p.load_ms,
                mib(p.memlock_bytes),
                mib(p.total_memlock_bytes),
                ok(p.valid),
                p.why_invalid
                    .as_deref()
                    .map(|w| format!(": {w}"))
                    .unwrap_or_default()
            );
        }
        let _ = writeln!(s, "\n![cost vs table size](scale.svg)");
        s
    }

    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        crate::plot::scale_svg(&self.scale, &dir.join("scale.svg"))?;
        Ok(())
    }
}
