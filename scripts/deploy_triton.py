#!/usr/bin/env python3
"""Serve a Llama-2 checkpoint with tritonserver and the `llama` backend (libtriton_llama.so).

Takes NeMo 23.10 deploy_triton.py's flags, so the model card's step-8 command works with only the script path
changed, plus --hf_checkpoint, --device, --grpc_port, --metrics_port. Writes a model repository with two
models sharing one engine: <name> (request/response: NemoQuery, ModelClient, unary infer, /generate) and
<name>_stream (decoupled: DecoupledModelClient, gRPC streaming, /generate_stream). Starts tritonserver in the
foreground and forwards SIGTERM/SIGINT to it for a graceful drain. With no checkpoint it serves the demo model
(random weights, meaningless text) written by `triton-llama demo-model`.

Health (the probes of deploy/kubernetes): with --load_after_start the server answers /v2/health/live at once and
/v2/health/ready only once the models have loaded (they load through the repository API). A watchdog reads the
`llama_engine_up` gauge: after a fatal engine error it stops tritonserver (readiness goes at once) and this
script exits 3, so that a supervisor (Kubernetes, systemd, docker --restart) replaces the server. The children
(tritonserver, the OpenAI frontend) die with this script however it dies (PR_SET_PDEATHSIG); the frontend
exiting on its own stops the server too (exit 4). A checkpoint that lies inside the model repository is written
as a path relative to it, so the repository can be mounted elsewhere (KServe's /mnt/models).

The script owns its model repository, so tritonserver loads only the two models of this run: the default one
(/tmp/triton_llama_model_repo) is emptied first; in a --triton_model_repository you give, the models that earlier
runs of this script wrote (listed in its `.triton_llama_models` file) are removed, and any other model folder
is refused unless --keep_other_models, which leaves them in place unloaded (explicit model control).
"""

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPO = "/tmp/triton_llama_model_repo"
MANIFEST = ".triton_llama_models"  # in the repository: the model folders this script wrote there


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-nc", "--nemo_checkpoint", help=".nemo file or extracted .nemo folder")
    p.add_argument("--hf_checkpoint", help="Hugging Face Llama folder (config.json + safetensors + tokenizer)")
    p.add_argument("-mt", "--model_type", default="llama", help="only llama is served (gptnext is refused)")
    p.add_argument("-tmn", "--triton_model_name", default="llama", help="Triton model name (the _stream twin is added)")
    p.add_argument("-tmv", "--triton_model_version", type=int, default=1)
    p.add_argument("-tp", "-trp", "--triton_port", type=int, default=8000, help="HTTP port")
    p.add_argument("-tha", "--triton_http_address", default="0.0.0.0")
    p.add_argument("--grpc_port", type=int, default=8001)
    p.add_argument("--metrics_port", type=int, default=8002)
    p.add_argument(
        "-tmr",
        "--triton_model_repository",
        default=None,
        help=f"model repository to write (default {DEFAULT_REPO}, emptied on every run)",
    )
    p.add_argument(
        "--keep_other_models",
        action="store_true",
        help="serve from a repository that holds other models too: they stay there, unloaded (explicit model control)",
    )
    p.add_argument(
        "-ng", "--num_gpus", type=int, default=1, help="tensor-parallel size on cuda; with --device cpu it may be 0"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--tensor_parallel_size", type=int, help="CPU ranks (threads) or GPUs; default: --num_gpus on cuda, 1 on cpu"
    )
    p.add_argument("-dt", "--dtype", default="bf16", help="accepted for compatibility: weights keep their stored dtype")
    p.add_argument("-mil", "--max_input_len", type=int, default=None, help="longest prompt in tokens")
    p.add_argument("-mol", "--max_output_len", type=int, default=None, help="most new tokens per request")
    p.add_argument("-mbs", "--max_batch_size", type=int, default=8, help="prompts per request ([N,1] batches)")
    p.add_argument(
        "--max_num_seqs", type=int, default=16, help="sequences generated concurrently (continuous batching)"
    )
    p.add_argument("--max_queue_size", type=int, default=64, help="queued prompts before UNAVAILABLE")
    p.add_argument("--kv_cache_bytes", type=int, default=1 << 30)
    p.add_argument(
        "--stop_strings",
        default="auto",
        help='JSON list, or "auto" for the checkpoint default (NeMo chat: <extra_id_1>)',
    )
    p.add_argument("--add_bos", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--include_input_in_output", action="store_true", help="echo the prompt before the completion")
    p.add_argument("--default_max_tokens", type=int, default=None)
    p.add_argument(
        "--model_control_mode",
        choices=["none", "explicit"],
        default="none",
        help="explicit: only this run's two models are loaded at start (--load-model) and can be "
        "unloaded/loaded through the repository API",
    )
    p.add_argument(
        "--load_after_start",
        action="store_true",
        help="start serving health at once and load the models through the repository API (explicit "
        "model control): /v2/health/live answers during a long load, /v2/health/ready once loaded",
    )
    p.add_argument(
        "--exit_timeout_secs",
        type=int,
        default=None,
        help="how long a SIGTERM waits for in-flight requests before tritonserver exits (Triton's default: 30)",
    )
    p.add_argument(
        "--stuck_shutdown_secs",
        type=float,
        default=3.0,
        help="after SIGTERM, once this run's models have answered every request and Triton holds none "
        "queued for this long, end a tritonserver that still has not exited (2.51 waits on gRPC "
        "streams whose clients vanished) and exit 0; 0: wait for Triton's own exit timeout",
    )
    p.add_argument(
        "--engine_watchdog",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop the server and exit 3 when a model's engine stops (llama_engine_up 0) (default on)",
    )
    p.add_argument("--num_blocks", type=int, default=None, help="KV-cache blocks (overrides --kv_cache_bytes sizing)")
    p.add_argument("--block_size", type=int, default=None, help="tokens per KV-cache block (default 16)")
    p.add_argument(
        "--kv_cache_dtype",
        choices=["auto", "f32", "bf16", "fp8"],
        default="auto",
        help="KV cache: auto (bf16 on cuda: twice the tokens per GB; f32 on cpu), f32, bf16 or fp8 (E4M3, scale 1: "
        "four times f32's tokens per GB); on cpu the values are rounded as the cuda cache stores them (its twin)",
    )
    p.add_argument(
        "--step_timeout_s",
        type=float,
        default=None,
        help="seconds an engine step may take before a tensor-parallel rank counts as stuck: its requests fail and "
        "the engine stops (0: no limit; default 600 on cuda, no limit on cpu)",
    )
    p.add_argument(
        "--enable_prefix_caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse the KV cache of prompt prefixes already computed (default on: --no-enable_prefix_caching)",
    )
    p.add_argument("--no_prefix_caching", dest="enable_prefix_caching", action="store_false", help=argparse.SUPPRESS)
    p.add_argument(
        "--chat_template",
        default="auto",
        help='"auto" (the checkpoint\'s), "nemo", or a Jinja / tokenizer_config.json file (chat requests)',
    )
    p.add_argument(
        "--openai_port",
        type=int,
        default=None,
        help="also start the OpenAI-compatible frontend (scripts/openai_frontend.py) on this port",
    )
    p.add_argument(
        "--openai_api_key",
        default=None,
        help="the frontend requires `Authorization: Bearer KEY` on /v1 (default: $TRITON_LLAMA_API_KEY, else open); "
        "passed in its environment, not on its command line",
    )
    p.add_argument("--max_batched_tokens", type=int, default=None, help="tokens per engine step at most (default 2048)")
    p.add_argument(
        "--mixed_prefill_tokens",
        type=int,
        default=None,
        help="prompt tokens per step while other streams decode (default: CPU from measured step costs, CUDA no "
        "separate limit)",
    )
    p.add_argument(
        "--weight_dtype",
        choices=["auto", "f32", "as-loaded", "bf16", "int8", "fp8"],
        default="auto",
        help="matmul arithmetic: auto (bf16 for a bf16 checkpoint, f32 otherwise), f32 (exact: the "
        "checkpoint's dtype with f32 activations; as-loaded is its old name), bf16 (bf16 dot "
        "products, AVX512_BF16 on the CPU), int8 quantized at load (CPU only), or fp8 (E4M3 weights per "
        "output channel and activations per token, quantized at load; GPUs of compute capability 8.9+)",
    )
    p.add_argument("-dm", "--debug_mode", default="False")
    p.add_argument("--backend_lib", default=str(ROOT / "target/release/libtriton_llama.so"))
    p.add_argument(
        "--cli", default=str(ROOT / "target/release/triton-llama"), help="triton-llama binary (writes the demo model)"
    )
    p.add_argument("--tritonserver", default=None, help="tritonserver binary; default: the pip nvidia-pytriton one")
    p.add_argument("--write_only", action="store_true", help="write the repository and print the command, do not start")
    return p.parse_args(argv)


def find_tritonserver(explicit):
    if explicit:
        return explicit
    try:
        import pytriton  # noqa: F401

        cand = Path(pytriton.__file__).parent / "tritonserver/bin/tritonserver"
        if cand.exists():
            return str(cand)
    except ImportError:
        pass
    found = shutil.which("tritonserver")
    if not found:
        sys.exit("tritonserver not found: run scripts/setup.sh (pip nvidia-pytriton==0.7.0) or pass --tritonserver")
    return found


def fill(template, values):
    out = template
    for k, v in values.items():
        out = out.replace("${" + k + "}", str(v))
    return out


def checkpoint_path(a, repo):
    if a.nemo_checkpoint and a.hf_checkpoint:
        sys.exit("give --nemo_checkpoint or --hf_checkpoint, not both")
    ck = a.nemo_checkpoint or a.hf_checkpoint
    if ck:
        path = Path(ck).resolve()
        if not path.exists():
            sys.exit(f"checkpoint not found: {path}")
        return path
    demo = repo.parent / (repo.name + ".demo_model")
    if not (demo / "config.json").exists():
        print(f"no checkpoint given: writing the demo model (random weights, meaningless text) to {demo}", flush=True)
        subprocess.run([a.cli, "demo-model", str(demo)], check=True)
    return demo


def model_names(a):
    return [a.triton_model_name, a.triton_model_name + "_stream"]


def prepare_repository(a):
    """Makes the repository hold none of the models an earlier run left: the default one is emptied; in a given
    one the models listed in its manifest are removed and foreign model folders are refused (or, with
    --keep_other_models, kept and later left unloaded). Returns (repo, foreign model names)."""
    if a.triton_model_repository is None:
        repo = Path(DEFAULT_REPO)
        if repo.is_symlink() or repo.is_file():
            repo.unlink()
        elif repo.exists():
            shutil.rmtree(repo)
        repo.mkdir(parents=True)
        return repo, []
    repo = Path(a.triton_model_repository).resolve()
    repo.mkdir(parents=True, exist_ok=True)
    manifest = repo / MANIFEST
    ours = set(json.loads(manifest.read_text())) if manifest.exists() else set()
    for name in sorted(ours):
        if not isinstance(name, str) or "/" in name or name in ("", ".", ".."):
            continue
        d = repo / name
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
        elif d.exists() or d.is_symlink():
            d.unlink()
    foreign = sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if clash := [n for n in model_names(a) if n in foreign]:
        sys.exit(
            f"{repo} already holds a model {clash[0]!r} that this script did not write: choose another "
            "--triton_model_name or repository"
        )
    if foreign and not a.keep_other_models:
        sys.exit(
            f"{repo} holds models this script did not write ({', '.join(foreign)}); tritonserver would load "
            "them too. Give an empty or new --triton_model_repository, remove them, or pass --keep_other_models "
            "to leave them there unloaded (explicit model control loads only this run's two models)."
        )
    return repo, foreign


def write_repository(a):
    if a.model_type not in ("llama",):
        sys.exit(f"--model_type {a.model_type}: only llama is served by this backend")
    if a.device == "cuda" and a.num_gpus < 1:
        sys.exit("--num_gpus must be >= 1 with --device cuda")
    if a.triton_model_name.startswith(".") or "/" in a.triton_model_name:
        sys.exit(f"--triton_model_name {a.triton_model_name!r}: not a model folder name")
    repo, foreign = prepare_repository(a)
    ckpt = checkpoint_path(a, repo)
    tp = a.tensor_parallel_size or (a.num_gpus if a.device == "cuda" else 1)
    template = (ROOT / "triton_model_repo/llama/config.pbtxt").read_text()
    template = "\n".join(line for line in template.splitlines() if not line.startswith("#"))
    # Inside the repository: relative to each model's folder, so the repository can be mounted anywhere.
    rel = os.path.relpath(ckpt, repo / a.triton_model_name) if ckpt.is_relative_to(repo) else None
    values = {
        "checkpoint": rel or str(ckpt),
        "device": a.device,
        # On GPUs the engine owns its devices (one thread per GPU), so Triton must not place instances itself.
        "instance_kind": "KIND_MODEL" if a.device == "cuda" else "KIND_CPU",
        "tensor_parallel_size": tp,
        "gpu_device_ids": ",".join(str(i) for i in range(tp)) if a.device == "cuda" else "",
        "max_input_len": a.max_input_len or "",
        "max_output_len": a.max_output_len or "",
        "max_batch_size": a.max_batch_size,
        "max_num_seqs": a.max_num_seqs,
        "max_queue_size": a.max_queue_size,
        "kv_cache_bytes": a.kv_cache_bytes,
        "add_bos": a.add_bos,
        "stop_strings": a.stop_strings.replace("\\", "\\\\").replace('"', '\\"'),
        "exclude_input_in_output": "false" if a.include_input_in_output else "true",
        "default_max_tokens": a.default_max_tokens or "",
        "num_blocks": a.num_blocks or "",
        "block_size": a.block_size or "",
        "enable_prefix_caching": str(a.enable_prefix_caching).lower(),
        "chat_template": a.chat_template
        if a.chat_template in ("nemo", "auto")
        else str(Path(a.chat_template).resolve()),
        "max_batched_tokens": a.max_batched_tokens or "",
        "mixed_prefill_tokens": a.mixed_prefill_tokens or "",
        "weight_dtype": "" if a.weight_dtype == "auto" else a.weight_dtype,
        "kv_cache_dtype": "" if a.kv_cache_dtype == "auto" else a.kv_cache_dtype,
        "step_timeout_s": "" if a.step_timeout_s is None else a.step_timeout_s,
    }
    if a.triton_model_repository is not None:  # listed first, so a run that fails half-way still owns them
        (repo / MANIFEST).write_text(json.dumps(model_names(a)) + "\n")
    for name, decoupled in zip(model_names(a), ("false", "true")):
        d = repo / name
        (d / str(a.triton_model_version)).mkdir(parents=True)
        text = fill(template, dict(values, model_name=name, decoupled=decoupled))
        # An empty string_value vanishes over gRPC (proto3 default) and pytriton's config parser then fails: drop it.
        text = "\n".join(line for line in text.splitlines() if 'string_value: ""' not in line)
        (d / "config.pbtxt").write_text(text + "\n")
    backends = repo.parent / (repo.name + ".backends")
    (backends / "llama").mkdir(parents=True, exist_ok=True)
    lib = Path(a.backend_lib)
    if not lib.exists():
        sys.exit(f"{lib} not found: run `cargo build --release` (or scripts/setup.sh)")
    shutil.copy2(lib, backends / "llama/libtriton_llama.so")
    return repo, backends, foreign


def main(argv=None):
    a = parse_args(argv)
    repo, backends, foreign = write_repository(a)
    cmd = [
        find_tritonserver(a.tritonserver),
        f"--model-repository={repo}",
        f"--backend-directory={backends}",
        f"--http-address={a.triton_http_address}",
        f"--http-port={a.triton_port}",
        f"--grpc-port={a.grpc_port}",
        f"--metrics-port={a.metrics_port}",
        "--allow-metrics=true",
        "--allow-gpu-metrics=false",
        "--allow-cpu-metrics=true",
    ]
    if a.model_control_mode == "explicit" or foreign or a.load_after_start:
        if foreign:
            print(f"--keep_other_models: {', '.join(foreign)} stay in {repo}, not loaded", flush=True)
        cmd += ["--model-control-mode=explicit"]
        if not a.load_after_start:
            cmd += [f"--load-model={n}" for n in model_names(a)]
    if a.exit_timeout_secs is not None:
        cmd.append(f"--exit-timeout-secs={a.exit_timeout_secs}")
    if a.debug_mode.lower() == "true":
        cmd.append("--log-verbose=1")
    print("starting:", " ".join(cmd), flush=True)
    if a.write_only:
        return 0
    # Both children die with this script however it dies (SIGKILL included): started before any thread here.
    # NCCL_RUNTIME_CONNECT=0 (tensor-parallel ranks connect when their NCCL group is created) and
    # NCCL_LAUNCH_MODE=PARALLEL (NCCL's default: each rank launches alone): no collective waits on a peer inside
    # its enqueue (src/comm/nccl.rs). Values already set are kept.
    server_env = {"NCCL_RUNTIME_CONNECT": "0", "NCCL_LAUNCH_MODE": "PARALLEL", **os.environ}
    proc = subprocess.Popen(cmd, preexec_fn=die_with_parent(os.getpid()), env=server_env)
    frontend = None
    if a.openai_port:
        fcmd = [
            sys.executable,
            str(ROOT / "scripts/openai_frontend.py"),
            "--grpc_url",
            f"localhost:{a.grpc_port}",
            "--model",
            a.triton_model_name,
            "--host",
            a.triton_http_address,
            "--port",
            str(a.openai_port),
        ]
        print("starting:", " ".join(fcmd), flush=True)
        env = dict(os.environ)
        if a.openai_api_key:
            env["TRITON_LLAMA_API_KEY"] = a.openai_api_key
        frontend = subprocess.Popen(fcmd, preexec_fn=die_with_parent(os.getpid()), env=env)
    fatal = []  # the reason this script stops the server itself (exit code 1, 3 or 4)
    stopping = threading.Event()  # a signal asked for the stop: the frontend's exit is expected
    drained = threading.Event()  # end_stuck_shutdown ended a drained tritonserver: exit 0
    if a.load_after_start:
        threading.Thread(target=load_models, args=(a, proc, fatal), daemon=True).start()
    if a.engine_watchdog:
        threading.Thread(target=watch_engines, args=(a, proc, fatal), daemon=True).start()
    if frontend is not None:
        threading.Thread(target=watch_frontend, args=(frontend, proc, fatal, stopping), daemon=True).start()

    def forward(sig, _frame):
        if not stopping.is_set() and a.stuck_shutdown_secs > 0:
            threading.Thread(target=end_stuck_shutdown, args=(a, proc, drained), daemon=True).start()
        stopping.set()
        if frontend is not None:
            frontend.send_signal(sig)
        proc.send_signal(sig)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    rc = proc.wait()
    if frontend is not None:
        frontend.terminate()
        frontend.wait()
    if fatal:
        print(f"exiting {fatal[0][0]}: {fatal[0][1]}", flush=True)
        return fatal[0][0]
    return 0 if drained.is_set() else rc


LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def die_with_parent(parent):
    """A preexec_fn: the child gets SIGKILL when `parent` (this script) dies, whatever kills it."""

    def set_pdeathsig():
        LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the prctl
            os._exit(1)

    return set_pdeathsig


def watch_frontend(frontend, proc, fatal, stopping):
    """The OpenAI frontend exiting on its own stops the server: the deployment is not whole any more (exit 4)."""
    rc = frontend.wait()
    if not stopping.is_set() and proc.poll() is None:
        stop_server(proc, fatal, 4, f"the OpenAI frontend exited (status {rc})")


def http_get(url, timeout=2):
    """(status, body) of a GET, or (None, error text) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, str(e)


def stop_server(proc, fatal, code, why):
    """Records why this script ends the server (the first reason wins) and sends it SIGTERM (a drain)."""
    if not fatal:
        fatal.append((code, why))
    print(f"deploy_triton.py: {why}; stopping tritonserver", flush=True)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)


def load_models(a, proc, fatal):
    """--load_after_start: waits for the HTTP endpoint, then loads this run's models through the repository API
    (readiness follows). A model that fails to load stops the server (exit 1), as a failed load at start does."""
    host = "localhost" if a.triton_http_address in ("0.0.0.0", "::") else a.triton_http_address
    base = f"http://{host}:{a.triton_port}"
    while proc.poll() is None and http_get(base + "/v2/health/live")[0] != 200:
        time.sleep(0.2)
    for name in model_names(a):
        if proc.poll() is not None:
            return
        t0 = time.time()
        print(f"loading model {name!r} through {base}/v2/repository/models/{name}/load", flush=True)
        req = urllib.request.Request(f"{base}/v2/repository/models/{name}/load", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=None) as r:
                r.read()
            print(f"model {name!r} loaded in {time.time() - t0:.1f} s", flush=True)
        except urllib.error.HTTPError as e:
            return stop_server(proc, fatal, 1, f"model {name!r} failed to load: {e.read().decode()}")
        except OSError as e:
            if proc.poll() is None:
                return stop_server(proc, fatal, 1, f"model {name!r} failed to load: {e}")


def busy_requests(metrics_text, names):
    """Requests of the models `names` not answered yet: held by the backend (`llama_num_requests_in_flight`) or
    queued in Triton (`nv_inference_pending_request_count`)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(("llama_num_requests_in_flight{", "nv_inference_pending_request_count{")):
            model = line.split('model="', 1)[-1].split('"', 1)[0]
            if model in names:
                total += float(line.rsplit(" ", 1)[-1])
    return total


def end_stuck_shutdown(a, proc, drained, period=0.25):
    """After SIGTERM: tritonserver 2.51 cannot unload a model while a gRPC stream that a vanished client left
    open refers to it, and then waits out its whole exit timeout and exits 1, even with no request left
    (scripts/probes/triton_stream_cancel_repro.py deadclient shows it with a Python-backend model; the gRPC frontend had
    no shutdown handling for streams before triton-inference-server/server#7969, merged after 2.51). Once this
    run's models have answered every request and Triton has none queued, for --stuck_shutdown_secs on end, the
    drain is over: a tritonserver still running is ended and this script exits 0."""
    url = f"http://localhost:{a.metrics_port}/metrics"
    quiet_since = None
    while proc.poll() is None:
        time.sleep(period)
        status, text = http_get(url, timeout=1)
        if status != 200 or busy_requests(text, model_names(a)) > 0:
            quiet_since = None
            continue
        quiet_since = quiet_since or time.monotonic()
        if time.monotonic() - quiet_since >= a.stuck_shutdown_secs and proc.poll() is None:
            print(
                f"deploy_triton.py: every request has been answered and tritonserver has not exited "
                f"{a.stuck_shutdown_secs:g} s later (a gRPC stream left open by a client that went away holds a "
                "model): ending it",
                flush=True,
            )
            drained.set()
            proc.kill()
            return


def engine_down(metrics_text, names):
    """The first model (of `names`, or any when None) whose `llama_engine_up` gauge reads 0 in a Prometheus
    text page, or None."""
    for line in metrics_text.splitlines():
        if line.startswith("llama_engine_up{") and float(line.rsplit(" ", 1)[-1]) == 0:
            model = line.split('model="', 1)[-1].split('"', 1)[0]
            if names is None or model in names:
                return model
    return None


def watch_engines(a, proc, fatal, period=1.0):
    """Stops the server (exit 3) once an engine of this run reports down: its requests already fail, and a
    restart is the way back."""
    url = f"http://localhost:{a.metrics_port}/metrics"
    while proc.poll() is None:
        time.sleep(period)
        status, text = http_get(url)
        if status == 200 and (name := engine_down(text, model_names(a))):
            return stop_server(proc, fatal, 3, f"the engine of model {name!r} stopped after a fatal error")


if __name__ == "__main__":
    sys.exit(main())
