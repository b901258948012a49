"""The OpenAI-compatible frontend (scripts/openai_frontend.py, started by deploy_triton.py --openai_port) in
front of a real tritonserver, driven by the real `openai` SDK: chat and completions, streamed and not, stops,
seeds, usage equal to the backend's token counts, every error case, disconnect-cancels; greedy chat output
equals `triton-llama generate` on the prompt `triton-llama render-chat` gives."""

import json
import socket
import subprocess
import urllib.request

import httpx2 as httpx  # the HTTP client the pinned openai SDK is built on
import openai
import pytest
from conftest import CLI, HF, NEMO, cli_generate, free_ports, start, wait_for

MODEL = "chat"


def start_with_frontend(request, tmp_path_factory, name, args):
    """`start` with the OpenAI frontend on a free port (`s.openai_url`), waited on until it answers ready."""
    (port,) = free_ports(1)
    s = start(request, tmp_path_factory, name, args + ["--openai_port", str(port)])
    s.openai_url = f"http://localhost:{port}"
    assert wait_for(lambda: frontend_ready(s.openai_url), 60), "the OpenAI frontend did not become ready"
    return s


@pytest.fixture(scope="module")
def api(request, tmp_path_factory):
    """The .nemo fixture (NeMo chat format) as `chat` with the frontend; 2 running + 1 queued prompts at most."""
    return start_with_frontend(
        request,
        tmp_path_factory,
        "openai",
        [
            "--nemo_checkpoint",
            str(NEMO),
            "-tmn",
            MODEL,
            "--max_num_seqs",
            "2",
            "--max_queue_size",
            "1",
            "--max_input_len",
            "128",
            "--max_output_len",
            "128",
        ],
    )


