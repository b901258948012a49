#!/usr/bin/env python3
"""A NemoQuery-compatible client that needs no NeMo install: `NemoQuery(url, model_name)` with
`query_llm(...)` (returns the `[N,1]` str array, so `output[0][0]` works as in the model card) and
`query_llm_streaming(...)` (yields the text so far, over gRPC, from the `<model>_stream` twin), and NeMo 2.x's
`NemoQueryLLM` (the TensorRT-LLM deployable's client) sending exactly the inputs NeMo 2.x sends.

    python scripts/query_llm.py --url localhost:8000 --model llama --prompt "What is Triton?"
    python scripts/query_llm.py --model llama --turn "What is Triton?" --turn "Say it in five words."   # multi-turn

`chat(turns)` holds a multi-turn conversation: every turn sends the whole history (the earlier answers included)
as the model's `messages` input, the server renders the checkpoint's chat template and ends each answer at the
next turn's marker (no `split("\n")`).
"""

import argparse
import json
import sys

import numpy as np


def _inputs(
    prompts, max_output_token, top_k, top_p, temperature, random_seed=None, stop_words_list=None, bad_words_list=None
):
    n = len(prompts)
    col = lambda v, dt: np.full((n, 1), v, dtype=dt)  # noqa: E731
    inputs = {
        "prompts": np.char.encode(np.array(prompts)[:, None], "utf-8"),
        "max_output_token": col(max_output_token, np.int64),
        "top_k": col(top_k, np.int64),
        "top_p": col(top_p, np.float32),
        "temperature": col(temperature, np.float32),
    }
    if random_seed is not None:
        inputs["random_seed"] = col(random_seed, np.int64)
    for name, words in (("stop_words_list", stop_words_list), ("bad_words_list", bad_words_list)):
        if words:
            inputs[name] = np.char.encode(np.array([list(words)] * n), "utf-8")
    return inputs


def _decode(out):
    return np.char.decode(out["outputs"].astype("bytes"), "utf-8")


class NemoQuery:
    """Same constructor and method names as `nemo.deploy.NemoQuery` (NeMo 23.10, plus later optional args)."""

    def __init__(self, url, model_name):
        self.url = url
        self.model_name = model_name

    def query_llm(
        self, prompts, max_output_token=512, top_k=1, top_p=0.0, temperature=1.0, init_timeout=600.0, **extra
    ):
        from pytriton.client import ModelClient

        with ModelClient(self.url, self.model_name, init_timeout_s=init_timeout) as client:
            return _decode(client.infer_batch(**_inputs(prompts, max_output_token, top_k, top_p, temperature, **extra)))

    def chat(self, turns, system=None, max_output_token=512, top_k=1, top_p=0.0, temperature=1.0, init_timeout=600.0):
        """Yields the answer to each user turn of `turns`; each request carries the history so far."""
        from pytriton.client import ModelClient

        history = [{"role": "system", "content": system}] if system else []
        with ModelClient(self.url, self.model_name, init_timeout_s=init_timeout) as client:
            for turn in turns:
                history.append({"role": "user", "content": turn})
                inputs = _inputs([""], max_output_token, top_k, top_p, temperature)
                del inputs["prompts"]
                inputs["messages"] = np.char.encode(np.array([[json.dumps(history)]]), "utf-8")
                answer = _decode(client.infer_batch(**inputs))[0][0]
                history.append({"role": "assistant", "content": answer})
                yield answer

    def query_llm_streaming(
        self, prompts, max_output_token=512, top_k=1, top_p=0.0, temperature=1.0, init_timeout=600.0, **extra
    ):
        from pytriton.client import DecoupledModelClient

        url = (
            self.url
            if self.url.startswith("grpc://")
            else "grpc://" + self.url.split("://")[-1].replace(":8000", ":8001")
        )
        model = self.model_name if self.model_name.endswith("_stream") else self.model_name + "_stream"
        with DecoupledModelClient(url, model, init_timeout_s=init_timeout) as client:
            for chunk in client.infer_batch(**_inputs(prompts, max_output_token, top_k, top_p, temperature, **extra)):
                yield _decode(chunk)


def _col(prompts, value, dtype):
    return np.full(prompts.shape, value, dtype=dtype)


def _words(words):
    """NeMo 2.x's str_list2numpy: one word per row, `[len(words), 1]` BYTES."""
    return np.char.encode(np.array(words)[..., np.newaxis], "utf-8")


