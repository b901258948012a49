"""Structured output, logit bias and the API key through the real clients: the `openai` SDK against the OpenAI
frontend (`response_format` json_object / json_schema, vLLM's guided_json / guided_regex / guided_choice /
guided_grammar, streamed and not, `logit_bias`, `--openai_api_key`) and tritonclient against the model
(TensorRT-LLM's `guided_decoding_guide_type` / `guided_decoding_guide`). Oracles: the `jsonschema` package and
Python's `re` for the answers' shape, `triton-llama generate --guide` on the rendered prompt for the greedy
answer itself."""

import json
import re

import jsonschema
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from conftest import CLI, NEMO, cli_generate
from test_openai import MODEL, QUESTION, frontend_ready, render, sdk, start_with_frontend


@pytest.fixture(scope="module")
def api(request, tmp_path_factory):
    """The .nemo fixture (NeMo chat format) as `chat` with the frontend."""
    args = ["--nemo_checkpoint", str(NEMO), "-tmn", MODEL, "--max_input_len", "128", "--max_output_len", "128"]
    return start_with_frontend(request, tmp_path_factory, "structured", args)


@pytest.fixture(scope="module")
def client(api):
    return sdk(api.openai_url)


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "ü"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}


def chat(client, **kw):
    args = dict(model=MODEL, messages=QUESTION, max_tokens=100, temperature=0)
    args.update(kw)
    return client.chat.completions.create(**args)


def streamed(client, **kw):
    chunks = chat(client, stream=True, **kw)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_json_schema_answers_validate_and_equal_the_cli(client):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    r = chat(client, response_format=rf)
    text = r.choices[0].message.content
    jsonschema.validate(json.loads(text), PERSON)
    assert r.choices[0].finish_reason == "stop"
    assert streamed(client, response_format=rf) == text
    g = cli_generate(
        NEMO, render(QUESTION)["prompt"], "--max-tokens", "100", "--guide", "json_schema:" + json.dumps(PERSON)
    )
    assert g["text"] == text
    # Sampled answers validate too.
    for seed in range(4):
        t = chat(client, response_format=rf, temperature=1.0, seed=seed).choices[0].message.content
        jsonschema.validate(json.loads(t), PERSON)


def test_json_object_and_vllm_guided_parameters(client):
    obj = json.loads(chat(client, response_format={"type": "json_object"}, max_tokens=120).choices[0].message.content)
    assert isinstance(obj, dict)
    t = chat(client, extra_body={"guided_json": PERSON}).choices[0].message.content
    jsonschema.validate(json.loads(t), PERSON)
    t = chat(client, extra_body={"guided_regex": "[0-9]{2}-[a-z]{3}"}).choices[0].message.content
    assert re.fullmatch("[0-9]{2}-[a-z]{3}", t), t
    choices = ["yes", "no", "it depends"]
    for seed in range(3):
        t = chat(client, temperature=1.0, seed=seed, extra_body={"guided_choice": choices}).choices[0].message.content
        assert t in choices
    grammar = 'start: "The answer is " NUM "."\nNUM: /[0-9]+/'
    t = chat(client, extra_body={"guided_grammar": grammar}).choices[0].message.content
    assert re.fullmatch(r"The answer is [0-9]+\.", t), t
    s = streamed(client, extra_body={"guided_regex": "[0-9]{2}-[a-z]{3}"})
    assert re.fullmatch("[0-9]{2}-[a-z]{3}", s), s
    c = client.completions.create(
        model=MODEL, prompt="Name a colour:", max_tokens=10, extra_body={"guided_choice": ["red", "blue"]}
    )
    assert c.choices[0].text in ("red", "blue")


@pytest.mark.parametrize(
    "kw,param,fragment",
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}}, None, "JSON schema"),
        ({"extra_body": {"guided_regex": "(unclosed"}}, None, "regex cannot be used"),
        ({"extra_body": {"guided_grammar": "start: nothing_defined"}}, None, "grammar cannot be used"),
        ({"response_format": {"type": "xml"}}, "response_format", "json_object or json_schema"),
        ({"extra_body": {"guided_choice": []}}, "guided_choice", "non-empty list"),
        ({"extra_body": {"guided_regex": "a", "guided_choice": ["a"]}}, "guided_choice", "one structured-output"),
        ({"logit_bias": {"5": 500}}, "logit_bias", "[-100, 100]"),
        ({"logit_bias": {"99999999": 1}}, None, "outside the vocabulary"),
    ],
)
def test_bad_structured_output_and_bias_are_400s(client, kw, param, fragment):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, **kw)
    err = e.value.body
    assert err["type"] == "invalid_request_error" and fragment in err["message"], err
    if param:
        assert err["param"] == param, err


def test_logit_bias_by_token_id(client):
    """+100 on one token makes greedy decoding write only it; -100 on the greedy first token takes it away;
    streamed as unary."""

    def fox(stream=False, **kw):
        args = dict(model=MODEL, prompt="The quick brown fox", max_tokens=4, temperature=0, logprobs=0, **kw)
        if not stream:
            return client.completions.create(**args).choices[0].logprobs.tokens
        chunks = client.completions.create(stream=True, **args)
        return [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]

    plain = fox()
    ids = cli_generate(NEMO, "The quick brown fox", "--max-tokens", "4")["ids"]
    assert fox(logit_bias={str(ids[0]): -100})[0] != plain[0]
    assert fox(logit_bias={str(ids[1]): 100}) == [plain[1]] * 4
    assert fox(stream=True, logit_bias={str(ids[1]): 100}) == [plain[1]] * 4


def test_triton_guided_decoding_inputs(server):
    """TensorRT-LLM's guided decoding inputs on the model itself (tritonclient), per prompt of a batch."""
    c = httpclient.InferenceServerClient(server.url)

    def tensor(name, rows, dtype="BYTES"):
        arr = np.array(rows, dtype=object if dtype == "BYTES" else np.int32)
        t = httpclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        return t

    schema = json.dumps(PERSON).encode()
    inputs = [
        tensor("text_input", [[b"Describe someone:"], [b"A code:"]]),
        tensor("max_tokens", [[80], [80]], "INT32"),
        tensor("guided_decoding_guide_type", [[b"json_schema"], [b"regex"]]),
        tensor("guided_decoding_guide", [[schema], [b"[A-Z]{3}-[0-9]{3}"]]),
    ]
    r = c.infer("llama", inputs, outputs=[httpclient.InferRequestedOutput("text_output")])
    out = [t[0].decode() for t in r.as_numpy("text_output")]
    jsonschema.validate(json.loads(out[0]), PERSON)
    assert re.fullmatch("[A-Z]{3}-[0-9]{3}", out[1]), out[1]


def test_api_key_is_enforced(request, tmp_path_factory):
    s = start_with_frontend(
        request,
        tmp_path_factory,
        "openai_key",
        ["--nemo_checkpoint", str(NEMO), "-tmn", MODEL, "--openai_api_key", "s3cret"],
    )
    base = f"{s.openai_url}/v1"
    for key in ("wrong", ""):
        bad = openai.OpenAI(base_url=base, api_key=key or "x", max_retries=0, timeout=30)
        if not key:
            bad = openai.OpenAI(
                base_url=base, api_key="x", max_retries=0, timeout=30, default_headers={"Authorization": ""}
            )
        with pytest.raises(openai.AuthenticationError) as e:
            bad.models.list()
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    good = openai.OpenAI(base_url=base, api_key="s3cret", max_retries=0, timeout=30)
    assert (
        good.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=3).choices[0].message.content
        is not None
    )
    assert frontend_ready(s.openai_url), "/health stays open"
    assert CLI.exists()
