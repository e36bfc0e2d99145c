"""Where the prompt comes from (argument, file, stdin) and how it becomes token ids."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path
from typing import IO, Any, Callable

from .errors import UsageError


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text from ``data``, refusing binary input with the offending offset."""
    nul = data.find(b"\x00")
    if nul >= 0:
        raise UsageError(f"{source} looks binary (a NUL byte at offset {nul}); give UTF-8 text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source} is not UTF-8 text (bad byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                         "convert it to UTF-8 first") from None


MAX_INPUT_BYTES = 16 * 1024 * 1024  # far more than any model's context holds; bounds memory before tokenising


def check_utf8(text: str, source: str) -> str:
    """``text`` if it encodes as UTF-8; an argument with invalid bytes (decoded by Python as
    surrogates) is one line with the offending byte and its offset."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = b""
        if raw:
            decode_text(raw, source)  # names the bad byte and its offset
        raise UsageError(f"{source} is not valid UTF-8 text (a lone surrogate at character {exc.start}); "
                         "convert it to UTF-8 first") from None
    return text


def read_bounded(fh: IO[bytes], source: str, limit: int = MAX_INPUT_BYTES) -> bytes:
    """At most ``limit`` bytes of ``fh``; more (a huge file, ``/dev/zero``) is one line saying how to cut it."""
    data = fh.read(limit + 1)
    if len(data) > limit:
        mib = limit // (1024 * 1024)
        raise UsageError(f"{source} holds more than {mib} MiB, more than dlm reads as a prompt; give only the part "
                         f"the model should see (e.g. `head -c {mib // 4}M FILE | dlm generate ...`)")
    return data


def read_stdin(stdin: IO[Any]) -> str:
    buf = getattr(stdin, "buffer", None)
    data = read_bounded(buf if buf is not None else stdin, "stdin")
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return decode_text(data, "stdin")


def read_file(file: Path) -> str:
    try:
        with open(file, "rb") as fh:
            data = read_bounded(fh, f"-f {file}")
    except OSError as exc:
        raise UsageError(f"cannot read -f {file}: {exc.strerror or exc}") from None
    return decode_text(data, str(file))


STDIN_WAIT_SECONDS = 10.0  # with a PROMPT argument: how long a silent stdin pipe may stay silent (DLM_STDIN_WAIT)


def stdin_wait() -> float:
    try:
        return max(0.0, float(os.environ.get("DLM_STDIN_WAIT", STDIN_WAIT_SECONDS)))
    except ValueError:
        raise UsageError(f"DLM_STDIN_WAIT={os.environ['DLM_STDIN_WAIT']!r} is not a number of seconds") from None


def stdin_kind(stdin: IO[Any]) -> str:
    """``"null"`` (/dev/null or another device: cron, nohup, ``< /dev/null``), ``"pipe"`` (a pipe or
    a socket, which may stay open and silent), ``"file"`` (a regular file), or ``"stream"`` (no
    descriptor: a stream a program hands dlm in-process)."""
    try:
        mode = os.fstat(stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return "stream"
    if stat.S_ISCHR(mode):
        return "null"
    return "pipe" if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else "file"


def speaks_within(stdin: IO[Any], seconds: float) -> bool:
    """Whether the pipe has bytes (or its end) within ``seconds``."""
    import select

    try:
        ready, _, _ = select.select([stdin], [], [], seconds)
    except (OSError, ValueError):  # no select on this descriptor: read it as before
        return True
    return bool(ready)


def gather(prompt: str | None, file: Path | None, stdin: IO[Any], stdin_is_tty: bool, *,
           no_stdin: bool = False, say: Callable[[str, str], None] | None = None) -> str:
    """The prompt text from the argument, ``-f FILE`` and piped stdin.

    With material on stdin or in a file and a PROMPT argument, the argument is the instruction
    and the material follows it. ``-`` as PROMPT reads stdin explicitly. ``no_stdin``
    (``--no-stdin``) never reads stdin.

    The rule for stdin beside a PROMPT argument: a terminal or a device (``/dev/null``: cron, nohup)
    is not read; a file or a pipe is the material. A pipe that stays silent (no byte, not closed) for
    ``DLM_STDIN_WAIT`` seconds (10) is left unread, with a note: nobody writes to it (ssh, CI runners).
    An empty file or pipe gives a warning and the argument alone. ``say(kind, message)`` prints those.
    """
    if prompt is not None:
        check_utf8(prompt, "the PROMPT argument")
    if no_stdin:
        if prompt == "-":
            raise UsageError("'-' reads the prompt from stdin, which --no-stdin forbids; drop one of them")
        stdin_is_tty = True
    material: str | None = None
    if prompt == "-":
        prompt = None
        material = read_stdin(stdin)
        if not material.strip():
            raise UsageError("stdin is empty; pipe some text, or pass the prompt as an argument")
    if file is not None:
        if material is not None:
            raise UsageError("give the material either on stdin ('-') or with -f FILE, not both")
        material = read_file(file)
        if not material.strip():
            raise UsageError(f"{file} is empty; give a file with text in it")
    elif material is None and not stdin_is_tty:
        kind = stdin_kind(stdin) if prompt is not None else "file"
        wait = stdin_wait() if kind == "pipe" else 0.0
        if kind == "null":
            pass
        elif kind == "pipe" and not speaks_within(stdin, wait):
            if say is not None:
                say("note", f"stdin is a pipe that stayed silent for {wait:g} s, so it was not read; the prompt "
                    "is the argument alone (--no-stdin skips the wait; DLM_STDIN_WAIT=SECONDS sets it)")
        else:
            piped = read_stdin(stdin)
            if piped.strip():
                material = piped
            elif prompt is None:
                raise UsageError("stdin is empty; pipe some text, or pass the prompt as an argument")
            elif say is not None and kind != "stream":
                say("warning", f"stdin is empty, so the prompt is the argument alone ({prompt.strip()[:40]!r}); "
                    "pipe the text it is about, or use -f FILE")
    if prompt is not None and not prompt.strip() and material is None:
        raise UsageError("the prompt is empty; pass a PROMPT argument, -f FILE, or pipe text on stdin")
    if prompt is None and material is None:
        raise UsageError("no prompt: pass a PROMPT argument, -f FILE, or pipe text on stdin")
    if prompt and material:
        return f"{prompt.strip()}\n\n{material}"
    return prompt if material is None else material


def encode(tokenizer: Any, text: str, *, system: str | None = None, chat_template: bool = True,
           parse_special: bool = False, context: int | None = None) -> list[int]:
    """Token ids of the prompt, with the model's chat template when it has one and it is wanted.

    The user's text (and ``system``) is tokenised as text: a control token written in it
    (``<|im_end|>``, ``<|eot_id|>``) stays those characters, so material cannot end the user turn or
    inject a role, as llama.cpp does by default. Only the chat template's own markup becomes
    control tokens. ``parse_special`` (``--parse-special``) parses them everywhere. ``context``
    refuses, before tokenising, a text too long for that many tokens whatever its tokenisation.
    """
    from .controltokens import encode_chat, encode_plain

    check_utf8(text, "the prompt")
    if system is not None:
        check_utf8(system, "--system")
    if context is not None:
        check_size(tokenizer, len(text) + len(system or ""), context)
    if chat_template and getattr(tokenizer, "chat_template", None):
        return encode_chat(tokenizer, text, system, parse_special=parse_special)
    if system:
        text = f"{system}\n\n{text}"
    return encode_plain(tokenizer, text, add_special_tokens=True, parse_special=parse_special)


def check_size(tokenizer: Any, chars: int, context: int) -> None:
    """Refuse ``chars`` characters of text that cannot fit ``context`` tokens, without tokenising it."""
    from .controltokens import max_token_chars

    longest = max_token_chars(tokenizer)
    if longest and chars > context * longest:
        least = chars // longest
        raise UsageError(f"the input is {chars} characters, at least {least} tokens, but the model's context is "
                         f"{context} tokens; give only the part the model should see")


def check_length(prompt_tokens: int, max_new_tokens: int, context: int, name: str, *, flag: str = "-n") -> None:
    """The prompt and the ``flag`` (``-n``, the server's ``max_tokens``) new tokens fit the model's context."""
    if prompt_tokens + max_new_tokens > context:
        room = context - prompt_tokens
        fix = f"lower {flag} to {room} or less" if room > 0 else "shorten the input"
        raise UsageError(f"the prompt is {prompt_tokens} tokens and {flag} asks for {max_new_tokens} more, but "
                         f"{name}'s context is {context} tokens; {fix}")

