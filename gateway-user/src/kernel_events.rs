//! Kernel routing events (neighbours, routes, links) that can change what
//! the kernel FIB answers for a VPC destination. The datapath caches those
//! answers (gateway-ebpf/src/dest_cache.rs) for at most
//! `DEST_CACHE_MAX_AGE_NS`; while the daemon runs it does better: every
//! event marks the cache for invalidation at the next tick, so a VPC host's
//! new MAC is followed within one tick.
//!
//! No parsing: any message of the subscribed groups counts (they carry
//! only neighbour, route and link changes), and so does a lost message
//! (ENOBUFS: the socket overflowed, events were missed).

use std::{
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use anyhow::{bail, Result};
use tracing::warn;

/// rtnetlink multicast groups (linux/rtnetlink.h, the RTMGRP_* bits).
const RTMGRP_LINK: u32 = 0x1;
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;

/// Set when the kernel reported a change since the flag was last taken.
#[derive(Clone, Default)]
pub struct Changed(Arc<AtomicBool>);

impl Changed {
    /// True once per batch of changes.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// Starts a thread that listens for neighbour, route and link events in
/// the daemon's network namespace.
pub fn watch() -> Result<Changed> {
    // SAFETY: plain socket call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        bail!("netlink socket: {}", io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut addr: libc::sockaddr_nl = unsafe { mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE;
    // SAFETY: addr is a valid sockaddr_nl of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        bail!(
            "binding the netlink socket to neighbour/route/link events: {}",
            io::Error::last_os_error()
        );
    }
    let changed = Changed::default();
    let flag = changed.0.clone();
    std::thread::Builder::new()
        .name("kernel-events".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: buf is writable for its length.
                let n = unsafe {
                    libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n > 0 {
                    flag.store(true, Ordering::Release);
                    continue;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    // Overflowed: something changed and we missed what.
                    Some(libc::ENOBUFS) => flag.store(true, Ordering::Release),
                    Some(libc::EINTR) => {}
                    _ => {
                        warn!("kernel events: {err}; cached VPC neighbours now follow kernel changes only as they age out");
                        return;
                    }
                }
            }
        })?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link added in the test's namespace is seen. Needs root (a veth
    /// pair); fails loudly without it.
    #[test]
    fn a_kernel_change_sets_the_flag() {
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (ip link add)");
        let changed = watch().expect("netlink");
        assert!(!changed.take());
        let name = format!("gwev{}", std::process::id() % 100_000);
        let ip = |args: &[&str]| {
            let status = std::process::Command::new("ip")
                .args(args)
                .status()
                .expect("ip");
            assert!(status.success(), "ip {args:?}");
        };
        let peer = format!("{name}p");
        ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut seen = false;
        while std::time::Instant::now() < deadline {
            if changed.take() {
                seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        ip(&["link", "del", &name]);
        assert!(seen, "no event for a new link");
    }
}
