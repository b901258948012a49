#!/usr/bin/env bash
# The project's test command (README): every Rust test in release mode; then the same suite built with the CUDA
# backend (`--features cuda`: nvcc from the pinned PyPI wheels, see scripts/install_cuda_toolchain.sh). No GPU
# is needed: GPU tests print `SKIPPED ... this test did not run` and are counted below, not as passes.
# TL_SKIP_CUDA=1 runs only the default build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked

if [ "${TL_SKIP_CUDA:-0}" = 1 ]; then
    echo "TL_SKIP_CUDA=1: the --features cuda build and tests were not run"
    exit 0
fi
# shellcheck source=install_cuda_toolchain.sh
source scripts/install_cuda_toolchain.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --release --locked --features cuda 2>&1 | tee "$log"
skipped="$(grep -c '^SKIPPED' "$log" || true)"
echo "cuda build: all CPU tests passed; ${skipped} GPU test(s) SKIPPED (no device here) - run scripts/gpu_check.sh on a GPU machine"