class NemoQueryLLM:
    """NeMo 2.x `nemo.deploy.nlp.NemoQueryLLM`: same constructor, method names, arguments and input tensors
    (names, dtypes, shapes): `np.full(prompts.shape, v)` columns of np.int_ (INT64), np.single (FP32) or np.bool_,
    word lists as `[k, 1]` (query_llm) or `[N, k]` (streaming) BYTES, and the two logits flags always sent.
    NeMo itself fills `min_output_len` with the max_output_len value; this sends the value given."""

    def __init__(self, url, model_name):
        self.url = url
        self.model_name = model_name

    def query_llm(
        self,
        prompts,
        stop_words_list=None,
        bad_words_list=None,
        no_repeat_ngram_size=None,
        min_output_len=None,
        max_output_len=None,
        top_k=None,
        top_p=None,
        temperature=None,
        random_seed=None,
        task_id=None,
        lora_uids=None,
        use_greedy=None,
        repetition_penalty=None,
        add_BOS=None,
        all_probs=None,
        compute_logprob=None,
        end_strings=None,
        init_timeout=60.0,
        output_context_logits=False,
        output_generation_logits=False,
        openai_format_response=False,
    ):
        """The texts `[N, 1]`; with `openai_format_response`, a completion-like dict whose first choice carries
        `generation_logits` / `context_logits` when those flags are set (as NeMo 2.x returns them)."""
        from pytriton.client import ModelClient

        p = _words(prompts)
        inputs = {"prompts": p}
        for name, value, dtype in (
            ("min_output_len", min_output_len, np.int_),
            ("max_output_len", max_output_len, np.int_),
            ("top_k", top_k, np.int_),
            ("top_p", top_p, np.single),
            ("temperature", temperature, np.single),
            ("random_seed", random_seed, np.int_),
            ("no_repeat_ngram_size", no_repeat_ngram_size, np.single),
            ("use_greedy", use_greedy, np.bool_),
            ("repetition_penalty", repetition_penalty, np.single),
            ("add_BOS", add_BOS, np.bool_),
            ("all_probs", all_probs, np.bool_),
            ("compute_logprob", compute_logprob, np.bool_),
            ("output_context_logits", output_context_logits, np.bool_),
            ("output_generation_logits", output_generation_logits, np.bool_),
        ):
            if value is not None:
                inputs[name] = _col(p, value, dtype)
        for name, words in (
            ("stop_words_list", stop_words_list),
            ("bad_words_list", bad_words_list),
            ("end_strings", end_strings),
        ):
            if words is not None:
                inputs[name] = _words(words)
        if task_id is not None:
            inputs["task_id"] = np.full((p.shape[0], 1), np.char.encode(task_id, "utf-8"))
        if lora_uids is not None:
            inputs["lora_uids"] = np.full((p.shape[0], len(lora_uids)), np.char.encode(lora_uids, "utf-8"))
        with ModelClient(self.url, self.model_name, init_timeout_s=init_timeout) as client:
            out = client.infer_batch(**inputs)
        if not openai_format_response:
            return _decode(out)
        choice = {"text": _decode(out)}
        for name, asked in (("generation_logits", output_generation_logits), ("context_logits", output_context_logits)):
            if asked:
                choice[name] = out[name]
        return {"object": "text_completion", "model": self.model_name, "choices": [choice]}

    def query_llm_streaming(
        self,
        prompts,
        stop_words_list=None,
        bad_words_list=None,
        no_repeat_ngram_size=None,
        max_output_len=512,
        top_k=1,
        top_p=0.0,
        temperature=1.0,
        random_seed=None,
        task_id=None,
        lora_uids=None,
        init_timeout=60.0,
    ):
        """Over `grpc://` to a decoupled model (here the `<name>_stream` twin); yields the text so far."""
        from pytriton.client import DecoupledModelClient

        p = _words(prompts)
        n = p.shape[0]
        inputs = {"prompts": p}
        for name, value, dtype in (
            ("max_output_len", max_output_len, np.int_),
            ("top_k", top_k, np.int_),
            ("top_p", top_p, np.single),
            ("temperature", temperature, np.single),
            ("random_seed", random_seed, np.int_),
            ("no_repeat_ngram_size", no_repeat_ngram_size, np.single),
        ):
            if value is not None:
                inputs[name] = _col(p, value, dtype)
        for name, words in (("stop_words_list", stop_words_list), ("bad_words_list", bad_words_list)):
            if words is not None:
                inputs[name] = np.full((n, len(words)), np.char.encode(words, "utf-8"))
        if task_id is not None:
            inputs["task_id"] = np.full((n, 1), np.char.encode(task_id, "utf-8"))
        if lora_uids is not None:
            inputs["lora_uids"] = np.full((n, len(lora_uids)), np.char.encode(lora_uids, "utf-8"))
        with DecoupledModelClient(self.url, self.model_name, init_timeout_s=init_timeout) as client:
            for chunk in client.infer_batch(**inputs):
                yield _decode(chunk)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-u", "--url", default="localhost:8000")
    p.add_argument("-mn", "--model", default="llama")
    p.add_argument("-p", "--prompt", action="append", help="a prompt (repeat for a batch)")
    p.add_argument("--turn", action="append", help="a user turn of one conversation (repeat for more turns)")
    p.add_argument("--system", default=None, help="system message of the --turn conversation")
    p.add_argument("-mot", "--max_output_token", type=int, default=128)
    p.add_argument("-tk", "--top_k", type=int, default=1)
    p.add_argument("-tpp", "--top_p", type=float, default=0.0)
    p.add_argument("-t", "--temperature", type=float, default=1.0)
    p.add_argument("--stream", action="store_true")
    a = p.parse_args(argv)
    q = NemoQuery(a.url, a.model)
    if bool(a.prompt) == bool(a.turn):
        p.error("give --prompt (one or more prompts) or --turn (the turns of one conversation)")
    if a.turn:
        for turn, answer in zip(a.turn, q.chat(a.turn, a.system, a.max_output_token, a.top_k, a.top_p, a.temperature)):
            print(f"> {turn}\n{answer}")
    elif a.stream:
        last = ""
        for chunk in q.query_llm_streaming(a.prompt, a.max_output_token, a.top_k, a.top_p, a.temperature):
            text = chunk[0][0]
            sys.stdout.write(text[len(last) :])
            sys.stdout.flush()
            last = text
        print()
    else:
        for row in q.query_llm(a.prompt, a.max_output_token, a.top_k, a.top_p, a.temperature):
            print(row[0])


if __name__ == "__main__":
    main()
