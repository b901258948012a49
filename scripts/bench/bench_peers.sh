#!/usr/bin/env bash
# triton-llama next to llama.cpp on the same weights, on this machine's CPU (a benchmark: minutes, not part of CI).
#
# Sets up, idempotently (a second run reuses everything that is already there):
#   - cmake and g++ from apt if missing;
#   - .venv-peers: llama-cpp-python 0.3.36 compiled from its sdist with -DGGML_NATIVE=ON (CPU only);
#   - .venv-convert: llama.cpp's converter (convert_hf_to_gguf.py, conversion/, gguf-py/ from the same sdist) and
#     its pinned requirements (torch, transformers, sentencepiece, numpy, protobuf; a large download);
#   - $DIR/tinyllama-shape: a deterministic random Llama checkpoint of TinyLlama-1.1B's shape (hidden 2048, 22 layers,
#     32 heads, 4 KV heads, intermediate 5632, vocab 32000; bf16 safetensors, 2.2 GB) with the fixture
#     SentencePiece tokenizer.model, converted by llama.cpp's converter to GGUF bf16 and q8_0;
#   - the release CLI (cargo build --release --locked).
# Then runs both engines ROUNDS (3) times, interleaved (llama.cpp bf16, llama.cpp q8_0, triton-llama bf16 (the
# default: bf16 dot products, as llama.cpp's bf16), triton-llama --weights f32 (exact f32 activations), triton-llama int8),
# THREADS (2) threads each, one process at a time; prints one table of ratios (decode at batch 1, prefill of 128
# and 512 tokens, aggregate decode at 4 and 8 sequences, int8 vs q8_0) and the logit drift of q8_0 and int8
# against bf16 on one 64-token prompt. Absolute numbers drift with the machine and its other load; the ratios
# come from the same rounds. Everything lands in $DIR (target/peers).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
DIR=${PEERS_DIR:-$ROOT/target/peers}
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
export THREADS STEPS=${STEPS:-32} BATCHES=${BATCHES:-1,4,8} PREFILLS=${PREFILLS:-128,512}
LLAMA_CPP_VERSION=0.3.36
PY=${PYTHON:-python3}
mkdir -p "$DIR"
log() { echo "[bench_peers $(date +%T)] $*" >&2; }

# --- tools -------------------------------------------------------------------------------------------------------
if ! command -v cmake >/dev/null || ! command -v g++ >/dev/null || ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
    log "installing cmake, g++, python3-venv from apt"
    $SUDO apt-get update -q && $SUDO apt-get install -y -q cmake g++ python3-venv
fi

# --- llama.cpp runtime --------------------------------------------------------------------------------------------
# TL_CPU_KERNEL=avx2 measures an AVX2-only machine on an AVX-512 one: our engine is forced to its AVX2 kernels and
# llama.cpp comes from a second build with every AVX-512 and AVX-VNNI path compiled out (.venv-peers-avx2).
export TL_CPU_KERNEL=${TL_CPU_KERNEL:-auto}
case $TL_CPU_KERNEL in
    avx2)
        PEERS=.venv-peers-avx2
        GGML_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON"
        GGML_ARGS+=" -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF"
        GGML_ARGS+=" -DGGML_AVX512_BF16=OFF"
        ;;
    *) PEERS=.venv-peers GGML_ARGS="-DGGML_NATIVE=ON" ;;
esac
HAVE_LLAMA="import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_VERSION')"
if ! $PEERS/bin/python -c "$HAVE_LLAMA" 2>/dev/null; then
    log "building llama-cpp-python $LLAMA_CPP_VERSION from source into $PEERS (several minutes on 2 cores)"
    [ -x $PEERS/bin/python ] || "$PY" -m venv $PEERS
    $PEERS/bin/pip install -q --upgrade pip
    CMAKE_ARGS="$GGML_ARGS -DLLAVA_BUILD=OFF -DCMAKE_BUILD_TYPE=Release" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        $PEERS/bin/pip install -q --no-cache-dir --no-binary llama-cpp-python "llama-cpp-python==$LLAMA_CPP_VERSION"
