"""A bench row served by a running OpenAI-compatible engine: ``-p url:http://host:port/v1[model=NAME]``.

The row sends the bench's prompts to the server (streaming, greedy, ``max_tokens`` = the run's
``-n``) and measures them by dlm's rules: the answer's text is re-tokenised by the bench's model
(``-m``) to count generated tokens, TTFT is the arrival of the first text in the stream, decode
time is the rest, and agreement compares the text with the first baseline's. Forward passes,
memory and weight traffic are the server's own: unknown here, shown as such (never estimated).

Syntax of one ``-p`` item (the list is split at commas outside brackets and quotes)::

    url:URL[KEY=VALUE,KEY=VALUE,...]

URL is the API's base (what the openai client calls ``base_url``, e.g. ``http://127.0.0.1:8000/v1``;
an IPv6 host in brackets, ``http://[::1]:8000/v1``, is kept whole). The keys: ``model`` (the served
model's name; default: the one the server lists), ``extra`` (a JSON object merged into every
request body, e.g. ``{"profile":"speedy"}`` for ``dlm serve``), ``api`` (``chat`` or ``completions``;
default: chat, or completions with ``--no-chat-template``), ``name`` (the row's label; default
``url:HOST:PORT``). An API key comes from ``DLM_BENCH_API_KEY``, never from the URL.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlsplit

from ..errors import DlmError, UsageError

PREFIX = "url:"
KEYS = ("model", "extra", "api", "name")
API_KEY_ENV = "DLM_BENCH_API_KEY"
CONNECT_SECONDS = 10.0
READ_SECONDS = 600.0  # one answer of a slow engine; a longer silence is a failure of the row


def is_remote(item: str) -> bool:
    return item.startswith(PREFIX)


class RemoteFailed(DlmError):
    """A remote row could not be measured: the server is unreachable, answered an error or cut a stream."""


@dataclass
class RemoteDone:
    """One prompt's answer from a server, as the bench counts it (a local row's ``Done`` in part)."""

    text: str
    tokens: list[int]
    seconds: float
    ttft_seconds: Optional[float]
    finish_reason: Optional[str]
    nfe: Optional[int] = None  # the server's forwards: unknown, as are its drafts
    draft_nfe: Optional[int] = None
    drafted: Optional[int] = None
    accepted: Optional[int] = None


@dataclass
class Remote:
    """One URL row: where, which model, what else goes into each request body."""

    name: str
    url: str  # the API's base, without credentials or a trailing slash
    model: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)
    api: Optional[str] = None  # chat or completions; None: as the bench's chat template
    strategy: str = "remote"
    _client: Any = None

    # -- before the run ---------------------------------------------------------------------
    def client(self) -> Any:
        if self._client is None:
            import openai

            # The openai client wants a key; a server without one ignores it.
            self._client = openai.OpenAI(base_url=self.url, api_key=os.environ.get(API_KEY_ENV) or "unused",
                                         max_retries=0, timeout=openai.Timeout(READ_SECONDS, connect=CONNECT_SECONDS))
        return self._client

    def probe(self) -> None:
        """Reach the server and settle the model: the one listed, or the named one checked against the list."""
        import openai

        try:
            served = [m.id for m in self.client().models.list()]
        except openai.APIStatusError as exc:
            if exc.status_code == 404:
                raise self.failed(f"GET {self.url}/models answered 404: no OpenAI API there; the URL is the API's base, "
                                  "e.g. http://HOST:PORT/v1") from None
            raise self.failed(f"GET {self.url}/models answered {self._status(exc)}") from None
        except openai.APIError as exc:
            raise self.failed(self._connection(exc)) from None
        if self.model is None:
            if len(served) > 1:
                raise self.failed(f"the server lists {len(served)} models ({', '.join(served[:8])}); name one: "
                                  f"{PREFIX}{self.url}[model=NAME]", usage=True)
            self.model = served[0] if served else None
        elif served and self.model not in served:
            raise self.failed(f"model {self.model!r} is not served there; the server lists {', '.join(served[:8])}",
                              usage=True)

    # -- the run ----------------------------------------------------------------------------
    def complete(self, prompt: Any, *, max_tokens: int, seed: int, chat: bool) -> RemoteDone:
        """One streamed, greedy answer to ``prompt`` (a BenchPrompt), timed from the request."""
        import openai

        body: dict[str, Any] = {"model": self.model or "", "max_tokens": max_tokens, "temperature": 0, "seed": seed,
                                "stream": True}
        use_chat = chat if self.api is None else self.api == "chat"
        if use_chat:
            messages = ([{"role": "system", "content": prompt.system}] if prompt.system else [])
            body["messages"] = messages + [{"role": "user", "content": prompt.prompt}]
        else:  # raw text, as dlm's own --no-chat-template encodes a system line
            body["prompt"] = f"{prompt.system}\n\n{prompt.prompt}" if prompt.system else prompt.prompt
        body.update(self.extra)
        endpoint = self.client().chat.completions if use_chat else self.client().completions
        route = "/chat/completions" if use_chat else "/completions"
        pieces: list[str] = []
        ttft = finish = None
        start = time.perf_counter()
        try:
            fields = {k: body.pop(k) for k in ("model", "max_tokens", "temperature", "seed", "stream",
                                               "messages" if use_chat else "prompt")}
            stream = endpoint.create(**fields, extra_body=body or None)
            for chunk in stream:
                for choice in chunk.choices or ():
                    text = (choice.delta.content if use_chat else choice.text) or ""
                    if text:
                        if ttft is None:
                            ttft = time.perf_counter() - start
                        pieces.append(text)
                    finish = choice.finish_reason or finish
        except openai.APIStatusError as exc:
            raise self.failed(f"POST {route} answered {self._status(exc)}") from None
        except openai.APIConnectionError as exc:
            if pieces or ttft is not None:
                raise self.failed(f"the stream of POST {route} was cut after {len(''.join(pieces))} characters "
                                  f"({self._cause(exc)})") from None
            raise self.failed(self._connection(exc)) from None
        except openai.APIError as exc:  # an error event inside the stream
            raise self.failed(f"POST {route}: the server sent an error in the stream: {exc.message}") from None
        seconds = time.perf_counter() - start
        if finish is None:
            raise self.failed(f"the stream of POST {route} ended without a finish_reason after "
                              f"{len(''.join(pieces))} characters: it was cut")
        return RemoteDone("".join(pieces), [], seconds, ttft, finish)

    # -- messages ---------------------------------------------------------------------------
    def failed(self, why: str, *, usage: bool = False) -> DlmError:
        msg = f"row {self.name}: {why}"
        return UsageError(msg) if usage else RemoteFailed(msg)

    def _connection(self, exc: Any) -> str:
        return f"cannot reach {self.url} ({self._cause(exc)}); is the server running there?"

    @staticmethod
    def _cause(exc: BaseException) -> str:
        cause = exc.__cause__ or exc.__context__
        text = str(cause) if cause is not None and str(cause) else type(exc).__name__
        return text.splitlines()[0][:200]

    @staticmethod
    def _status(exc: Any) -> str:
        body = exc.body
        msg = body.get("message") if isinstance(body, dict) else None
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            msg = body["error"].get("message")
        hint = "; the server refused the API key: set DLM_BENCH_API_KEY to it" if exc.status_code in (401, 403) else ""
        return f"{exc.status_code}" + (f": {str(msg)[:300]}" if msg else "") + hint


class Asker:
    """Sends a chunk of prompts to a remote row and counts its answers with the bench's tokenizer."""

    def __init__(self, tokenizer: Any, *, max_tokens: int, seed: int, chat: bool) -> None:
        self.tokenizer, self.max_tokens, self.seed, self.chat = tokenizer, max_tokens, seed, chat

    def __call__(self, remote: Remote, prompts: list[Any], first: int, *,
                 max_tokens: Optional[int] = None) -> tuple[list[RemoteDone], float]:
        """The answers to ``prompts`` (the bench's prompts ``first``, ``first + 1``, ...), sent at once when
        there are several (a batch); and the seconds from the first request to the last answer."""
        n = self.max_tokens if max_tokens is None else max_tokens

        def one(j: int) -> RemoteDone:
            return remote.complete(prompts[j], max_tokens=n, seed=self.seed + first + j, chat=self.chat)

        start = time.perf_counter()
        if len(prompts) == 1:
            dones = [one(0)]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(prompts)) as pool:
                dones = list(pool.map(one, range(len(prompts))))
        spent = time.perf_counter() - start
        for d in dones:
            d.tokens = list(self.tokenizer.encode(d.text, add_special_tokens=False)) if d.text else []
            if len(prompts) > 1:  # as a local batch: its seconds split evenly over its prompts
                d.seconds = spent / len(prompts)
        return dones, spent


