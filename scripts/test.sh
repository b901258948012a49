#!/usr/bin/env bash
# The project's test command (README): every Rust test in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --release --locked