fi
SYSINFO=$($PEERS/bin/python -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())')
if [ "$PEERS" = .venv-peers ] && grep -q avx512_bf16 /proc/cpuinfo && ! grep -q "AVX512_BF16 = 1" <<<"$SYSINFO"; then
    log "WARNING: the CPU has AVX512_BF16 but llama.cpp was built without it: $SYSINFO"
fi
if [ "$PEERS" = .venv-peers-avx2 ] && grep -q "AVX512 = 1" <<<"$SYSINFO"; then
    log "ERROR: the AVX2-only llama.cpp build reports AVX-512: $SYSINFO"; exit 1
fi

# --- llama.cpp converter ------------------------------------------------------------------------------------------
CONV=$DIR/llama.cpp-$LLAMA_CPP_VERSION
if [ ! -f "$CONV/convert_hf_to_gguf.py" ]; then
    log "fetching convert_hf_to_gguf.py from the llama-cpp-python $LLAMA_CPP_VERSION sdist"
    rm -rf "$DIR/sdist" && mkdir -p "$DIR/sdist"
    $PEERS/bin/pip download -q --no-deps --no-binary :all: -d "$DIR/sdist" "llama-cpp-python==$LLAMA_CPP_VERSION"
    V=llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp
    tar -xzf "$DIR/sdist/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$DIR/sdist" \
        "$V/convert_hf_to_gguf.py" "$V/conversion" "$V/gguf-py"
    rm -rf "$CONV" && mv "$DIR/sdist/$V" "$CONV"
fi
# The versions of the sdist's requirements/requirements-convert_hf_to_gguf.txt (torch from PyPI, not its CPU index).
CONVERT_REQS=("torch==2.11.0" "numpy==2.2.6" "sentencepiece==0.2.1" "transformers==4.57.6" "protobuf==4.25.8")
if ! .venv-convert/bin/python -c "import torch, transformers, sentencepiece, numpy, google.protobuf" 2>/dev/null; then
    log "installing the converter's requirements into .venv-convert (torch is a large download)"
    [ -x .venv-convert/bin/python ] || "$PY" -m venv .venv-convert
    .venv-convert/bin/pip install -q --upgrade pip
    .venv-convert/bin/pip install -q "${CONVERT_REQS[@]}"
fi

# --- the model and its GGUFs (one conversion at a time: torch's peak memory is several GB) ------------------------
M=$DIR/tinyllama-shape
if [ ! -f "$M/model.safetensors" ] || [ ! -f "$M/config.json" ]; then
    log "writing the random TinyLlama-shape checkpoint to $M"
    .venv-convert/bin/python scripts/bench/bench_peers.py make-model "$M" tests/fixtures/tokenizer/llama_bpe.model
fi
for q in bf16 q8_0; do
    if [ ! -f "$DIR/model-$q.gguf" ]; then
        log "converting to GGUF $q"
        .venv-convert/bin/python "$CONV/convert_hf_to_gguf.py" "$M" --outtype "$q" --outfile "$DIR/model-$q.gguf.tmp" \
            > "$DIR/convert-$q.log" 2>&1 || { tail -20 "$DIR/convert-$q.log"; exit 1; }
        mv "$DIR/model-$q.gguf.tmp" "$DIR/model-$q.gguf"
    fi
done

# --- triton-llama -------------------------------------------------------------------------------------------------
cargo build --release --locked
CLI=$ROOT/target/release/triton-llama
INT8=()
if "$CLI" bench --weights int8 --steps 0 --batches 1 --prefill 0 >/dev/null 2>&1; then INT8=(--weights int8); fi

[ "${SETUP_ONLY:-0}" = 1 ] && { log "set up (SETUP_ONLY=1): not running the rounds"; exit 0; }

