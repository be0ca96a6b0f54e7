//! Service packaging: `gatewayd install`, the systemd unit (checked by
//! systemd's own `systemd-analyze verify`), the example config, and the
//! `Type=notify` protocol spoken to a real notify socket.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tests::{gatewayd_path, require_commands, topology::GatewayLab};

fn gatewayd(args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(gatewayd_path()).args(args).output()?)
}

#[test]
fn install_writes_a_unit_systemd_accepts_and_an_example_that_checks() -> Result<()> {
    require_commands(&["systemd-analyze"])?;
    let root = std::env::temp_dir().join(format!("gatewayd-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let root_s = root.to_string_lossy().into_owned();
    let out = gatewayd(&["install", "--root", &root_s])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let binary = root.join("usr/local/sbin/gatewayd");
    let unit_path = root.join("etc/systemd/system/gatewayd@.service");
    let example = root.join("etc/gatewayd/example.toml");
    for f in [&binary, &unit_path, &example] {
        assert!(f.exists(), "{} not installed", f.display());
    }
    let installed = Command::new(&binary).arg("--version").output()?;
    assert!(installed.status.success(), "installed binary runs");

    let unit = std::fs::read_to_string(&unit_path)?;
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "ExecStart=/usr/local/sbin/gatewayd run -c /etc/gatewayd/%i.toml",
        "ExecReload=/usr/local/sbin/gatewayd reload -c /etc/gatewayd/%i.toml",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "unit lacks {line}:\n{unit}"
        );
    }
    // systemd's verifier, with the binary path pointing at the staged copy
    // (it checks that ExecStart binaries exist and every setting parses).
    let check_dir = root.join("verify");
    std::fs::create_dir_all(&check_dir)?;
    let staged = check_dir.join("gatewayd@.service");
    std::fs::write(
        &staged,
        unit.replace("/usr/local/sbin/gatewayd", &binary.to_string_lossy()),
    )?;
    let verify = Command::new("systemd-analyze")
        .args(["verify", &staged.to_string_lossy()])
        .output()?;
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && complaints.trim().is_empty(),
        "systemd-analyze verify:\n{complaints}"
    );

    let checked = gatewayd(&["check", "-c", &example.to_string_lossy()])?;
    assert!(
        checked.status.success(),
        "example config: {}",
        String::from_utf8_lossy(&checked.stderr)
    );

    // --prefix moves the binary and the unit follows.
    let out = gatewayd(&["install", "--root", &root_s, "--prefix", "/opt/gw"])?;
    assert!(out.status.success());
    assert!(root.join("opt/gw/sbin/gatewayd").exists());
    let unit = std::fs::read_to_string(&unit_path)?;
    assert!(
        unit.contains("ExecStart=/opt/gw/sbin/gatewayd run"),
        "{unit}"
    );
    std::fs::remove_dir_all(&root)?;
    Ok(())
}

/// Reads notify messages until one contains `want`.
fn expect_notify(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == want);
                seen.push(msg);
                if hit {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e).context("reading the notify socket"),
        }
    }
    bail!("no {want} from gatewayd; got {seen:?}")
}

#[test]
fn readiness_and_reload_are_signalled_to_systemd() -> Result<()> {
    let mut lab = GatewayLab::build(&gatewayd_path())?;
    let path = lab.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let path_s = path.to_string_lossy().into_owned();
    lab.start_daemon_env(&[], &[("NOTIFY_SOCKET", &path_s)])?;
    let mut seen = Vec::new();
    expect_notify(&sock, "READY=1", &mut seen)?;
    // READY only once the control socket answers (start_daemon waited for
    // it too) and the datapath is attached.
    assert!(lab.log().contains("running; maps and links pinned"));

    lab.signal_daemon(libc::SIGHUP)?;
    seen.clear();
    expect_notify(&sock, "RELOADING=1", &mut seen)?;
    assert!(
        seen.iter().any(|m| m.contains("MONOTONIC_USEC=")),
        "RELOADING carries MONOTONIC_USEC: {seen:?}"
    );
    expect_notify(&sock, "READY=1", &mut seen)?;

    lab.stop_daemon()?;
    expect_notify(&sock, "STOPPING=1", &mut seen)?;
    assert!(Path::new(&path).exists());
    Ok(())
}
