//! Route lookup: longest prefix match in a gateway's table.
//!
//! `ROUTES` is one hash keyed (gateway, prefix length, network); the
//! gateway's `ROUTE_PREFIX_LENS` bitmap says which lengths it uses. The
//! search probes those lengths, longest first, and stops at the first hit:
//! a few hash lookups, independent of the table's size (a BPF LPM trie walks
//! a node per bit and gets several times slower from 100 to 100k routes).

use gateway_common::{Route, RoutePrefixKey};

use crate::maps::{ROUTES, ROUTE_PREFIX_LENS};

/// The longest-prefix route of `gateway` for `dst`, if any.
#[inline(never)]
pub fn lookup(gateway: u32, dst: [u8; 4]) -> Option<Route> {
    let lens = ROUTE_PREFIX_LENS.get(gateway)?.lens;
    let mut len: u32 = 33;
    // Bounded: 33 lengths at most (the verifier needs the bound).
    while len > 0 {
        len -= 1;
        if lens & (1u64 << len) == 0 {
            continue;
        }
        let key = RoutePrefixKey::new(gateway, dst, len as u8);
        // SAFETY: the value is copied out before any other map operation.
        if let Some(route) = unsafe { ROUTES.get(key) } {
            return Some(*route);
        }
    }
    None
}
