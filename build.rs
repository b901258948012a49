//! Build script. The CPU engine needs nothing. With the `cuda` feature, the kernels in `csrc/*.cu` are compiled
//! by nvcc (found through `CUDA_HOME` or `PATH`) into a static library of `extern "C"` launchers, linked with
//! the static CUDA runtime, and `csrc/ops.h` is turned into Rust declarations by bindgen.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc");
    #[cfg(feature = "cuda")]
    cuda::build();
}

#[cfg(feature = "cuda")]
mod cuda {
    use std::path::{Path, PathBuf};

    /// Real architectures we ship cubins for, plus PTX of the newest so later GPUs can JIT it.
    /// Every flag here is accepted by CUDA 12.x and 13.x nvcc.
    const GENCODE: [&str; 5] = [
        "arch=compute_80,code=sm_80",
        "arch=compute_86,code=sm_86",
        "arch=compute_89,code=sm_89",
        "arch=compute_90a,code=sm_90a",
        "arch=compute_90,code=compute_90",
    ];

    const HOW_TO_GET_NVCC: &str = "the `cuda` feature needs nvcc (CUDA 12 or 13). Either set CUDA_HOME to a CUDA \
toolkit, put nvcc on PATH, or install the pinned PyPI wheels with `bash scripts/install_cuda_toolchain.sh` \
(python3 -m venv .venv-cuda && .venv-cuda/bin/pip install nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 \
nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85; export \
CUDA_HOME=$PWD/.venv-cuda/lib/python3.11/site-packages/nvidia/cu13). See ../shared/docs/cuda-toolchain.md.";

    fn fail(msg: &str) -> ! {
        // A build script reports errors by exiting non-zero; cargo shows stderr.
        eprintln!("error: {msg}");
        std::process::exit(1);
    }

    /// CUDA_HOME (or CUDA_PATH), else the folder above the nvcc found on PATH.
    fn cuda_home() -> PathBuf {
        for var in ["CUDA_HOME", "CUDA_PATH"] {
            println!("cargo:rerun-if-env-changed={var}");
            if let Some(v) = std::env::var_os(var) {
                let p = PathBuf::from(v);
                if p.join("bin/nvcc").is_file() {
                    return p;
                }
                fail(&format!("{var}={} has no bin/nvcc; {HOW_TO_GET_NVCC}", p.display()));
            }
        }
        println!("cargo:rerun-if-env-changed=PATH");
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            let nvcc = dir.join("nvcc");
            if nvcc.is_file() {
                let real = nvcc.canonicalize().unwrap_or(nvcc);
                if let Some(home) = real.parent().and_then(Path::parent) {
                    return home.to_path_buf();
                }
            }
        }
        fail(&format!("nvcc not found. {HOW_TO_GET_NVCC}"))
    }

    /// The folder holding libcudart_static.a (toolkit: lib64/, PyPI wheel: lib/).
    fn cudart_dir(home: &Path) -> PathBuf {
        for sub in ["lib64", "lib", "targets/x86_64-linux/lib"] {
            let d = home.join(sub);
            if d.join("libcudart_static.a").is_file() {
                return d;
            }
        }
        fail(&format!(
            "libcudart_static.a not found under {}; install nvidia-cuda-runtime (see scripts/install_cuda_toolchain.sh)",
            home.display()
        ))
    }

    pub fn build() {
        let home = cuda_home();
        let nvcc = home.join("bin/nvcc");
        let mut sources: Vec<PathBuf> = std::fs::read_dir("csrc")
            .unwrap_or_else(|e| fail(&format!("csrc/: {e}")))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "cu"))
            .collect();
        sources.sort();
        let mut b = cc::Build::new();
        // Our own flags only: cc's defaults would add host-only options and `-G` (device debug) in release.
        b.cuda(true).compiler(&nvcc).no_default_flags(true).warnings(false).extra_warnings(false);
        b.include("csrc").include(home.join("include"));
        // No --use_fast_math: RoPE needs accurate sincosf at large angles; fast exp is used explicitly.
        b.flag("-std=c++17").flag("-O3").flag("-lineinfo");
        b.flag("-Xcompiler").flag("-fPIC");
        // Many architectures: let nvcc compile them in parallel (flag exists since CUDA 11.2).
        b.flag("--threads").flag("0");
        for g in GENCODE {
            b.flag("-gencode").flag(g);
        }
        b.files(&sources);
        b.cargo_warnings(false);
        if let Err(e) = b.try_compile("tl_kernels") {
            fail(&format!("nvcc failed: {e}"));
        }
        println!("cargo:rustc-link-search=native={}", cudart_dir(&home).display());
        println!("cargo:rustc-link-lib=static=cudart_static");
        for lib in ["dl", "rt", "pthread", "stdc++"] {
            println!("cargo:rustc-link-lib={lib}");
        }

        let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_else(|| fail("OUT_DIR unset")));
        let bindings = bindgen::Builder::default()
            .header("csrc/ops.h")
            .clang_arg("-xc")
            .allowlist_function("tl_.*")
            .allowlist_var("TL_.*")
            .layout_tests(false)
            .generate_comments(true)
            .generate()
            .unwrap_or_else(|e| {
                fail(&format!("bindgen on csrc/ops.h: {e} (needs libclang: apt-get install libclang-dev)"))
            });
        bindings.write_to_file(out.join("ops.rs")).unwrap_or_else(|e| fail(&format!("writing bindings: {e}")));
    }
}
