#!/usr/bin/env bash
# Every test: the Rust tests (scripts/test.sh), then the end-to-end tests against a real tritonserver
# (tests/e2e, pytest; servers are started on free ports by the fixtures; logs in target/e2e-logs/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test.sh
[ -x .venv/bin/pytest ] || bash scripts/setup.sh
cargo build --release --locked
.venv/bin/pytest -q tests/e2e "$@"
