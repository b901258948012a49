#!/usr/bin/env bash
# The project's test command (README; CI runs it through .ci/run):
#  1. `cargo fmt --check` (rustfmt.toml: 120 columns), `cargo clippy --all-targets -D warnings` (also with
#     `--features cuda` unless TL_SKIP_CUDA=1), `ruff check` and `ruff format --check` over all Python (ruff.toml),
#     the manifest checks of deploy/ (tests/deploy: yamllint, the Kubernetes and CRD schemas; sets up .venv if
#     missing), then every Rust test in release mode (CPU engine);
#  2. the end-to-end tests against a real tritonserver (scripts/test_e2e.sh; sets up .venv if missing);
#  3. the same Rust suite built with the CUDA backend (`--features cuda`, nvcc from the pinned PyPI wheels, see
#     scripts/install_cuda_toolchain.sh). No GPU is needed: the tests that need one are #[ignore]d (cargo reports
#     them as ignored, never as passed) and scripts/gpu_check.sh runs them on a GPU machine;
#  4. a bounded cargo-fuzz run of every fuzz target (scripts/fuzz.sh).
#  Between 1 and 2, scripts/test_cpu_kernels.sh: the golden, drift and prefix-cache tests with each other x86-64
#  kernel forced, and the crate cross-compiled for aarch64 with its kernel and golden tests under qemu.
# TL_SKIP_CUDA=1 / TL_SKIP_FUZZ=1 / TL_SKIP_E2E=1 / TL_SKIP_KERNELS=1 / TL_SKIP_AARCH64=1 leave a stage out (and
# say so).
# The last line adds up every stage's counts: `total: N passed, N failed, N skipped` (skipped = ignored GPU tests).
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

# Formatting and lints first: they fail in seconds where the tests take minutes.
for c in rustfmt clippy; do
    cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$c"
done
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
if [ "${TL_SKIP_CUDA:-0}" != 1 ]; then
    # A subshell: the CUDA toolchain's PATH and CUDA_HOME stay out of the CPU stages.
    (
        # shellcheck source=install_cuda_toolchain.sh
        source scripts/install_cuda_toolchain.sh
        cargo clippy --release --locked --all-targets --features cuda -- -D warnings
    )
fi
{ [ -x .venv/bin/pytest ] && [ -x .venv/bin/yamllint ] && [ -x .venv/bin/ruff ] && [ -x .venv/bin/schemathesis ]; } || bash scripts/setup.sh
# Python held to the Rust code's habits: ruff's linter and formatter over every Python file (ruff.toml).
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The Kubernetes / KServe manifests (deploy/): yamllint, schemas, the knobs that must agree. Seconds; no cluster.
.venv/bin/pytest -q tests/deploy 2>&1 | tee -a "$log"
cargo test --release --locked 2>&1 | tee -a "$log"
# The other CPU kernel families against the same oracles: forced x86-64 kernels, and aarch64 NEON under qemu.
if [ "${TL_SKIP_KERNELS:-0}" = 1 ]; then
    echo "TL_SKIP_KERNELS=1: the forced-kernel and aarch64 tests were not run"
else
    bash scripts/test_cpu_kernels.sh 2>&1 | tee -a "$log"
fi

if [ "${TL_SKIP_E2E:-0}" = 1 ]; then echo "TL_SKIP_E2E=1: the end-to-end tests were not run"; else bash scripts/test_e2e.sh 2>&1 | tee -a "$log"; fi

if [ "${TL_SKIP_CUDA:-0}" = 1 ]; then
    echo "TL_SKIP_CUDA=1: the --features cuda build and tests were not run"
else
    # shellcheck source=install_cuda_toolchain.sh
    source scripts/install_cuda_toolchain.sh
    cargo test --release --locked --features cuda 2>&1 | tee -a "$log"
    echo "cuda build: every CPU test passed; the GPU tests are ignored here - run scripts/gpu_check.sh on a GPU machine"
fi

if [ "${TL_SKIP_FUZZ:-0}" = 1 ]; then echo "TL_SKIP_FUZZ=1: the fuzz targets were not run"; else bash scripts/fuzz.sh "${TL_FUZZ_SECONDS:-20}"; fi

# cargo: "test result: ok. P passed; F failed; I ignored; ..."; pytest: "P passed[, F failed][, S skipped] in ...".
awk '
    /^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
    !/^test result:/ && / passed.* in [0-9.]+s/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^skipped/) s += $(i-1) } }
    END { printf "total: %d passed, %d failed, %d skipped\n", p, f, s }
' "$log"
