"""deploy_triton.py with no checkpoint serves the demo model that `triton-llama demo-model` writes."""
import json

from conftest import cli_generate


def test_demo_model_is_served_and_matches_the_cli(demo_server, tmp_path):
    status, body = demo_server.generate("llama", {"text_input": "What is Triton?", "max_tokens": 16})
    assert status == 200, body
    demo_dir = next(p for p in (tmp_path.parent.parent).rglob("demo_repo.demo_model") if p.is_dir())
    assert json.loads(body)["text_output"] == cli_generate(demo_dir, "What is Triton?", "--max-tokens", "16")["text"]
