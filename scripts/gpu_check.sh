#!/usr/bin/env bash
# GPU check in one command, in two halves:
#   on the build machine (Rust + nvcc, no GPU):  bash scripts/gpu_check.sh --stage
#       builds with --features cuda and puts stripped binaries in target/gpu_bundle/ and, with tritonserver
#       (below), in target/gpu_bundle.tar.xz (about 49 MB: carry that file; the device tool carries 64 MiB);
#   on the GPU machine (no Rust, CUDA driver, Python env with nvidia-cublas and nvidia-nccl):  bash scripts/gpu_check.sh
#       runs each kernel against its CPU twin, the fixture models on CUDA against the CPU engine (TP=2 when two
#       GPUs are present), the Llama-2-7B-shape benchmark in bf16 and in FP8 (issue 19: the FP8 batch-1 decode
#       against bf16's in the same run), tritonserver with our backend on the GPU answering one greedy request
#       (scripts/gpu_triton_check.py; compared with `triton-llama generate --device cpu`, TTFT measured), and last
#       the full 80-layer NV-Llama2-70B shape with FP8 weights on one GPU (decode at batch 1/16/64 against the
#       copy bandwidth, prefill 2048 against one large FP8 GEMM) and one TP=2 rank of 70B in bf16 decoding at 2k
#       and 4k contexts, then writes one JSON summary to $OUT/gpu_check.json (or prints it when OUT is unset);
#       `issue18_goals` and `issue19_goals` hold the issues' measured ratios.
#       Missing devices fail here (TL_REQUIRE_GPU=1).
# tritonserver is not on a typical GPU machine: --stage also packs the one of .venv's nvidia-pytriton (with the
# libraries it links, stripped) into the bundle's triton/ folder. Without it, and
# without a tritonserver there, the Triton step records "skipped" with the reason (never a pass); the summary
# lists skipped steps under "skipped", and its "ok" means only that nothing which ran failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE="${TL_BUNDLE:-target/gpu_bundle}"

