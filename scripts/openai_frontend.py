#!/usr/bin/env python3
"""OpenAI-compatible HTTP frontend for the llama backend: a separate process next to tritonserver.

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (`stream: true` as server-sent events
ending in `data: [DONE]`, `stream_options.include_usage`), GET /health/ready (follows Triton's) and /health/live.
Every request is forwarded to the `<model>_stream` Triton model over one gRPC stream (tritonclient.grpc.aio), so
Triton stays the serving core: its scheduling, metrics and cancellation apply. Chat requests send the
conversation as the model's `messages` input and the backend renders it with the checkpoint's chat template (the
Rust engine crate is the only implementation of the templates); `usage` comes from the backend's
`num_input_tokens` / `num_output_tokens`.

A client that disconnects mid-stream cancels its gRPC stream, which cancels the request in the backend.

  .venv/bin/python scripts/openai_frontend.py --grpc_url localhost:8001 --model llama --port 9000
(`scripts/deploy_triton.py --openai_port 9000` starts it next to the server.)
"""

import argparse
import asyncio
import hmac
import json
import os
import time
import uuid

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from openai_schema import CHAT_REQUEST, COMPLETION_REQUEST, error_responses, request_body
from tritonclient.utils import InferenceServerException

app = FastAPI(title="triton-llama OpenAI-compatible API")
CFG = {"grpc_url": "localhost:8001", "model": "llama", "created": int(time.time()), "api_key": None}
# Most choices (`n`) or candidates (`best_of`) one request may ask for.
MAX_CHOICES = 16
CLIENT = {}


class ApiError(Exception):
    """An OpenAI error body with its HTTP status."""

    def __init__(self, status, message, param=None, code=None, etype=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.etype = etype or {
            400: "invalid_request_error",
            401: "invalid_request_error",
            404: "invalid_request_error",
            429: "rate_limit_exceeded",
            503: "server_overloaded",
        }.get(status, "server_error")

    def body(self):
        return {"error": {"message": self.message, "type": self.etype, "param": self.param, "code": self.code}}

    def response(self):
        return JSONResponse(self.body(), status_code=self.status)


@app.exception_handler(ApiError)
async def _api_error(_request, e: ApiError):
    return e.response()


def require_api_key(request: Request):
    """With an API key set, every /v1 route needs `Authorization: Bearer <key>` (compared in constant time);
    /health stays open for probes. Called by each /v1 route (an HTTP middleware would hide client disconnects
    from the routes)."""
    key = CFG["api_key"]
    if key:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())):
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", code="invalid_api_key")


def client():
    if "c" not in CLIENT:
        CLIENT["c"] = grpcclient.InferenceServerClient(CFG["grpc_url"])
    return CLIENT["c"]


def from_triton(e: InferenceServerException) -> ApiError:
    """The one mapping of Triton errors to HTTP statuses. A gRPC stream carries only the error's message (its
    status code is lost on the way), so the backend's messages are classified by their fixed wording."""
    status, msg = str(e.status() or ""), e.message() or str(e)
    if "UNAVAILABLE" in status or any(
        m in msg for m in ("at capacity", "engine thread has stopped", "shutting down", "is unloading", "not ready")
    ):
        # A full queue is retryable (429, as TGI answers); an engine that is gone or stopping is 503.
        return ApiError(429, msg, code="server_full") if "capacity" in msg else ApiError(503, msg)
    if "NOT_FOUND" in status or "unknown model" in msg:
        return ApiError(404, msg, code="model_not_found")
    if "CANCELLED" in status or "cancelled" in msg.lower():
        return ApiError(499, msg, etype="cancelled")
    if "INTERNAL" in status or msg.startswith("internal error") or "panicked" in msg or "dropped this request" in msg:
        return ApiError(500, msg)
    # The rest are the backend's INVALID_ARG / UNSUPPORTED refusals of this request.
    return ApiError(400, msg)


# ---- request validation -------------------------------------------------------------------------------------


def _number(body, key, lo, hi, integer=False):
    v = body.get(key)
    if v is None:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not (lo <= v <= hi):
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"`{key}` must be {kind} in [{lo}, {hi}], got {v!r}", param=key, code="invalid_value")
    return v


GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