def check_names(remotes: list[Remote], others: list[str]) -> None:
    """Every row's label is its own: two URL rows on one server (or a name= that is a profile's) need name=."""
    seen = set(others)
    for r in remotes:
        if r.name in seen:
            raise UsageError(f"-p: two rows are named {r.name!r}; give the URL row its own label with "
                             f"[name=LABEL], e.g. {PREFIX}{r.url}[name=mine]")
        seen.add(r.name)


def parse_remote(item: str) -> Remote:
    """``url:URL[KEY=VALUE,...]`` -> a Remote; refused in one line (naming the item) when malformed."""
    from .sweep import split_values

    raw = item[len(PREFIX):].strip()
    url, options = _split_options(raw)
    shown = _redacted(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"-p {PREFIX}{shown}: the URL must start with http:// or https:// and name a host, e.g. "
                         f"{PREFIX}http://127.0.0.1:8000/v1")
    if parts.username is not None or parts.password is not None:
        raise UsageError(f"-p {PREFIX}{shown}: the URL holds credentials; drop them from the URL and put the API key "
                         f"in the environment variable {API_KEY_ENV}")
    if parts.query or parts.fragment:
        raise UsageError(f"-p {PREFIX}{shown}: the URL is the API's base (e.g. http://HOST:PORT/v1), without ?query "
                         "or #fragment")
    try:
        _ = parts.port  # urllib refuses a port that is no number only when asked
    except ValueError:
        raise UsageError(f"-p {PREFIX}{shown}: the port is not a number") from None
    spec = Remote(name=f"{PREFIX}{parts.netloc}", url=url.rstrip("/"))
    for opt in split_values(options) if options.strip() else []:
        key, eq, value = opt.partition("=")
        key = key.strip()
        if not eq or key not in KEYS:
            raise UsageError(f"-p {PREFIX}{shown}[{opt}]: options are KEY=VALUE with KEY one of {', '.join(KEYS)}, "
                             f"e.g. {PREFIX}{shown}[model=NAME,extra={{\"profile\":\"speedy\"}}]")
        value = value.strip()
        if key == "extra":
            try:
                extra = json.loads(value)
            except json.JSONDecodeError as exc:
                raise UsageError(f"-p {PREFIX}{shown}: extra= is not JSON ({exc.msg} at character {exc.pos}); quote "
                                 "the whole -p value for the shell, e.g. -p 'speedy,url:URL[extra={\"k\":1}]'") from None
            if not isinstance(extra, dict):
                raise UsageError(f"-p {PREFIX}{shown}: extra= must be a JSON object, e.g. extra={{\"profile\":\"speedy\"}}")
            spec.extra.update(extra)
        elif key == "api":
            if value not in ("chat", "completions"):
                raise UsageError(f"-p {PREFIX}{shown}: api={value!r} must be chat or completions")
            spec.api = value
        elif not value:
            raise UsageError(f"-p {PREFIX}{shown}: {key}= is empty")
        else:
            setattr(spec, key, value)
    fixed = {"stream", "messages", "prompt"} & set(spec.extra)
    if fixed:
        raise UsageError(f"-p {PREFIX}{shown}: extra= may not set {', '.join(sorted(fixed))}: the bench sends them")
    return spec


def _split_options(raw: str) -> tuple[str, str]:
    """URL and the text inside its trailing ``[...]`` (an IPv6 host's brackets belong to the URL)."""
    scheme, sep, rest = raw.partition("://")
    start = len(scheme) + len(sep)
    if sep and rest.startswith("["):  # http://[::1]:8000/v1: skip the host's brackets
        close = rest.find("]")
        start += close + 1 if close >= 0 else len(rest)
    at = raw.find("[", start)
    if at < 0:
        if "]" in raw[start:]:
            raise UsageError(f"-p {PREFIX}{_redacted(raw)}: a ']' without its '['; options go in one trailing "
                             "[KEY=VALUE,...]")
        return raw, ""
    if not raw.endswith("]"):
        raise UsageError(f"-p {PREFIX}{_redacted(raw[:at])}: the options [KEY=VALUE,...] must close the item with ']' (quote "
                         "the whole -p value for the shell)")
    return raw[:at], raw[at + 1:-1]


def _redacted(url: str) -> str:
    """The URL with any user:password@ replaced, for messages."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    if "@" in host:
        host = "***@" + host.rsplit("@", 1)[1]
    return f"{scheme}{sep}{host}{slash}{path}"
