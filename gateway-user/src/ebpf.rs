//! The eBPF objects, built by build.rs and embedded in the binary.

/// The gateway's XDP program (entry point `gateway_common::XDP_PROGRAM`).
pub static GATEWAY_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway"));

/// Fails with a clear message if the binary was built with AYA_BUILD_SKIP.
pub fn gateway_object() -> anyhow::Result<&'static [u8]> {
    if GATEWAY_OBJECT.is_empty() {
        anyhow::bail!(
            "this gatewayd was built without its eBPF program (AYA_BUILD_SKIP); rebuild after `cargo xtask setup`"
        );
    }
    Ok(GATEWAY_OBJECT)
}

/// Baselines, generator and sink of `cargo xtask bench`
/// (gateway-ebpf/src/bin/bench.rs); never attached by the daemon.
pub static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench"));
