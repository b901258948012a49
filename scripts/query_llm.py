#!/usr/bin/env python3
"""A NemoQuery-compatible client that needs no NeMo install: `NemoQuery(url, model_name)` with
`query_llm(...)` (returns the `[N,1]` str array, so `output[0][0]` works as in the model card) and
`query_llm_streaming(...)` (yields the text so far, over gRPC, from the `<model>_stream` twin).

    python scripts/query_llm.py --url localhost:8000 --model llama --prompt "What is Triton?"
"""
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
    p.add_argument("-p", "--prompt", required=True, action="append")
    p.add_argument("-mot", "--max_output_token", type=int, default=128)
    p.add_argument("-tk", "--top_k", type=int, default=1)
    p.add_argument("-tpp", "--top_p", type=float, default=0.0)
    p.add_argument("-t", "--temperature", type=float, default=1.0)
    p.add_argument("--stream", action="store_true")
    a = p.parse_args(argv)
    q = NemoQuery(a.url, a.model)
    if a.stream:
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
