//! systemd integration: readiness and reload notifications (`Type=notify`),
//! and `gatewayd install` (binary, unit, example config).
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every notification is a no-op.
//! Errors are logged, never fatal: a gateway must not stop forwarding
//! because its supervisor's socket went away.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sd_notify::NotifyState;

/// The unit as shipped; `/usr/local` is replaced by the install prefix.
pub const UNIT: &str = include_str!("../../packaging/gatewayd@.service");
/// A commented single-tunnel config for a real node.
pub const EXAMPLE_CONFIG: &str = include_str!("../../packaging/example.toml");
const UNIT_NAME: &str = "gatewayd@.service";
const DEFAULT_PREFIX: &str = "/usr/local";

/// Installs this binary as `<root><prefix>/sbin/gatewayd`, the unit as
/// `<root>/etc/systemd/system/gatewayd@.service` and, if absent,
/// `<root>/etc/gatewayd/example.toml`. `root` is a staging root (`/` for a
/// real install). Returns the files written.
pub fn install(root: &Path, prefix: &Path) -> Result<Vec<PathBuf>> {
    let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    let mut written = Vec::new();

    let sbin = under(&prefix.join("sbin"));
    std::fs::create_dir_all(&sbin).with_context(|| format!("creating {}", sbin.display()))?;
    let binary = sbin.join("gatewayd");
    let me = std::env::current_exe().context("locating the running gatewayd")?;
    if me.canonicalize().ok() != binary.canonicalize().ok() {
        // Copy next to it, then rename: a running daemon's binary is never
        // half-written.
        let tmp = sbin.join(".gatewayd.new");
        std::fs::copy(&me, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
        std::fs::rename(&tmp, &binary)?;
    }
    written.push(binary);

    let units = under(Path::new("/etc/systemd/system"));
    std::fs::create_dir_all(&units)?;
    let unit = units.join(UNIT_NAME);
    let prefix_text = prefix.to_string_lossy();
    let text = UNIT.replace(
        &format!("{DEFAULT_PREFIX}/sbin/gatewayd"),
        &format!("{}/sbin/gatewayd", prefix_text.trim_end_matches('/')),
    );
    std::fs::write(&unit, text).with_context(|| format!("writing {}", unit.display()))?;
    written.push(unit);

    let etc = under(Path::new("/etc/gatewayd"));
    std::fs::create_dir_all(&etc)?;
    let example = etc.join("example.toml");
    if !example.exists() {
        std::fs::write(&example, EXAMPLE_CONFIG)?;
        written.push(example);
    }
    Ok(written)
}

fn send(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("systemd notify failed: {e}");
    }
}

/// The datapath is attached, the maps match the config and the control
/// socket accepts commands.
pub fn notify_ready() {
    send(&[NotifyState::Ready, NotifyState::Status("forwarding")]);
}

/// A reload started; `notify_ready` ends it.
pub fn notify_reloading() {
    let now = NotifyState::monotonic_usec_now();
    match now {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub fn notify_stopping() {
    send(&[NotifyState::Stopping]);
}
