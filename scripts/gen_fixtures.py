#!/usr/bin/env python3
"""Generate the tiny-Llama correctness fixtures for triton-llama.

Writes tests/fixtures/models/<name>/ for two tiny random Llama models:

  mha_f32   hidden 64, 4 heads / 4 KV heads, 2 layers, ffn 176, float32 weights
  gqa_bf16  hidden 96, 8 heads / 4 KV heads (hd 12), 3 layers, ffn 200,
            rope_theta 50000, bfloat16 weights

For each model:
  hf/                     transformers save_pretrained (single model.safetensors)
                          + tokenizer.model (copy of the fixture SentencePiece model)
  hf_sharded/             (mha_f32 only) same weights in 2 safetensors shards + index
  *.nemo, nemo_dir/       NeMo mcore zarr dist-ckpt checkpoints (see VARIANTS below),
                          written from docs/checkpoint-formats.md sections 1-3, 5
  golden.json             transformers float32 logits / greedy decode oracle

The NeMo writer is checked in this script by an independent reader that parses the
tar/folder, reassembles the zarr chunks, undoes the Megatron layouts and compares
bit-for-bit with the HF safetensors.

Usage:
  /work/pyenv/bin/python scripts/gen_fixtures.py           # (re)generate everything
  /work/pyenv/bin/python scripts/gen_fixtures.py --check   # regenerate in a temp dir
                                                           # and compare with the tree

The output is deterministic: fixed seeds, single-threaded torch, fixed tar
mtimes/owners/ordering, fixed tokenizer artifact hex.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import transformers
import yaml
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "fixtures" / "tokenizer" / "llama_bpe.model"
OUT_DEFAULT = REPO / "tests" / "fixtures" / "models"

# NeMo artifact names are uuid4().hex + "_" + basename; fixed here for determinism.
TOKENIZER_HEX = "3f9d2c7a41b84e6f9a0c5d1e8b7f6a24"
TOKENIZER_ARTIFACT = f"{TOKENIZER_HEX}_llama_bpe.model"
assert len(TOKENIZER_HEX) == 32 and all(c in "0123456789abcdef" for c in TOKENIZER_HEX)

TAR_MTIME = 1701820800  # 2023-12-06T00:00:00Z, fixed
MAKE_VOCAB_DIVISIBLE_BY = 128
N_GREEDY = 24

MODELS = {
    "mha_f32": dict(
        hidden=64, heads=4, kv_heads=4, layers=2, ffn=176, vocab=1000, max_pos=256,
        eps=1e-5, theta=10000.0, dtype=torch.float32, seed=20231206,
        write_rotary_base=False,
    ),
    "gqa_bf16": dict(
        hidden=96, heads=8, kv_heads=4, layers=3, ffn=200, vocab=1000, max_pos=256,
        eps=1e-6, theta=50000.0, dtype=torch.bfloat16, seed=20240101,
        write_rotary_base=True,
    ),
}

# (file name, T, fc1 layout, tar style, zarr dimension separator)
#   tar style: "gnu_dot"  -> GNU tar run inside the model folder: `tar -cf X.nemo .`
#              "py_dot"   -> Python tarfile, arcname "." (what NeMo save_to does)
#              "gnu_root" -> GNU tar at a git repo root, model under NV-Tiny-Chat/
#              "dir"      -> the extracted folder form
VARIANTS = {
    "mha_f32": [
        ("model.nemo", 1, "glu_split", "gnu_dot", "."),
    ],
    "gqa_bf16": [
        ("model.nemo", 1, "glu_split", "py_dot", "."),
        ("model_tp2.nemo", 2, "glu_split", "py_dot", "."),
        ("model_tp2_interleaved.nemo", 2, "interleaved", "py_dot", "."),
        ("model_rootdir.nemo", 2, "glu_split", "gnu_root", "."),
        ("nemo_dir", 1, "glu_split", "dir", "/"),
    ],
}

PROMPTS = [
    # (name, text, add_bos)
    ("plain_english", "The quick brown fox jumps over the lazy dog.", True),
    ("newline_digits", "Line one\nLine 2 has 3 numbers: 42, 1234.", True),
    ("nemo_chat",
     "<extra_id_0>System\n\n<extra_id_1>User\nWhat is 2+2?\n<extra_id_1>Assistant\n",
     False),
    ("short_no_bos", "Once upon a time", False),
]


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------

def log(msg: str) -> None:
    print(msg, flush=True)


def f32_str(x) -> str:
    """Shortest repr that round-trips the float32 value (valid JSON number)."""
    s = str(np.float32(x))
    if not np.isfinite(np.float32(x)):
        raise ValueError(f"non-finite value {s}")
    return s


class F32List:
    """Marker: a (nested) float32 array to be emitted with float32 repr precision."""

    def __init__(self, arr):
        self.arr = np.asarray(arr, dtype=np.float32)


def to_json(obj, indent: int = 0) -> str:
    """Small JSON emitter: dicts indented, scalar lists inline, 2-D arrays one row/line."""
    pad = " " * indent
    pad2 = " " * (indent + 2)
    if isinstance(obj, F32List):
        a = obj.arr
        if a.ndim == 1:
            return "[" + ",".join(f32_str(v) for v in a) + "]"
        rows = [to_json(F32List(r), indent + 2) for r in a]
        return "[\n" + ",\n".join(pad2 + r for r in rows) + "\n" + pad + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [pad2 + json.dumps(str(k)) + ": " + to_json(v, indent + 2) for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(not isinstance(v, (dict, list, tuple, F32List)) for v in obj):
            return "[" + ",".join(to_json(v) for v in obj) + "]"
        items = [pad2 + to_json(v, indent + 2) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(obj, (float, np.floating)):
        return f32_str(obj) if isinstance(obj, np.float32) else json.dumps(float(obj))
    if isinstance(obj, (np.integer,)):
        return str(int(obj))
    return json.dumps(obj, ensure_ascii=False)


def file_size_summary(root: Path) -> list[tuple[str, int]]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out.append((str(p.relative_to(root)), p.stat().st_size))
    return out


def dir_size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(q.stat().st_size for q in p.rglob("*") if q.is_file())


# ----------------------------------------------------------------------------------
# model construction
# ----------------------------------------------------------------------------------

def make_config(spec) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=spec["vocab"],
        hidden_size=spec["hidden"],
        intermediate_size=spec["ffn"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        num_key_value_heads=spec["kv_heads"],
        max_position_embeddings=spec["max_pos"],
        rms_norm_eps=spec["eps"],
        rope_theta=spec["theta"],
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )


def init_weights(model: LlamaForCausalLM, seed: int) -> None:
    """Overwrite every parameter from our own seeded generator (independent of HF init).

    Matrices: normal, std 0.2 (embedding std 1.0); norms: 1 + U(-0.2, 0.2).
    Larger than default so that the logits are decisive (big top1-top2 margins).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if name.endswith("norm.weight"):
                v = 1.0 + (torch.rand(p.shape, generator=g, dtype=torch.float32) * 0.4 - 0.2)
            elif name == "model.embed_tokens.weight":
                v = torch.randn(p.shape, generator=g, dtype=torch.float32) * 1.0
            elif name in ("lm_head.weight",):
                v = torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.25
            else:
                v = torch.randn(p.shape, generator=g, dtype=torch.float32) * 0.2
            p.copy_(v)


