"""scripts/bench/loadtest.py, short: 64 clients for 60 s against its own demo-model server must pass every check;
and its OpenAI-frontend mode (32 clients, 40 s): completions and chat, streamed and unary, disconnects, malformed
JSON, unknown models."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_short_load_run_passes():
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench/loadtest.py"), "--clients", "64", "--duration", "60"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(p.stdout[-6000:], p.stderr[-6000:], sep="\n")
    summary = [line for line in p.stdout.splitlines() if line.startswith("loadtest: clients=")]
    assert summary, "no summary line"
    assert p.returncode == 0, summary[-1]
    assert " lost=0 " in summary[-1] and summary[-1].endswith("PASS")
    # Prefix caching is on by default and the greedy checks repeat prompts: some prompt tokens must hit.
    m = re.search(r" prefix_cache_hit_rate=[\d.]+%\((\d+)/(\d+) tokens\) ", summary[-1])
    assert m and 0 < int(m[1]) <= int(m[2]), summary[-1]


def test_short_openai_load_run_passes():
    p = subprocess.run(
        [sys.executable, str(ROOT / "scripts/bench/loadtest.py"), "--openai", "--clients", "32", "--duration", "40"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(p.stdout[-6000:], p.stderr[-6000:], sep="\n")
    if "tritonserver crashed (SIGSEGV), in tritonserver itself" in p.stdout:
        # Triton 2.51's gRPC frontend races a stream's cancellation (a client disconnect, which the OpenAI frontend
        # turns into a cancel) against the request's completion and can crash: server#8034, fixed by #8078 after
        # 2.51 (README "Load test"). Reported as such, never as a pass.
        pytest.xfail("tritonserver 2.51 gRPC-frontend crash on stream cancellation (server#8034), not the backend")
    summary = [line for line in p.stdout.splitlines() if line.startswith("loadtest: openai clients=")]
    assert summary, "no summary line"
    assert p.returncode == 0, summary[-1]
    assert " lost=0 dup=0 " in summary[-1] and summary[-1].endswith("PASS")
    m = re.search(r" cancelled=(\d+) .* greedy_checked=(\d+) greedy_mismatch=0 ", summary[-1])
    assert m and int(m[1]) > 0 and int(m[2]) > 0, summary[-1]
    bad = next(line for line in p.stdout.splitlines() if line.startswith("loadtest: bad requests"))
    assert all(k in bad for k in ("malformed_json:400", "unknown_model:404", "empty_prompt:400")), bad
