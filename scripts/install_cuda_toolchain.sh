#!/usr/bin/env bash
# Installs the pinned CUDA 13.0 compiler wheels into .venv-cuda (idempotent) and, when sourced, exports
# CUDA_HOME and PATH for `cargo build --features cuda`. Also makes sure libclang (for bindgen) is present.
# Usage:  source scripts/install_cuda_toolchain.sh     (or run it; it prints the exports to use)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-cuda"
# Exact versions that work together (see ../shared/docs/cuda-toolchain.md): mixing minors breaks ptxas.
PINS=(nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85)
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
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

# bindgen needs libclang.so.
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get install -y -qq libclang-dev >/dev/null || { apt-get update -qq && apt-get install -y -qq libclang-dev >/dev/null; }
    else
        echo "libclang is required by bindgen: install libclang-dev (apt) or set LIBCLANG_PATH" >&2
        exit 1
    fi
fi
echo "CUDA_HOME=$CUDA_HOME ($(nvcc --version | tail -1))"
