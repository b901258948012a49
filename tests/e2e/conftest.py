"""Fixtures: a real tritonserver with the llama backend, started through scripts/deploy_triton.py on free
ports, waited on until ready, its log kept (and printed when a test fails), stopped with SIGTERM."""

import json
import os
import queue
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parents[2]
HF = ROOT / "tests/fixtures/models/gqa_bf16/hf"
NEMO = ROOT / "tests/fixtures/models/gqa_bf16/model.nemo"
CLI = ROOT / "target/release/triton-llama"
LOGS = ROOT / "target/e2e-logs"
sys.path.insert(0, str(ROOT / "scripts"))
from tl_ports import free_ports  # noqa: E402  (one copy, shared with the scripts)


def gen(server, body, model="llama"):
    """POST /generate: (status, parsed JSON or the raw text)."""
    status, text = server.generate(model, body)
    return status, (json.loads(text) if text.startswith("{") else text)


def ok(server, body, model="llama"):
    """POST /generate that must succeed; its JSON."""
    status, r = gen(server, body, model)
    assert status == 200, r
    return r


def wait_for(pred, timeout=20):
    """Polls `pred` every 50 ms until it holds or `timeout` seconds pass; its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class Server:
    def __init__(self, name, args, tmp, env=None):
        self.http, self.grpc, self.metrics = free_ports(3)
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{name}.log"
        self.log = open(self.log_path, "w")
        self.repo = tmp / f"{name}_repo"
        cmd = [
            sys.executable,
            str(ROOT / "scripts/deploy_triton.py"),
            "-tmr",
            str(self.repo),
            "--triton_port",
            str(self.http),
            "--grpc_port",
            str(self.grpc),
            "--metrics_port",
            str(self.metrics),
        ] + args
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {}))
        )
        self.url = f"localhost:{self.http}"
        self.grpc_url = f"localhost:{self.grpc}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as r:
                    ready = r.status == 200
                # The metrics port starts listening a little after the HTTP one reports ready.
                if ready and self.metrics_text():
                    return
            except Exception:
                time.sleep(0.3)
        raise RuntimeError(f"tritonserver not ready in time:\n{self.log_path.read_text()[-4000:]}")

    def metrics_text(self):
        with urllib.request.urlopen(f"http://localhost:{self.metrics}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name, **labels):
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            key, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in key for k, v in labels.items()):
                total += float(value)
        return total

    def generate(self, model, body, stream=False):
        path = "generate_stream" if stream else "generate"
        req = urllib.request.Request(
            f"http://{self.url}/v2/models/{model}/{path}", data=json.dumps(body).encode(), method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self):
        stop_process(self.proc)
        self.log.close()


def stop_process(proc, timeout=60):
    """SIGTERM (a graceful drain), SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stream_request(grpc_url, model, max_tokens, prompt=b"Hello"):
    """Starts one gRPC stream of `max_tokens` tokens (ignore_eos); returns (client, queue of (result, error))."""
    c = grpcclient.InferenceServerClient(grpc_url)
    q = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    inputs = []
    for name, dtype, value in (
        ("text_input", "BYTES", prompt),
        ("max_tokens", "INT32", max_tokens),
        ("ignore_eos", "BOOL", True),
    ):
        t = grpcclient.InferInput(name, [1, 1], dtype)
        t.set_data_from_numpy(
            np.array([[value]], dtype=object if dtype == "BYTES" else {"INT32": np.int32, "BOOL": bool}[dtype])
        )
        inputs.append(t)
    c.async_stream_infer(model, inputs)
    return c, q


def finish_stream(q, first, timeout=60):
    """Reads a stream from its response `first` to the end: (tokens in all its responses, finish reason)."""
    result, n, reason = first, int(first.as_numpy("num_output_tokens")[0][0]), ""
    while not reason:
        result, error = q.get(timeout=timeout)
        assert error is None, error
        n += int(result.as_numpy("num_output_tokens")[0][0])
        reason = result.as_numpy("finish_reason")[0][0].decode()
    return n, reason


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for s in item.session.config._llama_servers:
            rep.sections.append((f"server log {s.log_path.name} (tail)", s.log_path.read_text()[-6000:]))


def pytest_configure(config):
    config._llama_servers = []


def start(request, tmp_path_factory, name, args):
    s = Server(name, args, tmp_path_factory.mktemp(name))
    request.config._llama_servers.append(s)
    request.addfinalizer(s.stop)
    return s


@pytest.fixture(scope="session")
def server(request, tmp_path_factory):
    """The gqa_bf16 fixture checkpoint (HF folder) as `llama` + `llama_stream`."""
    return start(
        request,
        tmp_path_factory,
        "hf",
        [
            "--hf_checkpoint",
            str(HF),
            "--max_input_len",
            "64",
            "--max_output_len",
            "192",
            "--max_batch_size",
            "8",
            "--max_num_seqs",
            "16",
        ],
    )


@pytest.fixture(scope="session")
def small_queue_server(request, tmp_path_factory):
    """One sequence at a time and a queue of one: the third concurrent prompt is refused at once."""
    return start(
        request,
        tmp_path_factory,
        "small_queue",
        ["--hf_checkpoint", str(HF), "--max_num_seqs", "1", "--max_queue_size", "1"],
    )


@pytest.fixture(scope="session")
def nemo_server(request, tmp_path_factory):
    """The .nemo fixture: default stop string <extra_id_1>, no BOS."""
    return start(request, tmp_path_factory, "nemo", ["--nemo_checkpoint", str(NEMO), "-tmn", "chat"])


def cli_generate(ckpt, prompt, *extra):
    out = subprocess.run(
        [str(CLI), "generate", str(ckpt), "--prompt", prompt, "--json", *extra],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


@pytest.fixture(scope="session")
def demo_server(request, tmp_path_factory):
    """No checkpoint: deploy_triton.py writes and serves the demo model."""
    return start(request, tmp_path_factory, "demo", [])
