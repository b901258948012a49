"""The OpenAPI description of the OpenAI frontend's request bodies and errors (scripts/openai_frontend.py reads its
requests as raw JSON and validates them itself, so FastAPI cannot derive these): the fields OpenAI's API defines
for chat and text completions plus vLLM's extensions the frontend takes, with their types and ranges. The fuzz
test (tests/e2e/test_openai_fuzz.py) generates requests from it, valid ones and ones that break it."""

STOP = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}]}

COMMON = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "n": {"type": "integer", "minimum": 1, "maximum": 16},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "stop": STOP,
    "seed": {"type": "integer"},
    "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "user": {"type": "string"},
    # vLLM's extensions.
    "top_k": {"type": "integer", "minimum": 0},
    "min_tokens": {"type": "integer", "minimum": 0},
    "repetition_penalty": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
    "ignore_eos": {"type": "boolean"},
    "logit_bias": {
        "type": "object",
        "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        "propertyNames": {"pattern": "^[0-9]{1,3}$"},
        "maxProperties": 8,
    },
    # Structured output (vLLM's extension; the others, guided_json / guided_regex / guided_grammar, compile
    # arbitrary grammars and are tested on their own in tests/e2e/test_openai.py).
    "guided_choice": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 4},
}

MESSAGE = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
        "content": {"type": "string"},
        "name": {"type": "string"},
    },
}

CHAT_REQUEST = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        **COMMON,
        "messages": {"type": "array", "items": MESSAGE, "minItems": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "response_format": {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"type": "string", "enum": ["text", "json_object"]}},
        },
    },
}

COMPLETION_REQUEST = {
    "type": "object",
    "required": ["model", "prompt"],
    "properties": {
        **COMMON,
        "prompt": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 1},
            ]
        },
        "logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "echo": {"type": "boolean"},
        "best_of": {"type": "integer", "minimum": 1, "maximum": 16},
    },
}

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def request_body(schema):
    """`openapi_extra` for a route that reads `schema` as its JSON body."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def error_responses(*statuses):
    """`responses` for a route: OpenAI's error body under each status."""
    return {s: {"description": "an error", "content": {"application/json": {"schema": ERROR}}} for s in statuses}
