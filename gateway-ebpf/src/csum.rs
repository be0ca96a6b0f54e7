//! Incremental Internet checksum updates (RFC 1624, eqn. 3:
//! HC' = ~(~HC + ~m + m')). All 16-bit words are big-endian numbers as read
//! from the wire, so the same code serves the IPv4 header and L4 checksums.

/// Folds a sum of 16-bit words to 16 bits, end-around carry.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// `~fold(~check + delta)`, where `delta` is the folded sum of `~m + m'`
/// over every changed word: the changes summed first give the same result
/// as applying them one by one.
#[inline(always)]
pub fn adjust(check: u16, delta: u16) -> u16 {
    !fold(!check as u32 + delta as u32)
}

/// Checksum after one 16-bit word changed from `old` to `new`.
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check as u32) + ((!old) as u32) + new as u32)
}

/// Checksum after one 32-bit field (an IPv4 address) changed.
#[inline(always)]
pub fn replace32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let c = replace16(
        check,
        u16::from_be_bytes([old[0], old[1]]),
        u16::from_be_bytes([new[0], new[1]]),
    );
    replace16(
        c,
        u16::from_be_bytes([old[2], old[3]]),
        u16::from_be_bytes([new[2], new[3]]),
    )
}

/// Sum of `~old + new` over the 16-bit words of two 4-byte fields (an
/// address, a port pair): a delta for `adjust`, to be folded.
#[inline(always)]
pub fn delta4(old: [u8; 4], new: [u8; 4]) -> u32 {
    let w = |b: [u8; 4], i: usize| u16::from_be_bytes([b[i], b[i + 1]]) as u32;
    (!w(old, 0) & 0xffff) + w(new, 0) + (!w(old, 2) & 0xffff) + w(new, 2)
}

/// `~old + new` of the TTL/protocol word when the TTL drops by one:
/// 0xffff - 0x0100, whatever the TTL.
pub const TTL_DELTA: u32 = 0xfeff;
