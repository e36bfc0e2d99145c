"""Chat templates rendered as the untrusted code they are: sandboxed, and bounded in time, size and memory.

A chat template ships with the model, so it is code from whoever published it. transformers
renders it in Jinja's immutable sandbox, which blocks attribute escapes (``cycler.__init__.__globals__``)
but not work: nested ``range`` loops run for minutes and ``'x' * 2000000000`` allocates 2 GB.
:func:`render` uses the same sandbox (transformers' globals, filters and extensions, so the text is
the one ``apply_chat_template`` gives) in a subclass with bounds:

- repetition and concatenation (``*``, ``+``), ``**``, ``%`` widths and numeric call arguments that
  would build a result past the size bound are refused before they run;
- a deadline: a trace function on the template's own frames stops any loop after :data:`DEADLINE_S`;
- the output is streamed and stopped at the size bound;
- on Linux the address space is capped for the render, so an allocation no rule above foresaw
  (a filter with a huge argument) fails with MemoryError instead of taking the machine.

Whatever stops a render, or whatever the template raises, is one :class:`~dlm_cli.errors.DlmError` line.
"""

from __future__ import annotations

import functools
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import DlmError

DEADLINE_S = 3.0
MARKUP_CHARS = 1024 * 1024  # the template's own text, on top of the message contents it repeats
MAX_TEMPLATE_CHARS = 1024 * 1024
MEMORY_HEADROOM = 1024**3
_WIDTH = re.compile(r"%[#0\- +]*(\*|\d{6,})")  # a %-format width that is computed or >= 100000


class TemplateLimit(Exception):
    """A chat template went past a bound (time, size); the message says which."""


def _sized(x: Any) -> bool:
    return isinstance(x, (str, list, tuple))


@functools.lru_cache(maxsize=1)
def _env_class() -> type:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """Jinja's immutable sandbox with the size checks of the module doc (``max_chars`` per render)."""

        intercepted_binops = frozenset({"*", "**", "+", "%"})
        max_chars = MARKUP_CHARS

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            big = self.max_chars
            if operator == "*":
                seq, n = (left, right) if isinstance(right, int) else (right, left)
                if _sized(seq) and isinstance(n, int) and len(seq) * n > big:
                    raise TemplateLimit(f"it repeats a value {n} times, past the {big}-character bound")
                if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > 4096:
                    raise TemplateLimit("it multiplies numbers of more than 4096 bits")
            elif operator == "**":
                if (isinstance(left, int) and isinstance(right, int) and abs(left) > 1
                        and right * left.bit_length() > 4096):
                    raise TemplateLimit(f"it raises a number to the power {right}, past 4096 bits")
            elif operator == "+":
                if _sized(left) and _sized(right) and len(left) + len(right) > big:
                    raise TemplateLimit(f"it concatenates values past the {big}-character bound")
            elif operator == "%" and isinstance(left, str) and _WIDTH.search(left):
                raise TemplateLimit("it formats with a computed or huge field width")
            return super().call_binop(context, operator, left, right)

        def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
            for a in (*args, *kwargs.values()):
                if isinstance(a, int) and not isinstance(a, bool) and abs(a) > self.max_chars:
                    raise TemplateLimit(f"it calls a function with the number {a}, past the {self.max_chars} bound")
            return super().call(context, obj, *args, **kwargs)

    return BoundedSandbox


@functools.lru_cache(maxsize=8)
def compile_template(source: str) -> Any:
    """The template compiled in a bounded sandbox configured like transformers' own."""
    import jinja2

    env = _env_class()(trim_blocks=True, lstrip_blocks=True, extensions=_extensions())
    base = _transformers_env()
    if base is not None:
        env.filters.update(base.filters)
        env.globals.update({k: v for k, v in base.globals.items() if k != "range"})
    else:  # pragma: no cover - a transformers without its private compile helper
        import json

        def raise_exception(message: str) -> None:
            raise jinja2.exceptions.TemplateError(message)

        env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: (
            json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys))
        env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def _transformers_env() -> Any:
    try:
        from transformers.utils.chat_template_utils import _cached_compile_jinja_template
    except ImportError:  # pragma: no cover
        return None
    return _cached_compile_jinja_template("").environment


