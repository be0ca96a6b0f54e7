//! systemd integration: readiness and reload notifications (`Type=notify`).
//!
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op. Errors are
//! logged, never fatal: a gateway must not stop forwarding because its
//! supervisor's socket went away.

use sd_notify::NotifyState;

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
