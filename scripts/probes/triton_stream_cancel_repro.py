"""Reproduces a Triton 2.51 gRPC frontend leak with no llama backend involved (evidence for README "Load test").

A stock Python-backend identity model (not decoupled) gets N requests, each on its own gRPC stream; after the
(final) response has arrived the client stops the stream with or without cancelling it. Cancelling a stream whose
request already completed leaves the request alive inside Triton: the model never unloads and SIGTERM ends with
"Exit timeout expired" (status 1 after ~30 s). Measured on this repo's pinned tritonserver 2.51 (pip
nvidia-pytriton 0.7.0): `cancel=False n=20 ok=20 rc=0 shutdown=2.4s`, `cancel=True n=20 ok=20 rc=1 shutdown=30.1s`.

    .venv/bin/python scripts/probes/triton_stream_cancel_repro.py cancel 20
    .venv/bin/python scripts/probes/triton_stream_cancel_repro.py nocancel 20

`deadclient N`: N client processes each open a stream, send one request with an input the model does not declare
(Triton refuses it before any backend sees it), and are SIGKILLed without closing their stream. The model then
never unloads either: `deadclient n=1 rc=1 shutdown=30.1s` (the llama backend's models behave the same way, see
README "Shutdown after dead stream clients").

    .venv/bin/python scripts/probes/triton_stream_cancel_repro.py deadclient 1

The Python backend's stub embeds the base interpreter (3.11 here), which must be able to import numpy; the script
says how to install it when it cannot.
"""

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np
import pytriton
import tritonclient.grpc as grpcclient

CONFIG = """name: "identity"
backend: "python"
max_batch_size: 0
input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""
MODEL = """import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def execute(self, requests):
        out = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x)]) for x in out]
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    cancel, n = sys.argv[1] == "cancel", int(sys.argv[2])
    # The stub embeds the base interpreter (not this venv): it must import numpy on its own.
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    if subprocess.run([str(base), "-c", "import numpy"], capture_output=True).returncode != 0:
        sys.exit(f"the Python backend stub needs numpy in {base}: `{base} -m pip install 'numpy<2'`")
    tri = Path(pytriton.__file__).parent / "tritonserver"
    work = Path(tempfile.mkdtemp(prefix="stream-cancel-"))
    shutil.copytree(tri / "backends/python", work / "be/python")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy2(tri / f"python_backend_stubs/{py}/triton_python_backend_stub", work / "be/python/")
    (work / "repo/identity/1").mkdir(parents=True)
    (work / "repo/identity/config.pbtxt").write_text(CONFIG)
    (work / "repo/identity/1/model.py").write_text(MODEL)
    libs = [
        str(Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"),
        sysconfig.get_config_var("LIBDIR") or "",
    ]
    env = dict(os.environ, LD_LIBRARY_PATH=":".join(libs + [os.environ.get("LD_LIBRARY_PATH", "")]))
    http, grpc_port, metrics = free_port(), free_port(), free_port()
    log = open(work / "server.log", "w")
    srv = subprocess.Popen(
        [
            str(tri / "bin/tritonserver"),
            f"--model-repository={work / 'repo'}",
            f"--backend-directory={work / 'be'}",
            f"--http-port={http}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    client = grpcclient.InferenceServerClient(f"localhost:{grpc_port}")
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if client.is_model_ready("identity"):
                break
        except Exception:
            pass
        time.sleep(0.5)
    else:
        srv.kill()
        sys.exit(f"identity model not ready; see {work / 'server.log'}")
    if sys.argv[1] == "deadclient":
        return dead_clients(srv, grpc_port, n, work)
    ok = 0
    for _ in range(n):
        q = queue.Queue()
        client.start_stream(callback=lambda result, error: q.put(error))
        inp = grpcclient.InferInput("INPUT0", [3], "FP32")
        inp.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
        client.async_stream_infer("identity", [inp])
        ok += q.get(timeout=30) is None  # the request's only (final) response has arrived
        client.stop_stream(cancel_requests=cancel)
    t = time.time()
    srv.send_signal(signal.SIGTERM)
    rc = srv.wait(timeout=90)
    print(f"cancel={cancel} n={n} ok={ok} rc={rc} shutdown={time.time() - t:.1f}s (server log: {work / 'server.log'})")


DEAD_CLIENT = """
import queue, sys, time
import numpy as np
import tritonclient.grpc as grpcclient
c = grpcclient.InferenceServerClient(sys.argv[1])
q = queue.Queue()
c.start_stream(callback=lambda result, error: q.put(error))
good = grpcclient.InferInput("INPUT0", [3], "FP32")
good.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
bad = grpcclient.InferInput("UNDECLARED", [1], "INT32")
bad.set_data_from_numpy(np.array([1], dtype=np.int32))
c.async_stream_infer(sys.argv[2], [good, bad])
print(q.get(timeout=30), flush=True)  # the refusal
time.sleep(600)
"""


def dead_clients(srv, grpc_port, n, work, model="identity"):
    """N clients whose request Triton refuses, killed with their stream open; then SIGTERM to the server."""
    for _ in range(n):
        c = subprocess.Popen(
            [sys.executable, "-c", DEAD_CLIENT, f"localhost:{grpc_port}", model], stdout=subprocess.PIPE, text=True
        )
        refusal = c.stdout.readline().strip()
        c.kill()
        c.wait()
    t = time.time()
    srv.send_signal(signal.SIGTERM)
    rc = srv.wait(timeout=90)
    print(
        f"deadclient n={n} rc={rc} shutdown={time.time() - t:.1f}s refusal={refusal!r} "
        f"(server log: {work / 'server.log'})"
    )


if __name__ == "__main__":
    main()