def guided_decoding(body):
    """Structured output: OpenAI's `response_format` (`json_object`, `json_schema`) or one of vLLM's `guided_*`
    parameters, as (guided_decoding_guide_type, guided_decoding_guide) for the backend; None for plain text."""
    asked = []
    rf = body.get("response_format")
    if rf is not None and rf != {"type": "text"}:
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind == "json_object":
            asked.append(("response_format", ("json", "")))
        elif kind == "json_schema":
            js = rf.get("json_schema")
            schema = js.get("schema") if isinstance(js, dict) else None
            if not isinstance(schema, (dict, bool)):
                raise ApiError(
                    400,
                    "`response_format.json_schema.schema` must be a JSON schema object",
                    param="response_format",
                    code="invalid_value",
                )
            asked.append(("response_format", ("json_schema", json.dumps(schema))))
        elif kind != "text":
            raise ApiError(
                400,
                "`response_format.type` must be text, json_object or json_schema",
                param="response_format",
                code="invalid_value",
            )
    for key in GUIDED:
        v = body.get(key)
        if v is None:
            continue
        if key == "guided_json" and isinstance(v, (dict, str)):
            asked.append((key, ("json_schema", v if isinstance(v, str) else json.dumps(v))))
        elif key == "guided_choice" and isinstance(v, list) and v and all(isinstance(c, str) for c in v):
            asked.append((key, ("choice", json.dumps(v))))
        elif key in ("guided_regex", "guided_grammar") and isinstance(v, str) and v:
            asked.append((key, ("regex" if key == "guided_regex" else "lark", v)))
        else:
            what = {"guided_json": "a JSON schema", "guided_choice": "a non-empty list of strings"}
            raise ApiError(
                400, f"`{key}` must be {what.get(key, 'a non-empty string')}", param=key, code="invalid_value"
            )
    if len(asked) > 1:
        names = ", ".join(f"`{k}`" for k, _ in asked)
        raise ApiError(400, f"give one structured-output parameter, not {names}", param=asked[1][0])
    return asked[0][1] if asked else None


def logit_bias(lb):
    """OpenAI's `logit_bias` ({token id: bias in [-100, 100]}) as {id: bias}; the backend checks the ids."""
    if lb is None:
        return {}
    if not isinstance(lb, dict):
        raise ApiError(400, "`logit_bias` must map token ids to biases", param="logit_bias", code="invalid_value")
    out = {}
    for k, v in lb.items():
        try:
            tid = int(k)
        except (TypeError, ValueError):
            tid = -1
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and -100 <= v <= 100
        if tid < 0 or tid >= 2**31 or not ok:
            raise ApiError(
                400,
                f"`logit_bias` maps token ids to numbers in [-100, 100]; got {k!r}: {v!r}",
                param="logit_bias",
                code="invalid_value",
            )
        out[tid] = float(v)
    if len(out) > 300:
        raise ApiError(400, "`logit_bias` takes at most 300 token ids", param="logit_bias", code="invalid_value")
    return out


class Req:
    """A validated request: its Triton inputs and how to shape the answer."""

    inputs = ()
    stream = False
    include_usage = False
    logprobs = False
    top = 0  # alternatives per position
    echo = None  # completions' `echo`: the prompt, put in front of the text
    prompt_logprobs = False  # with echo and logprobs: the prompt tokens' log-probs come first
    max_tokens = None
    seed = None
    n = 1  # choices returned
    best_of = 1  # candidates generated (the n with the highest cumulative log-prob are returned)

    def inputs_for(self, i):
        """Candidate i's inputs: its seed is `seed + i`; only the first computes the prompt's log-probs (the
        others start after it and find the prompt in the prefix cache)."""
        extra = []
        if self.seed is not None:
            extra.append(_tensor("seed", np.array([[(self.seed + i) % 2**64]], dtype=np.uint64), "UINT64"))
        if self.prompt_logprobs and i == 0:
            extra.append(_tensor("return_prompt_log_probs", np.array([[True]], dtype=bool), "BOOL"))
        return list(self.inputs) + extra


def _tensor(name, arr, dtype):
    t = grpcclient.InferInput(name, list(arr.shape), dtype)
    t.set_data_from_numpy(arr)
    return t


