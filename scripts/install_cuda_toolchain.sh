#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler wheels and NCCL into .venv-cuda (idempotent) and, when sourced, exports
# CUDA_HOME and PATH for `cargo build --features cuda`, and TL_NCCL_LIB (the wheel's libnccl.so.2, which the
# NCCL binding's tests load; no GPU needed). Also makes sure libclang (for bindgen) is present.
# Usage:  source scripts/install_cuda_toolchain.sh     (or run it; it prints the exports to use)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-cuda"
# Exact versions that work together (see ../shared/docs/cuda-toolchain.md): mixing minors breaks ptxas.
# NCCL: the version PyTorch 2.11 (cu130) ships, as on the GPU test machines.
PINS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
      nvidia-nccl-cu13==2.28.9)
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
    # Debian's python3 lacks venv/ensurepip until python3-venv is installed.
    if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    fi
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.tl-pins"
if [ "$(cat "$STAMP" 2>/dev/null)" != "${PINS[*]}" ]; then
    "$VENV/bin/pip" install --disable-pip-version-check -q "${PINS[@]}"
    echo "${PINS[*]}" > "$STAMP"
fi
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
export CUDA_HOME="$SITE/nvidia/cu13"
export PATH="$CUDA_HOME/bin:$PATH"
[ -x "$CUDA_HOME/bin/nvcc" ] || { echo "nvcc missing under $CUDA_HOME" >&2; exit 1; }
export TL_NCCL_LIB="$SITE/nvidia/nccl/lib/libnccl.so.2"
[ -f "$TL_NCCL_LIB" ] || { echo "libnccl.so.2 missing at $TL_NCCL_LIB" >&2; exit 1; }

# bindgen loads libclang at build time (clang-sys, "runtime" feature). find_libclang looks where clang-sys looks
# (LIBCLANG_PATH alone if set; else `llvm-config --prefix`/{bin,lib,lib64}, LD_LIBRARY_PATH, LIBRARY_PATH and
# /usr/local/llvm*/lib*, /usr/{local/,}lib*{,/*,/*/*}) for the names it loads (libclang.so, libclang-*.so,
# libclang.so.*, libclang-*.so.*) and, like clang-sys, skips libclang-cpp (the C++ library, not libclang).
# The file found is exported as LIBCLANG_PATH, so bindgen uses exactly it. On Debian/Ubuntu libclang-dev is
# installed when missing: it brings libclang and clang's own headers (stddef.h), which bindgen also needs.
find_libclang() {
    local dirs=() d f
    if [ -n "${LIBCLANG_PATH:-}" ]; then
        if [ -f "$LIBCLANG_PATH" ]; then echo "$LIBCLANG_PATH"; return 0; fi
        dirs=("$LIBCLANG_PATH")
    else
        local prefix
        prefix="$(llvm-config --prefix 2>/dev/null || true)"
        [ -n "$prefix" ] && dirs+=("$prefix/bin" "$prefix/lib" "$prefix/lib64")
        local IFS=:
        # shellcheck disable=SC2206
        dirs+=(${LD_LIBRARY_PATH:-} ${LIBRARY_PATH:-})
        unset IFS
        dirs+=(/usr/local/llvm*/lib* /usr/local/lib*/*/* /usr/local/lib*/* /usr/local/lib*)
        dirs+=(/usr/lib*/*/* /usr/lib*/* /usr/lib*)
    fi
    for d in "${dirs[@]}"; do
        [ -d "$d" ] || continue
        for f in "$d"/libclang.so "$d"/libclang-*.so "$d"/libclang.so.* "$d"/libclang-*.so.*; do
            case "${f##*/}" in *-cpp.*) continue ;; esac
            [ -f "$f" ] && { echo "$f"; return 0; }
        done
    done
    return 1
}
if command -v dpkg-query >/dev/null && command -v apt-get >/dev/null \
    && ! dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q 'ok installed'; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing libclang-dev (bindgen needs libclang)" >&2
        apt-get install -y -qq libclang-dev >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq libclang-dev >/dev/null; }
    elif ! find_libclang >/dev/null; then
        echo "libclang is required by bindgen: sudo apt-get install libclang-dev (or set LIBCLANG_PATH)" >&2
        exit 1
    fi
fi
if ! LIBCLANG_PATH="$(find_libclang)"; then
    echo "libclang is required by bindgen and was not found (libclang-cpp is not libclang): install libclang-dev" \
         "or set LIBCLANG_PATH to the libclang.so file" >&2
    exit 1
fi
export LIBCLANG_PATH
echo "CUDA_HOME=$CUDA_HOME ($(nvcc --version | tail -1)); LIBCLANG_PATH=$LIBCLANG_PATH"
