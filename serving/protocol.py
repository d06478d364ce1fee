"""The OpenAI HTTP protocol as this server speaks it: request bodies parsed and validated into dataclasses,
response and stream-chunk bodies built from decoded tokens, and OpenAI-style error bodies naming the field.

Nothing here touches a model, so every rule is testable without a server.
"""
from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

from corpora.timeline import as_utc
from serving.engine import TokenEvent
from serving.methods import Method, MethodError, parse_method

AS_OF_FORMAT = "a date YYYY-MM-DD or an ISO 8601 timestamp such as 2019-06-30T16:00:00Z"


class APIError(Exception):
    """An error answered as {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def parse_as_of(value: Any, field: str = "as_of") -> dt.datetime:
    """An aware UTC datetime from a date or timestamp string; a naive timestamp is taken as UTC."""
    if value is None:
        raise APIError(400, f"{field} is required: the date the answer must be point-in-time for "
                            f"({AS_OF_FORMAT})", field, "missing_as_of")
    if not isinstance(value, str):
        raise APIError(400, f"{field} must be a string ({AS_OF_FORMAT}), got {type(value).__name__}", field,
                       "invalid_as_of")
    try:
        return as_utc(value)
    except ValueError:
        raise APIError(400, f"{field} {value!r} is malformed; expected {AS_OF_FORMAT}", field, "invalid_as_of") from None


@dataclass
class Sampling:
    """What every generation request shares (completions and chat)."""

    model: str
    as_of: dt.datetime
    method: Method
    max_tokens: int
    temperature: float
    top_k: int | None
    stop: tuple[str, ...]
    logprobs: int | None  # top alternatives per token; None: none asked for
    seed: int | None
    stream: bool
    include_usage: bool


@dataclass
class CompletionRequest:
    prompts: list[str]
    sampling: Sampling


@dataclass
class ChatRequest:
    messages: list[dict]
    sampling: Sampling


COMMON = {"model", "as_of", "method", "max_tokens", "temperature", "top_k", "stop", "seed", "stream",
          "stream_options", "n", "user", "top_p", "presence_penalty", "frequency_penalty"}
NO_OPS = {"n": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0}  # accepted at these values only
COMPLETION_ONLY = {"prompt", "logprobs"}
CHAT_ONLY = {"messages", "logprobs", "top_logprobs", "max_completion_tokens"}


def _number(body: dict, key: str, kind: type, low: float | None = None, high: float | None = None,
            default: Any = None):
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise APIError(400, f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}", key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise APIError(400, f"{key} must be {bounds}, got {value!r}", key)
    return kind(value)


def _sampling(body: Any, allowed: set[str], default_max_tokens: int, default_method: str | None) -> Sampling:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", None)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise APIError(400, f"unsupported parameter(s) {unknown}; this server accepts {sorted(allowed)}",
                       unknown[0], "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise APIError(400, "model is required (a name from GET /v1/models)", "model")
    as_of = parse_as_of(body.get("as_of"))
    try:
        method = parse_method(body.get("method", default_method))
    except MethodError as err:
        raise APIError(400, str(err), "method", "unknown_method") from None
    for key, neutral in NO_OPS.items():
        if body.get(key) is not None and body[key] != neutral:
            raise APIError(400, f"{key} is not supported (only {key}={neutral})", key, "unsupported_parameter")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise APIError(400, f"stop must be a non-empty string or a list of up to 4 of them, got {body.get('stop')!r}",
                       "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise APIError(400, f"stream must be true or false, got {stream!r}", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise APIError(400, f"stream_options accepts only include_usage, got {options!r}", "stream_options")
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return Sampling(model=model, as_of=as_of, method=method,
                    max_tokens=_number(body, max_key, int, 1, None, default_max_tokens),
                    temperature=_number(body, "temperature", float, 0, 2, 1.0),
                    top_k=_number(body, "top_k", int, 1, None, None), stop=tuple(stop), logprobs=None,
                    seed=_number(body, "seed", int, None, None, None), stream=stream,
                    include_usage=bool(options.get("include_usage", False)))


def parse_completion(body: Any, default_max_tokens: int = 16, default_method: str | None = None) -> CompletionRequest:
    sampling = _sampling(body, COMMON | COMPLETION_ONLY, default_max_tokens, default_method)
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise APIError(400, "prompt is required: a string or a list of strings (token-id prompts are not "
                            "accepted)", "prompt")
    if sampling.stream and len(prompts) > 1:
        raise APIError(400, "a streamed completion takes one prompt", "prompt")
    sampling.logprobs = _number(body, "logprobs", int, 0, 20, None)
    return CompletionRequest(prompts, sampling)


def parse_chat(body: Any, default_max_tokens: int = 16, default_method: str | None = None) -> ChatRequest:
    sampling = _sampling(body, COMMON | CHAT_ONLY, default_max_tokens, default_method)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages is required: a non-empty list of {role, content}", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise APIError(400, f"messages[{i}] must be an object with a string role and string content", "messages")
    wants = body.get("logprobs", False)
    if not isinstance(wants, bool):
        raise APIError(400, f"logprobs must be true or false, got {wants!r}", "logprobs")
    top = _number(body, "top_logprobs", int, 0, 20, 0)
    if top and not wants:
        raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
    sampling.logprobs = top if wants else None
    return ChatRequest([{"role": m["role"], "content": m["content"]} for m in messages], sampling)


# -- responses -------------------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def served_model(frontier: str, cutoff: str | None) -> str:
    """The name a response carries: the frontier and the vintage it was steered to."""
    return frontier if cutoff is None else f"{frontier}@{cutoff}"


def answered(events: Sequence[TokenEvent]) -> list[TokenEvent]:
    """The events of the answer's tokens (without the end-of-text token that ended it)."""
    return [e for e in events if not e.eos]


