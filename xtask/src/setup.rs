//! `cargo xtask setup`: install whatever the build and the tests need and is
//! missing. Prints exactly one line per item: `ok: <thing> (already present)`
//! or `installed: <thing>`; output of installers is streamed in between.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, Failure};
use crate::ROOT_HINT;

/// Where bpf-linker finds libLLVM: the binary gets an rpath to `PREFIX/lib`,
/// so this directory must stay where it is.
const LINKER_PREFIX: &str = ".local/share/gateway-bpf-linker";

/// Debian package and the command that shows it is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("bpftool", "bpftool"),
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("iputils-ping", "ping"),
    ("tcpdump", "tcpdump"),
    ("iperf3", "iperf3"),
    ("curl", "curl"),
    ("traceroute", "traceroute"),
    ("procps", "sysctl"),
    // systemd-analyze checks the shipped unit file (tests/tests/packaging.rs).
    ("systemd", "systemd-analyze"),
    // The kernel baselines of `cargo xtask bench` (stateless and conntrack NAT).
    ("nftables", "nft"),
];

const BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug)]
pub struct SetupError {
    what: String,
    cause: String,
    hint: String,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "setup failed: {} — {}; to fix: {}",
            self.what, self.cause, self.hint
        )
    }
}

fn fail(what: impl Into<String>, cause: impl Into<String>, hint: impl Into<String>) -> SetupError {
    SetupError {
        what: what.into(),
        cause: cause.into(),
        hint: hint.into(),
    }
}

fn failed(what: impl Into<String>, f: Failure, hint: impl Into<String>) -> SetupError {
    fail(what, f.to_string(), hint)
}

type Result<T> = std::result::Result<T, SetupError>;

fn ok(thing: &str) {
    println!("ok: {thing} (already present)");
}

fn installed(thing: &str) {
    println!("installed: {thing}");
}

pub fn run() -> Result<()> {
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    bpffs()?;
    Ok(())
}

fn rustup() -> Command {
    Command::new("rustup")
}

const RUSTUP_HINT: &str =
    "install rustup (https://rustup.rs) with a stable toolchain >= 1.95 and make sure it is on PATH";

fn nightly_present() -> Result<bool> {
    let list = cmd::capture(rustup().args(["toolchain", "list"]))
        .map_err(|f| failed("nightly toolchain", f, RUSTUP_HINT))?;
    // `nightly-<host>` is the channel `+nightly` resolves to; dated nightlies
    // (`nightly-2026-05-19-<host>`) are not.
    Ok(list.lines().any(|l| {
        let name = l.split_whitespace().next().unwrap_or("");
        name == "nightly"
            || name
                .strip_prefix("nightly-")
                .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    }))
}

fn nightly() -> Result<()> {
    const THING: &str = "nightly toolchain";
    if nightly_present()? {
        ok(THING);
        return Ok(());
    }
    cmd::stream(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))
        .map_err(|f| {
            failed(
                THING,
                f,
                "needs network access to static.rust-lang.org (offline machines: install a nightly by hand, e.g. from a rustup mirror)",
            )
        })?;
    if !nightly_present()? {
        return Err(fail(
            THING,
            "`rustup toolchain install nightly` succeeded but `rustup toolchain list` shows no nightly",
            "run `rustup toolchain install nightly --profile minimal` by hand and check its output",
        ));
    }
    installed(THING);
    Ok(())
}

fn rust_src_present() -> Result<bool> {
    let list =
        cmd::capture(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))
            .map_err(|f| failed("rust-src for nightly", f, RUSTUP_HINT))?;
    Ok(list.lines().any(|l| l.trim().starts_with("rust-src")))
}

