//! What the daemon needs to know about (and set on) kernel interfaces.

use std::ffi::CString;

use anyhow::{Context, Result};

use crate::plan::NetDev;

/// ifindex and MAC of an interface in the daemon's network namespace.
pub fn lookup(name: &str) -> Option<NetDev> {
    let c = CString::new(name).ok()?;
    // SAFETY: valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        return None;
    }
    let mac = hw_address(name)?;
    let port_flags = if driver(name).as_deref() == Some("veth") {
        gateway_common::port_flags::TX_VIA_REDIRECT
    } else {
        0
    };
    Some(NetDev {
        ifindex,
        mac,
        port_flags,
    })
}

/// Runs one `ioctl` on an interface through a throw-away socket of the
/// calling thread's network namespace.
fn if_ioctl(name: &str, request: libc::c_ulong, req: &mut libc::ifreq) -> bool {
    if name.len() >= libc::IFNAMSIZ {
        return false;
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: plain syscalls on a socket we own and close; `req` is valid.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let rc = libc::ioctl(fd, request, req as *mut libc::ifreq);
        libc::close(fd);
        rc == 0
    }
}

/// Whether the interface is administratively up and has carrier
/// (IFF_UP and IFF_RUNNING, i.e. operstate up). None if it does not exist.
/// One ioctl: cheap enough to poll every few tens of milliseconds.
pub fn link_up(name: &str) -> Option<bool> {
    // SAFETY: zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if !if_ioctl(name, libc::SIOCGIFFLAGS, &mut req) {
        return None;
    }
    // SAFETY: SIOCGIFFLAGS fills ifru_flags.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as libc::c_int;
    Some(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}

/// The driver name (ethtool's GDRVINFO), e.g. "veth", "mlx5_core".
pub fn driver(name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // struct ethtool_drvinfo: cmd, driver[32], version[32], fw_version[32],
    // bus_info[32], erom_version[32], reserved2[12], 5 x u32.
    let mut info = [0u8; 4 + 32 * 5 + 12 + 20];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    // SAFETY: zeroed ifreq is valid; ifru_data points at `info`, which
    // outlives the call.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_ifru.ifru_data = info.as_mut_ptr().cast();
    if !if_ioctl(name, libc::SIOCETHTOOL, &mut req) {
        return None;
    }
    let driver = &info[4..36];
    let end = driver.iter().position(|b| *b == 0).unwrap_or(driver.len());
    Some(String::from_utf8_lossy(&driver[..end]).into_owned())
}

/// MAC through SIOCGIFHWADDR: answers for the calling thread's network
/// namespace (sysfs shows the namespace of whoever mounted it).
fn hw_address(name: &str) -> Option<[u8; 6]> {
    // SAFETY: zeroed ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if !if_ioctl(name, libc::SIOCGIFHWADDR, &mut req) {
        return None;
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Some(mac)
}

pub fn exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn sysctl_path(interface: &str, key: &str) -> String {
    format!("/proc/sys/net/ipv4/conf/{interface}/{key}")
}

fn read_sysctl(path: &str) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Enables IPv4 forwarding on a port: `bpf_fib_lookup` answers "forwarding
/// disabled" for an ingress device without it, and the kernel slow path
/// (unresolved VPC neighbour) forwards through it.
pub fn enable_forwarding(interface: &str) -> Result<bool> {
    let path = sysctl_path(interface, "forwarding");
    if read_sysctl(&path) == Some(1) {
        return Ok(false);
    }
    std::fs::write(&path, "1").with_context(|| format!("enabling {path}"))?;
    Ok(true)
}

/// Reverse-path filtering on a connection port drops slow-path packets
/// (customer sources are routed by the XDP program, not the kernel).
pub fn rp_filter_active(interface: &str) -> bool {
    let all = read_sysctl(&sysctl_path("all", "rp_filter")).unwrap_or(0);
    let dev = read_sysctl(&sysctl_path(interface, "rp_filter")).unwrap_or(0);
    all.max(dev) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("02:00:0a:FF:00:01").unwrap();
        assert_eq!(m, [2, 0, 10, 255, 0, 1]);
        assert_eq!(format_mac(&m), "02:00:0a:ff:00:01");
        assert!(parse_mac("02:00:0a:ff:00").is_none());
        assert!(parse_mac("02:00:0a:ff:00:01:02").is_none());
        assert!(parse_mac("zz:00:0a:ff:00:01").is_none());
    }
}
