"""A client written for TensorRT-LLM's Triton ensemble / tensorrt_llm_bls model works unchanged: every optional
input of that interface is declared; at its neutral value it changes nothing; the beam-search knobs are neutral at
beam_width 1 whatever their value (TensorRT-LLM applies them to beams only); every feature this backend lacks is
refused naming the input (never "unexpected inference input"); the embedding bias by words moves the logits
of every token of each word by its weight; `batch_index`, `sequence_index` and `cum_log_probs` come back when
asked for; `context_logits` are the logits whose log-softmax the `score` command reports, and `generation_logits`
the rows the tokens were picked from, unary and streamed alike."""

import json
import queue
import subprocess

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from conftest import CLI, HF
from tritonclient.utils import InferenceServerException

DTYPES = {"BYTES": object, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "FP16": np.float16}
DTYPES.update(BOOL=bool, UINT64=np.uint64)


def tensor(name, dtype, rows):
    arr = np.array(rows, dtype=DTYPES[dtype])
    t = httpclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


BASE = [
    ("text_input", "BYTES", [[b"The capital of France is"], [b"Once upon a time"]]),
    ("max_tokens", "INT32", [[12], [12]]),
]
# Every TensorRT-LLM ensemble input this backend has no other name for, at its neutral value.
NEUTRAL = [
    ("length_penalty", "FP32", [[1.0], [1.0]]),
    ("early_stopping", "BOOL", [[False], [False]]),
    ("beam_search_diversity_rate", "FP32", [[0.0], [0.0]]),
    ("pad_id", "INT32", [[2], [2]]),
    ("end_id", "INT32", [[2], [2]]),
    ("beam_width", "INT32", [[1], [1]]),
    ("num_return_sequences", "INT32", [[1], [1]]),
    ("return_log_probs", "BOOL", [[True], [True]]),
    ("return_context_logits", "BOOL", [[False], [False]]),
    ("return_generation_logits", "BOOL", [[False], [False]]),
    ("return_perf_metrics", "BOOL", [[False], [False]]),
    ("return_kv_cache_reuse_stats", "BOOL", [[False], [False]]),
    ("embedding_bias_words", "BYTES", [[b""], [b""]]),
    ("embedding_bias_weights", "FP32", np.zeros((2, 0))),
    ("prompt_vocab_size", "INT32", [[0], [0]]),
    ("num_draft_tokens", "INT32", [[0], [0]]),
    ("use_draft_logits", "BOOL", [[False], [False]]),
    ("guided_decoding_guide_type", "BYTES", [[b""], [b""]]),
    ("guided_decoding_guide", "BYTES", [[b""], [b""]]),
    ("stream", "BOOL", [[False], [False]]),
]


def infer(server, extra, outputs=("text_output",)):
    c = httpclient.InferenceServerClient(server.url)
    inputs = [tensor(*t) for t in BASE + extra]
    r = c.infer("llama", inputs, outputs=[httpclient.InferRequestedOutput(o) for o in outputs])
    return {o: r.as_numpy(o) for o in outputs}


def test_every_input_is_declared(server):
    c = httpclient.InferenceServerClient(server.url)
    declared = {i["name"] for i in c.get_model_config("llama")["input"]}
    lacking = {"prompt_embedding_table", "prompt_table_extra_ids", "lora_task_id", "lora_weights", "lora_config"}
    assert {n for n, _, _ in NEUTRAL} | lacking | {"top_k", "top_p", "temperature", "decoder_text_input"} <= declared


def test_neutral_values_answer_as_without_them(server):
    want = infer(server, [])["text_output"]
    assert [t[0] for t in want] and all(t[0] for t in want)
    assert (infer(server, NEUTRAL)["text_output"] == want).all()
    # The beam-search knobs act on beams only: at beam_width 1 any value leaves the answer as it is.
    knobs = [("length_penalty", "FP32", [[2.0], [0.0]]), ("early_stopping", "BOOL", [[True], [True]])]
    knobs.append(("beam_search_diversity_rate", "FP32", [[0.5], [0.5]]))
    assert (infer(server, knobs)["text_output"] == want).all()


def test_indexes_and_cumulative_log_probs(server):
    out = infer(server, [], ("batch_index", "sequence_index", "cum_log_probs", "output_log_probs", "num_output_tokens"))
    assert out["batch_index"].tolist() == [[0], [1]] and out["sequence_index"].tolist() == [[0], [0]]
    for i in range(2):
        n = int(out["num_output_tokens"][i][0])
        assert out["cum_log_probs"][i][0] == pytest.approx(out["output_log_probs"][i][:n].sum(), abs=1e-4)


@pytest.mark.parametrize(
    "name,dtype,rows,message",
    [
        ("return_perf_metrics", "BOOL", [[True], [True]], "`return_perf_metrics` = true is not supported"),
        ("num_draft_tokens", "INT32", [[3], [3]], "`num_draft_tokens` other than 0"),
        ("use_draft_logits", "BOOL", [[True], [True]], "`use_draft_logits` = true is not supported"),
        ("lora_task_id", "UINT64", [[7], [7]], "`lora_task_id` is not supported"),
        ("prompt_embedding_table", "FP16", np.zeros((2, 2, 4)), "`prompt_embedding_table` is not supported"),
        ("prompt_vocab_size", "INT32", [[4], [4]], "`prompt_vocab_size` is not supported"),
        ("guided_decoding_guide_type", "BYTES", [[b"yaml"], [b"yaml"]], "unknown guide type `yaml`"),
        ("beam_width", "INT32", [[2], [2]], "`beam_width` > 1 is not supported"),
    ],
)
def test_missing_features_are_refused_by_name(server, name, dtype, rows, message):
    with pytest.raises(InferenceServerException) as e:
        infer(server, [(name, dtype, rows)])
    assert message in str(e.value) and "unexpected inference input" not in str(e.value)


