"""Writes Llama-2's SentencePiece tokenizer (32000 pieces) as `tokenizer.model` from llama.cpp's test vocabulary
`models/ggml-vocab-llama-spm.gguf` (in the llama-cpp-python sdist that bench_peers.sh downloads), so that the
benchmarks can time work that scales with the real vocabulary (structured output's token masks) without a gated
download. The pieces, scores and piece types are the GGUF's; the trainer and normalizer settings are Llama-2's
(BPE, byte fallback, a dummy prefix, digits split, whitespace kept). Checked against the GGUF's own test file:
every `.inp` text must encode to the `.out` ids, else the script fails.

Usage (needs gguf-py from the same sdist, sentencepiece and protobuf; bench_peers.sh's .venv-convert has them):
  python llama_vocab.py VOCAB.gguf OUT/tokenizer.model
"""

import sys
from pathlib import Path

from gguf import GGUFReader
from sentencepiece import SentencePieceProcessor
from sentencepiece import sentencepiece_model_pb2 as pb


def field(reader, name):
    f = reader.fields[name]
    return [f.parts[i] for i in f.data]


def build(gguf_path):
    reader = GGUFReader(gguf_path)
    tokens = [bytes(t).decode("utf-8") for t in field(reader, "tokenizer.ggml.tokens")]
    scores = [float(s[0]) for s in field(reader, "tokenizer.ggml.scores")]
    types = [int(t[0]) for t in field(reader, "tokenizer.ggml.token_type")]
    m = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        p = m.pieces.add()
        # GGUF's token types use SentencePiece's numbering (1 normal, 2 unknown, 3 control, 6 byte, ...).
        p.piece, p.score, p.type = piece, score, kind
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    t.byte_fallback = True
    t.split_digits = True
    t.unk_id, t.bos_id, t.eos_id, t.pad_id = 0, 1, 2, -1
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = True
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return m


def check(model_path, gguf_path):
    """Encodes the GGUF's test inputs and compares with its expected ids."""
    sp = SentencePieceProcessor(model_file=str(model_path))
    base = str(gguf_path)
    texts = Path(base + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    want = Path(base + ".out").read_text(encoding="utf-8").split("\n")
    bad = 0
    for text, ids in zip(texts, want):
        got = sp.encode(text)
        if got != [int(i) for i in ids.split()]:
            bad += 1
            print(f"mismatch: {text!r}: {got} vs {ids}", file=sys.stderr)
    print(f"llama_vocab: {len(texts) - bad}/{len(texts)} test texts encode as llama.cpp expects", file=sys.stderr)
    return bad == 0


def main():
    gguf_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(build(gguf_path).SerializeToString())
    if not check(out, gguf_path):
        out.unlink()
        sys.exit(1)


if __name__ == "__main__":
    main()
