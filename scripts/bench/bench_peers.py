#!/usr/bin/env python3
"""Side-by-side CPU benchmark pieces for scripts/bench/bench_peers.sh (triton-llama vs llama.cpp on the same weights).

Subcommands (each run by bench_peers.sh in the venv that has what it needs):
  make-model DIR            deterministic TinyLlama-1.1B-shape random Llama checkpoint, HF layout, bf16 safetensors
                            + the fixture SentencePiece tokenizer.model (numpy only)
  llamacpp GGUF OUT.json    llama.cpp through its C API (llama_cpp package): decode at several batch sizes and
                            prefill lengths, timed as `triton-llama bench` times its steps
  logits GGUF OUT.npy       llama.cpp logits at every position of a fixed prompt (for the drift table)
  ours-logits CLI CKPT OUT.npy [ARGS...]
                            triton-llama's logits at every position of the same prompt (`score --logits-out`)
  drift A.npy B.npy         max-abs / std of A, argmax agreement: B against the reference A
  table RESULTS_DIR         the table of ratios, from the per-round JSON files the script wrote
"""

import json
import os
import statistics
import struct
import sys
import time

# The TinyLlama-1.1B shape (docs/cpu-peer-benchmark.md).
SHAPE = dict(hidden=2048, layers=22, heads=32, kv_heads=4, inter=5632, vocab=32000, max_pos=2048)
SEED = 20261201
# Drift prompt: 64 token ids inside the fixture tokenizer's 1000 pieces (BOS first), the same for both engines.
DRIFT_IDS = [1] + [3 + (i * 37 + 11) % 997 for i in range(63)]


