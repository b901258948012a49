"""The seed's client code as in the model card: pytriton ModelClient over HTTP and gRPC with NemoQuery's five
inputs, [N,1] batches, output[0][0]; the same greedy prompt equals `triton-llama generate --json`."""

import sys

import numpy as np
import pytest
from conftest import HF, ROOT, cli_generate
from pytriton.client import DecoupledModelClient, ModelClient

sys.path.insert(0, str(ROOT / "scripts"))
from query_llm import NemoQuery  # noqa: E402

PROMPTS = ["Hello world", "The quick brown fox", "Once upon a time"]


def nemo_inputs(prompts, max_output_token=12, top_k=1, top_p=0.0, temperature=1.0):
    n = len(prompts)
    col = lambda v, dt: np.full((n, 1), v, dtype=dt)  # noqa: E731
    return dict(
        prompts=np.char.encode(np.array(prompts)[:, None], "utf-8"),
        max_output_token=col(max_output_token, np.int64),
        top_k=col(top_k, np.int64),
        top_p=col(top_p, np.float32),
        temperature=col(temperature, np.float32),
    )


def decode(out):
    return np.char.decode(out["outputs"].astype("bytes"), "utf-8")


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_model_card_snippet_matches_cli(server, scheme):
    url = server.url if scheme == "http" else f"grpc://{server.grpc_url}"
    with ModelClient(url, "llama", init_timeout_s=60) as client:
        output = decode(client.infer_batch(**nemo_inputs(PROMPTS)))
    assert output.shape == (3, 1)
    for i, p in enumerate(PROMPTS):
        assert output[i][0] == cli_generate(HF, p, "--max-tokens", "12")["text"], p


def test_each_prompt_of_a_batch_keeps_its_own_values(server):
    inputs = nemo_inputs(PROMPTS[:2])
    inputs["max_output_token"] = np.array([[3], [9]], dtype=np.int64)
    with ModelClient(server.url, "llama", init_timeout_s=60) as client:
        out = decode(client.infer_batch(**inputs))
    assert out[0][0] == cli_generate(HF, PROMPTS[0], "--max-tokens", "3")["text"]
    assert out[1][0] == cli_generate(HF, PROMPTS[1], "--max-tokens", "9")["text"]


def test_nemo_query_script(server):
    q = NemoQuery(server.url, "llama")
    out = q.query_llm(prompts=PROMPTS[:2], max_output_token=12, top_k=1, top_p=0.0, temperature=1.0)
    assert [o[0] for o in out] == [cli_generate(HF, p, "--max-tokens", "12")["text"] for p in PROMPTS[:2]]
    chunks = list(
        NemoQuery(f"grpc://{server.grpc_url}", "llama").query_llm_streaming(prompts=[PROMPTS[0]], max_output_token=12)
    )
    assert len(chunks) > 1
    assert chunks[-1][0][0] == out[0][0]  # streamed `outputs` carry the text so far


def test_decoupled_model_client_streams_text_so_far(server):
    with DecoupledModelClient(f"grpc://{server.grpc_url}", "llama_stream", init_timeout_s=60) as client:
        chunks = [decode(c)[0][0] for c in client.infer_batch(**nemo_inputs([PROMPTS[1]]))]
    want = cli_generate(HF, PROMPTS[1], "--max-tokens", "12")["text"]
    assert chunks[-1] == want
    assert all(want.startswith(c) for c in chunks)
    assert len(chunks) > 2


def test_nemo_checkpoint_default_stop_is_trimmed(nemo_server):
    from conftest import NEMO

    cli = cli_generate(NEMO, "Hello", "--max-tokens", "40")
    with ModelClient(nemo_server.url, "chat", init_timeout_s=60) as client:
        out = decode(client.infer_batch(**nemo_inputs(["Hello"], max_output_token=40)))
    assert out[0][0] == cli["text"]
    assert "<extra_id_1>" not in out[0][0]


def test_nemo_later_optional_names(server):
    base = nemo_inputs(["Once upon a time"], max_output_token=24, top_k=0, top_p=0.0, temperature=1.0)
    with ModelClient(server.url, "llama", init_timeout_s=60) as client:
        seeded = lambda s: decode(client.infer_batch(**base, random_seed=np.array([[s]], dtype=np.int64)))[0][0]  # noqa: E731
        assert seeded(7) == seeded(7) != seeded(8)
        greedy = dict(
            nemo_inputs(["Once upon a time"], max_output_token=24, top_k=0, temperature=0.7),
            use_greedy=np.array([[True]]),
        )
        full = decode(client.infer_batch(**greedy))[0][0]
        assert full == cli_generate(HF, "Once upon a time", "--max-tokens", "24")["text"]
        stops = np.char.encode(np.array([[f"zzz,{full[6:9]}"]]), "utf-8")
        assert decode(client.infer_batch(**greedy, stop_words_list=stops))[0][0] == full[: full.find(full[6:9])]
        no_bos = decode(client.infer_batch(**greedy, add_BOS=np.array([[False]])))[0][0]
        assert no_bos == cli_generate(HF, "Once upon a time", "--max-tokens", "24", "--no-bos")["text"]
        with pytest.raises(Exception, match="lora_uids"):
            client.infer_batch(**greedy, lora_uids=np.char.encode(np.array([["adapter"]]), "utf-8"))
