//! The destination cache: a per-CPU, two-way set-associative cache in
//! front of the route lookup (`routes::lookup`) and, for VPC destinations,
//! the kernel FIB (`bpf_fib_lookup`). Both are paid once per destination
//! instead of once per packet: the FIB lookup alone costs more than the
//! rest of the IDC -> VPC path, and the route probes slow down as the
//! table outgrows the CPU caches, where a cached destination costs the
//! same at 100 routes as at 1M.
//!
//! Correctness on changes:
//! * routes: a slot remembers `DEST_CACHE_GENERATION[0]` as read *before*
//!   the lookups that filled it, and is used only while the generation is
//!   unchanged. The daemon bumps the generation after applying any change,
//!   so no packet after a reload uses a route from before it (a lookup
//!   racing the reload stores the old generation and is never used);
//! * kernel neighbours, routes and links (a VPC host's MAC, its FIB
//!   route): the daemon listens for the kernel's events and bumps the
//!   generation on its next tick (20 ms); without a daemon, the datapath
//!   asks the kernel again once a slot is `DEST_CACHE_MAX_AGE_NS` (1 s)
//!   old. A packet larger than the cached MTU always asks the kernel (which
//!   answers "fragmentation needed").
//!
//! Per CPU, so a slot is never read half-written by another CPU.

use aya_ebpf::{btf_maps::PerCpuArray, helpers::bpf_ktime_get_coarse_ns};
use gateway_common::{
    limits::DEST_CACHE_SLOTS, mix32, DestCacheEntry, DestCacheStats, Route, DEST_CACHE_MAX_AGE_NS,
};

use crate::{
    maps::{DEST_CACHE, DEST_CACHE_GENERATION, DEST_CACHE_STATS},
    routes,
};

/// What a slot is keyed by.
#[derive(Clone, Copy)]
pub struct Key {
    pub gateway_id: u32,
    /// Ingress port: the FIB lookup's input (and never 0).
    pub ifindex: u32,
    /// 0 when only the route is cached (it does not depend on the source).
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

/// A cache probe's outcome.
pub enum Probe {
    /// A valid slot for the key.
    Hit(*mut DestCacheEntry),
    /// No valid slot: the one to fill (a stale one, or the set's older
    /// one), and the generation and time to fill it with.
    Miss(Slot),
}

/// Where and how a missed destination is stored.
pub struct Slot {
    ptr: Option<*mut DestCacheEntry>,
    generation: u32,
    now: u64,
}

#[inline(always)]
fn matches(e: &DestCacheEntry, key: &Key) -> bool {
    e.dst == key.dst
        && e.src == key.src
        && e.ifindex == key.ifindex
        && e.gateway_id == key.gateway_id
}

#[inline(always)]
fn count(hit: bool) {
    count_in(&DEST_CACHE_STATS, hit);
}

/// Counts a hit or a miss in a cache's per-CPU stats slot.
#[inline(always)]
pub fn count_in(stats: &PerCpuArray<DestCacheStats, 1>, hit: bool) {
    if let Some(s) = stats.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe {
            if hit {
                (*s).hits += 1;
            } else {
                (*s).misses += 1;
            }
        }
    }
}

/// The current cache generation (`DEST_CACHE_GENERATION[0]`).
#[inline(always)]
pub fn generation() -> u32 {
    DEST_CACHE_GENERATION.get(0).copied().unwrap_or(0)
}

