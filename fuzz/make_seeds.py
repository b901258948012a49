#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ from the committed fixtures (stdlib only, deterministic).

Run from anywhere: `python3 fuzz/make_seeds.py`. The seeds are committed; rerun only when fixtures change.
Besides copies of real files it builds two tiny but complete `.nemo` tars (1 layer, hidden 2) so the
`nemo_tar` fuzzer starts from archives that open and load, and tiny `.safetensors` files for `safetensors`.
"""

import io
import json
import shutil
import struct
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = ROOT / "fuzz" / "corpus"
NEMO_DIR = FIX / "models" / "gqa_bf16" / "nemo_dir"
SPM = (FIX / "tokenizer" / "llama_bpe.model").read_bytes()


def put(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def count_pieces(b):
    """Number of repeated field-1 entries of a SentencePiece ModelProto."""
    pos, n = 0, 0

    def varint():
        nonlocal pos
        v, shift = 0, 0
        while True:
            byte = b[pos]
            pos += 1
            v |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return v

    while pos < len(b):
        key = varint()
        wt = key & 7
        if wt == 0:
            varint()
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        elif wt == 2:
            ln = varint()
            n += key >> 3 == 1
            pos += ln
    return n


def zarray(shape, chunks, sep):
    return json.dumps(
        {
            "chunks": chunks,
            "compressor": None,
            "dimension_separator": sep,
            "dtype": "bfloat16",
            "fill_value": None,
            "filters": None,
            "order": "C",
            "shape": shape,
            "zarr_format": 2,
        },
        indent=1,
    )


def tiny_nemo(root, sep, hardlink, fmt):
    """A complete 1-layer NeMo checkpoint with H=2, F=2, one head of width 2, bf16 zeros-ish weights."""
    v = count_pieces(SPM)
    vp = (v + 127) // 128 * 128
    yaml = (NEMO_DIR / "model_config.yaml").read_text()
    for k, val in {
        "num_layers": 1,
        "hidden_size": 2,
        "ffn_hidden_size": 2,
        "num_attention_heads": 1,
        "num_query_groups": 1,
        "kv_channels": 2,
    }.items():
        lines = [f"{k}: {val}" if line.startswith(f"{k}:") else line for line in yaml.splitlines()]
        yaml = "\n".join(lines) + "\n"
    arrays = {  # name: (shape, chunks)
        "model.embedding.word_embeddings.weight": ([vp, 2], [vp, 2]),
        "model.output_layer.weight": ([vp, 2], [vp, 2]),
        "model.decoder.final_layernorm.weight": ([2], [2]),
        "model.decoder.layers.self_attention.linear_qkv.layer_norm_weight": ([1, 2], [1, 2]),
        "model.decoder.layers.mlp.linear_fc1.layer_norm_weight": ([1, 2], [1, 2]),
        "model.decoder.layers.self_attention.linear_qkv.weight": ([1, 6, 2], [1, 6, 2]),
        "model.decoder.layers.self_attention.linear_proj.weight": ([1, 2, 2], [1, 2, 2]),
        "model.decoder.layers.mlp.linear_fc1.weight": ([1, 4, 2], [1, 4, 2]),
        "model.decoder.layers.mlp.linear_fc2.weight": ([1, 2, 2], [1, 2, 2]),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:

        def add(name, data=None, link=None):
            ti = tarfile.TarInfo(root + name)
            ti.mtime, ti.mode = 1701820800, 0o644
            if data is None and link is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(ti)
            elif link is not None:
                ti.type, ti.linkname = tarfile.LNKTYPE, root + link
                tar.addfile(ti)
            else:
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))

        add("")
        tok = "3f9d2c7a41b84e6f9a0c5d1e8b7f6a24_llama_bpe.model"
        add(tok, SPM)
        add("model_config.yaml", yaml.encode())
        add("model_weights/")
        add("model_weights/metadata.json", b'{"sharded_backend": "zarr", "sharded_backend_version": 1}')
        first_chunk = {}
        for i, (name, (shape, chunks)) in enumerate(arrays.items()):
            d = f"model_weights/{name}"
            add(d + "/")
            add(d + "/.zarray", zarray(shape, chunks, sep).encode())
            n = 1
            for c in chunks:
                n *= c
            data = bytes((i * 7 + j) % 251 for j in range(2 * n))
            key = d + "/" + sep.join("0" * len(shape))
            if hardlink and len(data) in first_chunk:
                add(key, link=first_chunk[len(data)])
            else:
                add(key, data)
                first_chunk.setdefault(len(data), key)
    return buf.getvalue()


def safetensors(tensors, meta=True):
    hdr, data = {}, b""
    if meta:
        hdr["__metadata__"] = {"format": "pt"}
    for name, (dtype, shape, size) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + size]}
        data += bytes((j * 13) % 256 for j in range(size))
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def triton_requests():
    """Requests in the `triton_request` encoding (see decode_request in fuzz/src/lib.rs)."""
    import re

    src = (ROOT / "src" / "triton" / "interface.rs").read_text()
    names = re.findall(r'\("(\w+)", "TYPE_\w+", -?\d+\)', src[src.index("pub const INPUTS") :])
    idx = {n: i for i, n in enumerate(names)}
    BYTES, INT64, INT32, FP32, BOOL = 13, 9, 8, 11, 1

    def framed(items):
        return b"".join(struct.pack("<I", len(x)) + x for x in items)

    def tensor(name, dtype, shape, data):
        return bytes([idx[name], dtype, len(shape)] + shape) + struct.pack("<H", len(data)) + data

    def req(flags, max_out, mask, *tensors):
        return bytes([flags, max_out, mask]) + b"".join(tensors)

    yield (
        "nemo_query",
        req(
            0,
            100,
            1,
            tensor("prompts", BYTES, [1, 1], framed([b"Hello"])),
            tensor("max_output_token", INT64, [1, 1], struct.pack("<q", 8)),
            tensor("top_k", INT64, [1, 1], struct.pack("<q", 1)),
            tensor("top_p", FP32, [1, 1], struct.pack("<f", 0.0)),
            tensor("temperature", FP32, [1, 1], struct.pack("<f", 1.0)),
        ),
    )
    yield (
        "batch2_stops",
        req(
            0,
            50,
            0x7F,
            tensor("prompts", BYTES, [2, 1], framed([b"a", b"b"])),
            tensor("stop_words_list", BYTES, [2, 2], framed([b"x,y", b"", b"z", b"w"])),
            tensor("bad_words", BYTES, [1, 1], framed([b"no"])),
            tensor("min_tokens", INT32, [2, 1], struct.pack("<ii", 0, 3)),
        ),
    )
    yield (
        "text_input_stream",
        req(
            1,
            20,
            2,
            tensor("text_input", BYTES, [1, 1], framed(["héllo".encode()])),
            tensor("max_tokens", INT32, [1, 1], struct.pack("<i", 5)),
            tensor("stream", BOOL, [1, 1], b"\x01"),
            tensor("exclude_input_in_output", BOOL, [1, 1], b"\x00"),
        ),
    )
    yield "lying_prefix", req(0, 100, 0, tensor("prompts", BYTES, [1, 1], struct.pack("<I", 1000) + b"abc"))


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    # Tokenizer: the real model, and texts and id sequences from the parity fixtures.
    put("tokenizer_model", "llama_bpe.model", SPM)
    cases = [json.loads(line) for line in (FIX / "tokenizer" / "cases.jsonl").read_text().splitlines()]
    for i, c in enumerate(cases[::40]):
        put("tokenizer_encode", f"case{i:02}", c["text"])
    put("tokenizer_encode", "bos_literal", "\x01<s> hi </s><unk>")
    streams = [json.loads(line) for line in (FIX / "tokenizer" / "stream_cases.jsonl").read_text().splitlines()]
    for i, c in enumerate(streams[::12]):
        ids = c["prompt"] + c["gen"]
        put("detokenizer", f"stream{i:02}", bytes([len(c["prompt"])]) + b"".join(struct.pack("<H", x) for x in ids))
    # Zarr and YAML: every distinct .zarray of the fixture folder, and the real configs.
    seen = set()
    for za in sorted(NEMO_DIR.glob("model_weights/*/.zarray")):
        b = za.read_bytes()
        if b not in seen:
            seen.add(b)
            put("zarray", za.parent.name, b)
    put("zarray", "f4_dot_sep", zarray([3, 5, 7], [2, 5, 3], ".").replace("bfloat16", "<f4"))
    put("nemo_yaml", "gqa_bf16.yaml", (NEMO_DIR / "model_config.yaml").read_bytes())
    # Checkpoint containers.
    put("nemo_tar", "tiny_gnu.nemo", tiny_nemo("./", ".", False, tarfile.GNU_FORMAT))
    put("nemo_tar", "tiny_pax_rootdir_hardlinks.nemo", tiny_nemo("ckpt/", "/", True, tarfile.PAX_FORMAT))
    real = (FIX / "models" / "mha_f32" / "hf" / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", real[:8])[0]
    put("safetensors", "fixture_header_only", real[: 8 + n])
    put("safetensors", "tiny", safetensors({"a": ("F32", [2, 3], 24), "b": ("BF16", [4], 8), "i": ("I64", [1], 8)}))
    put("safetensors", "tiny_nometa", safetensors({"w": ("F16", [1, 2, 2], 8)}, meta=False))
    for name, data in triton_requests():
        put("triton_request", name, data)
    cfg = (FIX / "models" / "mha_f32" / "hf" / "config.json").read_text()
    put("hf_config", "config.json", cfg)
    put(
        "hf_config",
        "tied_rope_linear.json",
        cfg.replace('"tie_word_embeddings": false', '"tie_word_embeddings": true').replace(
            '"rope_type": "default"', '"rope_type": "linear", "factor": 2.0'
        ),
    )


if __name__ == "__main__":
    main()
