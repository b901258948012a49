#!/usr/bin/env python3
"""Do running streams stall while another client's long prompt is prefilled? (issue 9, "no stalls")

Starts tritonserver with the `llama` backend on CHECKPOINT (scripts/deploy_triton.py, free ports), then over gRPC
streaming (`llama_stream`, tritonclient):
  1. solo: STREAMS concurrent streams of a short prompt, TOKENS new tokens each (EOS ignored);
  2. contended: the same streams; once each has its first tokens, another client sends a LONG-token prompt
     (1 new token). The inter-token latencies of the streams that overlap the long request are compared with
     their solo inter-token latencies.
Inter-token latency is client-side: the gap between two responses divided by the tokens the later one adds
(`num_output_tokens`; a response can carry more than one token when text is held back mid-character).
Prints one JSON line: solo and contended p50/p99/max (ms), the ratio contended p99 / solo p99, the long
prompt's time to its token, and the engine settings. A measurement, never a pass/fail test.

With --throughput 1,4 it measures instead output tokens/s at each concurrency: that many clients, each sending
--requests streaming requests back to back (short prompt, TOKENS new tokens, EOS ignored), total tokens over
the wall time, the concurrencies interleaved twice on one server; and the ratio of each to the first.

Usage: .venv/bin/python scripts/bench/itl_probe.py CHECKPOINT [--streams 2] [--tokens 64] [--long 512]
           [--mixed_prefill_tokens N] [--max_batched_tokens N] [--weight_dtype bf16] [--throughput 1,4 [--requests 3]]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the shared port helper
from tl_ports import free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORDS = (
    "the quick brown fox jumps over lazy dog hello world language learning attention cache memory kernel "
    "thread stream decode encode vocabulary"
).split()


def prompt_of(cli, ckpt, n_tokens):
    """The longest run of WORDS whose tokenization (with BOS) has at most n_tokens ids (binary search)."""

    def text(k):
        return " ".join(WORDS[i % len(WORDS)] for i in range(k))

    def count(k):
        out = subprocess.run(
            [cli, "tokenize", ckpt, "--text", text(k), "--json"], check=True, capture_output=True, text=True
        )
        return len(json.loads(out.stdout)["ids"])

    lo, hi = 1, n_tokens  # every word is at least one token
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if count(mid) <= n_tokens else (lo, mid - 1)
    return text(lo)


def inputs(text, max_tokens):
    def t(name, arr, dtype):
        x = grpcclient.InferInput(name, list(arr.shape), dtype)
        x.set_data_from_numpy(arr)
        return x

    return [
        t("text_input", np.array([[text.encode()]], dtype=object), "BYTES"),
        t("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        t("ignore_eos", np.array([[True]], dtype=bool), "BOOL"),
    ]


class Stream:
    """One request on its own gRPC stream; records (time, output tokens in the response) per response."""

    def __init__(self, url, model, text, max_tokens):
        self.events, self.done, self.error = [], threading.Event(), None
        self.client = grpcclient.InferenceServerClient(url)
        self.client.start_stream(callback=self._on)
        self.sent = time.perf_counter()
        self.client.async_stream_infer(model, inputs(text, max_tokens), enable_empty_final_response=True)

    def _on(self, result, error):
        now = time.perf_counter()
        if error is not None:
            self.error = error
            self.done.set()
            return
        n = result.as_numpy("num_output_tokens")
        if n is not None:
            self.events.append((now, int(n[0][0])))
        if result.get_response().parameters["triton_final_response"].bool_param:
            self.done.set()

    def close(self):
        self.client.stop_stream()
        self.client.close()

    def gaps(self):
        """[(start, end, ms per token)] between consecutive responses that added tokens."""
        out, ev = [], [e for e in self.events if e[1] > 0]
        for (t0, _), (t1, n1) in zip(ev, ev[1:]):
            out += [(t0, t1, (t1 - t0) * 1e3 / n1)] * n1
        return out


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def run_streams(url, n, text, tokens, long_text=None):
    streams = [Stream(url, "llama_stream", text, tokens) for _ in range(n)]
    long = None
    if long_text is not None:
        while not all(len(s.events) >= 3 for s in streams):  # every stream is decoding
            if any(s.error for s in streams):
                break
            time.sleep(0.005)
        long = Stream(url, "llama_stream", long_text, 1)
    for s in streams + ([long] if long else []):
        s.done.wait(600)
        s.close()
        if s.error:
            sys.exit(f"itl_probe: request failed: {s.error}")
    return streams, long


def throughput(url, c, text, tokens, requests):
    """Output tokens/s of c clients each sending `requests` requests back to back."""

    def client():
        for _ in range(requests):
            s = Stream(url, "llama_stream", text, tokens)
            s.done.wait(600)
            s.close()
            if s.error:
                raise RuntimeError(s.error)

    threads = [threading.Thread(target=client) for _ in range(c)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return c * requests * tokens / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--long", type=int, default=512)
    p.add_argument("--mixed_prefill_tokens", type=int, default=None)
    p.add_argument("--max_batched_tokens", type=int, default=None)
    p.add_argument("--weight_dtype", default=None, help="auto (default), f32, bf16 or int8: passed to deploy_triton.py")
    p.add_argument("--cli", default=str(ROOT / "target/release/triton-llama"))
    p.add_argument("--throughput", default=None, help="comma list of concurrencies: measure output tokens/s instead")
    p.add_argument("--requests", type=int, default=3, help="--throughput: requests per client per measurement")
    a = p.parse_args()
    http, grpc, metrics = free_ports(3)
    tmp = tempfile.mkdtemp(prefix="itl_probe_")
    cmd = [
        sys.executable,
        str(ROOT / "scripts/deploy_triton.py"),
        "-tmr",
        f"{tmp}/repo",
        "--hf_checkpoint",
        a.checkpoint,
        "--triton_port",
        str(http),
        "--grpc_port",
        str(grpc),
        "--metrics_port",
        str(metrics),
        "--max_num_seqs",
        str(max([a.streams + 2] + [int(c) for c in (a.throughput or "1").split(",")])),
        "--cli",
        a.cli,
    ]
    for k in ("mixed_prefill_tokens", "max_batched_tokens", "weight_dtype"):
        if getattr(a, k) is not None:
            cmd += [f"--{k}", str(getattr(a, k))]
    log = open(f"{tmp}/server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while True:
            if server.poll() is not None or time.time() > deadline:
                sys.exit(f"itl_probe: server did not come up:\n{open(f'{tmp}/server.log').read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://localhost:{http}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.3)
        url = f"localhost:{grpc}"
        short = prompt_of(a.cli, a.checkpoint, 16)
        if a.throughput:
            cs = [int(c) for c in a.throughput.split(",")]
            run_streams(url, max(cs), short, 8)  # warm-up
            tps = {c: [] for c in cs}
            for _ in range(2):
                for c in cs:
                    tps[c].append(throughput(url, c, short, a.tokens, a.requests))
            mean = {c: sum(v) / len(v) for c, v in tps.items()}
            print(
                json.dumps(
                    {
                        "checkpoint": a.checkpoint,
                        "tokens": a.tokens,
                        "requests_per_client": a.requests,
                        "output_tok_s": tps,
                        "ratio_to_first": {c: mean[c] / mean[cs[0]] for c in cs},
                    }
                )
            )
            return
        long_text = prompt_of(a.cli, a.checkpoint, a.long)
        run_streams(url, a.streams, short, 8)  # warm-up
        solo, _ = run_streams(url, a.streams, short, a.tokens)
        solo_itl = [g for s in solo for (_, _, g) in s.gaps()]
        busy, long = run_streams(url, a.streams, short, a.tokens, long_text)
        t0, t1 = long.sent, long.events[-1][0] if long.events else time.perf_counter()
        during = [g for s in busy for (b, e, g) in s.gaps() if e > t0 and b < t1]
        after_long = all(s.events[-1][0] > t1 for s in busy)
        res = {
            "checkpoint": a.checkpoint,
            "streams": a.streams,
            "tokens": a.tokens,
            "long_prompt_tokens": a.long,
            "mixed_prefill_tokens": a.mixed_prefill_tokens or "default",
            "max_batched_tokens": a.max_batched_tokens or "default",
            "solo_ms": {"p50": pct(solo_itl, 50), "p99": pct(solo_itl, 99), "max": max(solo_itl), "n": len(solo_itl)},
            "during_long_prefill_ms": {
                "p50": pct(during, 50),
                "p99": pct(during, 99),
                "max": max(during, default=float("nan")),
                "n": len(during),
            },
            "p99_ratio": pct(during, 99) / pct(solo_itl, 99),
            "long_prompt_ttft_ms": (t1 - t0) * 1e3,
            "streams_outlived_the_long_prompt": after_long,
        }
        print(json.dumps(res))
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
