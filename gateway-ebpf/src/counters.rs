//! Counting helpers: every path ends in one of these calls.

use aya_ebpf::btf_maps::PerCpuArray;
use gateway_common::{Counters, Fate};

use crate::maps::{CONNECTION_COUNTERS, GATEWAY_COUNTERS, NODE_COUNTERS, TUNNEL_COUNTERS};

/// Which counter slot a frame is accounted to.
#[derive(Clone, Copy)]
pub enum Owner {
    Tunnel(u32),
    Connection(u32),
    Gateway(u32),
    Node,
}

#[inline(always)]
fn slot<const N: usize>(map: &PerCpuArray<Counters, N>, id: u32) -> Option<&mut Counters> {
    // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
    map.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn counters(owner: Owner) -> Option<&'static mut Counters> {
    match owner {
        Owner::Tunnel(id) => slot(&TUNNEL_COUNTERS, id),
        Owner::Connection(id) => slot(&CONNECTION_COUNTERS, id),
        Owner::Gateway(id) => slot(&GATEWAY_COUNTERS, id),
        Owner::Node => slot(&NODE_COUNTERS, 0),
    }
}

#[inline(always)]
pub fn rx(owner: Owner, bytes: usize) {
    if let Some(c) = counters(owner) {
        c.rx_packets += 1;
        c.rx_bytes += bytes as u64;
    }
}

#[inline(always)]
pub fn tx(owner: Owner, bytes: usize) {
    if let Some(c) = counters(owner) {
        c.tx_packets += 1;
        c.tx_bytes += bytes as u64;
    }
}

#[inline(always)]
pub fn fate(owner: Owner, fate: Fate) {
    if let Some(c) = counters(owner) {
        let i = fate as usize;
        if i < c.fates.len() {
            c.fates[i] += 1;
        }
    }
}