def _extensions() -> list[type]:
    import jinja2.ext

    base = _transformers_env()
    if base is None:  # pragma: no cover
        return [jinja2.ext.loopcontrols]
    return [type(ext) for ext in base.extensions.values()]


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`TemplateLimit` inside the template's own code once ``seconds`` have passed."""
    end = time.monotonic() + seconds

    def local(frame: Any, event: str, arg: Any) -> Any:
        if time.monotonic() > end:
            raise TemplateLimit(f"it ran for more than {seconds:g} s")
        return local

    def calls(frame: Any, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename == "<template>" else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield
    finally:
        sys.settrace(previous)


def _vm_size() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@contextmanager
def _memory_cap(extra: int) -> Iterator[None]:
    """Cap the address space at its current size plus ``extra`` (Linux; elsewhere a no-op)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    used = _vm_size()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = None if used is None else used + extra
    if cap is None or (hard != resource.RLIM_INFINITY and cap > hard) or (
            soft != resource.RLIM_INFINITY and soft <= cap):
        yield
        return
    try:
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ValueError, OSError):  # pragma: no cover
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def template_source(tokenizer: Any) -> str:
    getter = getattr(tokenizer, "get_chat_template", None)
    try:
        source = getter() if getter is not None else tokenizer.chat_template
    except ValueError as exc:  # several named templates and no default
        raise DlmError(f"the model's chat template cannot be chosen ({exc}); pass --no-chat-template") from None
    if not isinstance(source, str):
        raise DlmError("the model's chat template is not text; pass --no-chat-template")
    if len(source) > MAX_TEMPLATE_CHARS:
        raise DlmError(f"the model's chat template is {len(source)} characters, more than a template needs "
                       f"({MAX_TEMPLATE_CHARS}); it is broken or hostile: pass --no-chat-template")
    return source


def render(tokenizer: Any, messages: list[dict[str, str]], *, add_generation_prompt: bool = True) -> str:
    """The chat template of ``tokenizer`` applied to ``messages``, as ``apply_chat_template`` gives it, bounded."""
    import jinja2

    template = _compile(template_source(tokenizer))
    content = sum(len(m.get("content") or "") for m in messages)
    limit = MARKUP_CHARS + 4 * content
    env = template.environment
    specials = {k: v for k, v in getattr(tokenizer, "special_tokens_map", {}).items()}
    kwargs = {**specials, "messages": [dict(m) for m in messages], "tools": None, "documents": None,
              "add_generation_prompt": add_generation_prompt}
    out: list[str] = []
    size = 0
    try:
        env.max_chars = limit
        with _memory_cap(MEMORY_HEADROOM + 16 * content), _deadline(DEADLINE_S):
            for piece in template.generate(**kwargs):
                size += len(piece)
                if size > limit:
                    raise TemplateLimit(f"its output passed {limit} characters")
                out.append(piece)
            return "".join(out)
    except TemplateLimit as exc:
        raise DlmError(f"the model's chat template was stopped: {exc}; it is broken or hostile: pass "
                       "--no-chat-template to send the prompt as raw text, or fix the model's chat template") from None
    except MemoryError:
        raise DlmError("the model's chat template tried to build a value too large for memory; it is broken or "
                       "hostile: pass --no-chat-template to send the prompt as raw text") from None
    except jinja2.exceptions.SecurityError as exc:
        raise DlmError(f"the model's chat template tried something the sandbox forbids ({_one(exc)}); it is "
                       "hostile or broken: pass --no-chat-template to send the prompt as raw text") from None
    except jinja2.exceptions.TemplateError as exc:  # raise_exception(...) from the template, undefined names
        raise DlmError(f"the model's chat template refused the prompt ({_one(exc)}); pass --no-chat-template "
                       "to send it as raw text") from None
    except (ArithmeticError, LookupError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise DlmError(f"the model's chat template failed ({type(exc).__name__}: {_one(exc)}); pass "
                       "--no-chat-template to send the prompt as raw text") from None
    finally:
        env.max_chars = MARKUP_CHARS


def _compile(source: str) -> Any:
    import jinja2

    try:
        return compile_template(source)
    except jinja2.exceptions.TemplateError as exc:
        raise DlmError(f"the model's chat template does not parse ({_one(exc)}); pass --no-chat-template "
                       "to send the prompt as raw text") from None
    except (RecursionError, MemoryError, ValueError):
        raise DlmError("the model's chat template cannot be compiled (too deeply nested); pass "
                       "--no-chat-template to send the prompt as raw text") from None


def _one(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "") if text else type(exc).__name__