def triton_inputs(body, chat):
    """Validates the OpenAI parameters and builds the Triton inputs; refuses what the backend lacks."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "`model` is required", param="model", code="missing_required_parameter")
    if model != CFG["model"]:
        raise ApiError(
            404,
            f"The model `{model}` does not exist; this server serves `{CFG['model']}`",
            param="model",
            code="model_not_found",
        )
    n = _number(body, "n", 1, MAX_CHOICES, integer=True) or 1
    if chat and body.get("best_of") not in (None, 1):
        raise ApiError(400, "`best_of` is a completions parameter", param="best_of", code="unsupported_parameter")
    best_of = _number(body, "best_of", 1, MAX_CHOICES, integer=True) or n
    if best_of < n:
        raise ApiError(400, f"`best_of` ({best_of}) must be at least `n` ({n})", param="best_of", code="invalid_value")
    if best_of > n and body.get("stream"):
        raise ApiError(400, "`best_of` > `n` cannot be streamed", param="best_of", code="invalid_value")
    for key in ("tools", "functions", "suffix"):
        if body.get(key):
            raise ApiError(400, f"`{key}` is not supported by this server", param=key, code="unsupported_parameter")
    echo = body.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise ApiError(400, "`echo` must be a boolean", param="echo", code="invalid_value")
    if echo and chat:
        raise ApiError(400, "`echo` is a completions parameter", param="echo", code="unsupported_parameter")
    guide = guided_decoding(body)
    bias = logit_bias(body.get("logit_bias"))
    # Log-probs: each chosen token's and, with top_logprobs (chat) / logprobs: k (completions), the k likeliest.
    if chat:
        logprobs = body.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise ApiError(400, "`logprobs` must be a boolean", param="logprobs", code="invalid_value")
        top = _number(body, "top_logprobs", 0, 20, integer=True) or 0
        if top and not logprobs:
            raise ApiError(400, "`top_logprobs` needs `logprobs: true`", param="top_logprobs", code="invalid_value")
        logprobs = bool(logprobs)
    else:
        top = _number(body, "logprobs", 0, 20, integer=True)
        logprobs = top is not None
        top = top or 0

    inputs = []
    req = Req()

    def add(name, arr, dtype):
        inputs.append(_tensor(name, arr, dtype))

    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ApiError(400, "`messages` must be a non-empty list", param="messages", code="invalid_value")
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise ApiError(400, f"`messages[{i}]` must be an object with a `role`", param=f"messages[{i}]")
            if m["role"] not in ("system", "user", "assistant", "developer"):
                raise ApiError(
                    400,
                    f"`messages[{i}].role` `{m['role']}` is not supported (system, user, assistant)",
                    param=f"messages[{i}].role",
                    code="invalid_value",
                )
        turns = [
            {"role": "system" if m["role"] == "developer" else m["role"], "content": m.get("content")} for m in msgs
        ]
        add("messages", np.array([[json.dumps(turns).encode()]], dtype=np.object_), "BYTES")
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(
                400, "`prompt` must be a string (or a list of one string)", param="prompt", code="invalid_value"
            )
        if not prompt:
            raise ApiError(400, "`prompt` is empty", param="prompt", code="invalid_value")
        add("text_input", np.array([[prompt.encode()]], dtype=np.object_), "BYTES")
        if echo:
            req.echo = prompt
            req.prompt_logprobs = logprobs

    max_tokens = (
        body.get("max_completion_tokens")
        if chat and body.get("max_completion_tokens") is not None
        else body.get("max_tokens")
    )
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    if max_tokens is not None:
        # max_tokens 0 with echo scores the prompt alone (evaluation harnesses): one token is made and dropped.
        _number({key: max_tokens}, key, 0 if echo else 1, 2**31 - 1, integer=True)
        req.max_tokens = max_tokens
        add("max_tokens", np.array([[max(max_tokens, 1)]], dtype=np.int32), "INT32")
    temperature = _number(body, "temperature", 0.0, 2.0)
    top_p = _number(body, "top_p", 0.0, 1.0)
    # OpenAI's default temperature is 1; top_p 0 means "only the top token": greedy.
    temperature = 1.0 if temperature is None else float(temperature)
    if top_p is not None and top_p == 0:
        temperature = 0.0
    add("temperature", np.array([[temperature]], dtype=np.float32), "FP32")
    if top_p is not None and 0 < top_p < 1:
        add("top_p", np.array([[top_p]], dtype=np.float32), "FP32")
    for k in ("presence_penalty", "frequency_penalty"):
        v = _number(body, k, -2.0, 2.0)
        if v:
            add(k, np.array([[v]], dtype=np.float32), "FP32")
    seed = body.get("seed")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not (-(2**63) <= seed < 2**64):
            raise ApiError(400, f"`seed` must be an integer, got {seed!r}", param="seed", code="invalid_value")
        req.seed = seed % 2**64
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ApiError(400, "`stop` must be a string or a list of strings", param="stop", code="invalid_value")
        stops = [s for s in stops if s]
        if stops:
            add("stop_words", np.array([[s.encode() for s in stops]], dtype=np.object_), "BYTES")
    # Extensions vLLM's OpenAI server also takes: top_k, ignore_eos, min_tokens, repetition_penalty.
    top_k = _number(body, "top_k", 0, 2**31 - 1, integer=True)
    if top_k:
        add("top_k", np.array([[top_k]], dtype=np.int64), "INT64")
    min_tokens = _number(body, "min_tokens", 0, 2**31 - 1, integer=True)
    if min_tokens:
        add("min_tokens", np.array([[min_tokens]], dtype=np.int32), "INT32")
    rep = _number(body, "repetition_penalty", 1e-6, 100.0)
    if rep is not None:
        add("repetition_penalty", np.array([[rep]], dtype=np.float32), "FP32")
    if body.get("ignore_eos") is not None:
        if not isinstance(body["ignore_eos"], bool):
            raise ApiError(400, "`ignore_eos` must be a boolean", param="ignore_eos", code="invalid_value")
        add("ignore_eos", np.array([[body["ignore_eos"]]], dtype=bool), "BOOL")
    if guide is not None:
        add("guided_decoding_guide_type", np.array([[guide[0].encode()]], dtype=np.object_), "BYTES")
        add("guided_decoding_guide", np.array([[guide[1].encode()]], dtype=np.object_), "BYTES")
    if top:
        add("top_logprobs", np.array([[top]], dtype=np.int32), "INT32")
    if bias:
        add("logit_bias_ids", np.array([list(bias)], dtype=np.int32), "INT32")
        add("logit_bias_values", np.array([list(bias.values())], dtype=np.float32), "FP32")
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise ApiError(400, "`stream` must be a boolean", param="stream", code="invalid_value")
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise ApiError(400, "`stream_options` must be an object", param="stream_options", code="invalid_value")
    if so is not None and not stream:
        raise ApiError(
            400, "`stream_options` is only allowed with `stream: true`", param="stream_options", code="invalid_value"
        )
    if stream and req.max_tokens == 0:
        raise ApiError(400, "`max_tokens` 0 (scoring the prompt) needs `stream: false`", param="max_tokens")
    req.inputs, req.stream, req.logprobs, req.top = inputs, bool(stream), logprobs, top
    req.n, req.best_of = n, best_of
    req.include_usage = bool((so or {}).get("include_usage"))
    return req


# ---- the Triton stream --------------------------------------------------------------------------------------


def _texts(arr):
    return [t.decode("utf-8", "replace") for t in arr]


def _tops(toks, lps):
    """One position's alternatives as (text, log-prob) pairs, padding (log-prob -inf) dropped."""
    return [(t, lp) for t, lp in zip(_texts(toks), lps.tolist()) if lp != float("-inf")]


