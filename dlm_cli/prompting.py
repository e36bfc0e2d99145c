"""Where the prompt comes from (argument, file, stdin) and how it becomes token ids."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

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


def read_stdin(stdin: IO[Any]) -> str:
    buf = getattr(stdin, "buffer", None)
    data = buf.read() if buf is not None else stdin.read()
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    return decode_text(data, "stdin")


def gather(prompt: str | None, file: Path | None, stdin: IO[Any], stdin_is_tty: bool) -> str:
    """The prompt text from the argument, ``-f FILE`` and piped stdin.

    With material on stdin or in a file and a PROMPT argument, the argument is the instruction
    and the material follows it. ``-`` as PROMPT reads stdin explicitly.
    """
    material: str | None = None
    if prompt == "-":
        prompt = None
        material = read_stdin(stdin)
        if not material.strip():
            raise UsageError("stdin is empty; pipe some text, or pass the prompt as an argument")
    if file is not None:
        if material is not None:
            raise UsageError("give the material either on stdin ('-') or with -f FILE, not both")
        try:
            data = Path(file).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read -f {file}: {exc.strerror or exc}") from None
        material = decode_text(data, str(file))
        if not material.strip():
            raise UsageError(f"{file} is empty; give a file with text in it")
    elif material is None and not stdin_is_tty:
        piped = read_stdin(stdin)
        if piped.strip():
            material = piped
        elif prompt is None:
            raise UsageError("stdin is empty; pipe some text, or pass the prompt as an argument")
    if prompt is not None and not prompt.strip() and material is None:
        raise UsageError("the prompt is empty; pass a PROMPT argument, -f FILE, or pipe text on stdin")
    if prompt is None and material is None:
        raise UsageError("no prompt: pass a PROMPT argument, -f FILE, or pipe text on stdin")
    if prompt and material:
        return f"{prompt.strip()}\n\n{material}"
    return prompt if material is None else material


def encode(tokenizer: Any, text: str, *, system: str | None = None, chat_template: bool = True) -> list[int]:
    """Token ids of the prompt, with the model's chat template when it has one and it is wanted."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(rendered, add_special_tokens=False))
    if system:
        text = f"{system}\n\n{text}"
    return list(tokenizer.encode(text))


def check_length(prompt_tokens: int, max_new_tokens: int, context: int, name: str) -> None:
    if prompt_tokens + max_new_tokens > context:
        room = context - prompt_tokens
        fix = f"lower -n to {room} or less" if room > 0 else "shorten the input"
        raise UsageError(f"the prompt is {prompt_tokens} tokens and -n asks for {max_new_tokens} more, but "
                         f"{name}'s context is {context} tokens; {fix}")