def completion_logprobs(events: Sequence[TokenEvent], offset: int = 0) -> dict:
    events = answered(events)
    tokens = [e.token for e in events]
    offsets, at = [], offset
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in events],
            "top_logprobs": [e.top_logprobs or {} for e in events], "text_offset": offsets}


def chat_logprobs(events: Sequence[TokenEvent]) -> dict:
    events = answered(events)
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": list(e.token.encode()),
                         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                          for t, v in (e.top_logprobs or {}).items()]} for e in events]}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_choice(index: int, events: Sequence[TokenEvent], logprobs: bool) -> dict:
    return {"index": index, "text": "".join(e.text for e in events),
            "finish_reason": events[-1].finish_reason if events else "length",
            "logprobs": completion_logprobs(events) if logprobs else None}


def completion_body(rid: str, model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int,
                    cutoff: str | None, method: Method) -> dict:
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices, "usage": usage(prompt_tokens, completion_tokens),
            "vintage_cutoff": cutoff, "method": method.spec}


def chat_body(rid: str, model: str, events: Sequence[TokenEvent], logprobs: bool, prompt_tokens: int,
              cutoff: str | None, method: Method) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": "".join(e.text for e in events)},
              "finish_reason": events[-1].finish_reason if events else "length",
              "logprobs": chat_logprobs(events) if logprobs else None}
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [choice], "usage": usage(prompt_tokens, len(answered(events))),
            "vintage_cutoff": cutoff, "method": method.spec}


def completion_chunk(rid: str, model: str, event: TokenEvent | None, logprobs: bool, offset: int = 0) -> dict:
    """One streamed completion chunk; `event` None: the final usage-only chunk's empty choice list."""
    choices = [] if event is None else [{"index": 0, "text": event.text, "finish_reason": event.finish_reason,
                                         "logprobs": completion_logprobs([event], offset) if logprobs else None}]
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model, "choices": choices}


def chat_chunk(rid: str, model: str, event: TokenEvent | None, logprobs: bool, first: bool = False) -> dict:
    if event is None:
        return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": []}
    delta = {"role": "assistant", "content": event.text} if first else {"content": event.text}
    choice = {"index": 0, "delta": delta, "finish_reason": event.finish_reason,
              "logprobs": chat_logprobs([event]) if logprobs else None}
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [choice]}


def sse(data: dict | str) -> str:
    """One server-sent event; the stream ends with `sse("[DONE]")`."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
