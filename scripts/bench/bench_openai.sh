#!/usr/bin/env bash
# genai-perf against the OpenAI-compatible frontend (scripts/openai_frontend.py) on the demo model: chat
# (`--endpoint-type chat`, the NeMo chat template rendered by the backend), completions, and for reference the
# same load sent straight to Triton's `llama_stream` over gRPC (genai-perf --service-kind triton), in one run so
# their ratio shows the frontend's cost. Streaming, 64 input / 32 output tokens (EOS ignored), concurrency 1 and 8.
# genai-perf (PyPI genai-perf==0.0.8, with its own transformers/tritonclient) lives in its own venv,
# target/genai-perf-venv, made on first use; it drives the perf_analyzer of the pinned tritonclient 2.51.0.
# Usage: scripts/bench/bench_openai.sh   (or scripts/bench/bench_triton.sh --chat; needs scripts/setup.sh first)
set -euo pipefail
cd "$(dirname "$0")/../.."
V=.venv
GP=target/genai-perf-venv
if [ ! -x "$GP/bin/genai-perf" ]; then
    python3 -m venv "$GP"
    "$GP/bin/pip" install -q 'genai-perf==0.0.8'
fi
LIBS=$V/lib/python3.11/site-packages/nvidia_pytriton.libs
PA_LIBS=$PWD/target/pa-libs
OUT=$PWD/target/bench/openai
mkdir -p "$PA_LIBS" "$OUT/bin"
ln -sf "$(realpath "$LIBS"/libb64-*.so.0d)" "$PA_LIBS/libb64.so.0d"
ln -sf "$(realpath "$LIBS"/libcudart-*.so.12*)" "$PA_LIBS/libcudart.so.12"
ln -sf "$PWD/$V/bin/perf_analyzer" "$OUT/bin/perf_analyzer"   # genai-perf runs `perf_analyzer` from PATH
read -r HTTP GRPC METRICS OPENAI < <($V/bin/python -c "
import socket; s=[socket.socket() for _ in range(4)]; [x.bind(('127.0.0.1',0)) for x in s]
print(*[x.getsockname()[1] for x in s])")
$V/bin/python scripts/deploy_triton.py -tmr target/bench/openai/repo --triton_port "$HTTP" --grpc_port "$GRPC" \
    --metrics_port "$METRICS" --openai_port "$OPENAI" --chat_template nemo --max_num_seqs 16 > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill -TERM $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "localhost:$OPENAI/health/ready" >/dev/null && break; sleep 0.5; done
TOK=$PWD/target/bench/openai/repo.demo_model
GENAI_PERF=$PWD/$GP/bin/genai-perf
run() {  # name, concurrency, model, genai-perf args...
    local name=$1 c=$2 model=$3
    shift 3
    (cd "$OUT" && PATH="$OUT/bin:$PATH" LD_LIBRARY_PATH="$PA_LIBS" "$GENAI_PERF" profile \
        -m "$model" --tokenizer "$TOK" --streaming --synthetic-input-tokens-mean 64 --synthetic-input-tokens-stddev 0 \
        --output-tokens-mean 32 --output-tokens-stddev 0 --extra-inputs ignore_eos:true --concurrency "$c" \
        --measurement-interval 5000 --num-prompts 100 --random-seed 0 --artifact-dir "$OUT/$name-c$c" "$@" \
        > "$OUT/$name-c$c.log" 2>&1) ||
        { echo "genai-perf $name c=$c failed:"; tail -20 "$OUT/$name-c$c.log"; return 1; }
    "$V/bin/python" - "$OUT/$name-c$c/profile_export_genai_perf.json" "$name" "$c" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
g = lambda k, s="avg": d[k][s]
print(f"{sys.argv[2]:<12} c={sys.argv[3]:<2} requests/s {g('request_throughput'):7.2f}"
      f"  output tok/s {g('output_token_throughput'):8.1f}"
      f"  TTFT avg {g('time_to_first_token'):7.1f} ms p99 {g('time_to_first_token','p99'):7.1f}"
      f"  ITL avg {g('inter_token_latency'):6.2f} ms  request p99 {g('request_latency','p99'):7.1f} ms"
      f"  out len {g('output_sequence_length'):5.1f}")
PY
}
for c in 1 8; do
    run openai-chat "$c" llama --service-kind openai --endpoint-type chat --url "localhost:$OPENAI"
    run openai-compl "$c" llama --service-kind openai --endpoint-type completions --url "localhost:$OPENAI"
    run triton-grpc "$c" llama_stream --service-kind triton --backend tensorrtllm --url "localhost:$GRPC"
done
