#!/usr/bin/env bash
# The project's test command (README; CI runs it through .ci/run): every Rust test in release mode, then the
# end-to-end tests against a real tritonserver.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked
bash scripts/test_e2e.sh
