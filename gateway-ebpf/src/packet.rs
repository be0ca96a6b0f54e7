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

// Word access to the frame: one load or store per 2 or 4 bytes. The
// compiler splits every access it cannot prove aligned into single bytes
// on BPF (a header after a 14- or 18-byte Ethernet header is only 2-byte
// aligned), which made the flow cache's fast path several dozen
// instructions longer; the BPF JIT and the verifier take unaligned packet
// access on the architectures the gateway runs on (x86-64, arm64), so these
// are written as single BPF instructions. Values stay as the bytes lie in
// the frame (network order).
//
// Safety, for all four: `p` must point into the frame with the bytes
// accessed bounds-checked (`ptr_at`), and the frame must not have moved
// since.

/// The 4 bytes at `p`.
#[inline(always)]
pub unsafe fn load_u32(p: *const u8) -> [u8; 4] {
    let v: u32;
    // SAFETY: the caller's bounds check; a plain load.
    unsafe {
        core::arch::asm!("{0} = *(u32 *)({1} + 0)", out(reg) v, in(reg) p,
            options(readonly, nostack, preserves_flags));
    }
    v.to_ne_bytes()
}

/// The 2 bytes at `p`.
#[inline(always)]
pub unsafe fn load_u16(p: *const u8) -> [u8; 2] {
    let v: u16;
    // SAFETY: the caller's bounds check; a plain load.
    unsafe {
        core::arch::asm!("{0} = *(u16 *)({1} + 0)", out(reg) v, in(reg) p,
            options(readonly, nostack, preserves_flags));
    }
    v.to_ne_bytes()
}

/// Writes 4 bytes at `p`.
#[inline(always)]
pub unsafe fn store_u32(p: *mut u8, v: [u8; 4]) {
    // SAFETY: the caller's bounds check; a plain store.
    unsafe {
        core::arch::asm!("*(u32 *)({0} + 0) = {1}", in(reg) p, in(reg) u32::from_ne_bytes(v),
            options(nostack, preserves_flags));
    }
}

/// Writes 2 bytes at `p`.
#[inline(always)]
pub unsafe fn store_u16(p: *mut u8, v: [u8; 2]) {
    // SAFETY: the caller's bounds check; a plain store.
    unsafe {
        core::arch::asm!("*(u16 *)({0} + 0) = {1}", in(reg) p, in(reg) u16::from_ne_bytes(v),
            options(nostack, preserves_flags));
    }
}

/// A frame's destination and source MAC (its first 12 bytes) as four
/// words: dmac[0..4], dmac[4..6], smac[0..2], smac[2..6]. Four loads or
/// stores move them to and from the frame (`load`, `store`), and four
/// aligned ones from a map value whose MAC pair starts 4-byte aligned
/// (`load` too; `FlowCacheEntry` asserts its offsets).
#[derive(Clone, Copy)]
pub struct MacPair {
    d_hi: u32,
    d_lo: u16,
    s_hi: u16,
    s_lo: u32,
}

impl MacPair {
    /// The MACs at `p` (12 bytes).
    ///
    /// # Safety
    /// As for `load_u32`.
    #[inline(always)]
    pub unsafe fn load(p: *const u8) -> MacPair {
        // SAFETY: the caller's bounds check covers the 12 bytes.
        unsafe {
            MacPair {
                d_hi: u32::from_ne_bytes(load_u32(p)),
                d_lo: u16::from_ne_bytes(load_u16(p.add(4))),
                s_hi: u16::from_ne_bytes(load_u16(p.add(6))),
                s_lo: u32::from_ne_bytes(load_u32(p.add(8))),
            }
        }
    }

    /// Writes the MACs at `p` (12 bytes).
    ///
    /// # Safety
    /// As for `store_u32`.
    #[inline(always)]
    pub unsafe fn store(&self, p: *mut u8) {
        // SAFETY: the caller's bounds check covers the 12 bytes.
        unsafe {
            store_u32(p, self.d_hi.to_ne_bytes());
            store_u16(p.add(4), self.d_lo.to_ne_bytes());
            store_u16(p.add(6), self.s_hi.to_ne_bytes());
            store_u32(p.add(8), self.s_lo.to_ne_bytes());
        }
    }

    /// Same destination MAC.
    #[inline(always)]
    pub fn same_dst(&self, o: &MacPair) -> bool {
        (self.d_hi ^ o.d_hi) | (self.d_lo ^ o.d_lo) as u32 == 0
    }

    /// Same destination and source MAC.
    #[inline(always)]
    pub fn same(&self, o: &MacPair) -> bool {
        (self.d_hi ^ o.d_hi)
            | (self.d_lo ^ o.d_lo) as u32
            | (self.s_hi ^ o.s_hi) as u32
            | (self.s_lo ^ o.s_lo)
            == 0
    }
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
