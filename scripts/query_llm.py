#!/usr/bin/env python3
"""A NemoQuery-compatible client that needs no NeMo install: `NemoQuery(url, model_name)` with
`query_llm(...)` (returns the `[N,1]` str array, so `output[0][0]` works as in the model card) and
`query_llm_streaming(...)` (yields the text so far, over gRPC, from the `<model>_stream` twin).

    python scripts/query_llm.py --url localhost:8000 --model llama --prompt "What is Triton?"
    python scripts/query_llm.py --model llama --turn "What is Triton?" --turn "Say it in five words."   # multi-turn

`chat(turns)` holds a multi-turn conversation: every turn sends the whole history (the earlier answers included)
as the model's `messages` input, the server renders the checkpoint's chat template and ends each answer at the
next turn's marker (no `split("\n")`).
"""
import json
import argparse
import sys

import numpy as np


def _inputs(prompts, max_output_token, top_k, top_p, temperature, random_seed=None, stop_words_list=None, bad_words_list=None):
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

    def query_llm(self, prompts, max_output_token=512, top_k=1, top_p=0.0, temperature=1.0, init_timeout=600.0, **extra):
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

    def query_llm_streaming(self, prompts, max_output_token=512, top_k=1, top_p=0.0, temperature=1.0, init_timeout=600.0, **extra):
        from pytriton.client import DecoupledModelClient

        url = self.url if self.url.startswith("grpc://") else "grpc://" + self.url.split("://")[-1].replace(":8000", ":8001")
        model = self.model_name if self.model_name.endswith("_stream") else self.model_name + "_stream"
        with DecoupledModelClient(url, model, init_timeout_s=init_timeout) as client:
            for chunk in client.infer_batch(**_inputs(prompts, max_output_token, top_k, top_p, temperature, **extra)):
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
            sys.stdout.write(text[len(last):])
            sys.stdout.flush()
            last = text
        print()
    else:
        for row in q.query_llm(a.prompt, a.max_output_token, a.top_k, a.top_p, a.temperature):
            print(row[0])


if __name__ == "__main__":
    main()
