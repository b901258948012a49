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
    n = body.get("n")
    if n is not None and n != 1:
        raise ApiError(400, "only `n` = 1 is supported (one choice per request)", param="n", code="unsupported_value")
    if body.get("best_of") not in (None, 1):
        raise ApiError(400, "`best_of` other than 1 is not supported", param="best_of", code="unsupported_value")
    for key in ("tools", "functions", "suffix"):
        if body.get(key):
            raise ApiError(400, f"`{key}` is not supported by this server", param=key, code="unsupported_parameter")
    if body.get("echo"):
        raise ApiError(400, "`echo` is not supported by this server", param="echo", code="unsupported_parameter")
    guide = guided_decoding(body)
    bias = logit_bias(body.get("logit_bias"))
    # Log-probs: the backend returns each chosen token's text and log-prob, not the top alternatives.
    if chat:
        logprobs = body.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise ApiError(400, "`logprobs` must be a boolean", param="logprobs", code="invalid_value")
        top = _number(body, "top_logprobs", 0, 20, integer=True)
        if top and not logprobs:
            raise ApiError(400, "`top_logprobs` needs `logprobs: true`", param="top_logprobs", code="invalid_value")
        if top:
            raise ApiError(
                400,
                "`top_logprobs` > 0 is not supported: the backend returns the chosen token's log-prob "
                "only, not the top alternatives",
                param="top_logprobs",
                code="unsupported_value",
            )
        logprobs = bool(logprobs)
    else:
        top = _number(body, "logprobs", 0, 5, integer=True)
        if top:
            raise ApiError(
                400,
                "`logprobs` > 0 is not supported: the backend returns the chosen token's log-prob only, "
                "not the top alternatives (use 0)",
                param="logprobs",
                code="unsupported_value",
            )
        logprobs = top == 0

    inputs = []

    def add(name, arr, dtype):
        t = grpcclient.InferInput(name, list(arr.shape), dtype)
        t.set_data_from_numpy(arr)
        inputs.append(t)

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

    max_tokens = (
        body.get("max_completion_tokens")
        if chat and body.get("max_completion_tokens") is not None
        else body.get("max_tokens")
    )
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    if max_tokens is not None:
        _number({key: max_tokens}, key, 1, 2**31 - 1, integer=True)
        add("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32")
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
        add("seed", np.array([[seed % 2**64]], dtype=np.uint64), "UINT64")
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
    include_usage = bool((so or {}).get("include_usage"))
    return inputs, bool(stream), include_usage, logprobs


# ---- the Triton stream --------------------------------------------------------------------------------------


class Backend:
    """One request on one gRPC stream; yields (text delta, finish_reason or "", output tokens in it)."""

    def __init__(self, inputs, logprobs=False):
        self.inputs = inputs
        self.logprobs = logprobs
        self.done = asyncio.Event()
        self.call = None
        self.final = False
        self.prompt_tokens = 0

    async def _requests(self):
        names = ["text_output", "finish_reason", "num_input_tokens", "num_output_tokens"]
        if self.logprobs:
            names += ["output_tokens", "output_log_probs"]
        outs = [grpcclient.InferRequestedOutput(n) for n in names]
        yield {
            "model_name": CFG["model"] + "_stream",
            "inputs": self.inputs,
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
                    if self.logprobs:
                        toks = [t.decode("utf-8", "replace") for t in result.as_numpy("output_tokens")[0, :k]]
                        lps = list(zip(toks, result.as_numpy("output_log_probs")[0, :k].tolist()))
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


def chat_logprobs(pairs):
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode()), "top_logprobs": []} for t, lp in pairs]}


def completion_logprobs(pairs, offset):
    """OpenAI's legacy completions logprobs; `text_offset` counts characters from `offset`."""
    offsets, pos = [], offset
    for t, _ in pairs:
        offsets.append(pos)
        pos += len(t)
    return {
        "tokens": [t for t, _ in pairs],
        "token_logprobs": [lp for _, lp in pairs],
        "top_logprobs": None,
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


async def handle(request: Request, chat: bool):
    require_api_key(request)
    try:
        body = await request.json()
    except Exception:
        raise ApiError(400, "the request body is not valid JSON")
    inputs, stream, include_usage, logprobs = triton_inputs(body, chat)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    be = Backend(inputs, logprobs)
    it = be.chunks()

    if not stream:
        text, reason, completion, pairs = [], "", 0, []

        async def collect():
            nonlocal reason, completion
            async for delta, r, k, lps in it:
                text.append(delta)
                completion += k
                reason = r or reason
                pairs.extend(lps or [])

        # A client that gives up on a unary request (a timeout, a closed connection) cancels it too.
        try:
            await until_disconnect(request, collect())
        except InferenceServerException as e:
            raise from_triton(e)
        content = "".join(text)
        lp = (chat_logprobs(pairs) if chat else completion_logprobs(pairs, 0)) if logprobs else None
        choice = {"index": 0, "finish_reason": finish(reason), "logprobs": lp}
        choice.update({"message": {"role": "assistant", "content": content}} if chat else {"text": content})
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": CFG["model"],
            "choices": [choice],
            "usage": usage(be.prompt_tokens, completion),
        }

    # The first answer is awaited before the HTTP status goes out, so a refused request gets its error status;
    # a client that leaves meanwhile (still queued, say) cancels it.
    try:
        first = await until_disconnect(request, it.__anext__())
    except StopAsyncIteration:
        first = None
    except InferenceServerException as e:
        raise from_triton(e)
    chunk_obj = "chat.completion.chunk" if chat else "text_completion"

    def event(delta, reason=None, usage_=None, choices=True, lp=None):
        d = {"id": rid, "object": chunk_obj, "created": created, "model": CFG["model"]}
        if choices:
            c = {"index": 0, "finish_reason": reason, "logprobs": lp}
            c.update({"delta": delta} if chat else {"text": delta})
            d["choices"] = [c]
        else:
            d["choices"] = []
        if include_usage:
            d["usage"] = usage_
        return f"data: {json.dumps(d)}\n\n"

    async def sse():
        completion, reason, offset = 0, "", 0
        try:
            if chat:
                yield event({"role": "assistant", "content": ""})
            pending = [first] if first is not None else []
            while True:
                if pending:
                    delta, r, k, lps = pending.pop()
                else:
                    try:
                        delta, r, k, lps = await it.__anext__()
                    except StopAsyncIteration:
                        break
                completion += k
                reason = r or reason
                lp = None
                if logprobs and lps:
                    lp = chat_logprobs(lps) if chat else completion_logprobs(lps, offset)
                    offset += sum(len(t) for t, _ in lps)
                if delta or lp:
                    yield event({"content": delta} if chat else delta, lp=lp)
            yield event({} if chat else "", finish(reason))
            if include_usage:
                yield event(None, usage_=usage(be.prompt_tokens, completion), choices=False)
            yield "data: [DONE]\n\n"
        except ApiError as e:
            yield f"data: {json.dumps(e.body())}\n\n"
        except InferenceServerException as e:
            yield f"data: {json.dumps(from_triton(e).body())}\n\n"
        finally:
            await it.aclose()  # cancels the backend request if it has not finished (client disconnect)

    return StreamingResponse(sse(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


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