class Backend:
    """One request on one gRPC stream; yields (text delta, finish_reason or "", output tokens in it, their
    (text, log-prob, alternatives) when log-probs are asked for). With echo and log-probs, `prompt_lps` holds the
    prompt tokens' (text, log-prob or None, alternatives) once the first answer is in."""

    def __init__(self, req: Req, index=0):
        self.req, self.index = req, index
        self.cum_logprob = 0.0
        self.done = asyncio.Event()
        self.call = None
        self.final = False
        self.prompt_tokens = 0
        self.prompt_lps = None

    async def _requests(self):
        names = ["text_output", "finish_reason", "num_input_tokens", "num_output_tokens"]
        if self.req.logprobs:
            names += ["output_tokens", "output_log_probs"]
            if self.req.top:
                names += ["output_top_log_probs", "output_top_tokens"]
        if self.req.best_of > self.req.n:
            names += ["cum_log_probs"]
        if self.req.prompt_logprobs and self.index == 0:
            names += ["prompt_log_probs", "prompt_tokens"]
            if self.req.top:
                names += ["prompt_top_log_probs", "prompt_top_tokens"]
        outs = [grpcclient.InferRequestedOutput(n) for n in names]
        yield {
            "model_name": CFG["model"] + "_stream",
            "inputs": self.req.inputs_for(self.index),
            "outputs": outs,
            "request_id": uuid.uuid4().hex,
            "parameters": {"triton_enable_empty_final_response": True},
        }
        await self.done.wait()  # keep the request side open until the answer is complete (see loadtest.py)

    async def chunks(self):
        self.call = client().stream_infer(self._requests())
        try:
            async for result, error in self.call:
                if error is not None:
                    self.final = True
                    raise from_triton(error)
                resp = result.get_response()
                final = resp.parameters["triton_final_response"].bool_param
                text = result.as_numpy("text_output")
                if text is not None:
                    self.prompt_tokens = int(result.as_numpy("num_input_tokens")[0, 0])
                    reason = result.as_numpy("finish_reason")[0, 0].decode()
                    k = int(result.as_numpy("num_output_tokens")[0, 0])
                    lps = None
                    if self.req.logprobs:
                        toks = _texts(result.as_numpy("output_tokens")[0, :k])
                        vals = result.as_numpy("output_log_probs")[0, :k].tolist()
                        tops = [[]] * k
                        if self.req.top and k:
                            tt, tl = result.as_numpy("output_top_tokens"), result.as_numpy("output_top_log_probs")
                            tops = [_tops(tt[0, j], tl[0, j]) for j in range(k)]
                        lps = list(zip(toks, vals, tops))
                    cum = result.as_numpy("cum_log_probs") if self.req.best_of > self.req.n else None
                    if cum is not None:
                        self.cum_logprob = float(cum[0, 0])
                    p = result.as_numpy("prompt_log_probs") if self.req.prompt_logprobs and self.index == 0 else None
                    if p is not None and self.prompt_lps is None:
                        toks, vals = _texts(result.as_numpy("prompt_tokens")[0]), p[0].tolist()
                        tops = [[]] * len(toks)
                        if self.req.top:
                            tt, tl = result.as_numpy("prompt_top_tokens"), result.as_numpy("prompt_top_log_probs")
                            tops = [_tops(tt[0, j], tl[0, j]) for j in range(len(toks))]
                        vals = [None if v != v else v for v in vals]  # NaN: the first token, nothing before it
                        self.prompt_lps = list(zip(toks, vals, tops))
                    yield text[0, 0].decode(), reason, k, lps
                if final:
                    self.final = True
                    self.done.set()
        except grpc.RpcError as e:  # the stream itself failed (tritonserver unreachable, gone, ...)
            self.final = True
            raise from_triton(InferenceServerException(msg=e.details(), status=str(e.code())))
        finally:
            self.done.set()
            if not self.final:
                # Client gone or frontend error mid-stream: cancel, so the backend aborts the request.
                self.call.cancel()


