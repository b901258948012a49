"""deploy_triton.py --weight_dtype int8 reaches the engine: the served model generates what the CLI's
`--weights int8` generates, and that differs from the as-loaded weights somewhere in its log-probabilities."""
import json

from conftest import HF, cli_generate, start

import pytest


@pytest.fixture(scope="module")
def int8_server(request, tmp_path_factory):
    return start(request, tmp_path_factory, "int8", ["--hf_checkpoint", str(HF), "--weight_dtype", "int8"])


def test_int8_server_matches_the_cli(int8_server):
    prompt = "Once upon a time"
    status, body = int8_server.generate("llama", {"text_input": prompt, "max_tokens": 12, "ignore_eos": True})
    assert status == 200, body
    want = cli_generate(HF, prompt, "--max-tokens", "12", "--ignore-eos", "--weights", "int8")
    assert json.loads(body)["text_output"] == want["text"]
    exact = cli_generate(HF, prompt, "--max-tokens", "12", "--ignore-eos")
    assert want["logprobs"] != exact["logprobs"], "--weights int8 changed nothing"