if [ "${1:-}" = --stage ]; then
    set -e
    # shellcheck source=install_cuda_toolchain.sh
    source scripts/install_cuda_toolchain.sh
    cargo build --release --locked --features cuda
    rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
    cargo test --release --locked --features cuda --no-run --message-format=json --test cuda_kernels --test cuda_models 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"): print(m["target"]["name"], m["executable"])' |
        while read -r name exe; do cp "$exe" "$BUNDLE/$name"; done
    cp target/release/triton-llama target/release/libtriton_llama.so "$BUNDLE/"
    strip --strip-debug "$BUNDLE"/*
    # tritonserver from pytriton's wheel (RPATH $ORIGIN/../../../nvidia_pytriton.libs) with the libraries it links.
    SITE="$(.venv/bin/python -c 'import pytriton, os; print(os.path.dirname(os.path.dirname(pytriton.__file__)))' 2>/dev/null || true)"
    if [ -n "$SITE" ] && [ -x "$SITE/pytriton/tritonserver/bin/tritonserver" ]; then
        T="$BUNDLE/triton"
        mkdir -p "$T/pytriton/tritonserver/bin" "$T/nvidia_pytriton.libs"
        cp "$SITE/pytriton/tritonserver/bin/tritonserver" "$T/pytriton/tritonserver/bin/"
        ldd "$SITE/pytriton/tritonserver/bin/tritonserver" | grep -o '/[^ ]*nvidia_pytriton\.libs/[^ ]*' | sort -u |
            while read -r lib; do cp "$lib" "$T/nvidia_pytriton.libs/"; done
        strip --strip-unneeded "$T/pytriton/tritonserver/bin/tritonserver" "$T"/nvidia_pytriton.libs/*
    else
        echo "no .venv nvidia-pytriton: no tritonserver packed; the Triton step will use one on the GPU machine or be skipped"
    fi
    rm -f "$BUNDLE.tgz" "$(dirname "$BUNDLE")/gpu_triton.tgz"
    tar cf - -C "$(dirname "$BUNDLE")" "$(basename "$BUNDLE")" | xz -6 -T0 > "$BUNDLE.tar.xz"
    du -sh "$BUNDLE"/* "$BUNDLE.tar.xz"
    echo "carry $BUNDLE.tar.xz (or $BUNDLE) to the GPU machine, then run: bash scripts/gpu_check.sh"
    exit 0
fi

if [ ! -d "$BUNDLE" ] && [ -f "$BUNDLE.tar.xz" ]; then
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$BUNDLE.tar.xz" "$(dirname "$BUNDLE")"
fi
R="${OUT:-$(mktemp -d)}"
mkdir -p "$R/logs"
for f in cuda_kernels cuda_models triton-llama; do
    [ -x "$BUNDLE/$f" ] || { echo "missing $BUNDLE/$f: run 'bash scripts/gpu_check.sh --stage' on the build machine" >&2; exit 2; }
done

# cuBLAS (libcublas.so.13 / .12) and NCCL (libnccl.so.2) from the Python environment's wheels, found by their
# installed names through LD_LIBRARY_PATH (no symlinks: the engine loads the names the packages install).
PYLIBS="$(python3 -c 'import glob, os, sys
print(":".join(sorted({d for p in sys.path for d in glob.glob(os.path.join(p, "nvidia", "*", "lib"))})))' 2>/dev/null || true)"
export LD_LIBRARY_PATH="$PYLIBS:${LD_LIBRARY_PATH:-}"
export NCCL_RUNTIME_CONNECT=0 NCCL_LAUNCH_MODE=PARALLEL  # as the Dockerfile and deploy_triton.py set them
export TL_REQUIRE_GPU=1 TL_FIXTURES="$PWD/tests/fixtures" RUST_LOG="${RUST_LOG:-warn}"

nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader > "$R/logs/nvidia-smi.txt" 2>&1 || true
declare -A RC SECS
step() { # name timeout command...
    local name="$1" limit="$2"; shift 2
    local t0; t0="$(date +%s.%N)"
    timeout "$limit" "$@" > "$R/logs/$name.log" 2>&1
    RC[$name]=$?
    SECS[$name]="$(python3 -c "import time; print(round(time.time() - $t0, 2))")"
    echo "$name: rc=${RC[$name]} (${SECS[$name]} s)"
}
step kernels "${TL_STEP_S:-150}" "$BUNDLE/cuda_kernels" --include-ignored --test-threads=1
step models "${TL_STEP_S:-150}" "$BUNDLE/cuda_models" --include-ignored --test-threads=1
CKPT="$TL_FIXTURES/models/gqa_bf16/hf"
step score_cpu 60 sh -c "\"$BUNDLE/triton-llama\" score \"$CKPT\" --prompt 'The quick brown fox jumps over the lazy dog.' --json > \"$R/score_cpu.json\""
step score_cpu_bf16 60 sh -c "\"$BUNDLE/triton-llama\" score \"$CKPT\" --prompt 'The quick brown fox jumps over the lazy dog.' --weights bf16 --json > \"$R/score_cpu_bf16.json\""
step score_cuda 60 sh -c "\"$BUNDLE/triton-llama\" score \"$CKPT\" --prompt 'The quick brown fox jumps over the lazy dog.' --device cuda:0 --json > \"$R/score_cuda.json\""
step bench "${TL_BENCH_S:-240}" sh -c "\"$BUNDLE/triton-llama\" bench-cuda --json > \"$R/bench.json\""
# FP8 (issue 19): the 7B shape with FP8 weights (its batch-1 decode against the bf16 run above), then the full
# 80-layer NV-Llama2-70B shape with FP8 weights on this one GPU (69.5 GB; TL_70B_LAYERS=N runs fewer layers).
step bench_fp8 "${TL_BENCH_S:-240}" sh -c "\"$BUNDLE/triton-llama\" bench-cuda --weights fp8 --json > \"$R/bench_fp8.json\""
step triton "${TL_STEP_S:-150}" python3 scripts/gpu_triton_check.py --bundle "$BUNDLE" --ckpt "$CKPT" --device cuda --workdir "$R/triton" --out "$R/triton.json"
# Issue 18's shape: one TP=2 rank of 70B (32/4 heads, FFN 14336, 80 layers, bf16 weights) decoding at 2k and 4k
# contexts, with an fp8 KV cache (80 KiB per token: batch 64 at 2k fits beside the 69.5 GB of weights on an H100).
step bench_70b_tp2_rank "${TL_BENCH_70B_S:-360}" sh -c "\"$BUNDLE/triton-llama\" bench-cuda --shape 70b-tp2-rank --layers ${TL_70B_RANK_LAYERS:-80} --kv-cache-dtype ${TL_70B_RANK_KV:-fp8} --batches 1,64 --contexts 2048,4096 --prefill 2048 --steps 8 --json > \"$R/bench_70b_tp2_rank.json\""
step bench_70b_fp8 "${TL_BENCH_70B_S:-360}" sh -c "\"$BUNDLE/triton-llama\" bench-cuda --shape 70b --weights fp8 --layers ${TL_70B_LAYERS:-80} --batches 1,16,64 --prefill 2048 --steps 16 --json > \"$R/bench_70b_fp8.json\""

python3 - "$R" "${RC[kernels]}" "${SECS[kernels]}" "${RC[models]}" "${SECS[models]}" "${RC[bench]}" "${SECS[bench]}" "${RC[bench_fp8]}" "${RC[bench_70b_fp8]}" "${RC[bench_70b_tp2_rank]}" <<'PY'
import json, os, re, sys
r = sys.argv[1]
def test_step(name, rc, secs):
    log = open(os.path.join(r, "logs", name + ".log"), errors="replace").read()
    res = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed", log)
    return {"rc": int(rc), "seconds": float(secs), "passed": sum(int(a) for a, _ in res), "failed": sum(int(b) for _, b in res),
            "skipped": re.findall(r"SKIPPED [^\n]*", log), "tail": log[-3000:]}
def cli_score():
    # cuda vs the exact CPU engine (the bf16 drift, < 0.1) and vs the CPU's --weights bf16 (the GPU's arithmetic).
    try:
        lp = lambda f: json.load(open(os.path.join(r, f)))["logprobs"]
        c, b, g = lp("score_cpu.json"), lp("score_cpu_bf16.json"), lp("score_cuda.json")
        diff = lambda x: max(abs(p - q) for p, q in zip(x, g)) if len(x) == len(g) else None
        d, db = diff(c), diff(b)
        return {"tokens": len(c), "max_abs_logprob_diff": d, "max_abs_logprob_diff_vs_cpu_bf16": db,
                "ok": d is not None and d < 0.1 and db is not None and db < 0.03}
    except Exception as e:
        return {"error": str(e), "ok": False}
def triton():
    try:
        return json.load(open(os.path.join(r, "triton.json")))
    except Exception as e:
        return {"status": "fail", "reason": f"no result from scripts/gpu_triton_check.py: {e}",
                "log_tail": open(os.path.join(r, "logs", "triton.log"), errors="replace").read()[-3000:]}
def bench_json(name):
    try:
        return json.load(open(os.path.join(r, name + ".json")))
    except Exception as e:
        return {"error": str(e), "log_tail": open(os.path.join(r, "logs", name + ".log"), errors="replace").read()[-3000:]}
bench, bench_fp8, bench_70b = bench_json("bench"), bench_json("bench_fp8"), bench_json("bench_70b_fp8")
bench_rank = bench_json("bench_70b_tp2_rank")
def at_context(b, batch, ctx):
    return next((p for p in b.get("decode_at_context", []) if p["batch"] == batch and p["context"] == ctx), {})
r1_4k, r64_2k, r1_2k = at_context(bench_rank, 1, 4096), at_context(bench_rank, 64, 2048), at_context(bench_rank, 1, 2048)
def point(b, key, field, where):
    return next((p[field] for p in b.get(key, []) if p.get(where[0]) == where[1]), None)
def ratio(a, b):
    return round(a / b, 3) if a and b else None
# Issue 19's goals, measured in this run (benchmarks: reported, never part of "ok").
fp8_decode = ratio(point(bench_fp8, "decode", "tok_s", ("batch", 1)), point(bench, "decode", "tok_s", ("batch", 1)))
issue19_goals = {
    "fp8_7b_batch1_decode_vs_bf16": {"value": fp8_decode, "goal": ">= 1.7", "met": fp8_decode is not None and fp8_decode >= 1.7},
    "fp8_70b_batch1_fraction_of_copy_bandwidth": {"value": bench_70b.get("batch1_bandwidth_ratio"), "goal": ">= 0.70 on one H200",
        "met": (bench_70b.get("batch1_bandwidth_ratio") or 0) >= 0.70, "layers": bench_70b.get("num_layers")},
    "fp8_70b_decode_tok_s": {str(p["batch"]): p["tok_s"] for p in bench_70b.get("decode", [])},
    "fp8_70b_prefill_2048": next(iter(bench_70b.get("prefill", [])), None),
    "prefill_2048_tok_s_bf16_7b": point(bench, "prefill", "tok_s", ("tokens", 2048)),
    "prefill_2048_bf16_7b_vs_2026_12_04_h200": {"value": ratio(point(bench, "prefill", "tok_s", ("tokens", 2048)), 8500.0),
        "goal": ">= 3 (8.5k tok/s before tensor-core attention, H200; another run, so only indicative)"},
    "prefill_attention_4096_tflops": {"tensor_cores": (bench.get("attention") or {}).get("tensor_core_tflops"),
        "f32_same_run": (bench.get("attention") or {}).get("f32_tflops"), "goal": ">= 300",
        "met": ((bench.get("attention") or {}).get("tensor_core_tflops") or 0) >= 300},
    "prefill_2048_tok_s_fp8_7b": point(bench_fp8, "prefill", "tok_s", ("tokens", 2048)),
}
# Issue 18's goals, measured in this run (benchmarks: reported, never part of "ok").
issue18_goals = {
    "7b_batch1_fraction_of_copy": {"value": bench.get("batch1_bandwidth_ratio"), "goal": ">= 0.80"},
    "70b_tp2_rank_batch1_4k_fraction_of_copy": {"value": r1_4k.get("fraction_of_copy"), "goal": ">= 0.75",
        "skipped": r1_4k.get("skipped"), "layers": bench_rank.get("num_layers"), "kv_cache": bench_rank.get("kv_cache")},
    "70b_tp2_rank_batch64_2k_over_batch1_2k_step": {"value": ratio(r64_2k.get("ms_per_step"), r1_2k.get("ms_per_step")),
        "goal": "<= 2", "skipped": r64_2k.get("skipped")},
    "70b_tp2_rank_loads_prefills_2048_and_decodes_batch64": {"rc": int(sys.argv[10]),
        "prefill_2048": next(iter(bench_rank.get("prefill", [])), None), "batch64_2k_skipped": r64_2k.get("skipped")},
}
summary = {
    "gpus": open(os.path.join(r, "logs", "nvidia-smi.txt"), errors="replace").read().strip().splitlines(),
    "kernels_vs_cpu": test_step("kernels", sys.argv[2], sys.argv[3]),
    "fixture_models_cuda_vs_cpu": test_step("models", sys.argv[4], sys.argv[5]),
    "bench_llama2_7b_shape": bench,
    "bench_rc": int(sys.argv[6]), "bench_seconds": float(sys.argv[7]),
    "bench_fp8_7b": bench_fp8, "bench_fp8_rc": int(sys.argv[8]),
    "bench_fp8_70b": bench_70b, "bench_70b_fp8_rc": int(sys.argv[9]),
    "issue19_goals": issue19_goals,
    "bench_70b_tp2_rank": bench_rank, "bench_70b_tp2_rank_rc": int(sys.argv[10]),
    "issue18_goals": issue18_goals,
    "cli_score_cuda_vs_cpu": cli_score(),
    "triton_on_gpu": triton(),
    "tolerance": "kernels: rel 1e-5 (norms), 1e-3 (rope at positions up to 1100), 1e-4 (attention); models: |gpu-cpu| <= 0.03*max(1,max|cpu|) per row",
}
summary["ok"] = all(s["rc"] == 0 and s["failed"] == 0 and s["passed"] > 0 for s in (summary["kernels_vs_cpu"], summary["fixture_models_cuda_vs_cpu"])) and summary["bench_rc"] == 0 and summary["bench_fp8_rc"] == 0 and summary["bench_70b_fp8_rc"] == 0 and summary["bench_70b_tp2_rank_rc"] == 0 and summary["cli_score_cuda_vs_cpu"]["ok"] and summary["triton_on_gpu"]["status"] != "fail"
# A skipped step did not pass: it is listed here and `ok` only means nothing that ran failed.
summary["skipped"] = ["triton_on_gpu: " + summary["triton_on_gpu"].get("reason", "")] if summary["triton_on_gpu"]["status"] == "skipped" else []
text = json.dumps(summary, indent=2)
open(os.path.join(r, "gpu_check.json"), "w").write(text)
print(text if not os.environ.get("OUT") else "wrote " + os.path.join(r, "gpu_check.json"))
sys.exit(0 if summary["ok"] else 1)
PY
