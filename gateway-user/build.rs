//! Builds the eBPF crate (nightly, bpfel-unknown-none, -Z build-std=core,
//! bpf-linker) and leaves the objects in OUT_DIR, where `src/ebpf.rs`
//! embeds them: `gatewayd` is self-contained and runs from any directory.
//! Needs what `cargo xtask setup` installs (rust-src, bpf-linker).
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("gateway-user has no parent directory"))?
        .join("gateway-ebpf");
    let root = root
        .to_str()
        .context("gateway-ebpf path is not UTF-8")?
        .to_owned();
    // aya-build watches the eBPF crate's folder; the map types it shares
    // with us live in gateway-common, whose changes must rebuild it too (or
    // the embedded object and this crate disagree on value sizes).
    let common = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("gateway-user has no parent directory"))?
        .join("gateway-common");
    println!("cargo:rerun-if-changed={}", common.display());
    let built = aya_build::build_ebpf(
        [aya_build::Package {
            name: "gateway-ebpf",
            root_dir: &root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF program failed; if rust-src or bpf-linker is missing, run `cargo xtask setup`",
    );
    built?;
    // With AYA_BUILD_SKIP=1 (host-only work on config code) nothing was
    // built: embed empty objects, which the loader rejects with a clear error.
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    for name in EBPF_BINARIES {
        let path = out_dir.join(name);
        if !path.exists() {
            std::fs::write(&path, b"")?;
        }
    }
    Ok(())
}

/// The eBPF crate's binaries, one object each.
const EBPF_BINARIES: &[&str] = &["gateway", "lab-vlan", "bench"];
