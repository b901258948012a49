#!/usr/bin/env bash
# What structured output costs on this machine's CPU (a benchmark: minutes, not part of CI): bench_peers.sh's random
# TinyLlama-1.1B-shape checkpoint with Llama-2's real 32000-piece tokenizer (the token masks scale with the
# vocabulary; the fixture tokenizer bench_peers.sh uses is small), decoding 8 rows with a JSON schema on every row
# against the same 8 rows unconstrained, and the time to first token that compiling a schema adds.
#
# Sets up, idempotently: bench_peers.sh's checkpoint, sdist and .venv-convert (SETUP_ONLY=1 bench_peers.sh when
# missing), Llama-2's tokenizer.model written by llama_vocab.py from llama.cpp's test vocabulary in that sdist
# (checked against llama.cpp's own expected ids), and $DIR/tinyllama-shape-llama-vocab (links to the weights).
# Then ROUNDS (3) runs of `triton-llama bench-guided` with THREADS (2) threads; prints each round and the median.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DIR=${PEERS_DIR:-$ROOT/target/peers}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
BATCH=${BATCH:-8}
STEPS=${STEPS:-32}
LLAMA_CPP_VERSION=0.3.36
log() { echo "[bench_guided $(date +%T)] $*" >&2; }

SDIST=$DIR/sdist/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz
if [ ! -f "$DIR/tinyllama-shape/model.safetensors" ] || [ ! -f "$SDIST" ] || [ ! -x .venv-convert/bin/python ]; then
    log "setting up bench_peers.sh's checkpoint and tools (SETUP_ONLY=1)"
    SETUP_ONLY=1 PEERS_DIR=$DIR bash scripts/bench/bench_peers.sh
fi
M=$DIR/tinyllama-shape-llama-vocab
if [ ! -f "$M/tokenizer.model" ]; then
    V=llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf
    rm -rf "$DIR/llama-vocab" && mkdir -p "$DIR/llama-vocab"
    tar -xzf "$SDIST" -C "$DIR/llama-vocab" "$V" "$V.inp" "$V.out"
    log "writing Llama-2's tokenizer.model from $V"
    mkdir -p "$M"
    PYTHONPATH=$DIR/llama.cpp-$LLAMA_CPP_VERSION/gguf-py .venv-convert/bin/python scripts/bench/llama_vocab.py \
        "$DIR/llama-vocab/$V" "$M/tokenizer.model"
fi
ln -sf "$DIR/tinyllama-shape/config.json" "$M/config.json"
ln -sf "$DIR/tinyllama-shape/model.safetensors" "$M/model.safetensors"

cargo build --release --locked
R=$DIR/guided
rm -rf "$R" && mkdir -p "$R"
for r in $(seq 1 "$ROUNDS"); do
    log "round $r/$ROUNDS"
    RAYON_NUM_THREADS=$THREADS target/release/triton-llama bench-guided "$M" --batch "$BATCH" --steps "$STEPS" --json \
        > "$R/r$r.json" 2> "$R/r$r.log"
done
python3 - "$R" "$ROUNDS" <<'EOF'
import json, statistics, sys
rounds = [json.load(open(f"{sys.argv[1]}/r{i}.json")) for i in range(1, int(sys.argv[2]) + 1)]
cols = ["plain_ms_per_step", "guided_ms_per_step", "overhead", "mask_ms_per_step", "compile_ms", "ttft_plain_ms",
        "ttft_guided_ms"]
print(f"batch {rounds[0]['batch']}, vocabulary {rounds[0]['vocab']}")
print("| round | " + " | ".join(cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for i, r in enumerate(rounds, 1):
    print(f"| {i} | " + " | ".join(f"{r[c]:.4f}" if c == "overhead" else f"{r[c]:.2f}" for c in cols) + " |")
med = {c: statistics.median(r[c] for r in rounds) for c in cols}
print("| median | " + " | ".join(f"{med[c]:.4f}" if c == "overhead" else f"{med[c]:.2f}" for c in cols) + " |")
print(f"mask overhead: {med['overhead'] * 100:+.1f}% of the decode step (goal <= 5%); the masks' own host time "
      f"{med['mask_ms_per_step'] / med['plain_ms_per_step'] * 100:.1f}% of it; a schema's compilation adds "
      f"{med['compile_ms']:.1f} ms to a {med['ttft_plain_ms']:.0f} ms time to first token")
EOF
