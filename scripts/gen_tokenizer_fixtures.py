#!/usr/bin/env python3
"""Generate the tokenizer test fixtures: a small Llama-2-style SentencePiece BPE model and parity cases.

Deterministic: the corpus and the cases come from fixed-seed generators, and the trainer runs on one thread.

Usage: /work/pyenv/bin/python scripts/gen_tokenizer_fixtures.py [--out tests/fixtures/tokenizer] [--model-only]

Writes into the output folder:
  * llama_bpe.model   SentencePiece BPE, vocab 1000, trained with the Llama-2 trainer settings
                      (byte_fallback, split_digits, add_dummy_prefix, identity normalizer, ...).
  * cases.jsonl       one JSON object per line: {"text", "ids", "decoded", "pieces"}, where ids = sp.encode(text)
                      (no BOS), decoded = sp.decode(ids), pieces = sp.id_to_piece(ids).
  * decode_cases.jsonl  {"ids", "decoded"}: arbitrary id lists (controls, <unk>, broken byte runs) and sp.decode.
  * stream_cases.jsonl  {"prompt", "gen", "expected"}: expected = sp.decode(prompt + gen) minus sp.decode(prompt).
The training corpus is generated in memory and not kept.
"""
import argparse
import io
import json
import os
import random

import sentencepiece as spm

SEED = 20240611

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part model token server request response inference engine layer weight tensor batch "
    "hello world language learning attention cache memory kernel thread stream decode encode vocabulary "
    "Llama Triton NVIDIA GPU CPU Rust Python error result value string number matrix vector system user "
    "assistant question answer please thank sorry help because before after again always never maybe"
).split()
ACCENTED = (
    "naïve café résumé crème brûlée façade déjà vu São Paulo Zürich Ångström piñata jalapeño über "
    "Ärger Öl Straße garçon fiancée coöperate élève année forêt cañón señor mañana Dvořák Łódź Kraków "
    "smörgåsbord àèìòù ÀÉÎÕÜ ç ñ ø å æ œ"
).split()
CJK = "日本語中文字人大小山川水火木金土月天気今日学生先私東京的是不了在有我他这个们中国你好世界こんにちはありがとうカタカナ한국어안녕하세요"
EMOJI = ["🤖", "😀", "🚀", "👍", "🎉", "❤️", "🔥", "✨", "🙂", "👩‍💻", "🇫🇷", "🐍", "🦀", "∑", "→", "≠", "€", "£", "©"]
CODE = [
    "fn main() {\n    println!(\"Hello, world!\");\n}\n",
    "def f(x):\n\treturn x * 2 + 1\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }\n",
    "let v: Vec<u32> = ids.iter().map(|&x| x + 1).collect();\n",
    "if (a && b || !c) { return -1; } else { x = y >> 2; }\n",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;\n",
    "<html><body><p class=\"x\">Hi</p></body></html>\n",
    "{\"key\": [1, 2, 3], \"ok\": true, \"none\": null}\n",
    "    # indented comment with    several   spaces\n",
]


def sentence(rng):
    n = rng.randint(3, 18)
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.80:
            w = rng.choice(WORDS)
        elif r < 0.88:
            w = rng.choice(ACCENTED)
        elif r < 0.94:
            w = str(rng.randint(0, 10 ** rng.randint(1, 7)))
        elif r < 0.97:
            w = "".join(rng.choice(CJK) for _ in range(rng.randint(1, 4)))
        else:
            w = rng.choice(EMOJI)
        out.append(w)
    s = " ".join(out)
    s = s[0].upper() + s[1:]
    return s + rng.choice([".", ".", ".", "?", "!", ":", ";", ","])


def corpus_lines(rng, n_lines=6000):
    lines = []
    for i in range(n_lines):
        r = rng.random()
        if r < 0.75:
            line = " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))
        elif r < 0.85:
            line = rng.choice(CODE).replace("\n", " ").replace("\t", "    ")
        elif r < 0.92:
            line = "".join(rng.choice(CJK) for _ in range(rng.randint(5, 30)))
        else:
            line = " ".join(rng.choice(ACCENTED) for _ in range(rng.randint(3, 10)))
        if rng.random() < 0.05:
            line = "  " + line  # leading double space, so whitespace-only pieces appear
        lines.append(line)
    return lines