def chat_logprobs(items):
    def entry(t, lp):
        return {"token": t, "logprob": lp, "bytes": list(t.encode())}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(*a) for a in top]} for t, lp, top in items]}


def completion_logprobs(items, offset, top):
    """OpenAI's legacy completions logprobs; `text_offset` counts characters from `offset`; `top_logprobs` is a
    {text: log-prob} per position with `logprobs` k > 0 (None for a prompt's first token)."""
    offsets, pos = [], offset
    for t, _, _ in items:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": [t for t, _, _ in items],
        "token_logprobs": [lp for _, lp, _ in items],
        "top_logprobs": [None if lp is None else dict(alts) for _, lp, alts in items] if top else None,
        "text_offset": offsets,
    }


def finish(reason):
    return "length" if reason == "length" else "stop"


def usage(prompt, completion):
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def until_disconnect(request: Request, aw):
    """Awaits `aw`; a client that disconnects meanwhile cancels it (and so its backend request): 499."""
    task = asyncio.ensure_future(aw)
    while not (await asyncio.wait({task}, timeout=0.05))[0]:
        if await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ApiError(499, "the client disconnected", etype="cancelled")
    return task.result()


class Choice:
    """One candidate's answer as it arrives."""

    def __init__(self, be: Backend):
        self.be = be
        self.it = be.chunks()
        self.text, self.reason, self.completion, self.items = [], "", 0, []

    def add(self, chunk):
        delta, r, k, lps = chunk
        self.text.append(delta)
        self.completion += k
        self.reason = r or self.reason
        self.items.extend(lps or [])

    async def rest(self):
        async for chunk in self.it:
            self.add(chunk)


