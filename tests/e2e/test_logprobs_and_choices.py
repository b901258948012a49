"""Top log-probs, prompt log-probs (`echo`), `n` and `best_of` through the `openai` SDK against the OpenAI frontend,
and the Triton outputs behind them through tritonclient. Oracles: `triton-llama score --logits-out` (the whole
distribution at every position, computed in one pass: the alternatives are its k best), `triton-llama generate
--top-logprobs` (the same numbers from the engine's own path), and single seeded requests (choice i of `n` is the
request with `seed + i`)."""

import json
import subprocess
import uuid

import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from conftest import CLI, NEMO, cli_generate, wait_for
from test_openai import MODEL, QUESTION, hold, reasons, render, sdk, start_with_frontend

K = 5


@pytest.fixture(scope="module")
def api(request, tmp_path_factory):
    args = ["--nemo_checkpoint", str(NEMO), "-tmn", MODEL, "--max_input_len", "128", "--max_output_len", "64"]
    return start_with_frontend(request, tmp_path_factory, "logprobs", args)


@pytest.fixture(scope="module")
def client(api):
    return sdk(api.openai_url)


def log_softmax_rows(ids, tmp_path):
    """`score --logits-out` on `ids`: row i is the log-softmax predicting token i + 1."""
    out = tmp_path / f"logits-{uuid.uuid4().hex}.f32"
    ids_arg = ",".join(map(str, ids))
    subprocess.run([str(CLI), "score", str(NEMO), "--ids", ids_arg, "--logits-out", str(out)], check=True)
    logits = np.fromfile(out, dtype="<f4").astype(np.float64).reshape(len(ids), -1)
    m = logits.max(axis=1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))


def test_chat_top_logprobs_are_the_scored_distribution(client, tmp_path):
    rendered = render(QUESTION)
    g = cli_generate(NEMO, rendered["prompt"], "--max-tokens", "8", "--top-logprobs", str(K))
    r = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=K
    )
    content = r.choices[0].logprobs.content
    assert len(content) == len(g["ids"]) == r.usage.completion_tokens
    rows = log_softmax_rows(rendered["ids"] + g["ids"], tmp_path)
    n = len(rendered["ids"])
    for j, c in enumerate(content):
        assert len(c.top_logprobs) == K
        got = [a.logprob for a in c.top_logprobs]
        # The engine's own numbers (same path as the server) to 1e-5; the one-pass scoring to 2e-3 (other shapes).
        assert got == pytest.approx([lp for _, lp in g["top_logprobs"][j]], abs=1e-5)
        assert got == pytest.approx(sorted(rows[n + j - 1], reverse=True)[:K], abs=2e-3)
        assert c.top_logprobs[0].token == c.token and c.top_logprobs[0].logprob == pytest.approx(c.logprob)
        assert all(a.bytes == list(a.token.encode()) for a in c.top_logprobs)
    streamed = client.chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, top_logprobs=K, stream=True
    )
    s = [c for ch in streamed if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [[(a.token, a.logprob) for a in c.top_logprobs] for c in s] == [
        [(a.token, a.logprob) for a in c.top_logprobs] for c in content
    ]


def test_completions_echo_gives_the_prompts_logprobs(client, tmp_path):
    prompt = "The quick brown fox"
    plain = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, echo=True, logprobs=3)
    assert r.choices[0].text == prompt + plain.choices[0].text
    lp = r.choices[0].logprobs
    scored = json.loads(
        subprocess.run(
            [str(CLI), "score", str(NEMO), "--prompt", prompt, "--json"], check=True, capture_output=True
        ).stdout
    )
    n = len(scored["ids"])
    assert r.usage.prompt_tokens == n and r.usage.completion_tokens == 6
    assert len(lp.tokens) == n + 6 and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.token_logprobs[1:n] == pytest.approx(scored["logprobs"], abs=2e-3)
    rows = log_softmax_rows(scored["ids"], tmp_path)
    for i in range(1, n):
        assert sorted(lp.top_logprobs[i].values(), reverse=True) == pytest.approx(
            sorted(rows[i - 1], reverse=True)[: len(lp.top_logprobs[i])], abs=2e-3
        )
        assert 1 <= len(lp.top_logprobs[i]) <= 3  # alternatives with the same text share a key
    assert lp.text_offset[0] == 0 and lp.text_offset[n] == len(prompt)
    # max_tokens 0: the prompt scored alone (evaluation harnesses), the same numbers.
    s = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)
    assert s.choices[0].text == prompt and s.usage.completion_tokens == 0
    assert s.choices[0].logprobs.token_logprobs == pytest.approx(lp.token_logprobs[:n], abs=1e-6)
    # echo without log-probs, and streamed.
    e = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, echo=True)
    assert e.choices[0].text == r.choices[0].text and e.choices[0].logprobs is None
    chunks = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    # Streamed with log-probs: the prompt's come first, then the completion's, the same numbers as unary.
    chunks = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, temperature=0, echo=True, logprobs=3, stream=True
    )
    lps = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for x in lps for t in x.tokens] == lp.tokens
    assert [v for x in lps for v in x.token_logprobs] == pytest.approx(lp.token_logprobs, abs=1e-6)
    assert [d for x in lps for d in x.top_logprobs] == lp.top_logprobs


