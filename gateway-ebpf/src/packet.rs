//! Bounds-checked access to the frame. Every header read goes through
//! `ptr_at`, the shape the verifier accepts: `data + off + size <= data_end`.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;

/// Ethernet header length.
pub const ETH_LEN: usize = 14;
/// Ethernet + one 802.1Q tag.
pub const VLAN_ETH_LEN: usize = 18;
pub const VLAN_TAG_LEN: i32 = 4;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// `ctx->data` and `ctx->data_end`, read volatilely. With plain loads LLVM
/// treats every read as the same value: it elides a bounds check that an
/// earlier, larger one implies, then re-derives the pointer from a fresh
/// load the verifier has never seen checked ("invalid access to packet").
/// Volatile reads pin each pointer to the load its own check used.
#[inline(always)]
fn bounds(ctx: &XdpContext) -> (usize, usize) {
    // SAFETY: ctx.ctx points at the kernel's xdp_md for this invocation.
    unsafe {
        (
            core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
            core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
        )
    }
}

/// Use with types of 2 bytes or more: LLVM turns a 1-byte check into
/// `p >= data_end`, from which the verifier proves no readable byte.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let (start, end) = bounds(ctx);
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    let (start, end) = bounds(ctx);
    end - start
}

/// The IPv4 header of a frame, validated: version 4, IHL >= 5, the whole
/// header and the total length inside the frame (Ethernet padding allowed).
pub struct Ipv4 {
    pub hdr: *mut network_types::ip::Ipv4Hdr,
    /// Offset of the L4 header from the frame start (L3 + IHL * 4, <= L3 + 60).
    pub l4: usize,
}

#[inline(always)]
pub fn ipv4(ctx: &XdpContext, l3: usize) -> Option<Ipv4> {
    let hdr: *mut network_types::ip::Ipv4Hdr = ptr_at(ctx, l3)?;
    // SAFETY: bounds checked by ptr_at.
    let vihl = unsafe { (*hdr).vihl };
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl_bytes = ((vihl & 0x0f) as usize) * 4;
    if ihl_bytes < 20 {
        return None;
    }
    let tot_len = u16::from_be_bytes(unsafe { (*hdr).tot_len }) as usize;
    if tot_len < ihl_bytes || l3 + tot_len > frame_len(ctx) {
        return None;
    }
    // Options (IHL > 5) are forwarded untouched; make sure they are present.
    let l4 = l3 + ihl_bytes;
    let (start, end) = bounds(ctx);
    if start + l4 > end {
        return None;
    }
    Some(Ipv4 { hdr, l4 })
}

impl Ipv4 {
    #[inline(always)]
    pub fn src(&self) -> [u8; 4] {
        unsafe { (*self.hdr).src_addr }
    }
    #[inline(always)]
    pub fn dst(&self) -> [u8; 4] {
        unsafe { (*self.hdr).dst_addr }
    }
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        unsafe { (*self.hdr).proto }
    }
    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        unsafe { (*self.hdr).ttl }
    }
    #[inline(always)]
    pub fn tot_len(&self) -> u16 {
        u16::from_be_bytes(unsafe { (*self.hdr).tot_len })
    }
    /// More-fragments flag or a fragment offset: not the whole datagram.
    #[inline(always)]
    pub fn is_fragment(&self) -> bool {
        let frags = u16::from_be_bytes(unsafe { (*self.hdr).frags });
        frags & 0x3fff != 0
    }
    /// A fragment other than the first: no L4 header in it.
    #[inline(always)]
    pub fn is_later_fragment(&self) -> bool {
        let frags = u16::from_be_bytes(unsafe { (*self.hdr).frags });
        frags & 0x1fff != 0
    }
}

/// The source and destination ports of a TCP/UDP header at `l4`.
#[inline(always)]
pub fn ports(ctx: &XdpContext, l4: usize) -> Option<([u8; 2], [u8; 2])> {
    let p = ptr_at::<[u8; 4]>(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let p = unsafe { *p };
    Some(([p[0], p[1]], [p[2], p[3]]))
}
