#!/usr/bin/env python3
"""Writes the chat-template reference renderings that tests/chat.rs compares with (committed fixtures).

  tests/fixtures/chat/llama2_chat/tokenizer_config.json   Llama-2-chat's tokenizer_config.json (its `chat_template`)
  tests/fixtures/chat/chatml/tokenizer_config.json        a ChatML template (exercises add_generation_prompt)
  tests/fixtures/chat/renderings.json                     transformers' apply_chat_template(..., tokenize=False,
                                                          add_generation_prompt=...) per conversation, the error
                                                          text where the template refuses one, and for Llama-2
                                                          the token ids Meta's reference `chat_completion` builds
                                                          from the messages (sentencepiece on the fixture model)

Needs only `transformers sentencepiece jinja2 protobuf` (no torch):
  python3 -m venv /tmp/v && /tmp/v/bin/pip install transformers sentencepiece jinja2 protobuf
  /tmp/v/bin/python scripts/gen_chat_fixtures.py [--check]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

import sentencepiece
import transformers
from transformers import LlamaTokenizer, PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "chat"
SPM = ROOT / "tests" / "fixtures" / "tokenizer" / "llama_bpe.model"

# meta-llama/Llama-2-7b-chat-hf tokenizer_config.json `chat_template` (the [INST] / <<SYS>> format).
LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# ChatML, written over several lines so trim_blocks / lstrip_blocks matter.
CHATML = """{% for message in messages %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>' + '\\n' }}
{% endfor %}
{% if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{% endif %}"""

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is Triton?"}],
    "system_user": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is Triton?"}],
    "multi_turn": [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": " Hello! How can I help? "},
        {"role": "user", "content": "Tell me a joke.\nA short one."},
    ],
    "system_multi_turn": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "  How are you?  "},
    ],
    "ends_with_assistant": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
    "unicode": [{"role": "user", "content": "naïve café 日本語 🙂"}],
    "not_alternating": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
}


def meta_llama2_ids(dialog: list) -> list:
    """Token ids as meta-llama/llama's generation.py `chat_completion` encodes a dialog (independent of Jinja)."""
    sp = sentencepiece.SentencePieceProcessor(model_file=str(SPM))
    B_INST, E_INST, B_SYS, E_SYS = "[INST]", "[/INST]", "<<SYS>>\n", "\n<</SYS>>\n\n"
    if dialog[0]["role"] == "system":
        dialog = [
            {"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}
        ] + dialog[2:]
    ids = []
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        ids += (
            [sp.bos_id()]
            + sp.encode(f"{B_INST} {prompt['content'].strip()} {E_INST} {answer['content'].strip()} ")
            + [sp.eos_id()]
        )
    ids += [sp.bos_id()] + sp.encode(f"{B_INST} {dialog[-1]['content'].strip()} {E_INST}")
    return ids


def tokenizer_config(template: str) -> dict:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": True,
        "tokenizer_class": "LlamaTokenizer",
        "chat_template": template,
    }


def render_all(out: Path) -> None:
    templates = {"llama2_chat": LLAMA2_CHAT, "chatml": CHATML}
    result = {"transformers": transformers.__version__, "templates": {}}
    for name, template in templates.items():
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(template), indent=2) + "\n")
        tok = LlamaTokenizer(
            vocab_file=str(SPM),
            legacy=True,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            add_bos_token=True,
            add_eos_token=False,
        )
        tok.chat_template = template
        cases = []
        for conv_name, msgs in CONVERSATIONS.items():
            for gen in (True, False):
                case = {"conversation": conv_name, "messages": msgs, "add_generation_prompt": gen}
                try:
                    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
                    case["text"] = text
                    if name == "llama2_chat" and msgs[-1]["role"] == "user":
                        case["ids"] = meta_llama2_ids(msgs)
                except Exception as e:  # the template's raise_exception
                    case["error"] = str(e)
                cases.append(case)
        result["templates"][name] = cases
    (out / "renderings.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--check", action="store_true", help="regenerate in a temp folder and compare with the committed files"
    )
    args = ap.parse_args()
    if not args.check:
        render_all(OUT)
        print(f"wrote {OUT}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        render_all(Path(tmp))
        bad = [
            str(p.relative_to(tmp))
            for p in Path(tmp).rglob("*")
            if p.is_file() and (OUT / p.relative_to(tmp)).read_bytes() != p.read_bytes()
        ]
        if bad:
            print("DIFFERENT: " + ", ".join(bad))
            sys.exit(1)
        print("OK")


if __name__ == "__main__":
    main()
