#!/usr/bin/env python3
"""Load and soak test for the `llama` backend (issue #5).

N concurrent asyncio clients loop for --duration seconds over a mix of HTTP unary, gRPC unary and gRPC streaming
requests (the decoupled `<model>_stream` twin): random prompt lengths, random small max_tokens, greedy and
sampled, 10% of them batches of 2-4 prompts ([N,1]). About 10% of the streams are cancelled after their first
few responses and about 5% of the requests are deliberately bad (each must be refused). The run fails (exit 1)
when any check fails:

- every good request completes without error or timeout; every bad request is refused;
- greedy answers equal `triton-llama generate --json` for the same checkpoint, prompt and max_tokens
  (references precomputed for a fixed pool of prompts x max_tokens before the load);
- nothing lost or duplicated: a stream has exactly one FINAL flag and nothing after it, and its deltas add up
  to the text it reports so far;
- `llama_requests_finished_total` deltas by reason match what the clients sent and saw;
- `/v2/health/ready` (polled every 0.5 s from a separate process) always answers 200 within 1 s;
- the server's RSS once idle at the end is within 10% of its RSS after the warm-up phase;
- once idle, running/waiting gauges and `llama_kv_cache_blocks_used` are 0;
- a server it started stops on SIGTERM with status 0 (a request never released would block the unload).

`--openai`: the same checks with the clients driving the OpenAI-compatible frontend instead (completions and chat,
streamed and unary, client disconnects, malformed JSON, unknown models: scripts/bench/loadtest_openai.py).

It prints one summary line. By default it starts its own server (demo model, free ports, via
scripts/deploy_triton.py); --url/--grpc-url/--metrics-url/--pid/--checkpoint attach to a running one.
"""

