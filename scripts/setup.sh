#!/usr/bin/env bash
# One-time set-up on a fresh machine: system packages (if missing), the Python venv `.venv` with the pinned
# Triton server (pip nvidia-pytriton) and clients, and the release build (CLI + libtriton_llama.so).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null || ! command -v nm >/dev/null; then
    if command -v apt-get >/dev/null; then
        SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
        $SUDO apt-get update -q && $SUDO apt-get install -y -q python3-venv binutils
    fi
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# tritonclient must match the server (2.51.0): newer ones bring numpy 2 (breaks pytriton) and lack perf_analyzer.
.venv/bin/pip install -q 'nvidia-pytriton==0.7.0' 'tritonclient[all]==2.51.0' 'numpy<2' 'pytest>=7'
# The OpenAI-compatible frontend (scripts/openai_frontend.py) and the SDK its e2e tests drive.
.venv/bin/pip install -q 'fastapi==0.165.0' 'uvicorn==0.55.0' 'openai==3.60.0'
# The manifest checks (tests/deploy): Kubernetes' schemas (1.25-1.37, bundled) and yamllint.
.venv/bin/pip install -q 'kubernetes-validate==1.37.0' 'yamllint==1.38.0'
# The Python linter and formatter (scripts/test.sh: ruff check, ruff format --check; config in ruff.toml).
.venv/bin/pip install -q 'ruff==0.14.0'
# The OpenAI frontend's property-based fuzz (tests/e2e/test_openai_fuzz.py): requests generated from its OpenAPI schema.
.venv/bin/pip install -q 'schemathesis==4.32.5'
# The structured-output tests validate answers against their JSON schemas with it (independent of llguidance).
.venv/bin/pip install -q 'jsonschema==4.26.0'
cargo build --release --locked
echo "set-up done: .venv (tritonserver $(.venv/bin/python -c 'import pytriton,os;print(os.path.dirname(pytriton.__file__))')/tritonserver/bin/tritonserver), target/release/libtriton_llama.so"
