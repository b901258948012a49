"""NeMo 2.x clients: `NemoQueryLLM.query_llm` / `query_llm_streaming` (the TensorRT-LLM deployable's interface)
with the input names, dtypes and shapes NeMo 2.x sends (scripts/query_llm.py mirrors them; NeMo itself is not
installed here), `no_repeat_ngram_size` (FP32 [N,1]) included. Oracle: `triton-llama generate --json`."""

import sys

import pytest
from conftest import HF, ROOT, cli_generate

sys.path.insert(0, str(ROOT / "scripts"))
from query_llm import NemoQueryLLM  # noqa: E402

PROMPT = "The quick brown fox"


def repeats(ids, n):
    """How many n-grams of `ids` occurred earlier in it."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) - len(set(grams))


def cli(prompt, max_tokens, ngram):
    return cli_generate(HF, prompt, "--max-tokens", str(max_tokens), "--no-repeat-ngram-size", str(ngram))


def test_query_llm_no_repeat_ngram_size(server):
    plain, banned = cli(PROMPT, 60, 0), cli(PROMPT, 60, 1)
    assert repeats(plain["prompt_ids"] + plain["ids"], 1) > 0, (
        "without the ban a token must repeat, or this shows nothing"
    )
    assert repeats(banned["prompt_ids"] + banned["ids"], 1) == 0
    q = NemoQueryLLM(server.url, "llama")
    out = q.query_llm(
        prompts=[PROMPT, PROMPT], max_output_len=60, top_k=1, top_p=0.0, temperature=1.0, no_repeat_ngram_size=1
    )
    assert out.shape == (2, 1) and out[0][0] == out[1][0] == banned["text"]
    assert q.query_llm(prompts=[PROMPT], max_output_len=60, top_k=1, no_repeat_ngram_size=0)[0][0] == plain["text"]
    # The rest of the interface, as NeMo 2.x sends it: seeded sampling, word lists, empty task_id, over gRPC too.
    g = NemoQueryLLM(f"grpc://{server.grpc_url}", "llama")

    def seeded(s):
        return g.query_llm(
            prompts=[PROMPT],
            max_output_len=24,
            top_k=0,
            top_p=0.9,
            temperature=0.8,
            random_seed=s,
            no_repeat_ngram_size=2,
            bad_words_list=["zzz"],
            stop_words_list=["zzz"],
            task_id="",
        )[0][0]

    assert seeded(5) == seeded(5) != seeded(6)
    stop = banned["text"][10:14]
    out = q.query_llm(prompts=[PROMPT], max_output_len=60, top_k=1, no_repeat_ngram_size=1, stop_words_list=[stop])
    assert out[0][0] == banned["text"][: banned["text"].find(stop)]


@pytest.mark.parametrize(
    "bad, why",
    [
        (dict(no_repeat_ngram_size=2.5), "`no_repeat_ngram_size` must be a whole number >= 0"),
        (dict(no_repeat_ngram_size=-1), "`no_repeat_ngram_size` must be a whole number >= 0"),
        (dict(task_id="squad"), "`task_id` is not supported"),
        (dict(lora_uids=["adapter"]), "`lora_uids` is not supported"),
        (dict(all_probs=True), "`all_probs` = true is not supported"),
    ],
)
def test_query_llm_refusals_name_the_input(server, bad, why):
    with pytest.raises(Exception, match=why):
        NemoQueryLLM(server.url, "llama").query_llm(prompts=[PROMPT], max_output_len=4, **bad)


def test_query_llm_returns_the_logits_it_asks_for(server):
    """NeMo 2.x's logits flags: each generated token's logits row (greedy: the token is its argmax) and every
    prompt position's, in the completion-like answer NeMo builds from them."""
    want = cli_generate(HF, PROMPT, "--max-tokens", "5", "--ignore-eos")
    q = NemoQueryLLM(server.url, "llama")
    out = q.query_llm(
        prompts=[PROMPT],
        max_output_len=5,
        top_k=1,
        output_generation_logits=True,
        output_context_logits=True,
        openai_format_response=True,
    )
    choice = out["choices"][0]
    gen, ctx = choice["generation_logits"], choice["context_logits"]
    assert choice["text"][0][0] == want["text"] and gen.shape[:3] == (1, 1, len(want["ids"]))
    assert gen[0][0].argmax(axis=1).tolist() == want["ids"]
    assert ctx.shape[:2] == (1, len(want["prompt_ids"])) and (ctx[0][-1] == gen[0][0][0]).all()


def test_query_llm_streaming_no_repeat_ngram_size(server):
    want = cli("Once upon a time", 48, 1)
    q = NemoQueryLLM(f"grpc://{server.grpc_url}", "llama_stream")
    stream = q.query_llm_streaming(
        prompts=["Once upon a time"],
        max_output_len=48,
        no_repeat_ngram_size=1,
        stop_words_list=["zzz"],
        bad_words_list=["yyy"],
    )
    chunks = [c[0][0] for c in stream]
    assert len(chunks) > 2 and chunks[-1] == want["text"]
    assert all(want["text"].startswith(c) for c in chunks)


def test_trt_style_generate_takes_no_repeat_ngram_size(server):
    """The same name on the TensorRT-LLM-style inputs (`text_input`, `/generate`): JSON numbers take the config's
    dtype (FP32), so `{"no_repeat_ngram_size": 1}` works as with TensorRT-LLM's backend."""
    from conftest import ok

    want = cli(PROMPT, 30, 1)
    r = ok(server, {"text_input": PROMPT, "max_tokens": 30, "no_repeat_ngram_size": 1})
    assert r["text_output"] == want["text"] and r["text_output"] != cli(PROMPT, 30, 0)["text"]
