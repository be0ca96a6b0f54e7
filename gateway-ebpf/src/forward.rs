//! Leaving the gateway: TTL, 802.1Q tag pop/push, MAC rewrite, redirect.

use aya_ebpf::{
    bindings::{bpf_fib_lookup, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS},
    helpers::{bpf_fib_lookup as fib_lookup_helper, bpf_redirect, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use gateway_common::vlan::TPID_8021Q;
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::{
    csum,
    dest_cache::Neighbour,
    packet::{ptr_at, Ipv4, MacPair, VLAN_TAG_LEN},
};

/// Decrements the TTL, updating the header checksum. The caller has checked
/// that the TTL is > 1.
#[inline(always)]
pub fn decrement_ttl(ip: &Ipv4) {
    // SAFETY: `ip.hdr` was bounds checked when `ip` was parsed and the frame
    // has not moved since.
    unsafe {
        let hdr: &mut Ipv4Hdr = &mut *ip.hdr;
        let old = u16::from_be_bytes([hdr.ttl, hdr.proto]);
        hdr.ttl -= 1;
        let new = u16::from_be_bytes([hdr.ttl, hdr.proto]);
        let check = csum::replace16(u16::from_be_bytes(hdr.check), old, new);
        hdr.check = check.to_be_bytes();
    }
}

/// What the kernel FIB says about a destination inside a VPC.
pub enum VpcNeighbour {
    /// Resolved: the egress port, the MACs to write and the port's MTU.
    Resolved(Neighbour),
    /// Route found but no neighbour entry yet (the kernel resolves it when
    /// it forwards the packet itself).
    Missing {
        ifindex: u32,
    },
    Unreachable,
}

/// Resolves the VPC-side next hop with the kernel's FIB and neighbour table,
/// so no MAC has to be configured for the VPC side. Uncached: the datapath
/// goes through `idc::vpc_destination`, which asks this once per
/// destination.
#[inline(always)]
pub fn vpc_neighbour(ctx: &XdpContext, ip: &Ipv4, ingress_ifindex: u32) -> VpcNeighbour {
    // SAFETY: plain C struct, all-zero is its documented initial state.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = 2; // AF_INET
    params.l4_protocol = ip.proto();
    params.ifindex = ingress_ifindex;
    params.__bindgen_anon_1.tot_len = ip.tot_len();
    params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src());
    params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst());
    // SAFETY: helper call with a valid ctx and a params struct of the size given.
    let rc = unsafe {
        fib_lookup_helper(
            ctx.ctx as *mut _,
            &mut params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        VpcNeighbour::Resolved(Neighbour {
            ifindex: params.ifindex,
            smac: params.smac,
            dmac: params.dmac,
            // SAFETY: on success the kernel (5.12+) writes the egress MTU
            // over the tot_len it read; a kernel that does not leaves
            // tot_len, a safe bound (larger packets ask the FIB again).
            mtu: unsafe { params.__bindgen_anon_1.mtu_result },
        })
    } else if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        VpcNeighbour::Missing {
            ifindex: params.ifindex,
        }
    } else {
        VpcNeighbour::Unreachable
    }
}

/// How a tag pop or push writes the frame's new MACs: from two arrays, byte
/// by byte (the full pipeline: its stack frame is at the verifier's 512-byte
/// limit, and holding the MACs as words there makes it spill past it), or
/// as four words (`MacPair`: the flow cache's fast path, where every
/// instruction counts).
pub trait WriteMacs {
    /// Writes destination and source MAC at `p`.
    ///
    /// # Safety
    /// `p` must point at a bounds-checked Ethernet header.
    unsafe fn write(self, p: *mut u8);
}

impl WriteMacs for ([u8; 6], [u8; 6]) {
    #[inline(always)]
    unsafe fn write(self, p: *mut u8) {
        let eth = p as *mut EthHdr;
        // SAFETY: the caller's bounds check.
        unsafe {
            (*eth).dst_addr = self.0;
            (*eth).src_addr = self.1;
        }
    }
}

impl WriteMacs for MacPair {
    #[inline(always)]
    unsafe fn write(self, p: *mut u8) {
        // SAFETY: the caller's bounds check.
        unsafe { self.store(p) }
    }
}

/// Removes the 802.1Q tag and writes the MACs. The inner EtherType ends up
/// in the Ethernet header's type field by itself: the frame start moves
/// forward by 4 bytes onto it. Returns false if the kernel refused.
#[inline(always)]
pub fn pop_vlan(ctx: &XdpContext, macs: impl WriteMacs) -> bool {
    // SAFETY: valid ctx; shrinking the head by 4 of an at least 18-byte frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_TAG_LEN) } != 0 {
        return false;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe { macs.write(eth as *mut u8) };
    true
}

/// Inserts an 802.1Q tag and writes the MACs; the original EtherType
/// becomes the tag's inner type without being moved.
#[inline(always)]
pub fn push_vlan(ctx: &XdpContext, vlan: u16, macs: impl WriteMacs) -> bool {
    // SAFETY: valid ctx; XDP frames have headroom for a tag.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -VLAN_TAG_LEN) } != 0 {
        return false;
    }
    let Some(hdr) = ptr_at::<[u8; 16]>(ctx, 0) else {
        return false;
    };
    let tpid = TPID_8021Q.to_be_bytes();
    let tci = (vlan & gateway_common::vlan::VID_MASK).to_be_bytes();
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let h = &mut *hdr;
        macs.write(h.as_mut_ptr());
        h[12] = tpid[0];
        h[13] = tpid[1];
        h[14] = tci[0];
        h[15] = tci[1];
    }
    true
}

/// Sends a frame answered by the datapath back out of the port it came in
/// on: XDP_TX, or a redirect to the port itself where XDP_TX is unreliable
/// (veth, see `port_flags::TX_VIA_REDIRECT`).
#[inline(always)]
pub fn send_back(ifindex: u32, port: &gateway_common::Port) -> u32 {
    if port.flags & gateway_common::port_flags::TX_VIA_REDIRECT != 0 {
        redirect(ifindex)
    } else {
        TX
    }
}

#[inline(always)]
pub fn redirect(ifindex: u32) -> u32 {
    // SAFETY: helper without memory arguments.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

pub const PASS: u32 = xdp_action::XDP_PASS;
pub const DROP: u32 = xdp_action::XDP_DROP;
pub const TX: u32 = xdp_action::XDP_TX;
