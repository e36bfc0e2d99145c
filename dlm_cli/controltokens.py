"""User text stays text: control tokens come only from the chat template's own markup.

``apply_chat_template`` renders the messages inside the template and the whole string is then
tokenised, so ``<|im_end|>`` written in piped material becomes the real end-of-turn token and the
material can close the user turn and open a role of its own. Here the user's contents are
tokenised as plain text (special tokens not parsed, as llama.cpp does by default) and only the
markup the template writes is parsed for control tokens:

1. render the template normally (bounded, :mod:`dlm_cli.templating`). If no content holds a
   special token's text, the ordinary encoding of that string is already right: it is returned,
   so prompts without control tokens are tokenised exactly as before;
2. otherwise find where each content lies in the rendered string, from renders where every
   other content is a private-use sentinel; the template's own transforms (``trim``) are kept;
3. split the rendered string at the special tokens found in the markup only, and encode the
   text between them with special tokens not parsed. This is the split the tokenizer itself
   makes, so the ids differ from the ordinary encoding only where the content held control tokens.

When the template rewrites the contents so that they cannot be located (it repeats or reorders
them) and a content holds control tokens, the prompt is refused with one line.
"""

from __future__ import annotations

import functools
import re
import weakref
from typing import Any

from .errors import UsageError

SENTINEL = "\ue000dlm{}\ue001"  # private-use characters: templates do not trim, case or escape them
_LONGEST: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def special_tokens(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's special added tokens, by their text."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    out = {tok.content: tok for tok in decoder.values() if getattr(tok, "special", False) and tok.content}
    for text in getattr(tokenizer, "all_special_tokens", None) or []:
        if text and text not in out:
            out[text] = None
    return out


@functools.lru_cache(maxsize=16)
def _compile(texts: tuple[str, ...]) -> re.Pattern[str] | None:
    # Longest first: at one position the longest special wins, as in the tokenizer's own matcher.
    if not texts:
        return None
    return re.compile("|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True)))


def special_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    return _compile(tuple(sorted(special_tokens(tokenizer))))


def encode_plain(tokenizer: Any, text: str, *, add_special_tokens: bool, parse_special: bool = False) -> list[int]:
    """``text`` tokenised as text (special tokens in it not parsed) unless ``parse_special``."""
    if not text and not add_special_tokens:
        return []
    if parse_special:
        return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens, split_special_tokens=True))


def _messages(contents: list[str], system: bool | tuple[str, ...]) -> list[dict[str, str]]:
    """The messages of ``contents``: a system message (``system``) and the user's, or the given roles."""
    roles = system if isinstance(system, tuple) else (["system"] if system else []) + ["user"]
    return [{"role": r, "content": c} for r, c in zip(roles, contents)]


def encode_chat(tokenizer: Any, text: str, system: str | None, *, parse_special: bool = False) -> list[int]:
    """The chat prompt's ids, control tokens only from the template's markup (see the module doc)."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return encode_messages(tokenizer, messages, parse_special=parse_special)


def encode_messages(tokenizer: Any, messages: list[dict[str, str]], *, parse_special: bool = False) -> list[int]:
    """A whole conversation's ids (``dlm serve``'s chat requests), as :func:`encode_chat` makes them."""
    from .templating import render

    contents = [m["content"] for m in messages]
    roles = tuple(m["role"] for m in messages)
    rendered = render(tokenizer, _messages(contents, roles))
    pattern = special_pattern(tokenizer)
    if parse_special or pattern is None or not any(pattern.search(c) for c in contents):
        return list(tokenizer.encode(rendered, add_special_tokens=False))
    spans = content_spans(tokenizer, contents, roles, rendered)
    if spans is None:
        skeleton = render(tokenizer, _messages([SENTINEL.format(i) for i in range(len(contents))], roles))
        if len(pattern.findall(rendered)) == len(pattern.findall(skeleton)):
            return list(tokenizer.encode(rendered, add_special_tokens=False))  # the template dropped them
        found = next(m.group() for c in contents for m in [pattern.search(c)] if m)
        raise UsageError(f"the prompt holds the control token {found!r} and the model's chat template rewrites "
                         "the message so that dlm cannot keep it as text; pass --parse-special to let it act "
                         "as a control token, or --no-chat-template, or remove it")
    return encode_marked(tokenizer, rendered, spans)


def content_spans(tokenizer: Any, contents: list[str], system: bool | tuple[str, ...], rendered: str) -> list[tuple[int, int]] | None:
    """Where each content lies in ``rendered`` (as the template transformed it); None when that cannot be told."""
    from .templating import render

    marks = [SENTINEL.format(i) for i in range(len(contents))]
    skeleton = render(tokenizer, _messages(marks, system))
    if any(skeleton.count(m) != 1 for m in marks):
        return None
    shown: dict[int, str] = {}
    for i, mark in enumerate(marks):
        one = render(tokenizer, _messages([c if j == i else marks[j] for j, c in enumerate(contents)], system))
        at = skeleton.index(mark)
        pre, post = skeleton[:at], skeleton[at + len(mark):]
        if not (one.startswith(pre) and one.endswith(post) and len(one) >= len(pre) + len(post)):
            return None
        shown[i] = one[len(pre): len(one) - len(post)]
    spans: list[tuple[int, int]] = []
    out: list[str] = []
    pos = 0
    for i in sorted(range(len(marks)), key=lambda i: skeleton.index(marks[i])):
        at = skeleton.index(marks[i])
        out.append(skeleton[pos:at])
        start = sum(map(len, out))
        out.append(shown[i])
        spans.append((start, start + len(shown[i])))
        pos = at + len(marks[i])
    out.append(skeleton[pos:])
    return spans if "".join(out) == rendered else None


def encode_marked(tokenizer: Any, rendered: str, spans: list[tuple[int, int]]) -> list[int]:
    """Ids of ``rendered``: special tokens parsed in the markup only, the ``spans`` (contents) as plain text."""
    specials = special_tokens(tokenizer)
    pattern = special_pattern(tokenizer)
    cuts = []
    pos = 0
    for a, b in [*sorted(spans), (len(rendered), len(rendered))]:
        if pattern is not None and pos < a:
            cuts.extend(pattern.finditer(rendered, pos, a))
        pos = b
    ids: list[int] = []
    pos, strip_next = 0, False
    for m in cuts:
        tok = specials.get(m.group())
        seg = rendered[pos:m.start()]
        if strip_next:
            seg = seg.lstrip()
        if tok is not None and getattr(tok, "lstrip", False):
            seg = seg.rstrip()
        ids += encode_plain(tokenizer, seg, add_special_tokens=False)
        ids.append(int(tokenizer.convert_tokens_to_ids(m.group())))
        strip_next = tok is not None and getattr(tok, "rstrip", False)
        pos = m.end()
    tail = rendered[pos:]
    ids += encode_plain(tokenizer, tail.lstrip() if strip_next else tail, add_special_tokens=False)
    return ids


def max_token_chars(tokenizer: Any) -> int:
    """The longest vocabulary entry in characters (added tokens aside): a token never covers more text."""
    try:
        return _LONGEST[tokenizer]
    except (KeyError, TypeError):
        pass
    added = set(getattr(tokenizer, "added_tokens_encoder", None) or {})
    longest = max((len(t) for t in tokenizer.get_vocab() if t not in added), default=0)
    try:
        _LONGEST[tokenizer] = longest
    except TypeError:
        pass
    return longest
