"""tritonclient HTTP and gRPC unary, gRPC streaming, /generate and /generate_stream with the TensorRT-LLM-style
text names; only requested outputs come back."""

import json
import queue

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import HF, cli_generate

PROMPT = "The quick brown fox"


def text_inputs(mod, prompt=PROMPT, max_tokens=12, **extra):
    t = mod.InferInput("text_input", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[prompt.encode()]], dtype=object))
    m = mod.InferInput("max_tokens", [1, 1], "INT32")
    m.set_data_from_numpy(np.array([[max_tokens]], dtype=np.int32))
    out = [t, m]
    for name, (dtype, value) in extra.items():
        x = mod.InferInput(name, [1, 1], dtype)
        x.set_data_from_numpy(
            np.array([[value]], dtype=object if dtype == "BYTES" else {"BOOL": bool, "UINT64": np.uint64}[dtype])
        )
        out.append(x)
    return out


def want(max_tokens=12):
    return cli_generate(HF, PROMPT, "--max-tokens", str(max_tokens))


def test_http_unary_only_requested_outputs(server):
    c = httpclient.InferenceServerClient(server.url)
    r = c.infer(
        "llama",
        text_inputs(httpclient),
        outputs=[httpclient.InferRequestedOutput("text_output"), httpclient.InferRequestedOutput("num_output_tokens")],
    )
    assert r.as_numpy("text_output")[0][0].decode() == want()["text"]
    assert r.as_numpy("num_output_tokens")[0][0] == len(want()["ids"])
    assert r.as_numpy("outputs") is None and r.as_numpy("finish_reason") is None
    c.close()


def test_grpc_unary_all_outputs(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    r = c.infer("llama", text_inputs(grpcclient))
    w = want()
    assert r.as_numpy("text_output")[0][0].decode() == w["text"]
    assert r.as_numpy("finish_reason")[0][0].decode() == w["finish_reason"]
    assert r.as_numpy("num_input_tokens")[0][0] == len(w["prompt_ids"])
    np.testing.assert_allclose(r.as_numpy("output_log_probs")[0], w["logprobs"], rtol=1e-5)
    np.testing.assert_allclose(r.as_numpy("cum_log_probs")[0][0], sum(w["logprobs"]), rtol=1e-4)


def stream_once(server, inputs, model="llama_stream"):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    q = queue.Queue()
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    c.async_stream_infer(model, inputs, enable_empty_final_response=True)
    chunks = []
    while True:
        result, error = q.get(timeout=60)
        if error is not None:
            c.stop_stream()
            raise error
        final = result.get_response().parameters["triton_final_response"].bool_param
        if result.as_numpy("text_output") is not None:
            chunks.append(result)
        if final:
            break
    c.stop_stream()
    return chunks


def test_grpc_streaming_deltas(server):
    chunks = stream_once(server, text_inputs(grpcclient))
    text = "".join(r.as_numpy("text_output")[0][0].decode() for r in chunks)
    assert text == want()["text"]
    assert len(chunks) > 2
    assert sum(int(r.as_numpy("num_output_tokens")[0][0]) for r in chunks) == len(want()["ids"])
    assert chunks[-1].as_numpy("outputs")[0][0].decode() == want()["text"]


def test_decoupled_with_stream_false_sends_one_response(server):
    chunks = stream_once(server, text_inputs(grpcclient, stream=("BOOL", False)))
    assert len(chunks) == 1
    assert chunks[0].as_numpy("text_output")[0][0].decode() == want()["text"]


def test_generate_endpoints(server):
    status, body = server.generate("llama", {"text_input": PROMPT, "max_tokens": 12})
    assert status == 200, body
    assert json.loads(body)["text_output"] == want()["text"]
    status, body = server.generate("llama_stream", {"text_input": PROMPT, "max_tokens": 12, "stream": False})
    assert status == 200 and json.loads(body)["text_output"] == want()["text"], body
    status, body = server.generate("llama_stream", {"text_input": PROMPT, "max_tokens": 12}, stream=True)
    assert status == 200
    events = [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]
    assert len(events) > 2
    assert "".join(e["text_output"] for e in events) == want()["text"]
    assert events[-1]["finish_reason"] == want()["finish_reason"]


def test_exclude_input_in_output_false_echoes_the_prompt(server):
    status, body = server.generate("llama", {"text_input": PROMPT, "max_tokens": 12, "exclude_input_in_output": False})
    assert status == 200
    assert json.loads(body)["text_output"] == PROMPT + want()["text"]
