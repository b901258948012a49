#!/usr/bin/env python3
"""Prefix-caching benchmark (not a test): a chat's second turn after a ~1000-token system prompt, served with the
prefix cache on and off. Starts two servers on the demo model (`deploy_triton.py`, free ports; one with
`--no-enable_prefix_caching`) and, round by round, sends each the same fresh conversation (turn 1, then turn 2 =
turn 1 + its answer + a new question), one request at a time, the servers interleaved so that background load
hits both alike. Reports the server-side time to first token (from `llama_time_to_first_token_seconds`) of each
turn, median over rounds, and the turn-2 ratio on/off (goal <= 0.3 on CPU), plus the prefix-cache hit counters.

    .venv/bin/python scripts/bench/bench_prefix_cache.py [--rounds 5] [--prefix-words 900]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the shared port helper
from tl_ports import free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


class Server:
    def __init__(self, name, tmp, extra):
        self.http, grpc, self.metrics_port = free_ports(3)
        self.log = open(ROOT / f"target/bench-prefix-cache-{name}.log", "w")
        cmd = [
            sys.executable,
            str(ROOT / "scripts/deploy_triton.py"),
            "-tmr",
            str(Path(tmp) / f"{name}_repo"),
            "--triton_port",
            str(self.http),
            "--grpc_port",
            str(grpc),
            "--metrics_port",
            str(self.metrics_port),
        ] + extra
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{name}: tritonserver exited early; see {self.log.name}")
            try:
                urllib.request.urlopen(f"http://localhost:{self.http}/v2/health/ready", timeout=1)
                self.metric("llama_kv_cache_blocks_total")
                return
            except OSError:
                time.sleep(0.3)
        sys.exit(f"{name}: not ready in time")

    def metric(self, name):
        """Value of `name` for the request/response model `llama` (engine-wide values repeat under its twin)."""
        with urllib.request.urlopen(f"http://localhost:{self.metrics_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(name + "{") and 'model="llama"' in line:
                return float(line.rsplit(" ", 1)[1])
        raise OSError(f"no {name} yet")

    def ask(self, prompt, max_tokens):
        """Greedy answer text and its server-side TTFT (s); prompt tokens, prefix hits."""
        names = (
            "llama_time_to_first_token_seconds_sum",
            "llama_time_to_first_token_seconds_count",
            "llama_prompt_tokens_total",
            "llama_prefix_cache_hits_tokens_total",
        )
        before = [self.metric(n) for n in names]
        body = json.dumps({"text_input": prompt, "max_tokens": max_tokens, "ignore_eos": True}).encode()
        req = urllib.request.Request(f"http://localhost:{self.http}/v2/models/llama/generate", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=600) as r:
            text = json.loads(r.read())["text_output"]
        d = [self.metric(n) - b for n, b in zip(names, before)]
        assert d[1] == 1, "one request at a time"
        return text, d[0], int(d[2]), int(d[3])

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--prefix-words", type=int, default=900, help="words of system prompt (about a token each)")
    p.add_argument("--max-tokens", type=int, default=16, help="answer length of turn 1 (and turn 2)")
    a = p.parse_args()
    words = (ROOT / "src/demo_corpus.txt").read_text().split()
    with tempfile.TemporaryDirectory(prefix="bench-prefix-cache-") as tmp:
        servers = {"on": Server("on", tmp, []), "off": Server("off", tmp, ["--no-enable_prefix_caching"])}
        try:
            ttft = {(s, t): [] for s in servers for t in (1, 2)}
            info = {}
            for r in range(a.rounds):
                # A fresh system prompt each round: turn 1 is always cold, turn 2 shares turn 1 whole.
                start = (r * 131) % max(1, len(words) - a.prefix_words)
                system = f"Conversation {r}. " + " ".join(words[start : start + a.prefix_words])
                turn1 = f"{system}\nUser: What does this text say about the weather?\nAssistant:"
                answers = {}
                for name in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    s = servers[name]
                    a1, t1, n1, _ = s.ask(turn1, a.max_tokens)
                    turn2 = f"{turn1}{a1}\nUser: And what about the people in it?\nAssistant:"
                    a2, t2, n2, hits2 = s.ask(turn2, a.max_tokens)
                    ttft[(name, 1)].append(t1)
                    ttft[(name, 2)].append(t2)
                    answers[name] = (a1, a2)
                    info[name] = (n1, n2, hits2)
                same = answers["on"] == answers["off"]
                on2, off2 = ttft[("on", 2)][-1] * 1e3, ttft[("off", 2)][-1] * 1e3
                print(f"round {r}: turn-2 TTFT on {on2:.1f} ms, off {off2:.1f} ms; same answers: {same}", flush=True)
            med = {k: statistics.median(v) * 1e3 for k, v in ttft.items()}
            n1, n2, hits = info["on"]
            print(f"prompt tokens: turn 1 {n1}, turn 2 {n2} (cache on: {hits} found cached)")
            print(
                f"median server-side TTFT over {a.rounds} interleaved rounds: "
                f"turn 1 on {med[('on', 1)]:.1f} ms / off {med[('off', 1)]:.1f} ms; "
                f"turn 2 on {med[('on', 2)]:.1f} ms / off {med[('off', 2)]:.1f} ms"
            )
            print(f"turn-2 TTFT ratio on/off: {med[('on', 2)] / med[('off', 2)]:.3f}x (goal <= 0.3x)")
        finally:
            for s in servers.values():
                s.stop()


if __name__ == "__main__":
    main()