def test_embedding_bias_by_words(server):
    """A large bias on a word makes greedy decoding pick its tokens only; a large negative one on the first token
    that greedy decoding picked takes it away; each prompt row has its own words."""
    out = ("text_output", "output_tokens", "num_output_tokens")
    plain = infer(server, [], out)
    first = [plain["output_tokens"][i][0].decode() for i in range(2)]
    # The negative bias goes on a row whose first token is a whole piece of text (not a byte of a character).
    neg = next(i for i in range(2) if first[i].strip() and "\ufffd" not in first[i])
    pos = 1 - neg
    rows = [[b""], [b""]]
    rows[pos], rows[neg] = [b" the"], [first[neg].encode()]
    weights = [[0.0], [0.0]]
    weights[pos], weights[neg] = [1000.0], [-1000.0]
    words = [("embedding_bias_words", "BYTES", rows)]
    biased = infer(server, words + [("embedding_bias_weights", "FP32", weights)], out)
    tokens = [t.decode() for t in biased["output_tokens"][pos][: int(biased["num_output_tokens"][pos][0])]]
    assert tokens and all(t and t in " the" for t in tokens), tokens  # only the word's own tokens ("▁the", "▁")
    assert biased["output_tokens"][neg][0].decode() != first[neg]
    assert biased["text_output"][pos][0] != plain["text_output"][pos][0]
    # A zero weight is neutral.
    zero = infer(server, words + [("embedding_bias_weights", "FP32", [[0.0], [0.0]])], out)
    assert (zero["text_output"] == plain["text_output"]).all()


def log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


LOGITS_OUT = ("context_logits", "generation_logits", "num_input_tokens", "num_output_tokens", "output_log_probs")


def test_context_logits_are_the_score_paths_inputs(server):
    """Row 0 asks for both kinds, row 1 for generation logits only (its context rows are zero padding)."""
    flags = [("return_context_logits", "BOOL", [[True], [False]])]
    flags.append(("return_generation_logits", "BOOL", [[True], [True]]))
    out = infer(server, flags, LOGITS_OUT)
    scored = subprocess.run(
        [str(CLI), "score", str(HF), "--prompt", BASE[0][2][0][0].decode(), "--json"],
        check=True,
        capture_output=True,
        text=True,
    )
    score = json.loads(scored.stdout)
    ids, n = score["ids"], len(score["ids"])
    ctx, gen = out["context_logits"], out["generation_logits"]
    assert int(out["num_input_tokens"][0][0]) == n and ctx.shape[0] == 2 and ctx.shape[1] >= n
    lsm = log_softmax(ctx[0][:n])
    got = [lsm[i - 1][ids[i]] for i in range(1, n)]
    np.testing.assert_allclose(got, score["logprobs"], atol=2e-3)
    assert not ctx[1].any()
    assert gen.shape[:2] == (2, 1) and gen.shape[3] == ctx.shape[2]
    for i in range(2):
        t = int(out["num_output_tokens"][i][0])
        rows = log_softmax(gen[i][0][:t])
        # Greedy (the default): each token is its row's argmax, with that row's log-softmax as its log-prob.
        np.testing.assert_allclose(rows.max(axis=1), out["output_log_probs"][i][:t], atol=1e-4)
        assert not gen[i][0][t:].any()
    np.testing.assert_array_equal(gen[0][0][0], ctx[0][n - 1])
    # Asking for logits changes no token.
    assert (infer(server, flags)["text_output"] == infer(server, [])["text_output"]).all()


def test_streamed_generation_logits_add_up_to_the_unary_ones(server):
    one = [("text_input", "BYTES", [[b"Once upon a time"]]), ("max_tokens", "INT32", [[6]])]
    one += [("return_generation_logits", "BOOL", [[True]]), ("return_context_logits", "BOOL", [[True]])]
    c = httpclient.InferenceServerClient(server.url)
    inputs = [tensor(*t) for t in one]
    unary = c.infer("llama", inputs, outputs=[httpclient.InferRequestedOutput(o) for o in LOGITS_OUT])
    g = grpcclient.InferenceServerClient(server.grpc_url)
    q = queue.Queue()
    g.start_stream(callback=lambda result, error: q.put((result, error)))
    ginputs = []
    for name, dtype, rows in one:
        arr = np.array(rows, dtype=DTYPES[dtype])
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        ginputs.append(t)
    outs = [grpcclient.InferRequestedOutput(o) for o in LOGITS_OUT + ("finish_reason",)]
    g.async_stream_infer("llama_stream", ginputs, outputs=outs)
    gen, ctx, reason = [], [], ""
    while not reason:
        result, error = q.get(timeout=60)
        assert error is None, error
        if result.as_numpy("generation_logits") is not None:
            gen.append(result.as_numpy("generation_logits")[0][0])
        if result.as_numpy("context_logits") is not None:
            ctx.append(result.as_numpy("context_logits")[0])
        reason = result.as_numpy("finish_reason")[0][0].decode()
    g.stop_stream()
    assert len(ctx) == 1, "the context logits come once"
    np.testing.assert_array_equal(ctx[0], unary.as_numpy("context_logits")[0])
    np.testing.assert_array_equal(np.concatenate(gen), unary.as_numpy("generation_logits")[0][0])