async def all_or_none(coros):
    """Runs the coroutines together; the first to fail cancels the others and its error is raised."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def first_answer(c: Choice):
    """The candidate's first answer (None if it ends without one)."""
    try:
        return await c.it.__anext__()
    except StopAsyncIteration:
        return None


async def handle(request: Request, chat: bool):
    require_api_key(request)
    try:
        body = await request.json()
    except Exception:
        raise ApiError(400, "the request body is not valid JSON")
    req = triton_inputs(body, chat)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    # Candidate 0 goes first; the others start once it has answered, so its prompt is in the prefix cache and
    # computed once.
    cands = [Choice(Backend(req, i)) for i in range(req.best_of)]
    be = cands[0].be
    scoring = req.max_tokens == 0  # echo with max_tokens 0: the prompt's log-probs, the one token dropped

    def logprobs_of(items, offset, prompt=None):
        if not req.logprobs:
            return None
        if chat:
            return chat_logprobs(items)
        if prompt is not None:
            return _merge(completion_logprobs(prompt, 0, req.top), completion_logprobs(items, offset, req.top))
        return completion_logprobs(items, offset, req.top)

    if not req.stream:

        async def collect():
            first = await first_answer(cands[0])
            if first is not None:
                cands[0].add(first)
            await all_or_none([c.rest() for c in cands])

        # A client that gives up on a unary request (a timeout, a closed connection) cancels it too.
        try:
            await until_disconnect(request, collect())
        except InferenceServerException as e:
            raise from_triton(e)
        completion = sum(c.completion for c in cands)
        if scoring:
            for c in cands:
                c.text, c.items, c.reason = [], [], "length"
            completion = 0
        best = cands
        if req.best_of > req.n:
            best = sorted(cands, key=lambda c: -c.be.cum_logprob)[: req.n]
        choices = []
        for i, c in enumerate(best):
            content = "".join(c.text)
            prompt_items = be.prompt_lps if req.echo is not None and req.prompt_logprobs else None
            lp = logprobs_of(c.items, len(req.echo or ""), prompt_items)
            choice = {"index": i, "finish_reason": finish(c.reason), "logprobs": lp}
            text = (req.echo or "") + content
            choice.update({"message": {"role": "assistant", "content": content}} if chat else {"text": text})
            choices.append(choice)
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": CFG["model"],
            "choices": choices,
            "usage": usage(be.prompt_tokens, completion),
        }

    # The first answer is awaited before the HTTP status goes out, so a refused request gets its error status;
    # a client that leaves meanwhile (still queued, say) cancels it.
    try:
        first = await until_disconnect(request, first_answer(cands[0]))
    except InferenceServerException as e:
        raise from_triton(e)
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"

    def event(index, delta, reason=None, usage_=None, choices=True, lp=None):
        d = {"id": rid, "object": chunk_obj, "created": created, "model": CFG["model"]}
        if choices:
            c = {"index": index, "finish_reason": reason, "logprobs": lp}
            c.update({"delta": delta} if chat else {"text": delta})
            d["choices"] = [c]
        else:
            d["choices"] = []
        if req.include_usage:
            d["usage"] = usage_
        return f"data: {json.dumps(d)}\n\n"

    async def pump(i, c: Choice, queue: asyncio.Queue, first):
        """Candidate i's events onto the queue, its finish event last (run_all ends the queue with None)."""
        reason, offset = "", 0
        if chat:
            await queue.put(event(i, {"role": "assistant", "content": ""}))
        if req.echo is not None:
            prompt = be.prompt_lps if req.prompt_logprobs else None
            lp = logprobs_of([], 0, prompt) if prompt is not None else None
            await queue.put(event(i, req.echo, lp=lp))
            offset = len(req.echo)
        pending = [first] if first is not None else []
        while True:
            if pending:
                chunk = pending.pop()
            else:
                try:
                    chunk = await c.it.__anext__()
                except StopAsyncIteration:
                    break
            delta, r, k, lps = chunk
            c.completion += k
            reason = r or reason
            lp = None
            if req.logprobs and lps:
                lp = logprobs_of(lps, offset)
            offset += sum(len(t) for t, _, _ in lps or [])
            if delta or lp:
                await queue.put(event(i, {"content": delta} if chat else delta, lp=lp))
        await queue.put(event(i, {} if chat else "", finish(reason)))

    async def sse():
        queue = asyncio.Queue()

        async def run_all():
            try:
                await all_or_none(
                    [pump(0, cands[0], queue, first)] + [later(i, c, queue) for i, c in enumerate(cands) if i]
                )
                await queue.put(None)
            except Exception as e:  # noqa: BLE001 - handed to the stream below, which reports it
                await queue.put(e)

        runner = asyncio.ensure_future(run_all())
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
            if req.include_usage:
                completion = sum(c.completion for c in cands)
                yield event(0, None, usage_=usage(be.prompt_tokens, completion), choices=False)
            yield "data: [DONE]\n\n"
        except ApiError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        except InferenceServerException as e:
            yield f"data: {json.dumps(from_triton(e).body())}\n\n"
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            for c in cands:
                await c.it.aclose()  # cancels the backend request if it has not finished (client disconnect)

    async def later(i, c, queue):
        await pump(i, c, queue, await first_answer(c))

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _merge(a, b):
    """Completions logprobs of the echoed prompt followed by the completion's."""
    out = {k: a[k] + b[k] for k in ("tokens", "token_logprobs", "text_offset")}
    out["top_logprobs"] = a["top_logprobs"] + b["top_logprobs"] if a["top_logprobs"] is not None else None
    return out


