"""OpenAI request bodies -> a decoding job, and results -> OpenAI response bodies.

A request's fields map onto the profile's keys with the CLI's precedence: ``temperature``,
``top_p``, ``max_tokens`` and ``seed`` are the flags, ``extra_body={"set": [...]}`` the ``--set``
items, ``extra_body={"profile": NAME}`` the ``-p``; they are validated by :func:`dlm_cli.profiles.load`,
so a bad key gets the very line the CLI prints. A field that is absent keeps the profile's value
(greedy for every built-in profile). ``/v1/completions`` sends the prompt as raw text, as
``dlm generate --no-chat-template``; ``/v1/chat/completions`` renders the model's chat template, as
``dlm generate`` (with ``--system`` for a system message) does.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from ..errors import USAGE, DlmError
from .engine import Result

MAX_STOPS = 4  # as OpenAI's API


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                503: "overloaded_error"}.get(self.status, "server_error" if self.status >= 500 else
                                             "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def from_dlm(exc: DlmError) -> ApiError:
    return ApiError(400 if exc.exit_code == USAGE else 500, str(exc))


# Fields that would change the answer in ways dlm does not do: refused unless they hold the neutral value.
UNSUPPORTED = {
    "n": (1,), "best_of": (1,), "echo": (False,), "logprobs": (None, False), "top_logprobs": (None, 0),
    "suffix": (None, ""), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logit_bias": (None,),
    "tools": (None,), "functions": (None,), "response_format": (None,),
}


@dataclass
class Parsed:
    """What a request asks for, validated; the prompt is still text or messages."""

    profile: str | None
    sets: list[str]
    flags: dict[str, Any]
    stops: tuple[str, ...]
    stream: bool
    include_usage: bool
    steps: bool


def _number(body: dict[str, Any], name: str, *, integer: bool, lo: float, hi: float | None = None,
            lo_open: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ApiError(400, f"{name} = {value!r} must be {'an integer' if integer else 'a number'}", param=name)
    if value < lo or (lo_open and value == lo) or (hi is not None and value > hi):
        low = f"> {lo}" if lo_open else f">= {lo}"
        raise ApiError(400, f"{name} = {value!r} must be {low}" + (f" and <= {hi}" if hi is not None else ""),
                       param=name)
    return float(value) if not integer else value


def parse(body: dict[str, Any]) -> Parsed:
    """The sampling fields, the stop strings and dlm's extension (``profile``, ``set``, ``dlm_steps``)."""
    for name, neutral in UNSUPPORTED.items():
        if name in body and body[name] not in neutral and not (name == "logit_bias" and body[name] == {}):
            raise ApiError(400, f"{name} = {body[name]!r} is not supported by dlm serve (one choice per request, no "
                           "logprobs, penalties or tools); drop it", param=name)
    flags = {
        "temperature": _number(body, "temperature", integer=False, lo=0.0),
        "top_p": _number(body, "top_p", integer=False, lo=0.0, hi=1.0, lo_open=True),
        "seed": _number(body, "seed", integer=True, lo=0, hi=2**63 - 1),
    }
    cap = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    flags["max_new_tokens"] = _number(body, cap, integer=True, lo=1)
    stop = body.get("stop")
    stops: tuple[str, ...] = ()
    if isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= MAX_STOPS:
        stops = tuple(stop)
    elif stop is not None:
        raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOPS} strings", param="stop")
    profile = body.get("profile")
    if profile is not None:
        if not isinstance(profile, str) or not profile:
            raise ApiError(400, "profile must be a profile name (GET /v1/models lists the server's default)",
                           param="profile")
        if profile.endswith(".toml") or "/" in profile or "\\" in profile:
            raise ApiError(400, f"profile {profile!r}: a request names a built-in or user profile; files are "
                           "not read on a client's behalf (start the server with -p FILE.toml instead)",
                           param="profile")
    sets = body.get("set", [])
    if isinstance(sets, str):
        sets = [sets]
    if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
        raise ApiError(400, 'set must be a list of "key=value" strings, e.g. ["threshold=0.8"]', param="set")
    options = body.get("stream_options") or {}
    for flag in ("stream", "dlm_steps"):
        if not isinstance(body.get(flag, False), bool):
            raise ApiError(400, f"{flag} must be true or false", param=flag)
    return Parsed(profile, list(sets), {k: v for k, v in flags.items() if v is not None}, stops,
                  bool(body.get("stream", False)), bool(isinstance(options, dict) and options.get("include_usage")),
                  bool(body.get("dlm_steps", False)))


def prompt_text(body: dict[str, Any]) -> str | list[int]:
    """``/v1/completions``' one prompt: a string, or a list of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return prompt
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "prompt holds several prompts; dlm serve answers one per request (batch size 1): send "
                       "them one by one", param="prompt")
    raise ApiError(400, "prompt must be a non-empty string (or a list of token ids)", param="prompt")


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """The chat messages as ``{"role", "content"}`` with text content; ``developer`` is a system message."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "messages must be a non-empty list of {\"role\", \"content\"} objects", param="messages")
    out = []
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}]: role {role!r} is not one of system, developer, user, assistant",
                           param="messages")
        content = m.get("content")
        if isinstance(content, list):  # content parts: only text
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}]: only text content parts are supported", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}]: content must be a string", param="messages")
        out.append({"role": ROLES[role], "content": content})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's: the model answers it", param="messages")
    return out


# -- responses --------------------------------------------------------------------------------

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(result: Result) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def dlm_section(result: Result, settings: Any) -> dict[str, Any]:
    """dlm's own counts for the answer: the same names as ``dlm generate --json``."""
    return {"nfe": result.nfe, "steps": result.steps, "tokens_per_nfe": result.completion_tokens / result.nfe
            if result.nfe else 0.0, "seconds": result.seconds, "ttft_seconds": result.ttft_seconds,
            "profile": settings.profile, "strategy": settings.strategy, "seed": result.seed, "stats": result.stats}


def completion(chat: bool, rid: str, model: str, result: Result, settings: Any) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": result.finish_reason, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": result.text}
    else:
        choice["text"] = result.text
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": usage(result), "dlm": dlm_section(result, settings)}


def chunk(chat: bool, rid: str, model: str, *, text: str | None = None, role: bool = False,
          finish_reason: str | None = None, result: Result | None = None, settings: Any = None) -> dict[str, Any]:
    """One streamed chunk: a text delta, the opening role delta, the finish reason, or (``result``) the usage."""
    base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model}
    if result is not None:
        return {**base, "choices": [], "usage": usage(result), "dlm": dlm_section(result, settings)}
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}
    return {**base, "choices": [choice]}
