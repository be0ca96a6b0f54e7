//! ARP probes to customer routers whose MAC the datapath has not learned
//! yet: a tagged ARP request on the connection's trunk port, sent through
//! an AF_PACKET socket. The answer is consumed (and the MAC learned) by the
//! XDP program, so VPC -> IDC traffic can flow before the IDC sends any.

use std::{io, mem, os::fd::RawFd};

use gateway_common::{vlan::TPID_8021Q, Tunnel};

/// A tagged ARP request from the tunnel's local address for its peer.
pub fn arp_request_frame(tunnel: &Tunnel) -> [u8; 46] {
    let mut f = [0u8; 46];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&tunnel.connection_mac);
    f[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
    f[14..16].copy_from_slice(&(tunnel.vlan & 0x0fff).to_be_bytes());
    f[16..18].copy_from_slice(&0x0806u16.to_be_bytes());
    f[18..20].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[20..22].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[22] = 6;
    f[23] = 4;
    f[24..26].copy_from_slice(&1u16.to_be_bytes()); // request
    f[26..32].copy_from_slice(&tunnel.connection_mac);
    f[32..36].copy_from_slice(&tunnel.local_ip);
    // target hardware address stays zero
    f[42..46].copy_from_slice(&tunnel.peer_ip);
    f
}

/// A raw socket for sending on any interface (bound per send).
pub struct Prober {
    fd: RawFd,
}

impl Prober {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; protocol 0 = send only, receive nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut addr: libc::sockaddr_ll = unsafe { mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[0..6]);
        // SAFETY: buffer and address valid for the call.
        let n = unsafe {
            libc::sendto(
                self.fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{LinkSlice, SlicedPacket};

    #[test]
    fn probe_is_a_tagged_arp_request() {
        let t = Tunnel {
            vlan: 100,
            local_ip: [169, 254, 100, 1],
            peer_ip: [169, 254, 100, 2],
            connection_mac: [2, 0, 0, 0, 0, 1],
            ..Default::default()
        };
        let f = arp_request_frame(&t);
        let p = SlicedPacket::from_ethernet(&f).expect("parses");
        let Some(LinkSlice::Ethernet2(eth)) = p.link.clone() else {
            panic!("ethernet")
        };
        assert_eq!(eth.destination(), [0xff; 6]);
        let ids = p.vlan_ids();
        assert_eq!(ids.len(), 1);
        assert_eq!(ids[0].value(), 100);
        let arp = match p.net {
            Some(etherparse::NetSlice::Arp(a)) => a,
            other => panic!("arp expected, got {other:?}"),
        };
        assert_eq!(arp.operation(), etherparse::ArpOperation::REQUEST);
        assert_eq!(arp.sender_protocol_addr(), &[169, 254, 100, 1]);
        assert_eq!(arp.target_protocol_addr(), &[169, 254, 100, 2]);
    }
}