def test_n_choices_are_the_seeded_single_requests_sharing_the_prompt(api, client):
    # A prompt nothing else sent: the prefix cache hits below come from the choices sharing it.
    msgs = [{"role": "user", "content": f"Tell me a story about {uuid.uuid4().hex} and its friends the foxes."}]
    kw = dict(model=MODEL, messages=msgs, max_tokens=12, temperature=0.9)
    hits0 = api.metric("llama_prefix_cache_hits_tokens_total")
    r = client.chat.completions.create(n=3, seed=11, **kw)
    hits = api.metric("llama_prefix_cache_hits_tokens_total") - hits0
    singles = [client.chat.completions.create(seed=11 + i, **kw) for i in range(3)]
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.message.content for c in r.choices] == [s.choices[0].message.content for s in singles]
    assert len({c.message.content for c in r.choices}) > 1, "different seeds, different answers"
    n = singles[0].usage.prompt_tokens
    assert r.usage.prompt_tokens == n, "the prompt is counted once"
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles)
    # Choices 1 and 2 found the prompt's full blocks (16 tokens each) that choice 0 computed.
    assert hits >= 2 * ((n - 1) // 16 * 16) > 0, (hits, n)
    chunks = list(client.chat.completions.create(n=3, seed=11, stream=True, **kw))
    texts = ["", "", ""]
    finished = set()
    for ch in chunks:
        for c in ch.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished.add(c.index)
    assert texts == [c.message.content for c in r.choices] and finished == {0, 1, 2}


@pytest.fixture(scope="module")
def long_api(request, tmp_path_factory):
    """The demo model (2048 positions) as `long`: room for choices that outlast any check below."""
    args = ["-tmn", "long", "--max_input_len", "64", "--max_output_len", "1900"]
    return start_with_frontend(request, tmp_path_factory, "choices_long", args)


def test_a_client_leaving_an_n_3_stream_cancels_every_choice(long_api):
    """Three 1900-token choices streamed; the client hangs up once all three run: every backend request ends
    `cancelled` (none runs to its end) and the KV cache empties."""
    api, model = long_api, "long"
    before = reasons(api, model)
    body = {"model": model, "prompt": "Hello", "max_tokens": 1900, "n": 3, "stream": True, "ignore_eos": True}
    s = hold(api, body)
    try:
        f = s.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 200")
        while not f.readline().startswith(b"data: "):
            pass
        assert wait_for(lambda: api.metric("llama_num_requests_running", model=model + "_stream") == 3, 60)
        f.close()
    finally:
        s.close()
    assert wait_for(lambda: reasons(api, model)["cancelled"] == before["cancelled"] + 3, 60), reasons(api, model)
    assert reasons(api, model)["length"] == before["length"], "no choice ran to its end"
    assert wait_for(lambda: api.metric("llama_kv_cache_blocks_used", model=model) == 0)


def test_best_of_returns_the_likeliest_candidates(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0)
    r = client.completions.create(extra_body={"best_of": 3}, n=1, seed=5, logprobs=0, **kw)
    singles = [client.completions.create(seed=5 + i, logprobs=0, **kw) for i in range(3)]
    cum = [sum(s.choices[0].logprobs.token_logprobs) for s in singles]
    best = singles[int(np.argmax(cum))].choices[0]
    assert r.choices[0].text == best.text and len(r.choices) == 1
    assert r.usage.completion_tokens == sum(s.usage.completion_tokens for s in singles), "every candidate counts"
    two = client.completions.create(extra_body={"best_of": 3}, n=2, seed=5, **kw)
    order = np.argsort(cum)[::-1][:2]
    assert [c.text for c in two.choices] == [singles[i].choices[0].text for i in order]
    assert [c.index for c in two.choices] == [0, 1]


@pytest.mark.parametrize(
    "chat,kw,param",
    [
        (True, {"n": 17}, "n"),
        (True, {"best_of": 2}, "best_of"),
        (True, {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (False, {"n": 3, "best_of": 2}, "best_of"),
        (False, {"best_of": 2, "stream": True}, "best_of"),
        (False, {"logprobs": 21}, "logprobs"),
        (False, {"max_tokens": 0}, "max_tokens"),
        (False, {"max_tokens": 0, "echo": True, "stream": True}, "max_tokens"),
    ],
)
def test_bad_choice_and_logprob_requests_are_400s(client, chat, kw, param):
    extra = {k: kw.pop(k) for k in ["best_of"] if k in kw}  # not a parameter of this SDK's create()
    kw["extra_body"] = extra
    with pytest.raises(openai.BadRequestError) as e:
        if chat:
            client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, **kw)
        else:
            client.completions.create(model=MODEL, prompt="x", **{"max_tokens": 4, **kw})
    assert e.value.body["param"] == param, e.value.body


def test_triton_top_and_prompt_logprob_outputs(api):
    """tritonclient: `top_logprobs` and `return_prompt_log_probs` give [batch, positions, k] alternatives (ids and
    log-probs; texts when named) and the prompt's [batch, positions] log-probs, NaN first."""
    c = httpclient.InferenceServerClient(api.url)
    prompt = "The quick brown fox"
    inputs = []
    for name, arr, dtype in [
        ("text_input", np.array([[prompt.encode()]], dtype=np.object_), "BYTES"),
        ("max_tokens", np.array([[4]], dtype=np.int32), "INT32"),
        ("top_logprobs", np.array([[2]], dtype=np.int32), "INT32"),
        ("return_prompt_log_probs", np.array([[True]], dtype=bool), "BOOL"),
    ]:
        t = httpclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        inputs.append(t)
    names = ["output_log_probs", "output_top_log_probs", "output_top_token_ids", "output_top_tokens"]
    names += ["prompt_log_probs", "prompt_token_ids", "prompt_top_log_probs", "prompt_top_token_ids"]
    r = c.infer(MODEL, inputs, outputs=[httpclient.InferRequestedOutput(n) for n in names])
    top, ids = r.as_numpy("output_top_log_probs"), r.as_numpy("output_top_token_ids")
    assert top.shape == (1, 4, 2) and ids.shape == (1, 4, 2) and r.as_numpy("output_top_tokens").shape == (1, 4, 2)
    assert np.all(top[0, :, 0] >= top[0, :, 1])
    np.testing.assert_allclose(top[0, :, 0], r.as_numpy("output_log_probs")[0], atol=1e-6)  # greedy: the best
    scored = json.loads(
        subprocess.run(
            [str(CLI), "score", str(NEMO), "--prompt", prompt, "--json"], check=True, capture_output=True
        ).stdout
    )
    plp = r.as_numpy("prompt_log_probs")[0]
    assert list(r.as_numpy("prompt_token_ids")[0]) == scored["ids"]
    assert np.isnan(plp[0]) and r.as_numpy("prompt_top_log_probs").shape == (1, len(scored["ids"]), 2)
    np.testing.assert_allclose(plp[1:], scored["logprobs"], atol=2e-3)
    assert np.all(r.as_numpy("prompt_top_token_ids")[0, 0] == -1), "nothing predicts the first token"
