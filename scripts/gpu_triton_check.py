#!/usr/bin/env python3
"""The Triton step of scripts/gpu_check.sh: serve a fixture checkpoint with tritonserver and our backend on the
GPU (model parameter device=cuda, through scripts/deploy_triton.py), answer one greedy request with a client,
compare the text with `triton-llama generate --device cpu`, and measure the time to first token.

Writes one JSON object to --out: {"status": "pass" | "fail" | "skipped", "reason", ...}. "skipped" says why
(no tritonserver on this machine or in the bundle, ...): it is never reported as a pass.

tritonserver is looked for in this order: --tritonserver / $TRITONSERVER, the bundle's copy
(`gpu_check.sh --stage` packs pytriton's tritonserver and its libraries into the bundle's triton/ folder), the
`nvidia-pytriton` package of this Python, `tritonserver` on PATH. The client is the seed-style NemoQuery of
scripts/query_llm.py when pytriton imports, else tritonclient.http, else Triton's HTTP /generate endpoint
through the standard library; the JSON names the one used. Only the standard library is required.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tl_ports import free_ports

ROOT = Path(__file__).resolve().parent.parent


def find_tritonserver(explicit, bundle):
    for cand in (explicit, os.environ.get("TRITONSERVER")):
        if cand:
            return cand if Path(cand).is_file() else None, f"{cand} (given) does not exist"
    packed = Path(bundle).resolve() / "triton/pytriton/tritonserver/bin/tritonserver"
    if packed.is_file():
        return str(packed), ""
    try:
        import pytriton

        cand = Path(pytriton.__file__).parent / "tritonserver/bin/tritonserver"
        if cand.is_file():
            return str(cand), ""
    except ImportError:
        pass
    found = shutil.which("tritonserver")
    if found:
        return found, ""
    return None, (
        f"no tritonserver: none in the bundle ({packed}; stage with .venv holding nvidia-pytriton and carry "
        "the bundle's triton/ folder), no nvidia-pytriton in this Python, none on PATH"
    )


def post(url, body, timeout):
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    return urllib.request.urlopen(req, timeout=timeout)


def query(http, model, prompt, max_tokens, timeout):
    """One greedy request through the best client available: (client name, text)."""
    try:
        sys.path.insert(0, str(ROOT / "scripts"))
        import pytriton.client  # noqa: F401
        from query_llm import NemoQuery

        out = NemoQuery(f"localhost:{http}", model).query_llm(
            [prompt], max_output_token=max_tokens, top_k=1, top_p=0.0, temperature=1.0, init_timeout=timeout
        )
        return "NemoQuery (scripts/query_llm.py, pytriton ModelClient)", str(out[0][0])
    except ImportError:
        pass
    try:
        import numpy as np
        import tritonclient.http as httpclient

        with httpclient.InferenceServerClient(f"localhost:{http}", network_timeout=timeout) as c:
            inputs = []
            for name, arr, dt in (
                ("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
                ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
            ):
                t = httpclient.InferInput(name, arr.shape, dt)
                t.set_data_from_numpy(arr)
                inputs.append(t)
            res = c.infer(model, inputs, outputs=[httpclient.InferRequestedOutput("text_output")])
            return "tritonclient.http", res.as_numpy("text_output").reshape(-1)[0].decode()
    except ImportError:
        pass
    with post(
        f"http://localhost:{http}/v2/models/{model}/generate", {"text_input": prompt, "max_tokens": max_tokens}, timeout
    ) as r:
        return "HTTP /generate (urllib; neither pytriton nor tritonclient installed)", json.loads(r.read())[
            "text_output"
        ]


def stream_ttft(http, model, prompt, max_tokens, timeout):
    """Seconds from sending a streaming request to its first non-empty text event, and the streamed text."""
    t0 = time.perf_counter()
    first, text = None, ""
    with post(
        f"http://localhost:{http}/v2/models/{model}_stream/generate_stream",
        {"text_input": prompt, "max_tokens": max_tokens},
        timeout,
    ) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            piece = json.loads(line[5:]).get("text_output", "")
            if piece and first is None:
                first = time.perf_counter() - t0
            text += piece
    return first, text


def server_ttft(metrics_port):
    """Mean of the server's llama_time_to_first_token_seconds histogram (sum / count), or None."""
    with urllib.request.urlopen(f"http://localhost:{metrics_port}/metrics", timeout=10) as r:
        body = r.read().decode()
    vals = {}
    for line in body.splitlines():
        for k in ("llama_time_to_first_token_seconds_sum", "llama_time_to_first_token_seconds_count"):
            if line.startswith(k):
                vals[k] = vals.get(k, 0.0) + float(line.rsplit(" ", 1)[1])
    n = vals.get("llama_time_to_first_token_seconds_count", 0.0)
    return vals["llama_time_to_first_token_seconds_sum"] / n if n else None


