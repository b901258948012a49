"""deploy_triton.py --weight_dtype reaches the engine: the served model generates what the CLI generates with the
same `--weights` (int8; f32, the exact path), and each differs from the default somewhere in its log-probabilities
(for this bf16 checkpoint the default is bf16 arithmetic; without AVX512_BF16 that runs the f32 kernel). fp8 on the
CPU engine is refused by name, by the server at load and by the CLI. `--kv_cache_dtype bf16` (the CUDA default; on
the CPU its twin) reaches the engine the same way."""

import json
import subprocess
from pathlib import Path

import pytest
from conftest import CLI, HF, LOGS, Server, cli_generate, start

PROMPT = "Once upon a time"
BF16_DOT = "avx512_bf16" in Path("/proc/cpuinfo").read_text()


@pytest.fixture(scope="module")
def int8_server(request, tmp_path_factory):
    return start(request, tmp_path_factory, "int8", ["--hf_checkpoint", str(HF), "--weight_dtype", "int8"])


@pytest.fixture(scope="module")
def f32_server(request, tmp_path_factory):
    return start(request, tmp_path_factory, "f32", ["--hf_checkpoint", str(HF), "--weight_dtype", "f32"])


def served_text(server):
    status, body = server.generate("llama", {"text_input": PROMPT, "max_tokens": 12, "ignore_eos": True})
    assert status == 200, body
    return json.loads(body)["text_output"]


def test_int8_server_matches_the_cli(int8_server):
    want = cli_generate(HF, PROMPT, "--max-tokens", "12", "--ignore-eos", "--weights", "int8")
    assert served_text(int8_server) == want["text"]
    default = cli_generate(HF, PROMPT, "--max-tokens", "12", "--ignore-eos")
    assert want["logprobs"] != default["logprobs"], "--weights int8 changed nothing"


def test_f32_server_is_the_exact_path(f32_server):
    want = cli_generate(HF, PROMPT, "--max-tokens", "12", "--ignore-eos", "--weights", "f32")
    assert served_text(f32_server) == want["text"]
    old_name = cli_generate(HF, PROMPT, "--max-tokens", "12", "--ignore-eos", "--weights", "as-loaded")
    assert (old_name["ids"], old_name["logprobs"]) == (want["ids"], want["logprobs"])
    default = cli_generate(HF, PROMPT, "--max-tokens", "12", "--ignore-eos")
    if BF16_DOT:
        assert want["logprobs"] != default["logprobs"], "the default is not bf16 arithmetic on this bf16 checkpoint"
    else:
        assert want["logprobs"] == default["logprobs"], "without AVX512_BF16 bf16 weights run the f32 kernel"


def test_fp8_on_the_cpu_is_refused_by_name(tmp_path):
    with pytest.raises(RuntimeError, match="exited early"):
        Server("fp8_cpu", ["--hf_checkpoint", str(HF), "--weight_dtype", "fp8"], tmp_path).stop()
    log = (LOGS / "fp8_cpu.log").read_text()
    refused = [line for line in log.splitlines() if "UNAVAILABLE" in line and "compute capability 8.9" in line]
    assert len(refused) == 2 and all("int8" in line for line in refused), log[-4000:]
    out = subprocess.run(
        [str(CLI), "generate", str(HF), "--prompt", "Hi", "--weights", "fp8"], capture_output=True, text=True
    )
    assert out.returncode != 0 and "compute capability 8.9" in out.stderr, out


def test_bf16_kv_cache_server_matches_the_cli(tmp_path_factory, request):
    server = start(request, tmp_path_factory, "kv_bf16", ["--hf_checkpoint", str(HF), "--kv_cache_dtype", "bf16"])
    want = cli_generate(HF, PROMPT, "--max-tokens", "12", "--ignore-eos", "--kv-cache-dtype", "bf16")
    assert served_text(server) == want["text"]
    default = cli_generate(HF, PROMPT, "--max-tokens", "12", "--ignore-eos")
    assert want["logprobs"] != default["logprobs"], "--kv-cache-dtype bf16 changed nothing on the CPU"
