"""deploy_triton.py with no checkpoint serves the demo model that `triton-llama demo-model` writes."""

import json

from conftest import cli_generate


def test_demo_model_is_served_and_matches_the_cli(demo_server):
    status, body = demo_server.generate("llama", {"text_input": "What is Triton?", "max_tokens": 16})
    assert status == 200, body
    demo_dir = demo_server.repo.parent / (demo_server.repo.name + ".demo_model")
    assert (demo_dir / "tokenizer.json").exists()
    assert json.loads(body)["text_output"] == cli_generate(demo_dir, "What is Triton?", "--max-tokens", "16")["text"]