ERRORS = error_responses(400, 401, 404, 429, 499, 503)


@app.post("/v1/chat/completions", openapi_extra=request_body(CHAT_REQUEST), responses=ERRORS)
async def chat_completions(request: Request):
    return await handle(request, chat=True)


@app.post("/v1/completions", openapi_extra=request_body(COMPLETION_REQUEST), responses=ERRORS)
async def completions(request: Request):
    return await handle(request, chat=False)


@app.get("/v1/models", responses=error_responses(401))
async def models(request: Request):
    require_api_key(request)
    return {
        "object": "list",
        "data": [{"id": CFG["model"], "object": "model", "created": CFG["created"], "owned_by": "triton-llama"}],
    }


@app.get("/v1/models/{name}", responses=error_responses(401, 404))
async def model(name: str, request: Request):
    require_api_key(request)
    if name != CFG["model"]:
        raise ApiError(404, f"The model `{name}` does not exist", param="model", code="model_not_found")
    return {"id": name, "object": "model", "created": CFG["created"], "owned_by": "triton-llama"}


@app.get("/health/ready")
async def ready():
    """Follows Triton's: its server readiness (false while loading and draining) and the stream model's."""
    try:
        c = client()
        ok = await c.is_server_ready() and await c.is_model_ready(CFG["model"] + "_stream")
    except Exception:  # noqa: BLE001 - any failure to ask (server down, starting, shutting down) is "not ready"
        ok = False
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@app.get("/health/live")
async def live():
    """The frontend process answers (whatever Triton's state)."""
    return JSONResponse({"live": True})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grpc_url", default="localhost:8001", help="tritonserver's gRPC endpoint")
    p.add_argument("--model", default="llama", help="Triton model name (requests go to <model>_stream)")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument(
        "--api_key",
        default=os.environ.get("TRITON_LLAMA_API_KEY") or None,
        help="require `Authorization: Bearer KEY` on every /v1 route (default: $TRITON_LLAMA_API_KEY; none: open)",
    )
    a = p.parse_args(argv)
    CFG.update(grpc_url=a.grpc_url, model=a.model, api_key=a.api_key)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()
