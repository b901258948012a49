"""The OpenAI-frontend mode of scripts/bench/loadtest.py (`--openai`): each client loops over /v1/completions and
/v1/chat/completions requests, streamed and unary, through the frontend that `deploy_triton.py --openai_port`
starts. Greedy completions are checked against `triton-llama generate` (the load test's reference pool); about
10% of the streams are dropped by their client after the first event (a disconnect, which cancels the request);
about 8% of the requests are bad (malformed JSON, an unknown model, an empty prompt, max_tokens beyond the
model's limit) and must be refused with OpenAI's error body and the right status. Every other request must end
with a complete answer: a finish reason, usage, and for a stream exactly one finish event then `data: [DONE]`."""

import asyncio
import json
import time

import httpx2 as httpx  # the HTTP client the pinned openai SDK is built on

# kind: (status the frontend answers, whether the backend sees the request and counts it `rejected`)
BAD = {
    "malformed_json": (400, False),
    "unknown_model": (404, False),
    "empty_prompt": (400, False),
    "absurd_max_tokens": (400, True),
}


def is_error_body(text):
    try:
        e = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(e, dict) and {"message", "type", "param", "code"} <= e.keys() and bool(e["message"])


def good_request(st, rng, make_prompt):
    """(path, body, greedy reference key or None, chat)."""
    chat = rng.random() < 0.3
    if not chat and rng.random() < 0.6:
        key = rng.choice(list(st.refs))
        prompt, max_tokens = key
    else:
        key, prompt, max_tokens = None, make_prompt(rng, rng.randint(1, 150)), rng.randint(1, 48)
    body = {"model": st.a.model, "max_tokens": max_tokens}
    if key:
        body["temperature"] = 0
    else:
        body.update(temperature=1.0, seed=rng.randrange(2**32))
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return ("/v1/chat/completions" if chat else "/v1/completions"), body, key, chat


async def unary(st, path, body, chat):
    r = await st.oai.post(path, json=body)
    if r.status_code != 200:
        raise RuntimeError(f"status {r.status_code}: {r.text[:80]}")
    j = r.json()
    choice = j["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    if choice["finish_reason"] not in ("stop", "length") or j["usage"]["completion_tokens"] < 1:
        raise RuntimeError(f"incomplete answer {j}"[:120])
    return text, choice["finish_reason"], False


async def stream(st, path, body, chat, drop):
    """Returns (text, finish reason, dropped). With `drop` the client closes the response after the first content
    event (a disconnect)."""
    text, reason, done, after_done = "", None, False, 0
    async with st.oai.stream("POST", path, json=dict(body, stream=True)) as r:
        if r.status_code != 200:
            raise RuntimeError(f"status {r.status_code}: {(await r.aread())[:80]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if done:
                after_done += 1
                continue
            if line == "data: [DONE]":
                done = True
                continue
            ev = json.loads(line[6:])
            if "error" in ev:
                raise RuntimeError(f"error event {ev['error']['message'][:80]}")
            choice = ev["choices"][0]
            delta = choice["delta"].get("content") or "" if chat else choice["text"]
            if choice["finish_reason"]:
                if reason:
                    st.dup += 1
                reason = choice["finish_reason"]
            text += delta
            if drop and delta:
                return text, None, True  # leaving the block closes the connection mid-stream
    if after_done:
        st.dup += 1
    if not done or not reason:
        st.lost += 1
        raise RuntimeError(f"stream ended without {'[DONE]' if not done else 'a finish reason'}")
    return text, reason, False


async def one_good(st, rng, make_prompt):
    path, body, key, chat = good_request(st, rng, make_prompt)
    streamed = rng.random() < 0.5
    drop = streamed and rng.random() < 0.10
    proto = ("oai_chat" if chat else "oai_completion") + ("_stream" if streamed else "")
    st.sent[proto] += 1
    t0 = time.monotonic()
    try:
        coro = stream(st, path, body, chat, drop) if streamed else unary(st, path, body, chat)
        text, reason, dropped = await asyncio.wait_for(coro, st.a.request_timeout)
    except asyncio.TimeoutError:
        st.errors[f"{proto}:timeout"] += 1
        return
    except Exception as e:  # noqa: BLE001 (every failure is counted by kind, then the run fails)
        st.errors[f"{proto}:{type(e).__name__}:{str(e)[:60]}"] += 1
        return
    if dropped:
        st.cancelled += 1
        st.cancelled_rows += 1
        if key:  # what a dropped greedy stream got is the start of the full answer
            st.greedy_checked += 1
            st.mismatch += not st.refs[key].startswith(text)
        return
    st.ok += 1
    st.ok_rows += 1
    st.latencies.append(time.monotonic() - t0)
    st.finish[reason] += 1
    if key:
        st.greedy_checked += 1
        st.mismatch += st.refs[key] != text


async def one_bad(st, rng):
    kind = rng.choice(list(BAD))
    status, backend = BAD[kind]
    path, content = "/v1/completions", None
    body = {"model": st.a.model, "prompt": "Hello", "max_tokens": 8}
    if kind == "malformed_json":
        content = rng.choice([b'{"model": "', b"not json", b'{"prompt": [1, 2', b"\xff\xfe"])
    elif kind == "unknown_model":
        body["model"] = "no-such-model"
    elif kind == "empty_prompt":
        body["prompt"] = ""
    else:
        body["max_tokens"] = 2**31 - 1
    try:
        if content is not None:
            coro = st.oai.post(path, content=content, headers={"content-type": "application/json"})
        else:
            coro = st.oai.post(path, json=body)
        r = await asyncio.wait_for(coro, st.a.request_timeout)
    except Exception as e:  # noqa: BLE001
        st.errors[f"bad_{kind}:{type(e).__name__}:{str(e)[:60]}"] += 1
        return
    if r.status_code != status or not is_error_body(r.text):
        st.errors[f"bad_{kind}:{r.status_code}:{r.text[:60]}"] += 1
        return
    st.bad[f"{kind}:{status}"] += 1
    st.bad_backend += backend


async def client(st, idx, deadline, make_prompt, rng_for):
    rng = rng_for(idx)
    while time.monotonic() < deadline:
        await (one_bad(st, rng) if rng.random() < 0.08 else one_good(st, rng, make_prompt))


async def run_load(a, st, make_prompt, rng_for, rss_mb):
    """Runs the clients for a.duration seconds; returns the RSS (MB) sampled at the end of the warm-up."""
    limits = httpx.Limits(max_connections=a.clients + 8, max_keepalive_connections=a.clients + 8)
    st.oai = httpx.AsyncClient(base_url=a.openai_url, limits=limits, timeout=a.request_timeout)
    t0 = time.monotonic()
    tasks = [asyncio.create_task(client(st, i, t0 + a.duration, make_prompt, rng_for)) for i in range(a.clients)]
    await asyncio.sleep(a.warmup)
    try:
        rss_warm = rss_mb(a.pid)
    except OSError:
        rss_warm = float("nan")  # the server died: the clients' errors say so
    await asyncio.gather(*tasks)
    await st.oai.aclose()
    return rss_warm
