"""SIGTERM to deploy_triton.py is forwarded to tritonserver, which drains: a running stream completes, then the
server exits cleanly."""
import queue

import numpy as np
import tritonclient.grpc as grpcclient

from conftest import HF, Server


def test_sigterm_drains_a_running_stream(tmp_path):
    s = Server("drain", ["--hf_checkpoint", str(HF)], tmp_path)
    try:
        c = grpcclient.InferenceServerClient(s.grpc_url)
        q = queue.Queue()
        c.start_stream(callback=lambda result, error: q.put((result, error)))
        inputs = []
        for name, dtype, value in (("text_input", "BYTES", b"Hello"), ("max_tokens", "INT32", 200), ("ignore_eos", "BOOL", True)):
            t = grpcclient.InferInput(name, [1, 1], dtype)
            t.set_data_from_numpy(np.array([[value]], dtype=object if dtype == "BYTES" else {"INT32": np.int32, "BOOL": bool}[dtype]))
            inputs.append(t)
        c.async_stream_infer("llama_stream", inputs)
        result, error = q.get(timeout=60)
        assert error is None
        s.proc.send_signal(15)
        n, reason = int(result.as_numpy("num_output_tokens")[0][0]), ""
        while not reason:
            result, error = q.get(timeout=60)
            assert error is None, error
            n += int(result.as_numpy("num_output_tokens")[0][0])
            reason = result.as_numpy("finish_reason")[0][0].decode()
        assert (n, reason) == (200, "length")
        c.stop_stream()
        c.close()
        assert s.proc.wait(timeout=60) == 0
        assert "successfully unloaded 'llama_stream'" in s.log_path.read_text()
    finally:
        s.stop()