# --- interleaved rounds -------------------------------------------------------------------------------------------
R=$DIR/results
rm -rf "$R" && mkdir -p "$R"
ours() { # OUT [ARGS...]
    local out=$1; shift
    RAYON_NUM_THREADS=$THREADS "$CLI" bench --checkpoint "$M" --batches "$BATCHES" --prefill "$PREFILLS" \
        --steps "$STEPS" --json "$@" > "$out" 2> "${out%.json}.log"
}
load() { cut -d' ' -f1 /proc/loadavg >> "$R/loadavg.txt"; } # other work on the machine, before each run
for r in $(seq 1 "$ROUNDS"); do
    load
    log "round $r/$ROUNDS: llama.cpp bf16"
    $PEERS/bin/python scripts/bench/bench_peers.py llamacpp "$DIR/model-bf16.gguf" "$R/r$r-llama-bf16.json" \
        2> "$R/r$r-llama-bf16.log"
    load
    log "round $r/$ROUNDS: llama.cpp q8_0"
    $PEERS/bin/python scripts/bench/bench_peers.py llamacpp "$DIR/model-q8_0.gguf" "$R/r$r-llama-q8_0.json" \
        2> "$R/r$r-llama-q8_0.log"
    load
    log "round $r/$ROUNDS: triton-llama bf16"
    ours "$R/r$r-ours-bf16.json"
    load
    log "round $r/$ROUNDS: triton-llama exact f32 activations (--weights f32)"
    ours "$R/r$r-ours-f32.json" --weights f32
    if [ ${#INT8[@]} -gt 0 ]; then
        load
        log "round $r/$ROUNDS: triton-llama int8"
        ours "$R/r$r-ours-int8.json" "${INT8[@]}"
    fi
done

# --- logit drift on one 64-token prompt ---------------------------------------------------------------------------
log "logit drift"
DL=$R/drift.log
P=($PEERS/bin/python scripts/bench/bench_peers.py)
drift() { # NAME REF.npy OTHER.npy
    [ -f "$2" ] && [ -f "$3" ] && echo "\"$1\": $("${P[@]}" drift "$2" "$3")," || echo "\"$1\": null,"
}
"${P[@]}" logits "$DIR/model-bf16.gguf" "$R/llama-bf16.npy" 2>>"$DL" || log "llama.cpp bf16 logits failed (see $DL)"
"${P[@]}" logits "$DIR/model-q8_0.gguf" "$R/llama-q8_0.npy" 2>>"$DL" || log "llama.cpp q8_0 logits failed (see $DL)"
RAYON_NUM_THREADS=$THREADS "${P[@]}" ours-logits "$CLI" "$M" "$R/ours-bf16.npy" 2>>"$DL" ||
    log "triton-llama logits failed (see $DL)"
if [ ${#INT8[@]} -gt 0 ]; then
    RAYON_NUM_THREADS=$THREADS "${P[@]}" ours-logits "$CLI" "$M" "$R/ours-int8.npy" "${INT8[@]}" 2>>"$DL" ||
        log "triton-llama int8 logits failed: does \`score\` take ${INT8[*]}? (see $DL)"
fi
# FP8 (what the GPU computes with --weights fp8) through the CPU's reference twin: its drift on this model's shape.
TL_CPU_FP8_REFERENCE=1 RAYON_NUM_THREADS=$THREADS "${P[@]}" ours-logits "$CLI" "$M" "$R/ours-fp8.npy" --weights fp8 \
    2>>"$DL" || log "triton-llama fp8 (reference) logits failed (see $DL)"
{
    echo "{"
    drift "llama.cpp q8_0 vs llama.cpp bf16" "$R/llama-bf16.npy" "$R/llama-q8_0.npy"
    drift "triton-llama int8 vs triton-llama bf16" "$R/ours-bf16.npy" "$R/ours-int8.npy"
    drift "triton-llama fp8 (CPU reference of the GPU path) vs triton-llama bf16" "$R/ours-bf16.npy" "$R/ours-fp8.npy"
    drift "triton-llama bf16 vs llama.cpp bf16" "$R/llama-bf16.npy" "$R/ours-bf16.npy"
    echo '"_": null}'
} > "$R/drift.json"

echo
CPU_NAME=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)
echo "triton-llama $(git rev-parse --short HEAD) vs llama.cpp $LLAMA_CPP_VERSION, $THREADS threads, $(nproc) cores: $CPU_NAME"
echo "llama.cpp: $SYSINFO"
$PEERS/bin/python scripts/bench/bench_peers.py table "$R" | tee "$DIR/table.md"
