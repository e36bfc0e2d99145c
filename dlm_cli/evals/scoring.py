"""How a prompt's ``answer`` is checked against the generated text: the ``match`` kinds of ``--prompts``.

``exact``: the stripped text equals the stripped answer. ``contains``: the stripped answer occurs in
the text. ``number``: the number after the last ``####`` (GSM8K's answer marker) when there is one,
else the last number in the text, equals the answer's number (compared as decimals, so "1,234",
"$1,234.00" and "1234" are one value). ``regex``: ``re.search(answer, text)`` finds a match.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

from ..errors import UsageError

MATCHES = ("exact", "contains", "number", "regex")

# A signed decimal with optional currency sign and thousands separators. Not inside a word
# ("x2", "v1.5" name things, not quantities); a thousands group is exactly three digits ("1,2345"
# is not 12345); a trailing sentence period is not a decimal point ("is 18." reads 18); a sign
# binds only when written against the digits ("10 - 3" holds 10 and 3, "-3" is negative).
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−]?)[$€£]?(?P<sign2>[-−]?)"
    r"(?P<int>\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+)(?P<frac>\.\d+)?(?!\w)"
)
_MARK = "####"


def numbers(text: str) -> list[Decimal]:
    """Every number in ``text``, in order."""
    out = []
    for m in _NUMBER.finditer(text):
        negative = bool(m["sign"] or m["sign2"])
        try:
            value = Decimal(m["int"].replace(",", "") + (m["frac"] or ""))
        except InvalidOperation:  # pragma: no cover - the pattern only matches digits
            continue
        out.append(-value if negative else value)
    return out


def extract_number(text: str) -> Optional[Decimal]:
    """The first number after the last ``####``, else the last number in ``text``; None if there is none."""
    head, mark, tail = text.rpartition(_MARK)
    if mark:
        after = numbers(tail)
        if after:
            return after[0]
        text = head
    found = numbers(text)
    return found[-1] if found else None


def check_answer(answer: Any, match: Any, where: str) -> tuple[str, str]:
    """The (answer, match) of one prompt line, validated; ``where`` is ``FILE:LINE`` for the message."""
    if match is None:
        match = "exact"
    if not isinstance(match, str) or match not in MATCHES:
        raise UsageError(f'{where}: unknown "match" {match!r}; use one of {", ".join(MATCHES)}')
    if answer is None:
        raise UsageError(f'{where}: "match": "{match}" needs an "answer" to check against')
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise UsageError(f'{where}: "answer" must be a string (or a number), not {type(answer).__name__}')
    answer = answer if isinstance(answer, str) else str(answer)
    if match == "contains" and not answer.strip():
        raise UsageError(f'{where}: "match": "contains" needs a non-empty "answer"')
    if match == "number" and extract_number(answer) is None:
        raise UsageError(f'{where}: "match": "number" needs a number in "answer", got {answer!r}')
    if match == "regex":
        try:
            re.compile(answer)
        except re.error as exc:
            raise UsageError(f'{where}: "answer" is not a valid regular expression ({exc}); '
                             'escape special characters with \\\\ or use "match": "contains"') from None
    return answer, match


def matches(answer: str, match: str, text: str) -> bool:
    """Whether ``text`` (the generated answer) satisfies ``answer`` under ``match``."""
    if match == "exact":
        return text.strip() == answer.strip()
    if match == "contains":
        return answer.strip() in text
    if match == "number":
        got = extract_number(text)
        return got is not None and got == extract_number(answer)
    if match == "regex":
        return re.search(answer, text) is not None
    raise ValueError(f"unknown match {match!r}")


def aup(points: list[tuple[float, float]], y_max: float, alpha: float = 3.0, drop: float = 5.0) -> float:
    """d3LLM's AUP: the area under accuracy (%) against tokens per forward, penalised by the accuracy lost.

    ``points`` are one method's ``(ρ, y)`` pairs (tokens per forward, accuracy in %) on one task;
    ``y_max`` is the best accuracy of any method on that task. Sorted by ``ρ``, with ``y_1`` the
    accuracy at the smallest ``ρ``, points more than ``drop`` below ``y_1`` are left out; then
    ``AUP = ρ_1·y_1 + Σ_{i≥2} ½(ρ_i − ρ_{i−1})(W(y_i)·y_i + W(y_{i−1})·y_{i−1})`` with
    ``W(y) = min(1, exp(−α(1 − y / y_max)))`` (hao-ai-lab/d3LLM, ``get_aup``).
    """
    if not points:
        return 0.0
    pts = sorted(points)
    y1 = pts[0][1]
    pts = [p for p in pts if p[1] >= y1 - drop]

    def w(y: float) -> float:
        return min(1.0, math.exp(-alpha * (1 - y / y_max))) if y_max > 0 else 1.0

    area = pts[0][0] * pts[0][1]
    for (r0, y0), (r1, y1_) in zip(pts, pts[1:]):
        area += 0.5 * (r1 - r0) * (w(y1_) * y1_ + w(y0) * y0)
    return area
