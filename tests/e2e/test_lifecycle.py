"""SIGTERM to deploy_triton.py is forwarded to tritonserver, which drains: a running stream completes, then the
server exits cleanly. The children die with deploy_triton.py (SIGKILL included), and a dead OpenAI frontend stops
the deployment."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import HF, Server, finish_stream, stream_request, wait_for
from tl_ports import free_ports


def test_sigterm_drains_a_running_stream(tmp_path):
    s = Server("drain", ["--hf_checkpoint", str(HF)], tmp_path)
    try:
        c, q = stream_request(s.grpc_url, "llama_stream", 200)
        result, error = q.get(timeout=60)
        assert error is None
        s.proc.send_signal(15)
        assert finish_stream(q, result) == (200, "length")
        c.stop_stream()
        c.close()
        assert s.proc.wait(timeout=60) == 0
        assert "successfully unloaded 'llama_stream'" in s.log_path.read_text()
    finally:
        s.stop()


def children(pid):
    """The pids whose parent is `pid` (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def gone(pid):
    """Exited (a zombie left for a parent that does not reap counts as exited)."""
    try:
        return (Path(f"/proc/{pid}/stat")).read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_sigkill_of_the_deploy_script_leaves_no_process_behind(tmp_path):
    """tritonserver and the OpenAI frontend die with deploy_triton.py even when it cannot forward a signal."""
    s = Server("sigkill", ["--hf_checkpoint", str(HF), "--openai_port", str(free_ports(1)[0])], tmp_path)
    try:
        kids = children(s.proc.pid)
        names = sorted(
            Path(f"/proc/{k}/cmdline").read_bytes().split(b"\0")[0].rsplit(b"/", 1)[-1].decode() for k in kids
        )
        assert len(kids) == 2 and names[-1] == "tritonserver", names
        s.proc.kill()
        s.proc.wait(timeout=10)
        assert wait_for(lambda: all(gone(k) for k in kids), 10), [k for k in kids if not gone(k)]
    finally:
        s.stop()


def test_the_frontend_dying_stops_the_deployment(tmp_path):
    s = Server("frontend_dies", ["--hf_checkpoint", str(HF), "--openai_port", str(free_ports(1)[0])], tmp_path)
    try:
        frontend = next(
            k for k in children(s.proc.pid) if b"openai_frontend.py" in Path(f"/proc/{k}/cmdline").read_bytes()
        )
        os.kill(frontend, signal.SIGKILL)
        assert s.proc.wait(timeout=60) == 4
        assert "the OpenAI frontend exited (status -9)" in s.log_path.read_text()
    finally:
        s.stop()


DEAD_CLIENT = """
import queue, sys, time
import numpy as np
import tritonclient.grpc as grpcclient
c = grpcclient.InferenceServerClient(sys.argv[1])
q = queue.Queue()
c.start_stream(callback=lambda result, error: q.put(error))
text = grpcclient.InferInput("text_input", [1, 1], "BYTES")
text.set_data_from_numpy(np.array([[b"Hello"]], dtype=object))
bad = grpcclient.InferInput("undeclared_input", [1, 1], "INT32")
bad.set_data_from_numpy(np.array([[1]], dtype=np.int32))
c.async_stream_infer("llama_stream", [text, bad])
print(q.get(timeout=60), flush=True)  # Triton's refusal
time.sleep(600)
"""


def test_sigterm_after_a_dead_stream_client_drains_and_exits_0_in_seconds(tmp_path):
    """A gRPC stream client whose request Triton refuses (an undeclared input) dies without closing its stream:
    tritonserver 2.51 then cannot unload the model and would wait its whole exit timeout and exit 1 (not ours:
    `scripts/probes/triton_stream_cancel_repro.py deadclient` shows it with a Python-backend model).
    deploy_triton.py ends the drained server: a running stream still finishes, and the exit is 0 within seconds."""
    s = Server("dead_stream", ["--hf_checkpoint", str(HF)], tmp_path)
    try:
        dead = subprocess.Popen([sys.executable, "-c", DEAD_CLIENT, s.grpc_url], stdout=subprocess.PIPE, text=True)
        assert "undeclared_input" in dead.stdout.readline()
        dead.kill()
        dead.wait()
        c, q = stream_request(s.grpc_url, "llama_stream", 120)
        result, error = q.get(timeout=60)
        assert error is None
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert finish_stream(q, result) == (120, "length")
        c.stop_stream()
        c.close()
        assert s.proc.wait(timeout=60) == 0
        assert time.monotonic() - t0 < 10, "Triton's own exit timeout is 30 s"
        assert "ending it" in s.log_path.read_text()
    finally:
        s.stop()
