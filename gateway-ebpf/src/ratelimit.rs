//! Per-tunnel bandwidth caps: one bucket per tunnel and direction, kept as
//! a virtual clock (GCRA, the "virtual scheduling" form of a token bucket):
//! `tat` is the time at which the tunnel will have sent everything it was
//! allowed so far at its rate. A frame passes when `tat` is at most
//! `BURST_NS` ahead of now, and moves `tat` on by its transmission time at
//! the cap. The admitted bytes over any span T are therefore at most
//! rate * (T + burst): within 5 % for any steady overload longer than
//! 20 * burst.
//!
//! Why one shared bucket (and not per-CPU buckets borrowing from a pool):
//! the cap must hold however the NIC spreads a tunnel's flows over CPUs,
//! and a shared clock is exact by construction. It costs one plain load and
//! one atomic add (BPF `lock xadd`, no return value, so it works on every
//! BPF CPU version) per frame, on a cache line shared only by the CPUs that
//! carry this tunnel; there is no lock and no CPU ever waits for another.
//! Races only allow a frame or two too many per CPU at the moment the
//! bucket becomes full, and each admitted frame still moves the clock by
//! its full cost, so the long-term rate stays exact.

use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use gateway_common::{limits::MAX_TUNNELS, Tunnel};

use crate::maps::BANDWIDTH;

/// `tat` counts in 1/16 ns: fine enough that a 64-byte frame at 10 Gbit/s
/// costs 819 units (0.03 % rounding), and a u64 lasts 36 years.
const UNITS_PER_NS: u64 = 16;
/// A frame of `b` bytes at R Mbit/s takes b * 8000 / R ns.
const UNITS_PER_BYTE_MBPS: u64 = 8000 * UNITS_PER_NS;
/// How far ahead of now `tat` may run: a burst of this long at the full
/// rate ...
const BURST_NS: u64 = 10_000_000;
/// ... but never less than two jumbo frames, or low caps could never pass
/// a large frame.
const MIN_BURST_BYTES: u64 = 2 * 9216;

/// Charges `bytes` to the tunnel's bucket for direction `dir`
/// (`bandwidth_dir::*`). False: over the cap, drop the frame.
#[inline(always)]
pub fn allow(tunnel: &Tunnel, dir: u32, bytes: usize) -> bool {
    allow_capped(tunnel.id, tunnel.bandwidth_mbps, dir, bytes)
}

/// `allow` for tunnel `id` with cap `bandwidth_mbps` (0: none), as the
/// flow cache holds them.
#[inline(always)]
pub fn allow_capped(id: u32, bandwidth_mbps: u32, dir: u32, bytes: usize) -> bool {
    let rate = bandwidth_mbps as u64;
    if rate == 0 || id >= MAX_TUNNELS {
        return true;
    }
    let Some(bucket) = BANDWIDTH.get_ptr_mut(2 * id + (dir & 1)) else {
        return true;
    };
    // SAFETY: a pointer into a map value, valid while the program runs.
    let tat = unsafe { core::ptr::addr_of_mut!((*bucket).tat) };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() } * UNITS_PER_NS;
    let burst = (BURST_NS * UNITS_PER_NS).max(MIN_BURST_BYTES * UNITS_PER_BYTE_MBPS / rate);
    // SAFETY: aligned 8-byte load of a map value field (atomic on BPF).
    let current = unsafe { core::ptr::read_volatile(tat) };
    if current > now + burst {
        return false;
    }
    if current < now {
        // Idle: the clock restarts at now (unused credit is not kept
        // beyond the burst). Racing CPUs may overwrite each other's add
        // here, which only happens on an idle bucket.
        // SAFETY: aligned 8-byte store to a map value field.
        unsafe { core::ptr::write_volatile(tat, now) };
    }
    let cost = bytes as u64 * UNITS_PER_BYTE_MBPS / rate;
    // SAFETY: atomic add to a map value field; the old value is not used,
    // so this is BPF's plain `lock xadd`.
    unsafe { atomic_xadd::<u64, u64, { Relaxed }>(tat, cost) };
    true
}
