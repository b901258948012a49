"""Property-based fuzz of the OpenAI frontend from its own OpenAPI schema (schemathesis, pinned in setup.sh; the
request bodies are described in scripts/openai_schema.py): for every route, requests that follow the schema and
requests that break it, against the real frontend and tritonserver, a bounded number of cases each (derandomized:
the same cases on every run). No answer is a 500 (503 is an overload, in OpenAI's error body); every error is in
OpenAI's error body; a successful answer is a completion (a JSON object, or server-sent events ending in
`data: [DONE]`); afterwards the server still answers and holds no KV block."""

import json
import urllib.request

import jsonschema
import pytest
import requests
import schemathesis
from conftest import NEMO, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openai_schema import ERROR
from schemathesis import GenerationMode
from test_openai import MODEL, start_with_frontend

CASES = 60  # per route and mode


@pytest.fixture(scope="module")
def fuzz_api(request, tmp_path_factory):
    return start_with_frontend(
        request,
        tmp_path_factory,
        "openai_fuzz",
        ["--nemo_checkpoint", str(NEMO), "-tmn", MODEL, "--max_input_len", "128", "--max_output_len", "24"],
    )


def operations(url):
    with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as r:
        raw = json.loads(r.read())
    schema = schemathesis.openapi.from_dict(raw)
    return [result.ok() for result in schema.get_all_operations()]


def with_our_model(case, ours):
    """Half the generated bodies name the served model, so that generation itself is reached, not only the 404."""
    if ours and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = MODEL
    return case


def check(case, r):
    where = f"{case.method} {case.formatted_path} {json.dumps(case.body, default=str)[:300]} -> {r.status_code}"
    assert r.status_code < 500 or r.status_code == 503, f"{where}: {r.text[:500]}"
    if r.status_code >= 400:
        if case.formatted_path.startswith("/v1/"):
            jsonschema.validate(r.json(), ERROR)
        return
    if case.formatted_path.endswith("/completions"):
        if "text/event-stream" in r.headers.get("content-type", ""):
            events = [line for line in r.text.splitlines() if line.startswith("data: ")]
            assert events and events[-1] == "data: [DONE]", f"{where}: {r.text[-300:]}"
            for e in events[:-1]:
                assert "choices" in json.loads(e[6:]) or "error" in json.loads(e[6:]), where
        else:
            assert r.headers.get("content-type", "").startswith("application/json"), f"{where}: {r.text[:300]}"
            assert r.json()["choices"], where


def test_openai_routes_fuzzed_from_their_schema(fuzz_api):
    url = fuzz_api.openai_url
    ops = operations(url)
    paths = {op.path for op in ops}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{name}"} <= paths, paths
    session = requests.Session()
    calls = {"n": 0, "ok": 0}
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = st.builds(with_our_model, op.as_strategy(generation_mode=mode), st.booleans())

            @settings(
                max_examples=CASES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def run(case):
                # Sent with requests itself: schemathesis' own transport stops reading a server-sent event
                # stream early (4.32.5), which would look like a truncated stream.
                r = session.request(**case.as_transport_kwargs(base_url=url), timeout=60)
                calls["n"] += 1
                calls["ok"] += r.status_code == 200
                check(case, r)

            try:
                run()
            except Unsatisfiable:
                # A route with nothing to break (no parameters, no body) has no schema-violating request.
                assert mode == GenerationMode.NEGATIVE, op.label
    print("fuzz calls:", calls)
    assert calls["n"] >= len(ops) and calls["ok"] > 0, calls
    # Still serving, nothing held.
    r = session.post(
        f"{url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] is not None, r.text
    assert wait_for(lambda: fuzz_api.metric("llama_kv_cache_blocks_used") == 0, 30)
    assert fuzz_api.metric("llama_num_requests_in_flight") == 0
