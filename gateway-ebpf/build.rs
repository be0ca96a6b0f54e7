// Rebuild the eBPF object when bpf-linker changes (a new LLVM changes codegen).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
