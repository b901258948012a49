#!/usr/bin/env bash
# End-to-end tests against a real tritonserver (tests/e2e, pytest; the fixtures start servers on free ports and
# keep their logs in target/e2e-logs/). Runs scripts/setup.sh first if the venv is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
{ [ -x .venv/bin/pytest ] && [ -x .venv/bin/yamllint ] && [ -x .venv/bin/ruff ] && [ -x .venv/bin/schemathesis ]; } || bash scripts/setup.sh
cargo build --release --locked
.venv/bin/pytest -q tests/e2e "$@"