import argparse
import asyncio
import collections
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcaio
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: the shared port helper
import loadtest_openai  # noqa: E402
from tl_ports import free_ports  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WORDS = (
    "the quick brown fox jumps over lazy dog Triton serves llama models on CPU and GPU with continuous "
    "batching streaming stop strings cancellation metrics hello world what is a token naïve café 日本語 🤖"
).split()
POOL_PROMPTS = 8  # greedy reference pool: POOL_PROMPTS x len(POOL_MAX_TOKENS) CLI runs
POOL_MAX_TOKENS = (1, 2, 5, 11, 23, 48)
# Bad request kinds. The bool says whether the backend sees (and counts as `rejected`) the request: Triton
# itself refuses a wrong dtype or an unknown input name before the backend's execute, so those never reach
# llama_requests_finished_total.
BAD_KINDS = {
    "wrong_dtype": False,
    "unknown_input": False,
    "missing_input": True,
    "empty_prompt": True,
    "absurd_max_tokens": True,
    "invalid_utf8": True,
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=256)
    p.add_argument("--duration", type=float, default=600, help="seconds of load (warm-up included)")
    p.add_argument(
        "--warmup", type=float, default=None, help="seconds before the RSS baseline; default min(60, duration/4)"
    )
    p.add_argument("--request-timeout", type=float, default=180, help="a good request slower than this fails the run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="llama")
    p.add_argument(
        "--url",
        help="attach: HTTP host:port of a running server (then also --grpc-url, --metrics-url, --pid, --checkpoint)",
    )
    p.add_argument("--grpc-url")
    p.add_argument("--metrics-url", help="host:port of the metrics endpoint")
    p.add_argument("--pid", type=int, help="tritonserver pid (for RSS)")
    p.add_argument("--checkpoint", help="checkpoint the server serves (for the greedy references)")
    p.add_argument("--cli", default=str(ROOT / "target/release/triton-llama"))
    p.add_argument("--openai", action="store_true", help="drive the OpenAI-compatible frontend instead")
    p.add_argument("--openai-url", help="attach with --openai: the frontend's http://host:port")
    a = p.parse_args()
    if a.url and not (a.grpc_url and a.metrics_url and a.pid and a.checkpoint):
        p.error("--url needs --grpc-url, --metrics-url, --pid and --checkpoint")
    if a.url and a.openai and not a.openai_url:
        p.error("--url with --openai needs --openai-url")
    a.warmup = min(60.0, a.duration / 4) if a.warmup is None else a.warmup
    return a


# ---------------------------------------------------------------- server, process, metrics helpers


def child_pids(pid):
    """Direct children of `pid` (scans /proc, so no CONFIG_PROC_CHILDREN needed)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def start_server(a, tmp):
    """Deploys the demo model on free ports with room for every client in flight; returns the Popen."""
    http, grpc, metrics, openai = free_ports(4)
    repo = Path(tmp) / "repo"
    a.log_path = ROOT / "target/e2e-logs/loadtest-server.log"
    a.log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(a.log_path, "w")
    cmd = [
        sys.executable,
        str(ROOT / "scripts/deploy_triton.py"),
        "-tmr",
        str(repo),
        "-tmn",
        a.model,
        "--triton_port",
        str(http),
        "--grpc_port",
        str(grpc),
        "--metrics_port",
        str(metrics),
        "--max_num_seqs",
        "32",
        "--max_queue_size",
        str(4 * a.clients),
        "--cli",
        a.cli,
    ] + (["--openai_port", str(openai), "--chat_template", "nemo"] if a.openai else [])  # the demo model has none
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    a.openai_url = f"http://localhost:{openai}"
    ready = [f"http://localhost:{http}/v2/health/ready"] + ([f"{a.openai_url}/health/ready"] if a.openai else [])
    a.url, a.grpc_url, a.metrics_url = f"localhost:{http}", f"localhost:{grpc}", f"localhost:{metrics}"
    a.checkpoint = str(repo.parent / (repo.name + ".demo_model"))
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"loadtest: tritonserver exited early:\n{a.log_path.read_text()[-3000:]}")
        try:
            if all(urllib.request.urlopen(u, timeout=1).status == 200 for u in ready):
                # deploy_triton.py's children: tritonserver (the first started), then the frontend.
                kids = sorted(child_pids(proc.pid))
                if kids:
                    a.pid = kids[0]
                    return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit("loadtest: tritonserver not ready in time")


def stop_server(proc):
    """SIGTERM (a graceful drain); returns (exit status, seconds), status None when it had to be killed."""
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60), time.time() - t
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None, time.time() - t


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def metrics(a):
    """{(name, reason): value} for the llama_* samples of our two models (summed over the two, except the
    engine-wide KV-cache and prefix-cache values, which both repeat)."""
    with urllib.request.urlopen(f"http://{a.metrics_url}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = collections.Counter()
    for line in text.splitlines():
        if not line.startswith("llama_") or "{" not in line:
            continue
        key, value = line.rsplit(" ", 1)
        name, labels = key.split("{", 1)
        lab = dict(kv.split("=", 1) for kv in labels.rstrip("}").split(",") if "=" in kv)
        model = lab.get("model", "").strip('"')
        # Engine-wide values (KV blocks, prefix cache) repeat under both twins: counted once.
        once = name.startswith(("llama_kv_cache", "llama_prefix_cache"))
        if model == a.model or (model == a.model + "_stream" and not once):
            out[(name, lab.get("reason", "").strip('"'))] += float(value)
    return out


def health_poller(url, stop, result):
    """Separate process: GET /v2/health/ready every 0.5 s; reports (polls, failures, max seconds)."""
    polls = fails = 0
    worst = 0.0
    while not stop.is_set():
        t = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=5) as r:
                ok = r.status == 200
        except OSError:
            ok = False
        dt = time.monotonic() - t
        polls, worst = polls + 1, max(worst, dt)
        fails += (not ok) or dt > 1.0
        stop.wait(max(0.0, 0.5 - dt))
    result.put((polls, fails, worst))


# ---------------------------------------------------------------- prompts and greedy references


def make_prompt(rng, n_words):
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def reference_pool(a):
    """{(prompt, max_tokens): text} from `triton-llama generate --json`, run two at a time."""
    rng = random.Random(1234)
    prompts = [make_prompt(rng, n) for n in np.linspace(1, 120, POOL_PROMPTS).astype(int)]
    jobs = [(p, m) for p in prompts for m in POOL_MAX_TOKENS]

    def run(job):
        out = subprocess.run(
            [a.cli, "generate", a.checkpoint, "--prompt", job[0], "--max-tokens", str(job[1]), "--json"],
            check=True,
            capture_output=True,
            text=True,
            env=dict(os.environ, RUST_LOG="warn"),
        )
        return job, json.loads(out.stdout)["text"]

    with ThreadPoolExecutor(2) as ex:
        return dict(ex.map(run, jobs))


# ---------------------------------------------------------------- requests


def tensor(mod, name, value, dtype):
    """A [1,1] tensor, or [N,1] when `value` is a list (one value per prompt row)."""
    arr = np.array(
        [[v] for v in value] if isinstance(value, list) else [[value]],
        dtype=object
        if dtype == "BYTES"
        else {"INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "UINT64": np.uint64}[dtype],
    )
    t = mod.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def good_inputs(mod, req):
    ins = [
        tensor(mod, "text_input", [p.encode() for p, _ in req["rows"]], "BYTES"),
        tensor(mod, "max_tokens", [m for _, m in req["rows"]], "INT32"),
    ]
    if not req["greedy"]:
        n = len(req["rows"])  # Triton wants every input with the same batch size
        ins += [
            tensor(mod, "temperature", [0.8] * n, "FP32"),
            tensor(mod, "top_k", [40] * n, "INT64"),
            tensor(mod, "top_p", [0.9] * n, "FP32"),
            tensor(mod, "seed", [req["seed"] + i for i in range(n)], "UINT64"),
        ]
    return ins


def bad_inputs(mod, kind):
    t = tensor(mod, "text_input", b"a perfectly fine prompt", "BYTES")
    return {
        "wrong_dtype": [t, tensor(mod, "max_tokens", 8, "INT64")],
        "unknown_input": [t, tensor(mod, "no_such_input", 1, "INT32")],
        "missing_input": [tensor(mod, "max_tokens", 8, "INT32")],
        "empty_prompt": [tensor(mod, "text_input", b"", "BYTES")],
        "absurd_max_tokens": [t, tensor(mod, "max_tokens", 2**31 - 1, "INT32")],
        "invalid_utf8": [tensor(mod, "text_input", b"\xff\xfe\xc3(", "BYTES")],
    }[kind]


async def unary(st, proto, model, inputs):
    """One HTTP or gRPC unary request -> ([text per row], [finish_reason per row]) (exceptions propagate)."""
    if proto == "http":
        r = await st.http.infer(model, inputs)
    else:
        r = await st.grpc[random.randrange(len(st.grpc))].infer(model, inputs)
    return [t[0].decode() for t in r.as_numpy("text_output")], [f[0].decode() for f in r.as_numpy("finish_reason")]


async def stream(st, model, inputs, cancel_after=None):
    """One request on its own gRPC stream. Returns ([text per row], [finish_reason per row], cancelled); raises on
    an error response or on a broken stream (no FINAL, a response after FINAL or after the error, deltas that
    disagree with `outputs`).

    After the FINAL flag or an error the stream is closed cleanly (half-close, then read to its end), never
    cancelled: Triton 2.51's gRPC frontend leaks a request it refused itself (wrong dtype, unknown input: the
    backend never sees it) when the client then cancels the still-open stream, and the model can no longer be
    unloaded (SIGTERM ends in "Exit timeout expired", status 1). Only the deliberate mid-stream cancels cancel.
    """
    done = asyncio.Event()

    async def requests():
        yield {"model_name": model, "inputs": inputs, "parameters": {"triton_enable_empty_final_response": True}}
        await done.wait()  # keep the request side open until the answer is complete

    it = st.grpc[random.randrange(len(st.grpc))].stream_infer(requests())
    texts, reasons, n, final, err = None, None, 0, False, None
    try:
        async for result, error in it:
            if final:
                st.dup += 1
                raise RuntimeError("response after the FINAL flag or the error")
            if error is not None:  # an error response is the request's last one
                err, final = error, True
                done.set()
                continue
            resp = result.get_response()
            final = resp.parameters["triton_final_response"].bool_param
            if result.as_numpy("text_output") is not None:
                n += 1
                deltas, so_far = result.as_numpy("text_output")[:, 0], result.as_numpy("outputs")[:, 0]
                texts = [t + d.decode() for t, d in zip(texts or [""] * len(deltas), deltas)]
                reasons = [
                    f.decode() or r
                    for r, f in zip(reasons or [""] * len(deltas), result.as_numpy("finish_reason")[:, 0])
                ]
                if [x.decode() for x in so_far] != texts:
                    raise RuntimeError(f"stream deltas {texts!r} disagree with outputs {so_far!r}")
            if final:
                done.set()  # ends the request iterator, hence the call; anything still queued shows up below
            elif cancel_after is not None and n >= cancel_after:
                it.cancel()
                return texts, reasons, True
    finally:
        done.set()
        if not final:
            it.cancel()
    if err is not None:
        raise err
    if not final:
        st.lost += 1
        raise RuntimeError("stream ended without a FINAL response")
    return texts, reasons, False


class State:
    """Everything the clients count."""

    def __init__(self, a, refs):
        self.a, self.refs = a, refs
        self.sent = collections.Counter()  # good requests by interface
        self.ok = 0  # good requests answered in full
        self.ok_rows = self.cancelled_rows = 0  # the same in prompts (the metrics count prompts)
        self.finish = collections.Counter()  # finish reason seen on completed good requests
        self.cancelled = 0  # streams the client cancelled before seeing FINAL
        self.bad = collections.Counter()  # bad requests refused, by kind/status
        self.bad_backend = 0  # ... of which the backend saw (counted `rejected`)
        self.errors = collections.Counter()  # check failures, by kind
        self.lost = self.dup = self.mismatch = self.greedy_checked = 0
        self.latencies = []
        self.http = self.grpc = None


async def one_good(st, rng):
    """Sends one good request (one prompt, or a [2..4, 1] batch 10% of the time) on a random interface and
    checks its answer."""
    greedy = rng.random() < 0.5
    rows = [
        rng.choice(list(st.refs)) if greedy else (make_prompt(rng, rng.randint(1, 150)), rng.randint(1, 48))
        for _ in range(1 if rng.random() < 0.9 else rng.randint(2, 4))
    ]
    req = {"rows": rows, "greedy": greedy, "seed": rng.randrange(2**32)}
    proto = rng.choice(["http", "grpc", "stream"])
    cancel = proto == "stream" and rng.random() < 0.10
    st.sent[proto] += 1
    t0 = time.monotonic()
    try:
        if proto == "stream":
            coro = stream(st, st.a.model + "_stream", good_inputs(grpcaio, req), rng.randint(1, 3) if cancel else None)
        else:
            coro = unary(st, proto, st.a.model, good_inputs(grpcaio if proto == "grpc" else httpaio, req))
        out = await asyncio.wait_for(coro, st.a.request_timeout)
        texts, reasons, was_cancelled = out if proto == "stream" else (*out, False)
    except asyncio.TimeoutError:
        st.errors[f"{proto}:timeout"] += 1
        return
    except Exception as e:  # noqa: BLE001 (every failure is counted by kind, then the run fails)
        st.errors[f"{proto}:{type(e).__name__}:{str(e)[:60]}"] += 1
        return
    if was_cancelled:
        st.cancelled += 1
        st.cancelled_rows += len(rows)
        if greedy:  # what a cancelled greedy stream got so far is the start of the full answer
            st.greedy_checked += len(rows)
            st.mismatch += sum(not st.refs[row].startswith(t) for row, t in zip(rows, texts))
        return
    st.ok += 1
    st.ok_rows += len(rows)
    st.latencies.append(time.monotonic() - t0)
    st.finish.update(reasons)
    if greedy:
        st.greedy_checked += len(rows)
        st.mismatch += sum(st.refs[row] != t for row, t in zip(rows, texts))


async def one_bad(st, rng):
    """Sends one bad request; it must be refused."""
    kind = rng.choice(list(BAD_KINDS))
    proto = rng.choice(["http", "grpc", "stream"])
    try:
        if proto == "stream":
            coro = stream(st, st.a.model + "_stream", bad_inputs(grpcaio, kind))
        else:
            coro = unary(st, proto, st.a.model, bad_inputs(grpcaio if proto == "grpc" else httpaio, kind))
        await asyncio.wait_for(coro, st.a.request_timeout)
    except asyncio.TimeoutError:
        st.errors[f"bad_{kind}:timeout"] += 1
        return
    except InferenceServerException as e:  # the server's refusal (anything else is a failure of the run)
        st.bad[f"{kind}:{e.status() or 'stream_error'}"] += 1
        st.bad_backend += BAD_KINDS[kind]
        return
    except Exception as e:  # noqa: BLE001
        st.errors[f"bad_{kind}:{type(e).__name__}:{str(e)[:60]}"] += 1
        return
    st.errors[f"bad_{kind}:succeeded"] += 1


async def client(st, idx, deadline):
    rng = random.Random(st.a.seed * 100003 + idx)
    while time.monotonic() < deadline:
        await (one_bad(st, rng) if rng.random() < 0.05 else one_good(st, rng))


async def run_load(a, st):
    """Runs the clients for a.duration seconds; returns the RSS (MB) sampled at the end of the warm-up."""
    st.http = httpaio.InferenceServerClient(a.url, conn_limit=a.clients + 8, conn_timeout=a.request_timeout)
    st.grpc = [grpcaio.InferenceServerClient(a.grpc_url) for _ in range(max(1, a.clients // 32))]
    t0 = time.monotonic()
    tasks = [asyncio.create_task(client(st, i, t0 + a.duration)) for i in range(a.clients)]
    await asyncio.sleep(a.warmup)
    try:
        rss_warm = rss_mb(a.pid)
    except OSError:
        rss_warm = float("nan")  # the server died: the clients' errors say so
    await asyncio.gather(*tasks)
    await st.http.close()
    for g in st.grpc:
        await g.close()
    return rss_warm


def wait_idle(a, timeout=60):
    """Waits until nothing runs or waits; returns the last metrics."""
    deadline = time.time() + timeout
    while True:
        m = metrics(a)
        idle = all(
            m[(n, "")] == 0
            for n in ("llama_num_requests_running", "llama_num_requests_waiting", "llama_num_requests_in_flight")
        )
        if idle or time.time() > deadline:
            return m
        time.sleep(0.5)


def wait_counted(a, before, want, timeout=30):
    """Waits until the finished-request counters have moved by `want` prompts (every good prompt ends once as
    stop, length or cancelled; each bad request the backend saw counts once as rejected), or `timeout` passes
    (check_metrics then says what is missing); returns the last metrics."""
    deadline = time.time() + timeout
    while True:
        m = metrics(a)
        done = sum(v - before.get(k, 0) for k, v in m.items() if k[0] == "llama_requests_finished_total")
        if done >= want or time.time() > deadline:
            return m
        time.sleep(0.1)


def check_metrics(st, d):
    """Reconciles the finished-request counter deltas with what the clients saw; returns failed checks.

    Counted in prompts (a batched request has several). Good prompts: each ends as stop, length or cancelled
    (a cancelled request counts all its prompts cancelled). A cancel is only a *request* to stop: when the server
    had already sent (or was about to send) the final answer before it noticed the cancel, the request finished
    normally and is counted stop/length. So the server's `cancelled` is at most the client's cancels, and the
    late ones show up as extra stop/length. Bad requests: the backend counts `rejected` once per request it
    refuses; Triton's own refusals (wrong dtype, unknown input) never reach it (BAD_KINDS says which is which).
    """
    fin = {r: d[("llama_requests_finished_total", r)] for r in ("stop", "length", "cancelled", "error", "rejected")}
    late = st.cancelled_rows - fin["cancelled"]
    bad = []
    if fin["error"]:
        bad.append(f"error={fin['error']:.0f}")
    if fin["rejected"] != st.bad_backend:
        bad.append(f"rejected={fin['rejected']:.0f}!=client {st.bad_backend}")
    if not 0 <= late <= st.cancelled_rows:
        bad.append(f"cancelled={fin['cancelled']:.0f} vs client {st.cancelled_rows}")
    if fin["stop"] + fin["length"] != st.ok_rows + late:
        bad.append(f"stop+length={fin['stop'] + fin['length']:.0f}!=ok prompts {st.ok_rows}+late cancels {late:.0f}")
    if fin["stop"] < st.finish["stop"] or fin["length"] < st.finish["length"]:
        bad.append(
            f"stop/length {fin['stop']:.0f}/{fin['length']:.0f} < client {st.finish['stop']}/{st.finish['length']}"
        )
    return fin, bad


def main():
    a = parse_args()
    tmp = tempfile.TemporaryDirectory(prefix="loadtest-")
    proc = None if a.url else start_server(a, tmp.name)
    failed, shutdown = [], ""
    try:
        t = time.time()
        st = State(a, reference_pool(a))
        print(
            f"loadtest: {len(st.refs)} greedy references in {time.time() - t:.1f}s; "
            f"load: {a.clients} clients, {a.duration:.0f}s",
            flush=True,
        )
        before = metrics(a)
        ctx = mp.get_context("spawn")  # a separate process, so the clients' own CPU use cannot delay the polls
        stop, result = ctx.Event(), ctx.Queue()
        poller = ctx.Process(target=health_poller, args=(a.url, stop, result), daemon=True)
        poller.start()
        if a.openai:

            def rng_for(idx):  # as `client` seeds its own
                return random.Random(a.seed * 100003 + idx)

            rss_warm = asyncio.run(loadtest_openai.run_load(a, st, make_prompt, rng_for, rss_mb))
        else:
            rss_warm = asyncio.run(run_load(a, st))
        try:
            wait_idle(a)
            after = wait_counted(a, before, st.ok_rows + st.cancelled_rows + st.bad_backend)
            rss_end = rss_mb(a.pid)
        except OSError as e:  # the server died or hangs: report what the clients saw
            failed.append(f"server gone after the load ({e})")
            after, rss_end = collections.Counter(), float("nan")
        stop.set()
        polls, health_fails, health_max = result.get(timeout=30)
        poller.join(10)
    finally:
        rc = 0
        if proc:
            rc, secs = stop_server(proc)
            shutdown = f"shutdown_rc={rc} shutdown={secs:.1f}s "
    fin, bad = check_metrics(st, collections.Counter({k: after[k] - before.get(k, 0) for k in after}))
    failed += bad
    # in_flight: prompts the backend holds (received, not yet answered and released).
    kv, running, waiting, held = (
        after[(n, "")]
        for n in (
            "llama_kv_cache_blocks_used",
            "llama_num_requests_running",
            "llama_num_requests_waiting",
            "llama_num_requests_in_flight",
        )
    )
    if rc != 0:
        # Strict: Triton 2.51 keeps streams cancelled after their answer alive (README "Load test"), and
        # deploy_triton.py ends such a drained server itself (--stuck_shutdown_secs) with status 0.
        failed.append(f"server exit status {rc} on SIGTERM")
    elif proc and "ending it" in Path(a.log_path).read_text(errors="replace"):
        shutdown += "(a drained server ended: Triton held a stream its client had cancelled) "
    drift = (rss_end - rss_warm) / rss_warm * 100
    lat = sorted(st.latencies) or [0.0]
    if st.errors:
        failed.append("errors")
    if st.lost or st.dup or st.mismatch:
        failed.append("lost/dup/greedy_mismatch")
    if health_fails or polls == 0:
        failed.append(f"health ({health_fails} of {polls} polls failed or >1s)")
    if not abs(drift) <= 10:
        failed.append("rss drift")
    if not after[("llama_kv_cache_blocks_total", "")]:
        failed.append(f"no llama_* metrics for model {a.model}")
    if kv or running or waiting or held:
        failed.append(f"not idle: kv_used={kv:.0f} running={running:.0f} waiting={waiting:.0f} in_flight={held:.0f}")
    # Prefix cache: idle blocks are cached or free, and together they are the whole pool.
    cached, free, total = (after[(f"llama_kv_cache_blocks_{n}", "")] for n in ("cached", "free", "total"))
    if kv + cached + free != total:
        failed.append(f"KV blocks used {kv:.0f} + cached {cached:.0f} + free {free:.0f} != total {total:.0f}")
    queries, hits = (
        after[(n, "")] - before.get((n, ""), 0)
        for n in ("llama_prefix_cache_queries_tokens_total", "llama_prefix_cache_hits_tokens_total")
    )
    hit_rate = (
        f"prefix_cache_hit_rate={hits / queries:.1%}({hits:.0f}/{queries:.0f} tokens) "
        if queries
        else "prefix_cache=off "
    )
    print(
        f"loadtest: {'openai ' if a.openai else ''}clients={a.clients} duration={a.duration:.0f}s "
        f"requests={sum(st.sent.values()) + sum(st.bad.values())} "
        f"ok={st.ok} ok_prompts={st.ok_rows} bad_rejected={sum(st.bad.values())} cancelled={st.cancelled} "
        f"cancelled_prompts={st.cancelled_rows}(server {fin['cancelled']:.0f}) "
        f"finished={{{', '.join(f'{k}: {v:.0f}' for k, v in fin.items())}}} errors={dict(st.errors)} "
        f"lost={st.lost} dup={st.dup} "
        f"greedy_checked={st.greedy_checked} greedy_mismatch={st.mismatch} p50={lat[len(lat) // 2] * 1e3:.0f}ms "
        f"p99={lat[int(len(lat) * 0.99)] * 1e3:.0f}ms health_polls={polls} health_max={health_max * 1e3:.0f}ms "
        f"rss_warm={rss_warm:.0f}MB rss_end={rss_end:.0f}MB drift={drift:+.1f}% kv_used_idle={kv:.0f} "
        f"held_idle={held:.0f} kv_cached_idle={cached:.0f} {hit_rate}{shutdown}"
        + ("PASS" if not failed else "FAIL: " + "; ".join(failed)),
        flush=True,
    )
    print(f"loadtest: bad requests by kind:status: {dict(sorted(st.bad.items()))}", flush=True)
    if failed and proc:
        print(f"loadtest: server log: {a.log_path}", flush=True)
        log = Path(a.log_path).read_text(errors="replace")
        if "Signal (11) received." in log:
            crash = log[log.index("Signal (11) received.") :]
            where = "the llama backend" if "libtriton_llama" in crash else "tritonserver itself (no backend frame)"
            print(f"loadtest: tritonserver crashed (SIGSEGV), in {where}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
