//! Small helpers around child processes, PATH lookup and the environment.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Lines of a failed command's stderr quoted in error messages.
const TAIL_LINES: usize = 12;

/// A command that could not be started or exited non-zero.
#[derive(Debug)]
pub struct Failure {
    /// The command line, for the message.
    pub command: String,
    /// Exit status or spawn error, then the last lines of its stderr.
    pub detail: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.command, self.detail)
    }
}

pub fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let (Some(v), false) = (v, k == "PATH") {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..].join("\n    ")
}

/// Runs `cmd` with captured output; returns stdout on exit 0.
pub fn capture(cmd: &mut Command) -> Result<String, Failure> {
    let command = describe(cmd);
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| Failure {
        command: command.clone(),
        detail: format!("could not start: {e}"),
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        Err(Failure {
            command,
            detail: format!("failed ({}):\n    {}\n", out.status, tail(&text)),
        })
    }
}

/// Runs `cmd` with stdout inherited and stderr echoed live to our stderr,
/// keeping its last lines for the error message.
pub fn stream(cmd: &mut Command) -> Result<(), Failure> {
    let command = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure {
            command: command.clone(),
            detail: format!("could not start: {e}"),
        })?;
    let mut last: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES + 1);
    if let Some(stderr) = child.stderr.take() {
        let mut err = std::io::stderr();
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            let _ = err.write_all(&line);
            let _ = err.write_all(b"\n");
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if !text.trim().is_empty() {
                last.push_back(text);
                if last.len() > TAIL_LINES {
                    last.pop_front();
                }
            }
        }
    }
    let status = child.wait().map_err(|e| Failure {
        command: command.clone(),
        detail: format!("could not wait: {e}"),
    })?;
    if status.success() {
        Ok(())
    } else {
        let lines: Vec<String> = last.into_iter().collect();
        Err(Failure {
            command,
            detail: format!("failed ({status}):\n    {}\n", lines.join("\n    ")),
        })
    }
}

/// True if the effective uid is 0 (read from /proc, no libc needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// `$CARGO_HOME/bin`, where `cargo install` puts binaries.
pub fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
        .join("bin")
}

/// Directories searched for commands: PATH, then the sbin directories (a
/// non-root PATH often lacks them) and `$CARGO_HOME/bin`.
fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    dirs.push(cargo_bin_dir());
    dirs
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Every executable named `name` on the search path, in order, deduplicated.
pub fn find_all(name: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = Vec::new();
    for dir in search_dirs() {
        let p = dir.join(name);
        if is_executable(&p) && !found.contains(&p) {
            found.push(p);
        }
    }
    found
}

pub fn find(name: &str) -> Option<PathBuf> {
    find_all(name).into_iter().next()
}

/// PATH for children: ours, plus `$CARGO_HOME/bin` (bpf-linker, which
/// aya-build's nested nightly cargo needs) and the sbin directories if absent.
pub fn child_path() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in [cargo_bin_dir(), "/usr/sbin".into(), "/sbin".into()] {
        if !dirs.contains(&extra) {
            dirs.push(extra);
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// `cargo` (the rustup proxy from PATH, so `cargo fmt`/`cargo clippy` work).
pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.env("PATH", child_path());
    c
}

/// The target directory the workspace's `cargo build` writes to.
pub fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}