/// Looks `key` up in its set.
#[inline(always)]
pub fn probe(key: &Key) -> Probe {
    let generation = generation();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let h = mix32(
        u32::from_ne_bytes(key.dst)
            ^ u32::from_ne_bytes(key.src).rotate_left(13)
            ^ key.ifindex.wrapping_mul(0x9e37_79b9)
            ^ key.gateway_id.rotate_left(24),
    );
    let set = (h & (DEST_CACHE_SLOTS / 2 - 1)) * 2;
    let (Some(a), Some(b)) = (DEST_CACHE.get_ptr_mut(set), DEST_CACHE.get_ptr_mut(set + 1)) else {
        count(false);
        return Probe::Miss(Slot {
            ptr: None,
            generation,
            now,
        });
    };
    // SAFETY: per-CPU array slots, valid while the program runs.
    let (ea, eb) = unsafe { (&*a, &*b) };
    let fresh = |e: &DestCacheEntry| {
        e.generation == generation && now.wrapping_sub(e.stamp) < DEST_CACHE_MAX_AGE_NS
    };
    let (fa, fb) = (fresh(ea), fresh(eb));
    if fa && matches(ea, key) {
        count(true);
        return Probe::Hit(a);
    }
    if fb && matches(eb, key) {
        count(true);
        return Probe::Hit(b);
    }
    count(false);
    // A stale way first (it may be this key's, expired), else the older.
    let victim = if !fa {
        a
    } else if !fb || eb.stamp < ea.stamp {
        b
    } else {
        a
    };
    Probe::Miss(Slot {
        ptr: Some(victim),
        generation,
        now,
    })
}

impl Slot {
    /// Stores what the lookups found for `key`: the route (None: no route)
    /// and, for a VPC destination, the resolved neighbour.
    #[inline(always)]
    pub fn fill(self, key: &Key, route: Option<Route>, neigh: Option<&Neighbour>) {
        let Some(p) = self.ptr else {
            return;
        };
        let (neigh, n) = match neigh {
            Some(n) => (1, *n),
            None => (0, Neighbour::default()),
        };
        // SAFETY: per-CPU array slot, only this CPU uses it while we run.
        unsafe {
            *p = DestCacheEntry {
                gateway_id: key.gateway_id,
                ifindex: key.ifindex,
                src: key.src,
                dst: key.dst,
                generation: self.generation,
                out_ifindex: n.ifindex,
                route: route.unwrap_or_default(),
                stamp: self.now,
                mtu: n.mtu,
                smac: n.smac,
                dmac: n.dmac,
                neigh,
                _pad: 0,
            }
        };
    }
}

/// A resolved VPC neighbour: where a packet leaves and with which MACs.
#[derive(Clone, Copy, Default)]
pub struct Neighbour {
    pub ifindex: u32,
    pub smac: [u8; 6],
    pub dmac: [u8; 6],
    /// Largest packet (IPv4 tot_len) the egress port takes.
    pub mtu: u16,
}

impl Neighbour {
    /// The neighbour a valid slot holds, if it holds one.
    #[inline(always)]
    pub fn cached(e: &DestCacheEntry) -> Option<Neighbour> {
        (e.neigh != 0).then_some(Neighbour {
            ifindex: e.out_ifindex,
            smac: e.smac,
            dmac: e.dmac,
            mtu: e.mtu,
        })
    }

    /// Records a neighbour resolved after the slot was filled with the
    /// route alone (the kernel had not resolved it yet).
    #[inline(always)]
    pub fn store(&self, e: *mut DestCacheEntry) {
        // SAFETY: per-CPU array slot, only this CPU uses it while we run.
        unsafe {
            (*e).out_ifindex = self.ifindex;
            (*e).smac = self.smac;
            (*e).dmac = self.dmac;
            (*e).mtu = self.mtu;
            (*e).neigh = 1;
        }
    }
}

/// The cached route of a slot.
#[inline(always)]
pub fn cached_route(e: &DestCacheEntry) -> Option<Route> {
    (e.route.kind != 0).then_some(e.route)
}

/// The longest-prefix route of `gateway_id` for `dst`, through the cache
/// (keyed by the ingress port too, which is 1:1 with the gateway here).
#[inline(always)]
pub fn route(gateway_id: u32, ifindex: u32, dst: [u8; 4]) -> Option<Route> {
    let key = Key {
        gateway_id,
        ifindex,
        src: [0; 4],
        dst,
    };
    match probe(&key) {
        // SAFETY: a valid slot pointer from `probe`.
        Probe::Hit(e) => cached_route(unsafe { &*e }),
        Probe::Miss(slot) => {
            let route = routes::lookup(gateway_id, dst);
            slot.fill(&key, route, None);
            route
        }
    }
}