def hf_state_dict(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------
# HF writers
# ----------------------------------------------------------------------------------

def patch_hf_config(path: Path, spec) -> None:
    """transformers 5 writes rope_theta inside `rope_parameters` and the dtype as `dtype`.
    Real Llama-2 configs carry a top-level `rope_theta` and `torch_dtype`; write both
    spellings (they agree) so readers of either convention get the same model."""
    cfg = json.loads(path.read_text())
    cfg["rope_theta"] = float(spec["theta"])
    dt = "float32" if spec["dtype"] == torch.float32 else "bfloat16"
    cfg["torch_dtype"] = dt
    cfg["dtype"] = dt
    cfg.pop("transformers_version", None)
    cfg["transformers_version"] = transformers.__version__
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_hf(model, spec, out: Path) -> None:
    out.mkdir(parents=True)
    model.save_pretrained(out)
    files = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in files and "config.json" in files, files
    assert not any(f.endswith(".index.json") for f in files), files
    patch_hf_config(out / "config.json", spec)
    shutil.copyfile(TOKENIZER, out / "tokenizer.model")


def write_hf_sharded(sd: dict[str, torch.Tensor], hf_dir: Path, out: Path, n_layers: int) -> None:
    """Two shards: embedding + first half of the layers; the rest + norm + lm_head."""
    out.mkdir(parents=True)
    half = n_layers // 2
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    groups: list[dict[str, torch.Tensor]] = [{}, {}]
    for k in sorted(sd):
        if k == "model.embed_tokens.weight":
            idx = 0
        elif k.startswith("model.layers."):
            idx = 0 if int(k.split(".")[2]) < half else 1
        else:
            idx = 1
        groups[idx][k] = sd[k]
    weight_map = {}
    total = 0
    for name, grp in zip(shard_names, groups):
        save_file(grp, str(out / name), metadata={"format": "pt"})
        for k, t in grp.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for f in ("config.json", "generation_config.json", "tokenizer.model"):
        if (hf_dir / f).exists():
            shutil.copyfile(hf_dir / f, out / f)


# ----------------------------------------------------------------------------------
# NeMo (mcore zarr dist-ckpt) writer -- docs/checkpoint-formats.md sections 1-3, 5
# ----------------------------------------------------------------------------------

def padded_vocab(vocab: int, tp: int) -> int:
    mult = MAKE_VOCAB_DIVISIBLE_BY * tp
    return ((vocab + mult - 1) // mult) * mult


def vocab_padding_rows(spec, n_rows: int, which: str) -> torch.Tensor:
    """Random nonzero padding rows (a reader that forgets to trim gets caught)."""
    g = torch.Generator().manual_seed(spec["seed"] + (1 if which == "emb" else 2))
    rows = torch.randn((n_rows, spec["hidden"]), generator=g, dtype=torch.float32) * 3.0 + 0.5
    return rows.to(spec["dtype"])


def mcore_global_arrays(sd, spec, tp: int, fc1_layout: str, pad_emb, pad_out):
    """HF state dict -> mcore global arrays (TE names, layer-stacked), §3.7 / §5."""
    L, H, nq, nkv = spec["layers"], spec["hidden"], spec["heads"], spec["kv_heads"]
    hd = H // nq
    g = nq // nkv
    F = spec["ffn"]
    V = spec["vocab"]
    Vp = padded_vocab(V, tp)
    assert pad_emb.shape[0] >= Vp - V

    def lay(name, i):
        return sd[f"model.layers.{i}.{name}"]

    qkv = []
    for i in range(L):
        wq = lay("self_attn.q_proj.weight", i).reshape(nq, hd, H)
        wk = lay("self_attn.k_proj.weight", i).reshape(nkv, hd, H)
        wv = lay("self_attn.v_proj.weight", i).reshape(nkv, hd, H)
        blocks = []
        for j in range(nkv):  # query group j: g q heads, then K_j, then V_j (§5a)
            blocks.append(torch.cat([wq[j * g:(j + 1) * g], wk[j:j + 1], wv[j:j + 1]], dim=0))
        qkv.append(torch.cat(blocks, dim=0).reshape((nq + 2 * nkv) * hd, H))

    fc1 = []
    for i in range(L):
        gate = lay("mlp.gate_proj.weight", i)
        up = lay("mlp.up_proj.weight", i)
        if fc1_layout == "glu_split":  # [gate_all; up_all] (§3.6, §5b)
            fc1.append(torch.cat([gate, up], dim=0))
        elif fc1_layout == "interleaved":  # concat_r [gate_r; up_r] (§3.6)
            fr = F // tp
            parts = []
            for r in range(tp):
                parts += [gate[r * fr:(r + 1) * fr], up[r * fr:(r + 1) * fr]]
            fc1.append(torch.cat(parts, dim=0))
        else:
            raise ValueError(fc1_layout)

    P = "model.decoder.layers."
    arrays = {
        "model.embedding.word_embeddings.weight":
            torch.cat([sd["model.embed_tokens.weight"], pad_emb[:Vp - V]], dim=0),
        P + "self_attention.linear_qkv.layer_norm_weight":
            torch.stack([lay("input_layernorm.weight", i) for i in range(L)]),
        P + "self_attention.linear_qkv.weight": torch.stack(qkv),
        P + "self_attention.linear_proj.weight":
            torch.stack([lay("self_attn.o_proj.weight", i) for i in range(L)]),
        P + "mlp.linear_fc1.layer_norm_weight":
            torch.stack([lay("post_attention_layernorm.weight", i) for i in range(L)]),
        P + "mlp.linear_fc1.weight": torch.stack(fc1),
        P + "mlp.linear_fc2.weight":
            torch.stack([lay("mlp.down_proj.weight", i) for i in range(L)]),
        "model.decoder.final_layernorm.weight": sd["model.norm.weight"],
        "model.output_layer.weight": torch.cat([sd["lm_head.weight"], pad_out[:Vp - V]], dim=0),
    }
    # chunk shapes (§3.4, §3.6, §3.7)
    qkv_rows = (nq + 2 * nkv) * hd
    assert nkv % tp == 0 and F % tp == 0 and Vp % tp == 0 and (nq * hd) % tp == 0
    fc1_rows = F // tp if fc1_layout == "glu_split" else 2 * F // tp
    chunks = {
        "model.embedding.word_embeddings.weight": (Vp // tp, H),
        P + "self_attention.linear_qkv.layer_norm_weight": (1, H),
        P + "self_attention.linear_qkv.weight": (1, qkv_rows // tp, H),
        P + "self_attention.linear_proj.weight": (1, H, nq * hd // tp),
        P + "mlp.linear_fc1.layer_norm_weight": (1, H),
        P + "mlp.linear_fc1.weight": (1, fc1_rows, H),
        P + "mlp.linear_fc2.weight": (1, H, F // tp),
        "model.decoder.final_layernorm.weight": (H,),
        "model.output_layer.weight": (Vp // tp, H),
    }
    return arrays, chunks


def tensor_to_le_numpy(t: torch.Tensor) -> tuple[np.ndarray, str]:
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view("<u2"), "bfloat16"
    if t.dtype == torch.float32:
        return t.contiguous().numpy().astype("<f4"), "<f4"
    raise ValueError(t.dtype)


def zarray_json(shape, chunks, dtype: str, dim_sep: str) -> bytes:
    meta = {
        "chunks": list(chunks),
        "compressor": None,
        "dtype": dtype,
        "fill_value": None,
        "filters": None,
        "order": "C",
        "shape": list(shape),
        "zarr_format": 2,
    }
    if dim_sep != ".":  # zarr omits the key when it is the default
        meta["dimension_separator"] = dim_sep
    return json.dumps(meta, indent=4, sort_keys=True, separators=(",", ": ")).encode("ascii")


def write_zarr_array(folder: Path, t: torch.Tensor, chunks, dim_sep: str) -> None:
    arr, dtype = tensor_to_le_numpy(t)
    shape = arr.shape
    assert len(chunks) == len(shape)
    for s, c in zip(shape, chunks):
        assert s % c == 0, (folder.name, shape, chunks)
    folder.mkdir(parents=True)
    (folder / ".zarray").write_bytes(zarray_json(shape, chunks, dtype, dim_sep))
    grid = [range(s // c) for s, c in zip(shape, chunks)]
    for idx in itertools.product(*grid):
        sl = tuple(slice(i * c, (i + 1) * c) for i, c in zip(idx, chunks))
        data = np.ascontiguousarray(arr[sl]).tobytes()
        assert len(data) == int(np.prod(chunks)) * arr.dtype.itemsize
        p = folder.joinpath(*[str(i) for i in idx]) if dim_sep == "/" else \
            folder / ".".join(str(i) for i in idx)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def torch_save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _YamlDumper(yaml.SafeDumper):
    pass


def _yaml_str(dumper, data):
    style = '"' if ("\n" in data or data == "") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_YamlDumper.add_representer(str, _yaml_str)


def model_config_yaml(spec, tp: int) -> bytes:
    cfg = {
        "mcore_gpt": True,
        "micro_batch_size": 1,
        "global_batch_size": 8,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": 1,
        "virtual_pipeline_model_parallel_size": None,
        "encoder_seq_length": spec["max_pos"],
        "max_position_embeddings": spec["max_pos"],
        "num_layers": spec["layers"],
        "hidden_size": spec["hidden"],
        "ffn_hidden_size": spec["ffn"],
        "num_attention_heads": spec["heads"],
        "num_query_groups": spec["kv_heads"],
        "kv_channels": None,
        "init_method_std": 0.02,
        "use_scaled_init_method": True,
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
        "ffn_dropout": 0.0,
        "layernorm_epsilon": float(spec["eps"]),
        "normalization": "rmsnorm",
        "do_layer_norm_weight_decay": False,
        "make_vocab_size_divisible_by": MAKE_VOCAB_DIVISIBLE_BY,
        "pre_process": True,
        "post_process": True,
        "persist_layer_norm": True,
        "bias": False,
        "activation": "fast-swiglu",
        "headscale": False,
        "transformer_block_type": "pre_ln",
        "openai_gelu": False,
        "normalize_attention_scores": True,
        "position_embedding_type": "rope",
        "rotary_percentage": 1.0,
    }
    if spec["write_rotary_base"]:
        cfg["rotary_base"] = int(spec["theta"])
    cfg.update({
        "seq_len_interpolation_factor": None,
        "apply_query_key_layer_scaling": True,
        "attention_type": "multihead",
        "share_embeddings_and_output_weights": False,
        "megatron_amp_O2": True,
        "transformer_engine": True,
        "precision": "bf16" if spec["dtype"] == torch.bfloat16 else 32,
        "tokenizer": {
            "library": "sentencepiece",
            "type": None,
            "model": f"nemo:{TOKENIZER_ARTIFACT}",
            "vocab_file": None,
            "merge_file": None,
            "delimiter": None,
            "sentencepiece_legacy": False,
        },
        "data": {
            "chat": True,
            "chat_prompt_tokens": {
                "system_turn_start": "<extra_id_0>",
                "turn_start": "<extra_id_1>",
                "label_start": "<extra_id_2>",
                "end_of_turn": "\n",
                "end_of_name": "\n",
            },
        },
        "optim": {"name": "distributed_fused_adam", "lr": 9e-07, "weight_decay": 0.1},
        "target": "nemo_aligner.models.nlp.gpt.megatron_gpt_ppo_actor.MegatronGPTActorModel",
        "nemo_version": "1.22.0",
    })
    return yaml.dump(cfg, Dumper=_YamlDumper, sort_keys=False,
                     default_flow_style=False).encode("utf-8")


def write_nemo_folder(root: Path, sd, spec, tp: int, fc1_layout: str, dim_sep: str,
                      pad_emb, pad_out) -> None:
    root.mkdir(parents=True)
    (root / "model_config.yaml").write_bytes(model_config_yaml(spec, tp))
    shutil.copyfile(TOKENIZER, root / TOKENIZER_ARTIFACT)
    mw = root / "model_weights"
    mw.mkdir()
    (mw / "metadata.json").write_text(json.dumps({
        "sharded_backend": "zarr", "sharded_backend_version": 1,
        "common_backend": "torch", "common_backend_version": 1,
    }))
    (mw / "common.pt").write_bytes(torch_save_bytes({}))
    arrays, chunks = mcore_global_arrays(sd, spec, tp, fc1_layout, pad_emb, pad_out)
    for key in sorted(arrays):
        write_zarr_array(mw / key, arrays[key], chunks[key], dim_sep)
    # TE sharded objects: folders with shard_{layer}_{L}.pt and no .zarray (§3.1, §3.7)
    L = spec["layers"]
    extra = torch_save_bytes(None)
    for mod in ("self_attention.linear_qkv", "self_attention.linear_proj",
                "mlp.linear_fc1", "mlp.linear_fc2"):
        d = mw / f"model.decoder.layers.{mod}._extra_state"
        d.mkdir()
        for l in range(L):
            (d / f"shard_{l}_{L}.pt").write_bytes(extra)


def _norm_tarinfo(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    ti.mtime = TAR_MTIME
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mode = 0o755 if ti.isdir() else 0o644
    return ti


def py_tar(folder: Path, out: Path) -> None:
    """NeMo save_to style: tarfile mode 'w:' + add(folder, arcname='.') (sorted recursion)."""
    with tarfile.open(out, "w:", format=tarfile.PAX_FORMAT) as tar:
        tar.add(str(folder), arcname=".", filter=_norm_tarinfo)


GNU_TAR_FLAGS = ["--format=gnu", "--sort=name", f"--mtime=@{TAR_MTIME}", "--owner=0",
                 "--group=0", "--numeric-owner", "--mode=u=rwX,go=rX"]


def gnu_tar(cwd: Path, out: Path, members: list[str]) -> None:
    env = dict(os.environ, LC_ALL="C", TZ="UTC")
    subprocess.run(["tar", *GNU_TAR_FLAGS, "-cf", str(out), *members], cwd=cwd, check=True,
                   env=env)


def make_repo_root(stage: Path, model_folder: Path) -> Path:
    """A fake HF git clone: NV-Tiny-Chat/<model files>, .git junk, README.md, .gitattributes."""
    repo = stage / "repo"
    repo.mkdir()
    shutil.copytree(model_folder, repo / "NV-Tiny-Chat")
    git = repo / ".git"
    (git / "objects" / "9a").mkdir(parents=True)
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "config").write_text(
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = false\n"
        "[remote \"origin\"]\n\turl = https://example.invalid/nvidia/NV-Tiny-Chat\n"
        "\tfetch = +refs/heads/*:refs/remotes/origin/*\n[lfs]\n\trepositoryformatversion = 0\n")
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "refs" / "heads" / "main").write_text("9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b\n")
    rng = np.random.RandomState(7)
    (git / "objects" / "9a" / "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b").write_bytes(
        rng.bytes(777))
    # an LFS object: a second copy of the model config (hashed name, must not confuse readers)
    cfg = (model_folder / "model_config.yaml").read_bytes()
    sha = hashlib.sha256(cfg).hexdigest()
    lfs_dir = git / "lfs" / "objects" / sha[:2] / sha[2:4]
    lfs_dir.mkdir(parents=True, exist_ok=True)
    (lfs_dir / sha).write_bytes(cfg)
    (repo / "README.md").write_text(
        "# NV-Tiny-Chat\n\nA tiny random test model (triton-llama fixture).\n\n"
        "```\ncd NV-Tiny-Chat/NV-Tiny-Chat\ntar -cvf NV-Tiny-Chat.nemo .\n```\n")
    (repo / ".gitattributes").write_text(
        "*.nemo filter=lfs diff=lfs merge=lfs -text\n"
        "*.model filter=lfs diff=lfs merge=lfs -text\n"
        "NV-Tiny-Chat/** filter=lfs diff=lfs merge=lfs -text\n")
    return repo


# ----------------------------------------------------------------------------------
# Independent NeMo reader (verification)
# ----------------------------------------------------------------------------------

class NemoSource:
    """Maps normalised member names (relative to the model root) to bytes."""

    def __init__(self, path: Path):
        files: dict[str, bytes] = {}
        if path.is_dir():
            for p in path.rglob("*"):
                if p.is_file():
                    files[p.relative_to(path).as_posix()] = p.read_bytes()
        else:
            with tarfile.open(path, "r:") as tar:
                for m in tar.getmembers():
                    if not m.isfile():
                        continue
                    name = m.name
                    while name.startswith("./"):
                        name = name[2:]
                    name = name.lstrip("/")
                    files[name] = tar.extractfile(m).read()
        files = {k: v for k, v in files.items()
                 if not (k.startswith(".git/") or "/.git/" in k)}
        cfgs = [k for k in files if k == "model_config.yaml" or k.endswith("/model_config.yaml")]
        assert len(cfgs) == 1, cfgs
        prefix = cfgs[0][: -len("model_config.yaml")]
        self.files = {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}
        self.prefix = prefix

    def read(self, name: str) -> bytes:
        return self.files[name]


def read_zarr(src: NemoSource, key: str):
    base = f"model_weights/{key}/"
    meta = json.loads(src.read(base + ".zarray"))
    assert meta["zarr_format"] == 2 and meta["compressor"] is None
    assert meta["filters"] is None and meta["fill_value"] is None and meta["order"] == "C"
    sep = meta.get("dimension_separator", ".")
    dt = meta["dtype"]
    np_dt = {"bfloat16": np.dtype("<u2"), "<f4": np.dtype("<f4")}[dt]
    shape, chunks = meta["shape"], meta["chunks"]
    out = np.zeros(shape, dtype=np_dt)
    grid = [range((s + c - 1) // c) for s, c in zip(shape, chunks)]
    for idx in itertools.product(*grid):
        raw = src.read(base + sep.join(str(i) for i in idx))
        block = np.frombuffer(raw, dtype=np_dt).reshape(chunks)
        sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
        out[sl] = block[tuple(slice(0, x.stop - x.start) for x in sl)]
    if dt == "bfloat16":
        t = torch.from_numpy(out.view(np.int16).copy()).view(torch.bfloat16)
    else:
        t = torch.from_numpy(out.copy())
    return t, meta


def nemo_to_hf(path: Path, expect_tokenizer: bytes):
    """Reassemble HF tensors from a .nemo / folder, following the spec's loader rules."""
    src = NemoSource(path)
    cfg = yaml.safe_load(src.read("model_config.yaml"))
    mdj = json.loads(src.read("model_weights/metadata.json"))
    assert mdj["sharded_backend"] == "zarr", mdj
    tok = cfg["tokenizer"]["model"]
    assert tok.startswith("nemo:")
    tok_members = [k for k in src.files if "/" not in k and k.endswith(tok[len("nemo:"):])]
    assert len(tok_members) == 1, tok_members
    assert src.read(tok_members[0]) == expect_tokenizer
    arrays = {}
    metas = {}
    keys = sorted({k.split("/")[1] for k in src.files
                   if k.startswith("model_weights/") and k.count("/") >= 2})
    for key in keys:
        if f"model_weights/{key}/.zarray" not in src.files:
            assert key.endswith("_extra_state"), key  # sharded objects: skipped
            continue
        arrays[key], metas[key] = read_zarr(src, key)

    L, H = cfg["num_layers"], cfg["hidden_size"]
    nq = cfg["num_attention_heads"]
    nkv = cfg.get("num_query_groups") or nq
    hd = cfg.get("kv_channels") or H // nq
    g = nq // nkv
    F = cfg["ffn_hidden_size"]
    P = "model.decoder.layers."
    # derive T from linear_proj chunks, cross-check with qkv (§3.6)
    pm = metas[P + "self_attention.linear_proj.weight"]
    T = pm["shape"][2] // pm["chunks"][2]
    qm = metas[P + "self_attention.linear_qkv.weight"]
    assert qm["shape"][1] // qm["chunks"][1] == T
    fm = metas[P + "mlp.linear_fc1.weight"]
    if T == 1 or fm["chunks"][1] == F // T:
        layout = "glu_split"
    elif fm["chunks"][1] == 2 * F // T:
        layout = "interleaved"
    else:
        raise AssertionError("bad fc1 chunks")

    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    V = sp.vocab_size()
    hf = {}
    emb = arrays["model.embedding.word_embeddings.weight"]
    out = arrays["model.output_layer.weight"]
    assert emb.shape[0] >= V and out.shape[0] >= V
    hf["model.embed_tokens.weight"] = emb[:V].clone()
    hf["lm_head.weight"] = out[:V].clone()
    hf["model.norm.weight"] = arrays["model.decoder.final_layernorm.weight"].clone()
    qkv = arrays[P + "self_attention.linear_qkv.weight"]
    fc1 = arrays[P + "mlp.linear_fc1.weight"]
    for l in range(L):
        x = qkv[l].reshape(nkv, g + 2, hd, H)
        hf[f"model.layers.{l}.self_attn.q_proj.weight"] = x[:, :g].reshape(nq * hd, H).clone()
        hf[f"model.layers.{l}.self_attn.k_proj.weight"] = x[:, g].reshape(nkv * hd, H).clone()
        hf[f"model.layers.{l}.self_attn.v_proj.weight"] = x[:, g + 1].reshape(nkv * hd, H).clone()
        hf[f"model.layers.{l}.self_attn.o_proj.weight"] = \
            arrays[P + "self_attention.linear_proj.weight"][l].clone()
        hf[f"model.layers.{l}.input_layernorm.weight"] = \
            arrays[P + "self_attention.linear_qkv.layer_norm_weight"][l].clone()
        hf[f"model.layers.{l}.post_attention_layernorm.weight"] = \
            arrays[P + "mlp.linear_fc1.layer_norm_weight"][l].clone()
        f = fc1[l]
        if layout == "glu_split":
            gate, up = f[:F], f[F:]
        else:
            fr = F // T
            gate = torch.cat([f[2 * r * fr:(2 * r + 1) * fr] for r in range(T)])
            up = torch.cat([f[(2 * r + 1) * fr:(2 * r + 2) * fr] for r in range(T)])
        hf[f"model.layers.{l}.mlp.gate_proj.weight"] = gate.clone()
        hf[f"model.layers.{l}.mlp.up_proj.weight"] = up.clone()
        hf[f"model.layers.{l}.mlp.down_proj.weight"] = \
            arrays[P + "mlp.linear_fc2.weight"][l].clone()
    info = dict(T=T, layout=layout, prefix=src.prefix, Vp=emb.shape[0], cfg=cfg,
                pad_emb=emb[V:], pad_out=out[V:])
    return hf, info


def verify_nemo(path: Path, hf_sd, spec, tp: int, fc1_layout: str, tokenizer_bytes: bytes):
    hf, info = nemo_to_hf(path, tokenizer_bytes)
    assert info["T"] == tp, (path, info["T"], tp)
    assert info["layout"] == fc1_layout or tp == 1, (path, info["layout"])
    assert info["Vp"] == padded_vocab(spec["vocab"], tp)
    assert sorted(hf) == sorted(hf_sd), (sorted(set(hf) ^ set(hf_sd)))
    for k in hf_sd:
        a, b = hf[k], hf_sd[k]
        assert a.dtype == b.dtype and a.shape == b.shape, (k, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a, b), f"{path}: mismatch in {k}"
    for pad in (info["pad_emb"], info["pad_out"]):
        assert pad.shape[0] > 0 and bool((pad.float().abs() > 0).all()), "padding rows not nonzero"
    cfg = info["cfg"]
    assert cfg["layernorm_epsilon"] == spec["eps"]
    assert cfg.get("rotary_base", 10000) == spec["theta"]
    assert cfg["tensor_model_parallel_size"] == tp
    return info


# ----------------------------------------------------------------------------------
# Golden outputs
# ----------------------------------------------------------------------------------

@torch.no_grad()
def forward_logits(model, ids: list[int]) -> torch.Tensor:
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, use_cache=False).logits[0].float()


@torch.no_grad()
def greedy(model, ids: list[int], n: int):
    seq = list(ids)
    out, margins = [], []
    for _ in range(n):
        logits = forward_logits(model, seq)[-1]
        top = torch.topk(logits, 2)
        nxt = int(top.indices[0])
        out.append(nxt)
        margins.append(float(top.values[0] - top.values[1]))
        seq.append(nxt)
    return out, margins


def numpy_reference_logits(sd, spec, ids: list[int]) -> np.ndarray:
    """Independent float64 Llama forward from the HF tensors (spec §5: RMSNorm, split-halves
    RoPE with base rope_theta, GQA head h -> KV head h // g, SwiGLU). Cross-checks that
    transformers honours the config (e.g. the non-default rope_theta)."""
    W = {k: v.float().numpy().astype(np.float64) for k, v in sd.items()}
    H, nq, nkv = spec["hidden"], spec["heads"], spec["kv_heads"]
    hd, g, eps, n = H // nq, nq // nkv, spec["eps"], len(ids)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    inv = spec["theta"] ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang)] * 2, -1)
    sin = np.concatenate([np.sin(ang)] * 2, -1)

    def rope(x):  # x [heads, n, hd]
        rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos + rot * sin

    x = W["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(spec["layers"]):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T).reshape(n, nq, hd).transpose(1, 0, 2)
        k = (h @ W[p + "self_attn.k_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(n, nkv, hd).transpose(1, 0, 2)
        q, k = rope(q), rope(k)
        k, v = np.repeat(k, g, axis=0), np.repeat(v, g, axis=0)
        s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = (s @ v).transpose(1, 0, 2).reshape(n, nq * hd)
        x = x + o @ W[p + "self_attn.o_proj.weight"].T
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        gt = h @ W[p + "mlp.gate_proj.weight"].T
        up = h @ W[p + "mlp.up_proj.weight"].T
        x = x + (gt / (1 + np.exp(-gt)) * up) @ W[p + "mlp.down_proj.weight"].T
    return rms(x, W["model.norm.weight"]) @ W["lm_head.weight"].T


def load_hf_model(path: Path, dtype) -> LlamaForCausalLM:
    m = LlamaForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="eager")
    m.eval()
    return m


def make_golden(name, spec, hf_dir: Path, sd_ref) -> tuple[dict, dict]:
    sp = spm.SentencePieceProcessor(model_file=str(hf_dir / "tokenizer.model"))
    assert sp.vocab_size() == spec["vocab"] and sp.bos_id() == 1 and sp.eos_id() == 2
    # Load what was written: bf16 weights, f32 compute (what the Rust engine does)
    m_stored = load_hf_model(hf_dir, spec["dtype"])
    for k, v in m_stored.state_dict().items():
        assert torch.equal(v, sd_ref[k]), f"reloaded weights differ: {k}"
    m32 = load_hf_model(hf_dir, spec["dtype"]).float()
    m16 = load_hf_model(hf_dir, spec["dtype"]).to(torch.bfloat16)
    cases = []
    all_margins = []
    max_bf16_diff = 0.0
    max_ref_diff = 0.0
    logit_std = []
    for cname, text, add_bos in PROMPTS:
        ids = ([sp.bos_id()] if add_bos else []) + sp.encode(text)
        logits = forward_logits(m32, ids)
        ref = numpy_reference_logits(sd_ref, spec, ids)
        ref_diff = float(np.abs(ref - logits.numpy().astype(np.float64)).max())
        assert ref_diff < 1e-3, f"{name}/{cname}: transformers vs numpy reference {ref_diff}"
        max_ref_diff = max(max_ref_diff, ref_diff)
        logit_std.append(float(logits.std()))
        lp = torch.log_softmax(logits.double(), dim=-1)
        prompt_lp = [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
        logits16 = forward_logits(m16, ids)
        d16 = float((logits16 - logits).abs().max())
        max_bf16_diff = max(max_bf16_diff, d16)
        gids, margins = greedy(m32, ids, N_GREEDY)
        all_margins += margins
        p_top = torch.topk(logits, 2, dim=-1).values
        prompt_margins = (p_top[:, 0] - p_top[:, 1])
        cases.append({
            "name": cname,
            "prompt": text,
            "add_bos": add_bos,
            "input_ids": ids,
            "greedy_ids": gids,
            "greedy_margins": F32List(margins),
            "greedy_text": sp.decode(gids),
            "full_text": sp.decode(ids + gids),
            "prompt_logprobs": F32List(prompt_lp),
            "logits_bf16_compute_max_abs_diff": np.float32(d16),
            "min_prompt_top2_margin": np.float32(prompt_margins.min()),
            "logits": F32List(logits.numpy()),
        })
    config = {
        "vocab_size": spec["vocab"],
        "padded_vocab_size_nemo": padded_vocab(spec["vocab"], 1),
        "hidden_size": spec["hidden"],
        "intermediate_size": spec["ffn"],
        "num_hidden_layers": spec["layers"],
        "num_attention_heads": spec["heads"],
        "num_key_value_heads": spec["kv_heads"],
        "head_dim": spec["hidden"] // spec["heads"],
        "max_position_embeddings": spec["max_pos"],
        "rms_norm_eps": spec["eps"],
        "rope_theta": spec["theta"],
        "tie_word_embeddings": False,
        "weights_dtype": "float32" if spec["dtype"] == torch.float32 else "bfloat16",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    m_arr = np.array(all_margins)
    meta = {
        "compute": "transformers LlamaForCausalLM, eager attention, float32 compute on the "
                   "stored weights (bf16 weights upcast exactly to f32 with model.float()); "
                   "full forward per greedy step (no KV cache), argmax, no EOS stop",
        "logits_bf16_compute_max_abs_diff": np.float32(max_bf16_diff),
        "logits_bf16_compute_note": "max |logits(model.to(bfloat16)) - logits(f32 compute)| "
                                    "over all cases/positions: the tolerance a real bf16-"
                                    "compute engine would need" + (
                                        " (for this f32 model it also includes rounding the "
                                        "weights to bf16)" if spec["dtype"] == torch.float32 else ""),
        "min_greedy_margin": np.float32(m_arr.min()),
        "numpy_float64_reference_max_abs_diff": np.float32(max_ref_diff),
        "logits_mean_std": np.float32(np.mean(logit_std)),
        "greedy_margins_below_1e-3": int((m_arr < 1e-3).sum()),
        "greedy_steps_total": int(m_arr.size),
        "prompt_logprobs_definition": "prompt_logprobs[i-1] = log_softmax(logits[i-1])[input_ids[i]] "
                                      "for i = 1..len-1 (float64 log-softmax of the f32 logits)",
        "logits_shape": "[len(input_ids), vocab_size] per case, float32 repr",
        "nemo_variants": {v[0]: {"tensor_model_parallel_size": v[1], "fc1_layout": v[2],
                                 "archive": v[3], "zarr_dimension_separator": v[4]}
                          for v in VARIANTS[name]},
        "nemo_tokenizer_artifact": TOKENIZER_ARTIFACT,
    }
    golden = {
        "model": name,
        "generator": {
            "script": "scripts/gen_fixtures.py",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "sentencepiece": spm.__version__,
            "numpy": np.__version__,
        },
        "config": config,
        "metadata": meta,
        "cases": cases,
    }
    return golden, {"min_margin": float(m_arr.min()), "bf16_diff": max_bf16_diff,
                    "ref_diff": max_ref_diff, "logit_std": float(np.mean(logit_std)),
                    "below_1e-3": int((m_arr < 1e-3).sum()), "n": int(m_arr.size)}


# ----------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------

def build_model(name, out_root: Path, stage_root: Path, tokenizer_bytes: bytes):
    spec = MODELS[name]
    log(f"== {name}")
    out = out_root / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    config = make_config(spec)
    torch.manual_seed(spec["seed"])
    model = LlamaForCausalLM(config).eval()
    init_weights(model, spec["seed"])
    model = model.to(spec["dtype"])
    sd = hf_state_dict(model)

    write_hf(model, spec, out / "hf")
    st = load_file(str(out / "hf" / "model.safetensors"))
    assert sorted(st) == sorted(sd)
    for k in sd:
        assert st[k].dtype == spec["dtype"] and torch.equal(st[k], sd[k]), k
    if name == "mha_f32":
        write_hf_sharded(sd, out / "hf", out / "hf_sharded", spec["layers"])
        ms = load_hf_model(out / "hf_sharded", spec["dtype"])
        for k, v in ms.state_dict().items():
            assert torch.equal(v, sd[k]), f"sharded reload differs: {k}"

    Vp_max = max(padded_vocab(spec["vocab"], v[1]) for v in VARIANTS[name])
    pad_emb = vocab_padding_rows(spec, Vp_max - spec["vocab"], "emb")
    pad_out = vocab_padding_rows(spec, Vp_max - spec["vocab"], "out")

    stage = stage_root / name
    stage.mkdir(parents=True)
    for fname, tp, layout, style, sep in VARIANTS[name]:
        folder = stage / f"{fname}.d"
        write_nemo_folder(folder, sd, spec, tp, layout, sep, pad_emb, pad_out)
        target = out / fname
        if style == "dir":
            shutil.copytree(folder, target)
        elif style == "py_dot":
            py_tar(folder, target)
        elif style == "gnu_dot":
            gnu_tar(folder, target, ["."])
        elif style == "gnu_root":
            rs = stage / f"{fname}.rs"
            rs.mkdir()
            repo = make_repo_root(rs, folder)
            gnu_tar(repo, target, sorted(os.listdir(repo)))
        else:
            raise ValueError(style)
        info = verify_nemo(target, sd, spec, tp, layout, tokenizer_bytes)
        log(f"   {fname}: verified (T={info['T']}, fc1={info['layout']}, "
            f"Vp={info['Vp']}, root prefix={info['prefix']!r})")

    golden, stats = make_golden(name, spec, out / "hf", sd)
    (out / "golden.json").write_text(to_json(golden) + "\n", encoding="utf-8")
    json.loads((out / "golden.json").read_text())  # must parse
    log(f"   golden: min greedy margin {stats['min_margin']:.6g} "
        f"({stats['below_1e-3']}/{stats['n']} steps < 1e-3), "
        f"bf16-compute max|dlogits| {stats['bf16_diff']:.6g}, logits std {stats['logit_std']:.3g}, "
        f"numpy f64 reference max|dlogits| {stats['ref_diff']:.3g}")
    for c in golden["cases"]:
        log(f"   case {c['name']}: {len(c['input_ids'])} prompt ids, greedy {c['greedy_ids'][:8]}..., "
            f"min margin {min(c['greedy_margins'].arr):.4g}, "
            f"bf16 diff {c['logits_bf16_compute_max_abs_diff']:.4g}")
    return stats


def generate(out_root: Path) -> dict:
    if not TOKENIZER.exists():
        sys.exit(f"tokenizer not found: {TOKENIZER}")
    tokenizer_bytes = TOKENIZER.read_bytes()
    sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER))
    assert sp.vocab_size() == 1000 and sp.bos_id() == 1 and sp.eos_id() == 2, \
        (sp.vocab_size(), sp.bos_id(), sp.eos_id())
    stats = {}
    with tempfile.TemporaryDirectory(prefix="gen_fixtures_") as tmp:
        for name in MODELS:
            stats[name] = build_model(name, out_root, Path(tmp), tokenizer_bytes)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DEFAULT, help="output folder")
    ap.add_argument("--check", action="store_true",
                    help="generate into a temp folder and compare byte-for-byte with --out")
    args = ap.parse_args()

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)

    if args.check:
        with tempfile.TemporaryDirectory(prefix="gen_fixtures_check_") as tmp:
            generate(Path(tmp))
            ref = args.out
            a = dict(file_size_summary(Path(tmp)))
            b = dict(file_size_summary(ref))
            bad = sorted(set(a) ^ set(b))
            bad += [k for k in sorted(set(a) & set(b))
                    if not filecmp.cmp(Path(tmp) / k, ref / k, shallow=False)]
            if bad:
                log("DIFFERENT: " + ", ".join(bad))
                sys.exit(1)
            log(f"OK: {len(a)} files identical to {ref}")
        return

    stats = generate(args.out)
    log("\n== files written")
    total = 0
    for name in MODELS:
        d = args.out / name
        for p in sorted(d.iterdir()):
            sz = dir_size(p)
            total += sz
            kind = "/" if p.is_dir() else ""
            log(f"   {sz:>10,}  {p.relative_to(args.out)}{kind}")
    log(f"   {total:>10,}  total")
    log("\n== summary")
    for name, s in stats.items():
        log(f"   {name}: min greedy margin {s['min_margin']:.6g} "
            f"({s['below_1e-3']}/{s['n']} < 1e-3); bf16-compute vs f32-compute "
            f"max|dlogits| {s['bf16_diff']:.6g}")


if __name__ == "__main__":
    main()
