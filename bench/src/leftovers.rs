//! What an interrupted run left behind. A run cleans up its namespaces and
//! pinned maps when it ends, even on an error; Ctrl-C or a kill ends it
//! without that, and leaves its namespaces (with their veths and the XDP
//! programs on them) and its pinned maps (tens of MiB). Every run removes
//! those of runs that are no longer running before it starts.
//!
//! A run's names carry its process id: the per-packet and scale fixtures'
//! `gwbench<pid>-<n>`, the lab's `bidc<s>`, `bgw<s>` and `bvpc<s>` with
//! `s = pid % 100000` (the lab's interface names, `bc<s>` and so on, must
//! stay within 15 bytes), and pin folders named after those namespaces
//! (`bgw<s>` with a suffix `-<i>` under `--compare`).

use std::path::Path;

use anyhow::{Context, Result};

/// Where the benchmark pins the gateway's maps (one folder per namespace).
pub const PIN_ROOT: &str = "/sys/fs/bpf/gatewayd-bench";

/// The lab's modulus for process ids in names.
pub const LAB_ID_MOD: u32 = 100_000;

/// Who a benchmark name belongs to.
#[derive(Debug, PartialEq, Eq)]
enum Owner {
    /// The process with this id.
    Pid(u32),
    /// A process whose id modulo `LAB_ID_MOD` is this.
    LabId(u32),
}

/// A run of ASCII digits as a number (`parse` alone takes a sign).
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The owner of a namespace or pin folder name, None for names that are
/// not the benchmark's.
fn owner(name: &str) -> Option<Owner> {
    if let Some(rest) = name.strip_prefix("gwbench") {
        let (pid, n) = rest.split_once('-')?;
        number(n)?;
        return number(pid).map(Owner::Pid);
    }
    for prefix in ["bidc", "bgw", "bvpc"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            // A `--compare` pin folder: `bgw<s>-<i>`.
            let id = match rest.split_once('-') {
                Some((id, i)) => {
                    number(i)?;
                    id
                }
                None => rest,
            };
            return number(id).map(Owner::LabId);
        }
    }
    None
}

/// Whether a running gateway-bench could own the name.
fn alive(owner: &Owner, running: &[u32]) -> bool {
    running.iter().any(|&pid| match *owner {
        Owner::Pid(p) => pid == p,
        Owner::LabId(s) => pid % LAB_ID_MOD == s,
    })
}

/// Process ids of the running gateway-bench processes (this one too; a
/// zombie, whose cleanup can no longer run, does not count).
fn running_benches() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(number) else {
            continue;
        };
        // `pid (comm) state ...`; comm is at most 15 bytes.
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        if comm == "gateway-bench" && !rest.starts_with(['Z', 'X']) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Names in `dir` that belong to no running gateway-bench.
fn stale_in(dir: &Path, running: &[u32]) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| owner(n).is_some_and(|o| !alive(&o, running)))
        .collect();
    names.sort();
    names
}

/// Removes the namespaces and pin folders of runs that are no longer
/// running; returns what it removed, for the log.
pub fn sweep() -> Result<Vec<String>> {
    let running = running_benches()?;
    let mut removed = Vec::new();
    for name in stale_in(Path::new("/run/netns"), &running) {
        ::tests::run("ip", &["netns", "del", &name])
            .with_context(|| format!("removing namespace {name} of an interrupted run"))?;
        removed.push(format!("namespace {name}"));
    }
    let pins = Path::new(PIN_ROOT);
    for name in stale_in(pins, &running) {
        let dir = pins.join(&name);
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing {} of an interrupted run", dir.display()))?;
        removed.push(dir.display().to_string());
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tell_their_owner() {
        assert_eq!(owner("gwbench4242-0"), Some(Owner::Pid(4242)));
        assert_eq!(owner("gwbench4242-17"), Some(Owner::Pid(4242)));
        assert_eq!(owner("bidc22809"), Some(Owner::LabId(22809)));
        assert_eq!(owner("bgw7"), Some(Owner::LabId(7)));
        assert_eq!(owner("bvpc99999"), Some(Owner::LabId(99999)));
        assert_eq!(owner("bgw22809-1"), Some(Owner::LabId(22809)));
        // Not the benchmark's: the tests' and the daemon's names, others.
        for other in [
            "gwt123-4",
            "gwbench",
            "gwbench12",
            "gwbench-1",
            "gwbench12-",
            "gwbench12-x",
            "bgw",
            "bgwx",
            "bgw12-",
            "bgw12-a",
            "bidc1a",
            "lab",
            "demo-idc",
        ] {
            assert_eq!(owner(other), None, "{other}");
        }
    }

    #[test]
    fn only_names_of_no_running_bench_are_stale() {
        let running = [123_456, 700];
        assert!(alive(&Owner::Pid(700), &running));
        assert!(!alive(&Owner::Pid(701), &running));
        // 123456 % 100000
        assert!(alive(&Owner::LabId(23_456), &running));
        assert!(!alive(&Owner::LabId(23_457), &running));
    }
}