def train(out_dir):
    rng = random.Random(SEED)
    lines = corpus_lines(rng)
    model = io.BytesIO()
    # An in-memory corpus and writer, so the model records no temporary paths and is byte-for-byte reproducible.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=1000,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.9995,
        split_by_whitespace=True,
        split_by_unicode_script=True,
        split_by_number=True,
        treat_whitespace_as_suffix=False,
        max_sentence_length=4192,
        num_threads=1,
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    os.makedirs(out_dir, exist_ok=True)
    dst = os.path.join(out_dir, "llama_bpe.model")
    with open(dst, "wb") as f:
        f.write(model.getvalue())
    return dst


NEMO_TEMPLATE = "<extra_id_0>System\n{system}\n<extra_id_1>User\n{msg}\n<extra_id_1>Assistant\n"

FIXED_CASES = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", " \n ", "\r\n", "Hello world", " Hello world", "Hello  world",
    "Hello world ", "Hello world  ", "  Hello", "a", " a", "a ", "1234", " 1234", "3.14159", "-42", "1,000,000",
    "2024-06-11T12:34:56Z", "0x1F", "naïve café 日本語 🤖", "日本語", "中文", "안녕하세요", "こんにちは",
    "🤖", "👩‍💻", "🇫🇷", "❤️", "a🤖b", "\u00a0", "\u200b", "\ufeff", "\u3000", "\U0001F600\U0001F600",
    "<s>", "</s>", "<unk>", "<s>hi</s>", " <s> </s> <unk> ", "<0x0A>", "<0xFF>", "▁", "▁▁", "a▁b", " ▁ ",
    "\n<extra_id_1>", "<extra_id_0>", "<extra_id_1>Assistant\n", "\t\tindent", "line1\nline2\n", "tab\there",
    "[INST] <<SYS>>\nYou are helpful.\n<</SYS>>\n\nHello [/INST]", "The quick brown fox jumps over the lazy dog.",
    "ÀÉÎÕÜ àèìòù", "Straße", "Ω≈ç√∫", "\x00", "\x01\x02", "\x7f", "~!@#$%^&*()_+`-={}|[]\\:\";'<>?,./",
]


def random_unicode(rng):
    n = rng.randint(1, 12)
    chars = []
    for _ in range(n):
        r = rng.random()
        if r < 0.3:
            cp = rng.randint(0x20, 0x7E)
        elif r < 0.45:
            cp = rng.randint(0xA0, 0x24F)
        elif r < 0.6:
            cp = rng.randint(0x4E00, 0x9FFF)
        elif r < 0.7:
            cp = rng.randint(0x1F300, 0x1FAFF)
        elif r < 0.8:
            cp = rng.choice([0x20, 0x20, 0x0A, 0x09, 0x0D, 0x3000, 0xA0])
        else:
            cp = rng.randint(0x1, 0x10FFFF)
            if 0xD800 <= cp <= 0xDFFF:
                cp = 0x41
        chars.append(chr(cp))
    return "".join(chars)


def spacey(rng, s):
    """Decorate a string with leading/trailing/doubled whitespace."""
    ws = [" ", "  ", "   ", "\n", "\t", " \n", "\n ", ""]
    words = s.split(" ")
    out = words[0]
    for w in words[1:]:
        out += rng.choice([" ", " ", " ", "  ", "\n", "\t", " \t "]) + w
    return rng.choice(ws) + out + rng.choice(ws)


def gen_cases(rng):
    cases = list(FIXED_CASES)
    msgs = ["Hello", "", "What is 2+2?", "Écris un poème sur la mer.", "日本語で答えて", "Tell me a joke 🤖",
            "  leading spaces", "trailing  ", "multi\nline\nmessage", "<s>not special</s>", "Use <extra_id_1> literally"]
    systems = ["", "You are a helpful assistant.", "Réponds en français.", "Be brief.\nBe kind."]
    for m in msgs:
        for s in systems:
            cases.append(NEMO_TEMPLATE.format(system=s, msg=m))
    for _ in range(30):
        cases.append(NEMO_TEMPLATE.format(system=rng.choice(systems), msg=sentence(rng)))
    for _ in range(200):
        cases.append(sentence(rng))
    for _ in range(120):
        cases.append(spacey(rng, sentence(rng)))
    for _ in range(60):
        cases.append(rng.choice(CODE))
    for _ in range(40):
        cases.append(" ".join(str(rng.randint(0, 10 ** 9)) for _ in range(rng.randint(1, 4))))
    for _ in range(40):
        cases.append("".join(rng.choice(CJK + " ") for _ in range(rng.randint(1, 20))))
    for _ in range(40):
        cases.append(" ".join(rng.choice(EMOJI + ACCENTED) for _ in range(rng.randint(1, 6))))
    for _ in range(120):
        cases.append(random_unicode(rng))
    for _ in range(20):
        cases.append(" " * rng.randint(1, 9))
    for _ in range(20):
        cases.append("".join(rng.choice([" ", "\n", "\t", "a", "1"]) for _ in range(rng.randint(1, 10))))
    seen, out = set(), []
    for c in cases:
        if c not in seen:
            seen.add(c)
            out.append(c)
    return out