fn rust_src() -> Result<()> {
    const THING: &str = "rust-src for nightly";
    if rust_src_present()? {
        ok(THING);
        return Ok(());
    }
    cmd::stream(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .map_err(|f| failed(THING, f, "needs network access to static.rust-lang.org"))?;
    if !rust_src_present()? {
        return Err(fail(
            THING,
            "`rustup component add` succeeded but the component is not listed as installed",
            "run `rustup component add rust-src --toolchain nightly` by hand",
        ));
    }
    installed(THING);
    Ok(())
}

/// The bpf-linker a build would use (first on PATH, then `$CARGO_HOME/bin`),
/// and whether `--version` runs. A dangling rpath to libLLVM shows up here as
/// a failure.
fn bpf_linker_status() -> Option<(PathBuf, std::result::Result<String, Failure>)> {
    let path = cmd::find("bpf-linker")?;
    let res = cmd::capture(Command::new(&path).arg("--version"));
    Some((path, res))
}

fn bpf_linker() -> Result<()> {
    const THING: &str = "bpf-linker";
    match bpf_linker_status() {
        Some((_, Ok(_))) => {
            ok(THING);
            return Ok(());
        }
        Some((path, Err(f))) => {
            // The first stderr line (after the status line) says why, e.g.
            // "error while loading shared libraries: libLLVM.so...".
            let why = f
                .detail
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty())
                .unwrap_or("");
            eprintln!(
                "bpf-linker at {} does not run ({why}); rebuilding it",
                path.display()
            );
        }
        None => {}
    }
    build_bpf_linker()?;

    let built = cmd::cargo_bin_dir().join("bpf-linker");
    cmd::capture(Command::new(&built).arg("--version")).map_err(|f| {
        failed(
            THING,
            f,
            format!(
                "the freshly built binary does not run; check that {}/lib links to the nightly's libLLVM",
                linker_prefix().display()
            ),
        )
    })?;
    match bpf_linker_status() {
        Some((_, Ok(_))) => {}
        Some((path, Err(f))) => {
            return Err(failed(
                THING,
                f,
                format!(
                    "a broken {} shadows {} on PATH: remove it",
                    path.display(),
                    built.display()
                ),
            ))
        }
        None => {
            return Err(fail(
                THING,
                format!("built {} but it is not found", built.display()),
                "put $CARGO_HOME/bin on PATH",
            ))
        }
    }
    installed(THING);
    Ok(())
}

fn linker_prefix() -> PathBuf {
    cmd::home().join(LINKER_PREFIX)
}

/// The LLVM major version of the nightly rustc, from `rustc -vV`.
fn nightly_llvm_major() -> Result<u32> {
    const WHAT: &str = "bpf-linker (LLVM version of the nightly)";
    let vv = cmd::capture(rustup().args(["run", "nightly", "rustc", "-vV"])).map_err(|f| {
        failed(
            WHAT,
            f,
            "reinstall the nightly: rustup toolchain install nightly",
        )
    })?;
    let line = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version:"))
        .ok_or_else(|| {
            fail(
                WHAT,
                format!("`rustc +nightly -vV` prints no `LLVM version:` line:\n{vv}"),
                "reinstall the nightly: rustup toolchain install nightly",
            )
        })?;
    line.trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| {
            fail(
                WHAT,
                format!("cannot parse `LLVM version:{line}`"),
                "reinstall the nightly: rustup toolchain install nightly",
            )
        })
}

/// `libLLVM.so.<major>.*-rust-*` in the nightly sysroot's `lib`.
fn find_libllvm(dir: &Path, major: u32) -> Result<PathBuf> {
    const WHAT: &str = "bpf-linker (libLLVM of the nightly)";
    let prefix = format!("libLLVM.so.{major}.");
    let entries = std::fs::read_dir(dir).map_err(|e| {
        fail(
            WHAT,
            format!("cannot read {}: {e}", dir.display()),
            "reinstall the nightly: rustup toolchain install nightly",
        )
    })?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.contains("-rust-")
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop().ok_or_else(|| {
        fail(
            WHAT,
            format!("no {prefix}*-rust-* in {}", dir.display()),
            "the nightly ships without its libLLVM; reinstall it: rustup toolchain install nightly",
        )
    })
}

fn symlink_force(target: &Path, link: &Path) -> std::io::Result<()> {
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(link)?;
    }
    std::os::unix::fs::symlink(target, link)
}

