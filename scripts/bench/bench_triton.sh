#!/usr/bin/env bash
# Requests/s, output tokens/s and p50/p99 latency at several concurrencies, measured with perf_analyzer from the
# pinned tritonclient 2.51.0 wheel (HTTP, unary model `llama`, MAX_TOKENS generated tokens per request, EOS
# ignored), then output tokens/s of each concurrency as a ratio to the first.
# Usage: [CKPT=hf_dir] [CONCURRENCY="1 16"] [MAX_TOKENS=32] [MEASURE_MS=5000] scripts/bench/bench_triton.sh [extra perf_analyzer args]
# (needs scripts/setup.sh first; without CKPT it serves the demo model)
#        scripts/bench/bench_triton.sh --chat   (genai-perf through the OpenAI frontend: scripts/bench/bench_openai.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
# --chat: genai-perf --endpoint-type chat (and completions, and direct gRPC) through the OpenAI frontend instead.
if [ "${1:-}" = "--chat" ]; then shift; exec bash scripts/bench/bench_openai.sh "$@"; fi
V=.venv
LIBS=$V/lib/python3.11/site-packages/nvidia_pytriton.libs
PA_LIBS=target/pa-libs
mkdir -p "$PA_LIBS" target/bench
# perf_analyzer wants libb64.so.0d and libcudart.so.12: the pytriton wheel ships them under hashed names.
ln -sf "$(realpath "$LIBS"/libb64-*.so.0d)" "$PA_LIBS/libb64.so.0d"
ln -sf "$(realpath "$LIBS"/libcudart-*.so.12*)" "$PA_LIBS/libcudart.so.12"
read -r HTTP GRPC METRICS < <($V/bin/python -c "
import socket; s=[socket.socket() for _ in range(3)]; [x.bind(('127.0.0.1',0)) for x in s]; print(*[x.getsockname()[1] for x in s])")
CONCURRENCY=${CONCURRENCY:-1 16}
MAX_TOKENS=${MAX_TOKENS:-32}
$V/bin/python scripts/deploy_triton.py -tmr target/bench/repo --triton_port "$HTTP" --grpc_port "$GRPC" --metrics_port "$METRICS" \
    --max_num_seqs 16 ${CKPT:+--hf_checkpoint "$CKPT"} > target/bench/server.log 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do curl -sf "localhost:$HTTP/v2/health/ready" && break; sleep 0.5; done
cat > target/bench/input.json <<'JSON'
{"data": [{"text_input": {"content": ["What is the Triton Inference Server?"], "shape": [1]},
           "max_tokens": {"content": [MAX_TOKENS], "shape": [1]},
           "ignore_eos": {"content": [true], "shape": [1]}}]}
JSON
sed -i "s/MAX_TOKENS/$MAX_TOKENS/" target/bench/input.json
for c in $CONCURRENCY; do
    echo "=== concurrency $c ==="
    LD_LIBRARY_PATH=$PA_LIBS $V/bin/perf_analyzer -m llama -u "localhost:$HTTP" -i http --input-data target/bench/input.json \
        --concurrency-range "$c" --measurement-interval "${MEASURE_MS:-5000}" --stability-percentage 20 --percentile 99 "$@" 2>&1 |
        tee "target/bench/c$c.txt" | grep -E "Throughput|p50 latency|p99 latency|Avg latency|Stabilizing|error|Error" || true
done
first=
for c in $CONCURRENCY; do
    rps=$(grep -m1 -oP "Concurrency: $c, throughput: \K[0-9.]+" "target/bench/c$c.txt" || true)
    [ -n "$rps" ] || { echo "concurrency $c: no throughput"; continue; }
    tps=$(awk -v r="$rps" -v m="$MAX_TOKENS" 'BEGIN{printf "%.1f", r*m}')
    first=${first:-$tps}
    echo "concurrency $c: $rps requests/s, $tps output tokens/s, $(awk -v a="$tps" -v b="$first" 'BEGIN{printf "%.2f", a/b}')x concurrency ${CONCURRENCY%% *}"
done
