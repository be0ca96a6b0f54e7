//! Small system helpers: entering a network namespace on this thread, CPU
//! pinning, bpf_stats, and what /proc says about BPF objects and CPU time.

use std::{fs::File, os::fd::AsRawFd, path::Path};

use anyhow::{bail, Context, Result};

/// While alive, the calling thread is inside another network namespace
/// (BPF_PROG_TEST_RUN resolves the ingress ifindex and the FIB there);
/// dropping it returns the thread to where it was.
pub struct InNetns {
    home: File,
}

impl InNetns {
    pub fn enter(name: &str) -> Result<InNetns> {
        let home = File::open("/proc/thread-self/ns/net").context("own netns")?;
        let path = Path::new("/run/netns").join(name);
        let target = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: valid netns fd; changes only this thread's namespace.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", name, std::io::Error::last_os_error());
        }
        Ok(InNetns { home })
    }
}

impl Drop for InNetns {
    fn drop(&mut self) {
        // SAFETY: valid netns fd of the thread's original namespace.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Pins a thread (0 = the calling thread) or process to one CPU.
pub fn pin_to_cpu(pid: i32, cpu: usize) -> Result<()> {
    // SAFETY: plain libc cpu_set_t manipulation and syscall.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "sched_setaffinity({pid}, cpu {cpu}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

pub fn online_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// One `key:\tvalue` line of /proc/self/fdinfo/FD, as a number.
pub fn fdinfo(fd: i32, key: &str) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in text.lines() {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim() == key {
                return v
                    .trim()
                    .parse()
                    .with_context(|| format!("{path}: {key} = {v:?}"));
            }
        }
    }
    bail!("{path} has no {key} (kernel too old?)")
}

/// Bytes of kernel memory a pinned map is charged for (`memlock` in its
/// fdinfo: the kernel's own accounting of the map's memory use).
pub fn map_memlock(pin: &Path) -> Result<u64> {
    let map = aya::maps::MapData::from_pin(pin)
        .with_context(|| format!("opening pinned map {}", pin.display()))?;
    use std::os::fd::AsFd;
    fdinfo(map.fd().as_fd().as_raw_fd(), "memlock")
}

/// Sum of `memlock` over every map pinned in a folder.
pub fn pinned_memlock(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        total += map_memlock(&entry?.path())?;
    }
    Ok(total)
}

/// (run_time_ns, run_cnt) of a program from its fdinfo; both count only
/// while `kernel.bpf_stats_enabled` (or a BPF_ENABLE_STATS fd) is on.
pub fn prog_stats(fd: i32) -> Result<(u64, u64)> {
    Ok((fdinfo(fd, "run_time_ns")?, fdinfo(fd, "run_cnt")?))
}

/// Busy and total nanoseconds of one CPU so far, from /proc/stat. Busy
/// leaves out idle, iowait and steal: time the hypervisor gave to other
/// guests is not work this CPU did.
pub fn cpu_time(cpu: usize) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let want = format!("cpu{cpu} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&want))
        .with_context(|| format!("no cpu{cpu} in /proc/stat"))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0)
        + ticks.get(4).copied().unwrap_or(0)
        + ticks.get(7).copied().unwrap_or(0);
    // SAFETY: sysconf has no memory arguments.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let ns = 1_000_000_000 / hz;
    Ok(((total - idle) * ns, total * ns))
}

/// Kernel release and CPU model, for the report.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    format!("Linux {kernel}, {} x {cpu}", online_cpus())
}