def _bf16_bits(a):
    """float32 array -> bf16 bit patterns (uint16), round to nearest even."""
    import numpy as np

    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def make_model(out, tokenizer_model):
    """Matrices N(0, 0.02), RMSNorm weights U(0.7, 1.3), one PCG64 stream per tensor seeded by (SEED, index)."""
    import numpy as np

    s = SHAPE
    h, kvd = s["hidden"], s["kv_heads"] * (s["hidden"] // s["heads"])
    names = [("model.embed_tokens.weight", (s["vocab"], h))]
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        names += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.k_proj.weight", (kvd, h)),
            (p + "self_attn.v_proj.weight", (kvd, h)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (s["inter"], h)),
            (p + "mlp.up_proj.weight", (s["inter"], h)),
            (p + "mlp.down_proj.weight", (h, s["inter"])),
        ]
    names += [("model.norm.weight", (h,)), ("lm_head.weight", (s["vocab"], h))]
    header, off = {}, 0
    for name, shape in names:
        n = 2 * int(np.prod(shape))
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    header["__metadata__"] = {"format": "pt"}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, "model.safetensors.tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj)
        for idx, (name, shape) in enumerate(names):
            rng = np.random.Generator(np.random.PCG64([SEED, idx]))
            if len(shape) == 1:
                a = rng.uniform(0.7, 1.3, size=shape).astype(np.float32)
            else:
                a = rng.standard_normal(size=shape, dtype=np.float32) * np.float32(0.02)
            f.write(_bf16_bits(a).tobytes())
            print(f"\r  {idx + 1}/{len(names)} tensors", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    os.replace(tmp, os.path.join(out, "model.safetensors"))
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "intermediate_size": s["inter"],
        "num_hidden_layers": s["layers"],
        "num_attention_heads": s["heads"],
        "num_key_value_heads": s["kv_heads"],
        "vocab_size": s["vocab"],
        "max_position_embeddings": s["max_pos"],
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attention_bias": False,
        "mlp_bias": False,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    with open(tokenizer_model, "rb") as src, open(os.path.join(out, "tokenizer.model"), "wb") as dst:
        dst.write(src.read())


class LlamaCpp:
    """A llama.cpp model and context through the C API (not the high-level Llama class)."""

    def __init__(self, gguf, threads, n_seq_max, n_ctx_seq, n_batch):
        import llama_cpp as L

        self.L = L
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.use_mmap = False  # weights read into memory, as triton-llama does
        mp.n_gpu_layers = 0
        t = time.perf_counter()
        self.model = L.llama_model_load_from_file(gguf.encode(), mp)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {gguf}")
        cp = L.llama_context_default_params()
        cp.n_ctx = n_seq_max * n_ctx_seq
        cp.n_batch = cp.n_ubatch = n_batch
        cp.n_seq_max = n_seq_max
        cp.n_threads = cp.n_threads_batch = threads
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise SystemExit("llama.cpp could not create a context")
        self.load_s = time.perf_counter() - t
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_seq_max = n_seq_max

    def clear(self):
        self.L.llama_memory_clear(self.L.llama_get_memory(self.ctx), True)

    def decode(self, seqs, all_logits=False):
        """One llama_decode of `seqs`: a list of (seq_id, start position, token ids); returns seconds."""
        L = self.L
        n = sum(len(ids) for _, _, ids in seqs)
        b = L.llama_batch_init(n, 0, self.n_seq_max)
        k = 0
        for s, start, ids in seqs:
            for j, tok in enumerate(ids):
                b.token[k], b.pos[k], b.n_seq_id[k] = tok, start + j, 1
                b.seq_id[k][0] = s
                b.logits[k] = 1 if (all_logits or j == len(ids) - 1) else 0
                k += 1
        b.n_tokens = n
        t = time.perf_counter()
        rc = L.llama_decode(self.ctx, b)
        L.llama_synchronize(self.ctx)
        dt = time.perf_counter() - t
        L.llama_batch_free(b)
        if rc != 0:
            raise SystemExit(f"llama_decode returned {rc}")
        return dt

    def logits_row(self, i):
        import numpy as np

        p = self.L.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(p, shape=(self.n_vocab,)).copy()


def synth(s, p, vocab):
    """The token id `triton-llama bench` uses for sequence s at position p."""
    return (s * 7919 + p * 31) % (vocab - 3) + 3


def llamacpp_bench(gguf, out, batches, prefills, steps, threads):
    """The measurements of `triton-llama bench`, mirrored: per batch size a 16-token prompt per sequence, one
    warm-up step, `steps` timed steps of one token per sequence; then each prefill length as one prompt in one
    llama_decode. Wall-clock time around llama_decode."""
    import llama_cpp as L

    per_seq = max(max(prefills, default=0), 16 + steps + 8) + 16
    m = LlamaCpp(gguf, threads, max(batches), per_seq, max(512, max(prefills, default=0)))
    v = m.n_vocab
    m.decode([(0, 0, [synth(0, p, v) for p in range(16)])])  # warm-up: prompt + 8 steps
    for i in range(8):
        m.decode([(0, 16 + i, [synth(0, 16 + i, v)])])
    m.clear()
    decode = []
    for bsz in batches:
        m.decode([(s, 0, [synth(s, p, v) for p in range(16)]) for s in range(bsz)])
        m.decode([(s, 16, [synth(s, 16, v)]) for s in range(bsz)])
        t = sum(m.decode([(s, 17 + i, [synth(s, 17 + i, v)]) for s in range(bsz)]) for i in range(steps))
        step = t / steps
        decode.append({"batch": bsz, "ms_per_step": step * 1e3, "tok_s": bsz / step})
        m.clear()
    prefill = []
    for n in prefills:
        dt = m.decode([(0, 0, [synth(0, p, v) for p in range(n)])])
        prefill.append({"tokens": n, "ms": dt * 1e3, "tok_s": n / dt})
        m.clear()
    info = L.llama_print_system_info().decode()
    res = {
        "engine": "llama.cpp",
        "gguf": gguf,
        "load_s": m.load_s,
        "threads": threads,
        "decode": decode,
        "prefill": prefill,
        "system_info": info,
    }
    with open(out, "w") as f:
        json.dump(res, f, indent=1)


def llamacpp_logits(gguf, out, threads):
    import numpy as np

    m = LlamaCpp(gguf, threads, 1, 256, 512)
    m.decode([(0, 0, DRIFT_IDS)], all_logits=True)
    np.save(out, np.stack([m.logits_row(i) for i in range(len(DRIFT_IDS))]).astype(np.float32))


def ours_logits(cli, ckpt, out, extra):
    import subprocess

    import numpy as np

    raw = out + ".f32"
    ids = ",".join(map(str, DRIFT_IDS))
    subprocess.run(
        [cli, "score", ckpt, "--ids", ids, "--logits-out", raw, *extra], check=True, stdout=subprocess.DEVNULL
    )
    a = np.fromfile(raw, dtype="<f4").reshape(len(DRIFT_IDS), -1)
    os.remove(raw)
    np.save(out, a)


def drift(ref, other):
    """Max |other - ref| over all logits, as a fraction of the std of ref; argmax agreement over positions."""
    import numpy as np

    a, b = np.load(ref), np.load(other)
    v = min(a.shape[1], b.shape[1])
    a, b = a[:, :v].astype(np.float64), b[:, :v].astype(np.float64)
    return {
        "positions": a.shape[0],
        "max_abs_over_std": float(np.abs(a - b).max() / a.std()),
        "rms_over_std": float(np.sqrt(((a - b) ** 2).mean()) / a.std()),
        "argmax_agree": int((a.argmax(1) == b.argmax(1)).sum()),
    }


def _load(d, name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else None


def _decode(r, b):
    return next((x["tok_s"] for x in (r or {}).get("decode", []) if x["batch"] == b), None)


def _prefill(r, n):
    return next((x["tok_s"] for x in (r or {}).get("prefill", []) if x["tokens"] == n), None)


def table(d):
    rounds = sorted({f.split("-")[0] for f in os.listdir(d) if f.startswith("r") and f.endswith(".json")})
    kinds = ("llama-bf16", "llama-q8_0", "ours-bf16", "ours-f32", "ours-int8")
    runs = {k: [_load(d, f"{r}-{k}.json") for r in rounds] for k in kinds}
    rows = [  # label, peer key, ours key, getter, arg, goal
        ("decode, batch 1 (bf16)", "llama-bf16", "ours-bf16", _decode, 1, 1.1),
        ("prefill, 128 tokens (bf16)", "llama-bf16", "ours-bf16", _prefill, 128, 1.2),
        ("prefill, 512 tokens (bf16)", "llama-bf16", "ours-bf16", _prefill, 512, 1.2),
        ("aggregate decode, 4 sequences (bf16)", "llama-bf16", "ours-bf16", _decode, 4, None),
        ("aggregate decode, 8 sequences (bf16)", "llama-bf16", "ours-bf16", _decode, 8, None),
        ("decode, batch 1 (bf16; ours --weights f32, exact)", "llama-bf16", "ours-f32", _decode, 1, None),
        ("prefill, 128 tokens (bf16; ours --weights f32, exact)", "llama-bf16", "ours-f32", _prefill, 128, None),
        ("prefill, 512 tokens (bf16; ours --weights f32, exact)", "llama-bf16", "ours-f32", _prefill, 512, None),
        ("aggregate decode, 8 sequences (bf16; ours --weights f32, exact)", "llama-bf16", "ours-f32", _decode, 8, None),
        ("decode, batch 1: int8 vs q8_0", "llama-q8_0", "ours-int8", _decode, 1, 1.0),
        ("prefill, 128 tokens: int8 vs q8_0", "llama-q8_0", "ours-int8", _prefill, 128, 1.5),
        ("prefill, 512 tokens: int8 vs q8_0", "llama-q8_0", "ours-int8", _prefill, 512, 1.5),
        ("aggregate decode, 8 sequences: int8 vs q8_0", "llama-q8_0", "ours-int8", _decode, 8, None),
    ]

    def fmt(xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            return "n/a"
        return f"{statistics.median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})" if len(xs) > 1 else f"{xs[0]:.1f}"

    la = os.path.join(d, "loadavg.txt")
    la = [float(x) for x in open(la).read().split()] if os.path.exists(la) else []
    # What each engine ran on: the CPU, our matmul kernels per weight format (from each bench JSON), llama.cpp's
    # system_info (its compiled SIMD paths).
    lines = []
    cpu = next((r.get("cpu") for k in kinds if k.startswith("ours") for r in runs[k] if r and r.get("cpu")), None)
    if cpu:
        lines.append(f"CPU: {cpu}")
    for k in ("ours-bf16", "ours-f32", "ours-int8"):
        ks = sorted({r.get("cpu_kernels", "?") for r in runs[k] if r})
        if ks:
            lines.append(f"triton-llama {k[5:]} kernels ({os.environ.get('TL_CPU_KERNEL', 'auto')}): {'; '.join(ks)}")
    info = next((r.get("system_info") for k in kinds if k.startswith("llama") for r in runs[k] if r), None)
    if info:
        lines.append(f"llama.cpp system_info: {info.strip()}")
    lines += [
        f"{len(rounds)} interleaved rounds; tok/s as median (min-max); ratio = median over rounds of "
        "triton-llama / llama.cpp in the same round"
        + (
            f"; 1-minute load average before the runs {min(la):.1f}-{max(la):.1f} on {os.cpu_count()} cores"
            if la
            else ""
        ),
        "",
        "| | llama.cpp tok/s | triton-llama tok/s | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for label, pk, ok, get, arg, goal in rows:
        p = [get(r, arg) for r in runs[pk]]
        o = [get(r, arg) for r in runs[ok]]
        ratios = [b / a for a, b in zip(p, o) if a and b]
        ratio = f"**{statistics.median(ratios):.2f}**" if ratios else "n/a"
        lines.append(f"| {label} | {fmt(p)} | {fmt(o)} | {ratio} | {'>= %.1f' % goal if goal else ''} |")
    for k, name in (
        ("ours-bf16", "triton-llama bf16"),
        ("ours-f32", "triton-llama --weights f32"),
        ("llama-bf16", "llama.cpp bf16"),
        ("ours-int8", "triton-llama int8"),
        ("llama-q8_0", "llama.cpp q8_0"),
    ):
        sc = [_decode(r, 8) / _decode(r, 1) for r in runs[k] if _decode(r, 8) and _decode(r, 1)]
        if sc:
            lines.append(
                f"| {name}: aggregate decode 8 sequences / batch 1 | | | {statistics.median(sc):.2f} | "
                f"{'>= 4.0' if k == 'ours-bf16' else ''} |"
            )
    # Batch-1 decode is memory-bound: each engine against the most this machine's memory lets a step stream,
    # measured inside each triton-llama run (read bandwidth / bytes per step); llama.cpp's run of the same round
    # streams the same bytes (bf16: 2 per weight; q8_0 and our int8: 34 per 32).
    ceil_rows = [
        ("bf16", "llama-bf16", "ours-bf16"),
        ("bf16, ours --weights f32", "llama-bf16", "ours-f32"),
        ("int8 vs q8_0", "llama-q8_0", "ours-int8"),
    ]
    head = False
    for label, pk, ok in ceil_rows:
        trip = [
            (r.get("batch1_ceiling_tok_s"), _decode(p, 1), _decode(r, 1))
            for p, r in zip(runs[pk], runs[ok])
            if r and p and r.get("batch1_ceiling_tok_s")
        ]
        if not trip:
            continue
        if not head:
            lines += [
                "",
                "Batch 1 against this machine's ceiling (all threads' read bandwidth, measured in each "
                "triton-llama run, / the bytes a step streams):",
                "",
                "| | ceiling tok/s | llama.cpp / ceiling | triton-llama / ceiling | goal |",
                "|---|---|---|---|---|",
            ]
            head = True
        lines.append(
            f"| decode, batch 1 ({label}) | {fmt([c for c, _, _ in trip])} | "
            f"{statistics.median([a / c for c, a, _ in trip if a]):.2f} | "
            f"{statistics.median([b / c for c, _, b in trip if b]):.2f} | "
            f"{'>= 0.8' if ok == 'ours-int8' else ''} |"
        )
    dr = {k: v for k, v in (_load(d, "drift.json") or {}).items() if v}
    if dr:
        lines += [
            "",
            "Logit drift over %d positions of one prompt "
            "(max |diff| / std of the bf16 logits; argmax agreement):" % next(iter(dr.values()))["positions"],
            "",
        ]
        for k, v in dr.items():
            lines.append(
                f"- {k}: max-abs/std {v['max_abs_over_std']:.4f}, rms/std {v['rms_over_std']:.4f}, "
                f"argmax {v['argmax_agree']}/{v['positions']}"
            )
    print("\n".join(lines))


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "make-model":
        make_model(argv[2], argv[3])
    elif cmd == "llamacpp":

        def env(k, d):
            return [int(x) for x in os.environ.get(k, d).split(",")]

        llamacpp_bench(
            argv[2],
            argv[3],
            env("BATCHES", "1,4,8"),
            env("PREFILLS", "128,512"),
            int(os.environ.get("STEPS", "32")),
            int(os.environ.get("THREADS", "2")),
        )
    elif cmd == "logits":
        llamacpp_logits(argv[2], argv[3], int(os.environ.get("THREADS", "2")))
    elif cmd == "ours-logits":
        ours_logits(argv[2], argv[3], argv[4], argv[5:])
    elif cmd == "drift":
        print(json.dumps(drift(argv[2], argv[3])))
    elif cmd == "table":
        table(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
