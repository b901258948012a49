#!/usr/bin/env python3
"""llama.cpp q8_0 logit drift on the test fixtures, computed independently of the engine (numpy only).

For each fixture model (tests/fixtures/models/<name>/hf) this runs a plain float64 Llama forward pass over
four fixed 64-token sequences twice: exact, and as llama.cpp computes a q8_0 GGUF (every matrix - the token
embedding, the projections and the LM head - stored as blocks of 32 with an f16 scale max|w|/127 and values
rounded to nearest; the activations entering each matmul quantized the same way, as ggml's q8_0 x q8_0 dot
does). It writes the drift to tests/fixtures/models/<name>/q8_0_drift.json, which tests/weights.rs holds the
engine's int8 weights to: max-abs and rms logit difference over the std of the exact logits, and argmax
agreement, each the mean over the four sequences (one sequence alone is a noisy sample: its max-abs/std
ranges 0.37-0.59 on gqa_bf16).

The exact pass is first checked against the transformers logits in golden.json (so the forward pass is right).

Usage: .venv/bin/python scripts/q8_drift_reference.py
"""

import json
import struct
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "models"
MODELS = ["gqa_bf16", "mha_f32"]
POSITIONS = 64
STRIDES = [37, 41, 53, 59]


def ids_for(vocab: int, stride: int) -> list[int]:
    """The token sequences tests/weights.rs uses too."""
    return [1] + [(i * stride + 11) % vocab for i in range(1, POSITIONS)]


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = raw[base + a : base + b]
        if info["dtype"] == "BF16":
            v = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif info["dtype"] == "F32":
            v = np.frombuffer(buf, dtype="<f4")
        elif info["dtype"] == "F16":
            v = np.frombuffer(buf, dtype="<f2").astype(np.float32)
        else:
            raise SystemExit(f"{name}: dtype {info['dtype']}")
        out[name] = v.reshape(info["shape"]).astype(np.float64)
    return out


def q8_0(x: np.ndarray) -> np.ndarray:
    """Quantize-dequantize along the last axis in blocks of 32 (zero-padded), f16 scale, round to nearest."""
    k = x.shape[-1]
    pad = (-k) % 32
    xp = np.concatenate([x, np.zeros(x.shape[:-1] + (pad,))], axis=-1) if pad else x
    b = xp.reshape(xp.shape[:-1] + (-1, 32))
    d = (np.abs(b).max(axis=-1, keepdims=True) / 127.0).astype(np.float16).astype(np.float64)
    q = np.where(d > 0, np.clip(np.round(b / np.where(d > 0, d, 1.0)), -127, 127), 0.0)
    return (q * d).reshape(xp.shape)[..., :k]


def forward(w: dict, cfg: dict, ids: list[int], quant: bool) -> np.ndarray:
    h, nq, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or h // nq
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    qw = (lambda m: q8_0(m)) if quant else (lambda m: m)
    qa = qw

    def lin(x, name):
        return qa(x) @ qw(w[name]).T

    def norm(x, name):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w[name]

    n = len(ids)
    x = qw(w["model.embed_tokens.weight"])[ids]
    inv = 1.0 / theta ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(t):  # [n, heads, hd], split halves
        rot = np.concatenate([-t[..., hd // 2 :], t[..., : hd // 2]], -1)
        return t * cos[:, None, :] + rot * sin[:, None, :]

    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        a = norm(x, p + "input_layernorm.weight")
        q = rope(lin(a, p + "self_attn.q_proj.weight").reshape(n, nq, hd))
        k = rope(lin(a, p + "self_attn.k_proj.weight").reshape(n, nkv, hd))
        v = lin(a, p + "self_attn.v_proj.weight").reshape(n, nkv, hd)
        g = nq // nkv
        k, v = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, nq * hd)
        x = x + lin(o, p + "self_attn.o_proj.weight")
        m = norm(x, p + "post_attention_layernorm.weight")
        gate, up = lin(m, p + "mlp.gate_proj.weight"), lin(m, p + "mlp.up_proj.weight")
        x = x + lin(gate / (1 + np.exp(-gate)) * up, p + "mlp.down_proj.weight")
    return lin(norm(x, "model.norm.weight"), "lm_head.weight")


def main() -> None:
    for name in MODELS:
        d = ROOT / name
        cfg = json.loads((d / "hf" / "config.json").read_text())
        w = load_safetensors(d / "hf" / "model.safetensors")
        golden = json.loads((d / "golden.json").read_text())
        worst = 0.0
        for c in golden["cases"]:
            got = forward(w, cfg, c["input_ids"], False)
            worst = max(worst, float(np.abs(got - np.array(c["logits"])).max()))
        assert worst < 1e-3, f"{name}: numpy forward is {worst} from transformers"
        seqs, stats = [], []
        for stride in STRIDES:
            ids = ids_for(cfg["vocab_size"], stride)
            exact, q8 = forward(w, cfg, ids, False), forward(w, cfg, ids, True)
            std = float(exact.std())
            diff = np.abs(q8 - exact)
            seqs.append(ids)
            stats.append((float(diff.max()) / std, float(np.sqrt((diff**2).mean())) / std,
                          float((q8.argmax(-1) == exact.argmax(-1)).mean())))
        m = np.array(stats).mean(axis=0)
        out = {
            "sequences": seqs,
            "per_sequence_max_abs_rms_argmax": stats,
            "max_abs_over_std": float(m[0]),
            "rms_over_std": float(m[1]),
            "argmax_agreement": float(m[2]),
            "numpy_vs_transformers_max_abs": worst,
        }
        (d / "q8_0_drift.json").write_text(json.dumps(out, indent=1) + "\n")
        print(name, {k: v for k, v in out.items() if k != "sequences"})


if __name__ == "__main__":
    main()
