//! Build script. The CPU engine needs nothing; the CUDA kernels in `csrc/` are compiled here once the `cuda`
//! feature lands (nvcc through the `cc` crate), so a default build never needs a CUDA toolchain.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
}
