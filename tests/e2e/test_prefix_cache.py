"""Prefix caching end to end: the model card's two-turn chat through the seed client (pytriton ModelClient with
NemoQuery's inputs). Turn 2 re-sends turn 1 and its answer; the server finds turn 1 in the prefix cache (metrics)
and answers exactly as a server with the cache off does."""

import numpy as np
import pytest
from conftest import NEMO, start
from pytriton.client import ModelClient

BLOCK = 16  # deploy_triton.py's default block_size


def chat(turns):
    """The model card's NeMo/SteerLM chat template; `turns` is [(question, answer or None), ...]."""
    text = "<extra_id_0>System\n\n"
    for q, a in turns:
        text += f"<extra_id_1>User\n{q}\n<extra_id_1>Assistant\n"
        if a is not None:
            text += f"{a}\n"
    return text


def ask(server, prompt, max_output_token=24):
    n = lambda v, dt: np.array([[v]], dtype=dt)  # noqa: E731
    with ModelClient(server.url, "chat", init_timeout_s=60) as client:
        out = client.infer_batch(
            prompts=np.char.encode(np.array([[prompt]]), "utf-8"),
            max_output_token=n(max_output_token, np.int64),
            top_k=n(1, np.int64),
            top_p=n(0.0, np.float32),
            temperature=n(1.0, np.float32),
        )
    return np.char.decode(out["outputs"].astype("bytes"), "utf-8")[0][0]


def counters(server):
    # Engine-wide counters appear under both twins (chat, chat_stream): read one.
    return {
        k: server.metric(f"llama_{k}", model="chat")
        for k in ("prompt_tokens_total", "prefix_cache_queries_tokens_total", "prefix_cache_hits_tokens_total")
    }


def two_turns(server):
    """Turn 1, then turn 2 with turn 1's answer; returns the answers and each turn's counter increases."""
    q1 = "What is the NVIDIA Triton Inference Server, and which model formats can it serve?"
    q2 = "Can it run on a machine without a GPU?"
    c0 = counters(server)
    a1 = ask(server, chat([(q1, None)]))
    c1 = counters(server)
    a2 = ask(server, chat([(q1, a1), (q2, None)]))
    c2 = counters(server)
    return (a1, a2), [{k: b[k] - a[k] for k in a} for a, b in ((c0, c1), (c1, c2))]


@pytest.fixture(scope="module")
def nemo_server_no_cache(request, tmp_path_factory):
    return start(
        request,
        tmp_path_factory,
        "nemo_no_cache",
        ["--nemo_checkpoint", str(NEMO), "-tmn", "chat", "--no-enable_prefix_caching"],
    )


def test_second_turn_hits_the_cache_and_answers_as_without_it(nemo_server, nemo_server_no_cache):
    answers, (turn1, turn2) = two_turns(nemo_server)
    print(answers, turn1, turn2)
    assert turn1["prompt_tokens_total"] >= BLOCK, "turn 1 must fill at least one block for this test to mean anything"
    # Every prompt token is looked up; turn 2 finds at least turn 1's full blocks (its answer's too, when the
    # answer text tokenizes back to the generated tokens).
    assert turn2["prefix_cache_queries_tokens_total"] == turn2["prompt_tokens_total"]
    assert turn2["prefix_cache_hits_tokens_total"] >= turn1["prompt_tokens_total"] // BLOCK * BLOCK, (turn1, turn2)
    assert turn2["prefix_cache_hits_tokens_total"] < turn2["prompt_tokens_total"]
    # KV gauges: idle now, so nothing is used and the cached blocks are kept.
    assert nemo_server.metric("llama_kv_cache_blocks_used", model="chat") == 0
    assert nemo_server.metric("llama_kv_cache_blocks_cached", model="chat") > 0
    kv = {k: nemo_server.metric(f"llama_kv_cache_blocks_{k}", model="chat") for k in ("cached", "free", "total")}
    assert kv["cached"] + kv["free"] == kv["total"]

    no_cache_answers, (_, off2) = two_turns(nemo_server_no_cache)
    assert no_cache_answers == answers
    assert off2["prefix_cache_queries_tokens_total"] == 0 and off2["prefix_cache_hits_tokens_total"] == 0
    assert nemo_server_no_cache.metric("llama_kv_cache_blocks_cached", model="chat") == 0