def frontend_ready(url):
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def sdk(url):
    """The `openai` SDK on a frontend (no retries: every answer is the server's own)."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def client(api):
    return sdk(api.openai_url)


def render(messages):
    out = subprocess.run(
        [str(CLI), "render-chat", str(NEMO), "--messages", json.dumps(messages), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def backend_counts(api, body):
    """num_input_tokens / num_output_tokens from the backend itself (/generate on the unary model)."""
    st, text = api.generate(MODEL, dict(body, return_num_input_tokens=True, return_num_output_tokens=True))
    assert st == 200, text
    r = json.loads(text)
    return r["num_input_tokens"], r["num_output_tokens"], r["text_output"]


QUESTION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]


def test_models(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other")


def test_chat_greedy_equals_generate_on_the_rendered_prompt(api, client):
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=12, temperature=0)
    rendered = render(QUESTION)
    assert (
        rendered["prompt"] == "<extra_id_0>System\nBe brief.\n<extra_id_1>User\nWhat is 2+2?\n<extra_id_1>Assistant\n"
    )
    g = cli_generate(NEMO, rendered["prompt"], "--max-tokens", "12")
    assert g["prompt_ids"] == rendered["ids"]
    assert r.choices[0].message.content == g["text"]
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == ("length" if g["finish_reason"] == "length" else "stop")
    # usage equals the backend's own counts for the same conversation, and the CLI's.
    n_in, n_out, text = backend_counts(api, {"messages": json.dumps(QUESTION), "max_tokens": 12, "temperature": 0})
    assert text == g["text"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_in, n_out) == (len(g["prompt_ids"]), len(g["ids"]))
    assert r.usage.total_tokens == n_in + n_out


def test_chat_stream_matches_unary_and_reports_usage(client):
    unary = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == unary.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [unary.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == unary.usage
    # Without include_usage no chunk carries usage.
    plain = list(
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=4, temperature=0, stream=True)
    )
    assert all(c.usage is None for c in plain)


def test_sse_ends_with_done(api):
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{api.openai_url}/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events[:-1])


def test_completions_unary_and_stream_equal_generate(api, client):
    prompt = "The quick brown fox"
    g = cli_generate(NEMO, prompt, "--max-tokens", "10")
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0)
    assert r.choices[0].text == g["text"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(g["prompt_ids"]), len(g["ids"]))
    n_in, n_out, _ = backend_counts(api, {"text_input": prompt, "max_tokens": 10, "temperature": 0})
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_in, n_out)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == g["text"]
    assert chunks[-1].usage.completion_tokens == len(g["ids"])
    # max_completion_tokens is the chat name of the limit.
    c = client.chat.completions.create(model=MODEL, messages=QUESTION, max_completion_tokens=3, temperature=0)
    assert c.usage.completion_tokens == 3 and c.choices[0].finish_reason == "length"


def test_stop_strings(client):
    prompt = "The quick brown fox"
    full = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0).choices[0].text
    words = [w for w in full.split(" ") if len(w) >= 3]
    assert words, full
    stop = words[len(words) // 2]
    cut = full[: full.index(stop)]
    for s in (stop, [stop, "never-appears-xyz"]):
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0, stop=s)
        assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop", (s, r)
    chat_full = (
        client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0)
        .choices[0]
        .message.content
    )
    words = [w for w in chat_full.split(" ") if len(w) >= 3]
    stop = words[len(words) // 2]
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=24, temperature=0, stop=stop)
    assert r.choices[0].message.content == chat_full[: chat_full.index(stop)] and r.choices[0].finish_reason == "stop"


def test_seed_reproducibility_and_penalties(client):
    kw = dict(model=MODEL, messages=QUESTION, max_tokens=16, temperature=1.0, top_p=0.95)
    a = client.chat.completions.create(seed=7, **kw).choices[0].message.content
    b = client.chat.completions.create(seed=7, **kw).choices[0].message.content
    others = {client.chat.completions.create(seed=s, **kw).choices[0].message.content for s in (8, 9, 10)}
    assert a == b
    assert others - {a}, "three other seeds all gave the seed-7 text"
    # Penalties reach the backend: with a large frequency penalty the greedy text changes.
    plain = client.completions.create(model=MODEL, prompt="a a a a a a", max_tokens=16, temperature=0).choices[0].text
    pen = (
        client.completions.create(
            model=MODEL, prompt="a a a a a a", max_tokens=16, temperature=0, frequency_penalty=2.0, presence_penalty=2.0
        )
        .choices[0]
        .text
    )
    assert pen != plain
    # `user` is accepted and ignored.
    assert (
        client.completions.create(model=MODEL, prompt="a a a a a a", max_tokens=16, temperature=0, user="u1")
        .choices[0]
        .text
        == plain
    )


def test_multi_turn_carries_the_first_answer(client):
    msgs = [{"role": "user", "content": "Hi"}]
    first = (
        client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0)
        .choices[0]
        .message.content
    )
    msgs += [{"role": "assistant", "content": first}, {"role": "user", "content": "And then?"}]
    rendered = render(msgs)
    assert rendered["prompt"] == (
        f"<extra_id_0>System\n\n<extra_id_1>User\nHi\n<extra_id_1>Assistant\n{first}\n"
        "<extra_id_1>User\nAnd then?\n<extra_id_1>Assistant\n"
    )
    second = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, temperature=0)
    g = cli_generate(NEMO, rendered["prompt"], "--max-tokens", "8")
    assert second.choices[0].message.content == g["text"]
    assert second.usage.prompt_tokens == len(rendered["ids"])


@pytest.mark.parametrize(
    "kw,param,fragment",
    [
        ({"n": 17}, "n", "`n`"),
        ({"temperature": 3}, "temperature", "`temperature`"),
        ({"top_p": 1.5}, "top_p", "`top_p`"),
        ({"max_tokens": 0}, "max_tokens", "`max_tokens`"),
        ({"top_logprobs": 2}, "top_logprobs", "needs `logprobs: true`"),
        ({"top_logprobs": 50, "logprobs": True}, "top_logprobs", "`top_logprobs`"),
        ({"logit_bias": {"5": 101}}, "logit_bias", "[-100, 100]"),
        ({"seed": "x"}, "seed", "`seed`"),
        ({"stop": 5}, "stop", "`stop`"),
        ({"presence_penalty": 5}, "presence_penalty", "`presence_penalty`"),
        ({"messages": []}, "messages", "non-empty"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "not supported"),
    ],
)
def test_chat_bad_input_is_a_400_with_openai_error_body(client, kw, param, fragment):
    args = dict(model=MODEL, messages=QUESTION, max_tokens=4)
    args.update(kw)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    err = e.value.body
    assert e.value.status_code == 400 and err["type"] == "invalid_request_error", err
    assert err["param"] == param and fragment in err["message"], err
    assert set(err) == {"message", "type", "param", "code"}


def test_logprobs_are_the_backends(client):
    """logprobs: true gives each chosen token's text and log-prob, equal to the CLI's (and no alternatives unless
    asked for: tests/e2e/test_logprobs_and_choices.py)."""
    rendered = render(QUESTION)
    g = cli_generate(NEMO, rendered["prompt"], "--max-tokens", "8")
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True)
    content = r.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(g["logprobs"], abs=1e-5)
    assert len(content) == r.usage.completion_tokens and all(c.top_logprobs == [] for c in content)
    # Token texts: the answer is their concatenation (tokens of a split multi-byte character read as U+FFFD).
    joined = "".join(c.token for c in content)
    assert joined == r.choices[0].message.content or "\ufffd" in joined
    streamed = list(
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=8, temperature=0, logprobs=True, stream=True
        )
    )
    s = [c for ch in streamed if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [(c.token, c.logprob) for c in s] == [(c.token, c.logprob) for c in content]
    rc = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=6, temperature=0, logprobs=0)
    gc = cli_generate(NEMO, "The quick brown fox", "--max-tokens", "6")
    assert rc.choices[0].logprobs.token_logprobs == pytest.approx(gc["logprobs"], abs=1e-5)
    assert rc.choices[0].logprobs.text_offset[0] == 0 and len(rc.choices[0].logprobs.tokens) == 6
    assert rc.choices[0].logprobs.top_logprobs is None


def test_backend_refusals_and_unknown_model(api, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=QUESTION)
    assert e.value.body["code"] == "model_not_found"
    # Limits the backend checks (INVALID_ARG) come back as 400 with its message, streamed or not.
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="x", max_tokens=5000, stream=stream)
        assert "max_output_len" in e.value.body["message"]
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL, prompt="word " * 200, max_tokens=4, stream=stream)
        assert "max_input_len" in e.value.body["message"], e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=["a", "b"], max_tokens=4)
    assert e.value.body["param"] == "prompt"
    r = httpx.post(f"{api.openai_url}/v1/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


LONG = "long"


@pytest.fixture(scope="module")
def long_api(request, tmp_path_factory):
    """The demo model (2048 positions) as `long` with the frontend; 1 running + 1 queued prompt at most, so a held
    request generating 1900 tokens keeps the capacity full for far longer than any check below takes."""
    return start_with_frontend(
        request,
        tmp_path_factory,
        "openai_long",
        [
            "-tmn",
            LONG,
            "--max_num_seqs",
            "1",
            "--max_queue_size",
            "1",
            "--max_input_len",
            "64",
            "--max_output_len",
            "1900",
        ],
    )


LONG_BODY = {"model": LONG, "prompt": "Hello", "max_tokens": 1900, "temperature": 0, "stream": True, "ignore_eos": True}


def hold(api, body):
    """A request sent on a raw connection whose answer is not read: the test holds it, and closing the socket is
    a client disconnecting (whether or not the frontend has answered the headers yet)."""
    data = json.dumps(body).encode()
    port = int(api.openai_url.rsplit(":", 1)[1])
    s = socket.create_connection(("localhost", port), timeout=60)
    head = "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    s.sendall(f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def reasons(api, model):
    return {
        r: api.metric("llama_requests_finished_total", model=model + "_stream", reason=r)
        for r in ("stop", "length", "cancelled", "rejected")
    }


def held(api):
    return (
        api.metric("llama_num_requests_running", model=LONG + "_stream"),
        api.metric("llama_num_requests_waiting", model=LONG + "_stream"),
    )


def test_full_server_is_429(long_api):
    """The capacity (1 running + 1 queued) is held by two 1900-token streams, seen in the gauges (no fixed sleep);
    the queued one cannot finish before the running one has generated its 1900 tokens. Further requests get a 429
    at once, and the gauges still show both held once the answers are back: the server was full the whole time."""
    api = long_api
    socks = [hold(api, LONG_BODY) for _ in range(2)]
    try:
        assert wait_for(lambda: held(api) == (1, 1), 60), held(api)
        for stream in (True, False):
            r = httpx.post(f"{api.openai_url}/v1/completions", json=dict(LONG_BODY, stream=stream), timeout=60)
            assert r.status_code == 429, r.text
            err = r.json()["error"]
            assert err["code"] == "server_full" and "capacity" in err["message"], err
            assert err["type"] == "rate_limit_exceeded", err
        assert held(api) == (1, 1), "the held requests ended while the refusals were handled: make them longer"
    finally:
        for s in socks:
            s.close()
    assert wait_for(lambda: api.metric("llama_num_requests_in_flight", model=LONG) == 0)
    assert wait_for(lambda: api.metric("llama_kv_cache_blocks_used", model=LONG) == 0)


def test_disconnect_cancels_in_the_backend(long_api):
    """Clients that hang up cancel their requests: one mid-stream (its first token read), one still queued (no
    headers yet). Both would generate 1900 tokens; the KV cache empties and `cancelled` counts both."""
    api = long_api
    before = reasons(api, LONG)
    socks = [hold(api, LONG_BODY) for _ in range(2)]
    try:
        assert wait_for(lambda: held(api) == (1, 1), 60), held(api)
        f = socks[0].makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 200"), "the running stream's status"
        while not f.readline().startswith(b"data: "):  # the first token: generation is under way
            pass
        f.close()
    finally:
        for s in socks:
            s.close()
    assert wait_for(lambda: sum(reasons(api, LONG).values()) == sum(before.values()) + 2), (before, reasons(api, LONG))
    after = reasons(api, LONG)
    assert after["cancelled"] == before["cancelled"] + 2, (before, after)
    assert wait_for(lambda: api.metric("llama_kv_cache_blocks_used", model=LONG) == 0)
    assert wait_for(lambda: api.metric("llama_num_requests_in_flight", model=LONG) == 0)
    # The server is usable again.
    r = httpx.post(f"{api.openai_url}/v1/completions", json={"model": LONG, "prompt": "x", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text


def test_unary_client_disconnect_cancels_in_the_backend(long_api):
    """A non-streamed request whose client gives up (connection closed) is cancelled in the backend too: the
    connection is closed once the running gauge shows the 1900-token request under way."""
    api = long_api
    before = reasons(api, LONG)
    s = hold(api, dict(LONG_BODY, stream=False))
    try:
        assert wait_for(lambda: held(api)[0] == 1, 60), held(api)
    finally:
        s.close()
    assert wait_for(lambda: sum(reasons(api, LONG).values()) == sum(before.values()) + 1), (before, reasons(api, LONG))
    assert reasons(api, LONG)["cancelled"] == before["cancelled"] + 1, (before, reasons(api, LONG))
    assert wait_for(lambda: api.metric("llama_kv_cache_blocks_used", model=LONG) == 0)


def test_model_card_multi_turn(nemo_server):
    """The model card's NemoQuery example, multi-turn: turn 2 carries turn 1's answer, each answer ends at the
    stop string on the server (no split("\\n")); query_llm.py's chat() (server-side template) gives the same."""
    import sys

    sys.path.insert(0, str(CLI.parents[2] / "scripts"))
    from query_llm import NemoQuery

    nq = NemoQuery(nemo_server.url, "chat")
    questions = ["What is 2+2?", "And 3+3?"]
    history, answers = "<extra_id_0>System\n\n", []
    for q in questions:
        history += f"<extra_id_1>User\n{q}\n<extra_id_1>Assistant\n"
        answer = nq.query_llm(prompts=[history], max_output_token=12, top_k=1, top_p=0.0, temperature=1.0)[0][0]
        assert "<extra_id_1>" not in answer
        assert answer == cli_generate(NEMO, history, "--max-tokens", "12")["text"]
        answers.append(answer)
        history += answer + "\n"
    msgs = [
        {"role": "user", "content": questions[0]},
        {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": questions[1]},
    ]
    assert render(msgs)["prompt"] == history[: -len(answers[1]) - 1]
    assert list(nq.chat(questions, max_output_token=12)) == answers


LLAMA2_TEMPLATE = CLI.parents[2] / "tests/fixtures/chat/llama2_chat/tokenizer_config.json"


@pytest.fixture(scope="module")
def hf_chat(request, tmp_path_factory):
    """The HF fixture with Llama-2-chat's template (deploy_triton.py --chat_template) and the frontend."""
    return start_with_frontend(
        request,
        tmp_path_factory,
        "openai_hf",
        [
            "--hf_checkpoint",
            str(HF),
            "--chat_template",
            str(LLAMA2_TEMPLATE),
            "--max_input_len",
            "128",
            "--max_output_len",
            "64",
        ],
    )


def test_llama2_chat_template_served(hf_chat):
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    client = sdk(hf_chat.openai_url)
    r = client.chat.completions.create(model="llama", messages=msgs, max_tokens=10, temperature=0)
    out = subprocess.run(
        [
            str(CLI),
            "generate",
            str(HF),
            "--messages",
            json.dumps(msgs),
            "--chat-template",
            str(LLAMA2_TEMPLATE),
            "--max-tokens",
            "10",
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    g = json.loads(out.stdout)
    # <s> / </s> of the rendered [INST] prompt are BOS / EOS ids, not text.
    assert g["prompt_ids"].count(1) == 2 and g["prompt_ids"].count(2) == 1 and g["prompt_ids"][0] == 1
    assert r.choices[0].message.content == g["text"]
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(g["prompt_ids"]), len(g["ids"]))
    # The template's own refusal (roles must alternate) is the client's 400.
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model="llama", messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        )
    assert "must alternate" in e.value.body["message"]


def test_no_chat_template_is_a_clear_400(server):
    """The plain HF fixture has no chat template: a `messages` request is refused, naming the fix."""
    st, text = server.generate("llama", {"messages": json.dumps([{"role": "user", "content": "hi"}]), "max_tokens": 4})
    assert st == 400 and "no chat template" in text, text


def test_no_server_behind_the_frontend_is_503(tmp_path):
    """The frontend alone, its tritonserver unreachable: requests get 503 in OpenAI's error body, health says so."""
    import sys

    dead, port = free_ports(2)
    log = open(tmp_path / "frontend.log", "w")
    p = subprocess.Popen(
        [
            sys.executable,
            str(CLI.parents[2] / "scripts/openai_frontend.py"),
            "--grpc_url",
            f"localhost:{dead}",
            "--model",
            MODEL,
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://localhost:{port}"

        def up():
            try:
                return httpx.get(f"{url}/health/ready", timeout=1).status_code == 503
            except httpx.TransportError:
                return False

        assert wait_for(up, 30), (tmp_path / "frontend.log").read_text()
        for stream in (False, True):
            r = httpx.post(
                f"{url}/v1/chat/completions", json={"model": MODEL, "messages": QUESTION, "stream": stream}, timeout=30
            )
            assert r.status_code == 503, r.text
            assert r.json()["error"]["type"] == "server_overloaded"
    finally:
        p.terminate()
        p.wait(30)
        log.close()