fn build_bpf_linker() -> Result<()> {
    const WHAT: &str = "bpf-linker";
    let major = nightly_llvm_major()?;
    let sysroot = cmd::capture(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .map_err(|f| {
            failed(
                WHAT,
                f,
                "reinstall the nightly: rustup toolchain install nightly",
            )
        })?;
    let libllvm = find_libllvm(&Path::new(sysroot.trim()).join("lib"), major)?;

    let prefix = linker_prefix();
    let lib = prefix.join("lib");
    let io_err = |what: String, e: std::io::Error| {
        fail(
            WHAT,
            format!("{what}: {e}"),
            format!("check permissions on {}", prefix.display()),
        )
    };
    std::fs::create_dir_all(&lib).map_err(|e| io_err(format!("mkdir -p {}", lib.display()), e))?;
    let name = libllvm.file_name().expect("read_dir entries have names");
    for link in [lib.join(name), lib.join("libLLVM.so")] {
        symlink_force(&libllvm, &link).map_err(|e| {
            io_err(
                format!("ln -sf {} {}", libllvm.display(), link.display()),
                e,
            )
        })?;
    }

    eprintln!(
        "building bpf-linker against the nightly's LLVM {major} ({}); this takes a few minutes once",
        libllvm.display()
    );
    let features = format!("llvm-{major}");
    let mut install = cmd::cargo();
    install
        .env("LLVM_PREFIX", &prefix)
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
            &features,
            // Replaces a tracked but broken (or deleted) binary.
            "--force",
        ])
        // Outside the workspace, so its .cargo/config.toml does not apply.
        .current_dir(&prefix);
    cmd::stream(&mut install).map_err(|f| {
        failed(
            WHAT,
            f,
            "needs crates.io access and a C compiler (cc); see the build log above",
        )
    })
}

fn debian_packages() -> Result<()> {
    let mut missing: Vec<(&str, &str)> = Vec::new();
    for &(pkg, command) in PACKAGES {
        if cmd::find(command).is_some() {
            ok(pkg);
        } else {
            missing.push((pkg, command));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|(p, _)| *p).collect();
    let what = format!("Debian packages {}", names.join(", "));
    if !cmd::is_root() {
        return Err(fail(what, "not root", ROOT_HINT));
    }
    if cmd::find("apt-get").is_none() {
        return Err(fail(
            what,
            "apt-get not found",
            format!(
                "install {} with your distribution's package manager",
                names.join(" ")
            ),
        ));
    }
    let apt = || {
        let mut c = Command::new("apt-get");
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    cmd::stream(apt().arg("update")).map_err(|f| {
        failed(
            what.clone(),
            f,
            "check network access to the Debian mirrors (/etc/apt/sources.list*)",
        )
    })?;
    cmd::stream(
        apt()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&names),
    )
    .map_err(|f| failed(what.clone(), f, "see the apt-get output above"))?;
    for (pkg, command) in missing {
        if cmd::find(command).is_none() {
            return Err(fail(
                format!("Debian package {pkg}"),
                format!("installed, but the command `{command}` is still not found"),
                format!("check `dpkg -L {pkg}`"),
            ));
        }
        installed(pkg);
    }
    Ok(())
}

fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| {
            m.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 3 && f[1] == BPFFS && f[2] == "bpf"
            })
        })
        .unwrap_or(false)
}

fn bpffs() -> Result<()> {
    let thing = format!("bpffs at {BPFFS}");
    if bpffs_mounted() {
        ok(&thing);
        return Ok(());
    }
    if !cmd::is_root() {
        return Err(fail(thing, "not mounted and not root", ROOT_HINT));
    }
    cmd::capture(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS])).map_err(|f| {
        failed(
            thing.clone(),
            f,
            "the kernel needs CONFIG_BPF_SYSCALL; in a container, run it privileged",
        )
    })?;
    if !bpffs_mounted() {
        return Err(fail(
            thing,
            "`mount` succeeded but /proc/mounts shows no bpf mount there",
            format!("mount it by hand: mount -t bpf bpf {BPFFS}"),
        ));
    }
    installed(&thing);
    Ok(())
}
