//! Builds the eBPF programs (conntrack-ebpf) with aya-build, so every build of
//! ctscope proves the eBPF toolchain (nightly + rust-src + bpf-linker).

/// The nightly that builds the eBPF crate. Its LLVM (22) must match the one
/// bpf-linker was built against (`cargo xtask setup` builds it with llvm-22).
const EBPF_TOOLCHAIN: &str = "nightly-2026-07-01";

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../conntrack-ebpf");
    println!("cargo::rerun-if-changed={root_dir}/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "conntrack-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
