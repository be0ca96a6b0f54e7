//! Test-lab helper, not part of the gateway: "VLAN sub-interfaces without
//! 8021q". The lab kernel has no `CONFIG_VLAN_8021Q`, so a customer router
//! in a network namespace cannot have `eth0.100`. Instead its trunk is a
//! plain veth, and each "sub-interface" is the veth itself or a macvlan
//! (mode bridge) on top of it, with its own MAC and IP. Two tc programs on
//! the trunk veth make the wire look like 802.1Q:
//!
//! * egress: a frame whose SOURCE MAC is in `LAB_VLAN_BY_MAC` gets an
//!   802.1Q tag (that VLAN, PCP 0) inserted inline in the packet data, so
//!   the peer's XDP program sees it in the frame. Frames from other MACs,
//!   and frames that already carry a tag, pass untouched.
//! * ingress: the kernel has already moved an inline tag into the skb's
//!   metadata (`skb_vlan_untag` runs before tc ingress); the program pops
//!   it so the untagged frame reaches the trunk or the macvlan whose MAC
//!   it is addressed to. A unicast frame for a MAC in the map that carries
//!   a different VLAN is dropped, as a real sub-interface would never see
//!   it (so tests notice a gateway that tags with the wrong VLAN).
//!
//! Loaded by `gatewayd lab-vlan` (gateway-user/src/lab.rs).
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::HashMap,
    helpers::{bpf_skb_change_head, bpf_skb_vlan_pop},
    macros::{btf_map, classifier},
    programs::TcContext,
};

/// Source MAC (6 bytes, then 2 zero bytes) -> VLAN id (1..=4094) that
/// frames from that MAC are tagged with, and that frames to it must carry.
#[btf_map]
pub static LAB_VLAN_BY_MAC: HashMap<[u8; 8], u32, 64> = HashMap::new();

/// tc actions (linux/pkt_cls.h). PIPE: go on to the next filter, if any,
/// else on through the stack. SHOT: drop.
const TC_ACT_PIPE: i32 = 3;
const TC_ACT_SHOT: i32 = 2;

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HLEN: u32 = 4;
const VID_MASK: u32 = 0x0fff;

/// tc egress on the trunk veth: insert the sub-interface's 802.1Q tag.
#[classifier]
pub fn lab_vlan_egress(ctx: TcContext) -> i32 {
    match push_tag(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_SHOT,
    }
}

/// tc ingress on the trunk veth: remove the 802.1Q tag.
#[classifier]
pub fn lab_vlan_ingress(ctx: TcContext) -> i32 {
    pop_tag(&ctx)
}

/// Ok(action) when the frame goes on (tagged or untouched); Err when a tag
/// was due but could not be inserted: the frame must not leave untagged.
#[inline(always)]
fn push_tag(ctx: &TcContext) -> Result<i32, ()> {
    let pass = Ok(TC_ACT_PIPE);
    // SAFETY: `skb` is the program's context; the verifier rewrites this
    // read of `__sk_buff::vlan_present` into a read of the real skb.
    if unsafe { (*ctx.skb.skb).vlan_present } != 0 {
        return pass; // already tagged (out of band) by someone else
    }
    let Ok(ethertype) = ctx.load::<[u8; 2]>(12) else {
        return pass; // runt
    };
    let ethertype = u16::from_be_bytes(ethertype);
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        return pass; // already tagged inline (e.g. a raw socket in the lab)
    }
    let Ok(src) = ctx.load::<[u8; 6]>(6) else {
        return pass;
    };
    let key = [src[0], src[1], src[2], src[3], src[4], src[5], 0, 0];
    // SAFETY: the value is copied out at once; nothing else touches the map.
    let Some(vid) = (unsafe { LAB_VLAN_BY_MAC.get(key) }).copied() else {
        return pass;
    };
    let tci = (vid & VID_MASK) as u16;

    // Not bpf_skb_vlan_push: that only sets the skb's out-of-band
    // (hw-accel) tag, skb->vlan_tci, which a veth hands to its peer out of
    // band too, not in the packet data the peer's XDP program reads.
    // Not bpf_skb_adjust_room
    // either: it refuses any skb->protocol but IPv4/IPv6 (ARP would leave
    // untagged), and for BPF_ADJ_ROOM_MAC it points the network header at
    // the inserted bytes, which breaks software GSO of TCP (the segmenter
    // would parse the tag as the IPv4 header). bpf_skb_change_head grows
    // the frame by 4 bytes in front for any protocol and sets mac_len to
    // 18, so GSO skips the tag; we then slide the MACs to the front.
    //
    // before: [4 new][dst 6][src 6][type 2][payload]
    // after:  [dst 6][src 6][0x8100][TCI][type 2][payload]
    // SAFETY: plain helper call on the program's own context.
    if unsafe { bpf_skb_change_head(ctx.skb.skb, VLAN_HLEN, 0) } != 0 {
        return Err(());
    }
    let macs = ctx.load::<[u8; 12]>(VLAN_HLEN as usize).map_err(|_| ())?;
    ctx.store(0, &macs, 0).map_err(|_| ())?;
    let tag = [0x81, 0x00, (tci >> 8) as u8, tci as u8];
    ctx.store(12, &tag, 0).map_err(|_| ())?;
    pass
}

#[inline(always)]
fn pop_tag(ctx: &TcContext) -> i32 {
    let pass = TC_ACT_PIPE;
    let skb = ctx.skb.skb;
    // SAFETY: context field reads, rewritten by the verifier.
    let (present, tci) = unsafe { ((*skb).vlan_present, (*skb).vlan_tci) };
    let vid = if present != 0 {
        tci & VID_MASK
    } else {
        // Normally unreachable: the kernel untags before tc ingress. Kept
        // for a tag it left inline; bpf_skb_vlan_pop removes that too
        // (skb->protocol is then 802.1Q).
        match ctx.load::<[u8; 4]>(12) {
            Ok([0x81, 0x00, hi, lo]) => u32::from(u16::from_be_bytes([hi, lo])) & VID_MASK,
            _ => return pass,
        }
    };

    // A unicast frame for one of our sub-interfaces must carry its VLAN.
    if let Ok(dst) = ctx.load::<[u8; 6]>(0) {
        if dst[0] & 1 == 0 {
            let key = [dst[0], dst[1], dst[2], dst[3], dst[4], dst[5], 0, 0];
            // SAFETY: the value is copied out at once.
            if let Some(want) = (unsafe { LAB_VLAN_BY_MAC.get(key) }).copied() {
                if want & VID_MASK != vid {
                    return TC_ACT_SHOT;
                }
            }
        }
    }

    // SAFETY: plain helper call on the program's own context.
    if unsafe { bpf_skb_vlan_pop(skb) } != 0 {
        return TC_ACT_SHOT;
    }
    pass
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
