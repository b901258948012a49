#!/usr/bin/env bash
# The CPU matmul kernels beyond the default one (part of scripts/test.sh):
#  1. x86-64: the golden (logits against transformers), weight-format drift and prefix-cache tests again with each
#     other SIMD kernel this CPU runs forced by TL_CPU_KERNEL (avx2 on an AVX-512 machine; portable everywhere),
#     so every kernel family is held to the same oracles as the default;
#  2. aarch64: the crate cross-compiled for aarch64-unknown-linux-gnu (rustup target, gcc-aarch64-linux-gnu from
#     apt) and clippy'd; the kernel unit tests and the golden, drift and prefix-cache tests run under qemu-user
#     (qemu-user-static from apt, CPU model `max`: NEON, dotprod, i8mm) with each NEON kernel forced. ARM speed
#     cannot be measured here, its correctness is checked on every change.
# TL_SKIP_AARCH64=1 leaves stage 2 out (and says so). Output ends with cargo's "test result" lines.
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=(--test golden --test weights --test engine_prefix_cache)

# --- 1. x86-64 kernels other than the default ----------------------------------------------------------------------
if [ "$(uname -m)" = x86_64 ]; then
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    has() { for f in "$@"; do grep -qw "$f" <<<"$flags" || return 1; done; }
    kernels=(portable)
    # The default is avx512 where AVX-512 is present: then avx2 is the one not yet covered.
    if has avx512f avx512bw && has avx2 fma f16c; then kernels=(avx2 "${kernels[@]}"); fi
    for k in "${kernels[@]}"; do
        echo "=== TL_CPU_KERNEL=$k: golden, drift and prefix-cache tests"
        TL_CPU_KERNEL=$k cargo test --release --locked --lib forced_kernel_is_the_one_that_runs
        TL_CPU_KERNEL=$k cargo test --release --locked "${SUITE[@]}"
    done
fi

# --- 2. aarch64 under qemu -----------------------------------------------------------------------------------------
if [ "${TL_SKIP_AARCH64:-0}" = 1 ]; then
    echo "TL_SKIP_AARCH64=1: the aarch64 build and tests were not run"
    exit 0
fi
T=aarch64-unknown-linux-gnu
pkgs=()
command -v aarch64-linux-gnu-gcc >/dev/null || pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
command -v aarch64-linux-gnu-g++ >/dev/null || pkgs+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64-static >/dev/null || pkgs+=(qemu-user-static)
if [ ${#pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${pkgs[@]}"
    else
        echo "missing system packages for the aarch64 tests: ${pkgs[*]} (or TL_SKIP_AARCH64=1)"; exit 1
    fi
fi
rustup target list --installed | grep -qx "$T" || rustup target add "$T"
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L /usr/aarch64-linux-gnu"
export QEMU_CPU=max
cargo clippy --release --locked --target "$T" --all-targets -- -D warnings
echo "=== aarch64 (qemu, -cpu max): kernel unit tests"
cargo test --release --locked --target "$T" --lib cpu_gemm
for k in neon neon-dotprod neon-i8mm; do
    echo "=== aarch64 (qemu) TL_CPU_KERNEL=$k: golden, drift and prefix-cache tests"
    TL_CPU_KERNEL=$k cargo test --release --locked --target "$T" --lib forced_kernel_is_the_one_that_runs
    TL_CPU_KERNEL=$k cargo test --release --locked --target "$T" "${SUITE[@]}"
done