def run(a):
    res = {"device": a.device, "checkpoint": a.ckpt, "prompt": a.prompt, "max_tokens": a.max_tokens}
    cli = Path(a.bundle).resolve() / "triton-llama"
    lib = Path(a.bundle).resolve() / "libtriton_llama.so"
    server, why = find_tritonserver(a.tritonserver, a.bundle)
    if server is None:
        return dict(res, status="skipped", reason=why)
    if not lib.is_file() or not cli.is_file():
        return dict(res, status="skipped", reason=f"{lib} or {cli} missing from the bundle")
    res["tritonserver"] = server
    ref = subprocess.run(
        [
            str(cli),
            "generate",
            a.ckpt,
            "--prompt",
            a.prompt,
            "--max-tokens",
            str(a.max_tokens),
            "--device",
            "cpu",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=a.timeout,
    )
    if ref.returncode != 0:
        return dict(res, status="fail", reason="triton-llama generate --device cpu failed", stderr=ref.stderr[-2000:])
    res["text_cli_cpu"] = json.loads(ref.stdout)["text"]
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    http, grpc, metrics = free_ports(3)
    log_path = work / "tritonserver.log"
    cmd = [
        sys.executable,
        str(ROOT / "scripts/deploy_triton.py"),
        "--hf_checkpoint",
        a.ckpt,
        "--device",
        a.device,
        "--num_gpus",
        "1" if a.device == "cuda" else "0",
        "--triton_model_name",
        "llama",
        "-tmr",
        str(work / "repo"),
        "--triton_port",
        str(http),
        "--grpc_port",
        str(grpc),
        "--metrics_port",
        str(metrics),
        "--backend_lib",
        str(lib),
        "--cli",
        str(cli),
        "--tritonserver",
        server,
        "--max_batch_size",
        "1",
    ]
    res["command"] = " ".join(cmd)
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            ready = False
            while time.perf_counter() - t0 < a.timeout and proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://localhost:{http}/v2/models/llama/ready", timeout=2) as r:
                        ready = r.status == 200
                except (urllib.error.URLError, OSError):
                    pass
                if ready:
                    break
                time.sleep(0.5)
            res["ready_s"] = round(time.perf_counter() - t0, 2)
            if not ready:
                state = (
                    f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready after {a.timeout} s"
                )
                return dict(
                    res,
                    status="fail",
                    reason=f"tritonserver {state}",
                    log_tail=log_path.read_text(errors="replace")[-4000:],
                )
            res["client"], res["text_triton"] = query(http, "llama", a.prompt, a.max_tokens, a.timeout)
            ttft, streamed = stream_ttft(http, "llama", a.prompt, a.max_tokens, a.timeout)
            res["ttft_ms_client_stream"] = None if ttft is None else round(ttft * 1e3, 2)
            res["text_triton_stream"] = streamed
            mean = server_ttft(metrics)
            res["ttft_ms_server_mean"] = None if mean is None else round(mean * 1e3, 2)
            same = res["text_triton"] == res["text_cli_cpu"] and streamed == res["text_cli_cpu"]
            res["texts_match"] = same
            res["status"] = "pass" if same and ttft is not None else "fail"
            if not same:
                res["reason"] = "greedy text from Triton differs from triton-llama generate --device cpu"
            elif ttft is None:
                res["reason"] = "the stream produced no text"
            return res
        except Exception as e:  # a client error is a failure of this step, with the server log
            return dict(
                res,
                status="fail",
                reason=f"{type(e).__name__}: {e}",
                log_tail=log_path.read_text(errors="replace")[-4000:],
            )
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--bundle", default=str(ROOT / "target/gpu_bundle"), help="folder with triton-llama and libtriton_llama.so"
    )
    p.add_argument("--ckpt", default=str(ROOT / "tests/fixtures/models/gqa_bf16/hf"))
    p.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu: try the step on a machine without a GPU"
    )
    p.add_argument("--prompt", default="The quick brown fox")
    p.add_argument("--max_tokens", type=int, default=16)
    p.add_argument("--tritonserver", default=None)
    p.add_argument("--workdir", default=None, help="model repository and server log (default: a temporary folder)")
    p.add_argument(
        "--timeout", type=float, default=180.0, help="seconds for the server to become ready and for each request"
    )
    p.add_argument("--out", required=True, help="JSON result file")
    a = p.parse_args(argv)
    if a.workdir is None:
        import tempfile

        a.workdir = tempfile.mkdtemp(prefix="tl_triton_")
    try:
        res = run(a)
    except Exception as e:
        res = {"status": "fail", "reason": f"{type(e).__name__}: {e}"}
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"triton: {res['status']}" + (f" ({res['reason']})" if res.get("reason") else ""))
    return 0 if res["status"] in ("pass", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