def write_cases(model_path, out_dir):
    sp = spm.SentencePieceProcessor(model_file=model_path)
    rng = random.Random(SEED + 1)
    path = os.path.join(out_dir, "cases.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for text in gen_cases(rng):
            ids = sp.encode(text)
            rec = {"text": text, "ids": ids, "decoded": sp.decode(ids), "pieces": [sp.id_to_piece(i) for i in ids]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def write_decode_cases(model_path, out_dir):
    """Arbitrary id lists (controls, <unk>, stray and truncated byte pieces) with sp.decode's text."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    rng = random.Random(SEED + 2)
    n = sp.vocab_size()
    byte_id = {sp.id_to_piece(i): i for i in range(n) if sp.is_byte(i)}
    lists = [[], [0], [1], [2], [1, 2], [0, 0], [1, 0, 1], [sp.piece_to_id("\u2581")], [1, sp.piece_to_id("\u2581")]]
    b = lambda x: byte_id["<0x%02X>" % x]
    hello = sp.encode("Hello")
    # Long runs that never complete a character (the stream decoder must still emit them, in bounded steps).
    lists += [[b(0xE4)] * 20 + hello, [b(0xF0), b(0x9F)] * 10 + hello, [b(0x80)] * 12, hello + [b(0xF0)] * 9]
    multibyte = "你é🤖語ñ€😀"
    for _ in range(300):
        ids = []
        for _ in range(rng.randint(1, 14)):
            r = rng.random()
            if r < 0.45:
                ids.append(rng.randrange(n))
            elif r < 0.6:
                ids.append(rng.choice([0, 1, 2]))
            elif r < 0.85:  # the bytes of a multi-byte character, sometimes truncated or shuffled
                bs = list(rng.choice(multibyte).encode("utf-8"))
                if rng.random() < 0.3:
                    bs = bs[: rng.randint(1, len(bs))]
                if rng.random() < 0.1:
                    rng.shuffle(bs)
                ids.extend(byte_id["<0x%02X>" % b] for b in bs)
            else:
                ids.append(byte_id["<0x%02X>" % rng.randrange(256)])
        lists.append(ids)
    path = os.path.join(out_dir, "decode_cases.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for ids in lists:
            f.write(json.dumps({"ids": ids, "decoded": sp.decode(ids)}, ensure_ascii=False) + "\n")
    return path


def write_stream_cases(model_path, out_dir):
    """Prompt ids + generated ids, with decode(prompt + gen) minus decode(prompt) as the expected stream."""
    sp = spm.SentencePieceProcessor(model_file=model_path)
    rng = random.Random(SEED + 3)
    prompts = [[], [1]]
    for m in ["Hello", "What is 2+2?", "日本語で答えて", "Tell me a joke 🤖", ""]:
        prompts.append(sp.encode(NEMO_TEMPLATE.format(system="", msg=m)))
        prompts.append([1] + sp.encode("[INST] " + m + " [/INST]"))
    gens = ["Hello world", " leading space", "Sure! The answer is 4.", "🤖 beep", "日本語", "\nnew line",
            "naïve café", "  two spaces", "<extra_id_1>", "x"] + [sentence(rng) for _ in range(20)]
    path = os.path.join(out_dir, "stream_cases.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for p in prompts:
            for g in gens:
                gen = sp.encode(g)
                if rng.random() < 0.3:
                    gen = gen + [2]
                full, head = sp.decode(p + gen), sp.decode(p)
                assert full.startswith(head), (p, gen)
                rec = {"prompt": p, "gen": gen, "expected": full[len(head):]}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer"))
    ap.add_argument("--model-only", action="store_true")
    args = ap.parse_args()
    model = train(args.out)
    print("wrote", model)
    if not args.model_only:
        print("wrote", write_cases(model, args.out))
        print("wrote", write_decode_cases(model, args.out))
        print("wrote", write_stream_cases(model, args.out))


if __name__ == "__main__":
    main()
