"""Real-language prompts for ``smollm2-dlm``: offline text, injected typos, chat and continuation prompts.

All text comes from the machine: paragraphs of the docstrings of Python's standard library (plain
English prose, filtered to 20-150 words with no code in them). A paragraph's file decides its split
(a stable hash of its path), so the held-out prompts never share a source file with training.

Three kinds of prompt, all in the CLI's own layout (``instruction\\n\\nmaterial`` as the user turn,
as ``cat notes.md | dlm generate "fix the typos"`` builds it):

- ``typo``: a paragraph with injected typos (swap, drop, double or replace a letter in about one word
  in eight); the gold answer is the original paragraph;
- ``chat``: a short question from templates over topics (held-out topics are disjoint);
- ``continue`` / ``reformat``: continue a paragraph, or put its sentences one per line or as a list.

:func:`typo_scores` measures a fix: the share of injected typos whose word is restored, and the
share of the other words changed, from a word alignment (difflib) of the answer to the original.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import os
import random
import re
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

# Generation slots for an answer over a paragraph (a fixed paragraph is about 100-200 tokens): bench, filter.
ANSWER_TOKENS = 256

KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
TYPO_INSTRUCTIONS = ("fix the typos", "Fix the typos.", "Fix the typos in this text.",
                     "Correct the spelling mistakes.", "fix typos", "Please fix the typos in this paragraph.")
CONTINUE_INSTRUCTIONS = ("Continue this text.", "continue", "Write the next few sentences.")
REFORMAT = {"lines": ("Put each sentence on its own line.", "one sentence per line"),
            "bullets": ("Rewrite this as a bulleted list, one sentence per bullet.", "make it a bulleted list")}

_CODE = re.compile(r">>>|::|^\s*[-*+]\s|\w\(|[{}\[\]=<>|\\`$#@~^]|\s{4,}\S|https?:", re.M)


@dataclass
class Paragraph:
    source: str
    text: str

    @property
    def held_out(self) -> bool:
        return int(hashlib.sha256(self.source.encode()).hexdigest(), 16) % 10 == 0


@dataclass
class Prompt:
    kind: str
    prompt: str  # the user turn exactly as the CLI builds it
    answer: str | None = None  # gold answer, where one exists (typo, reformat)
    original: str | None = None  # typo: the clean paragraph
    noisy: str | None = None  # typo: the paragraph with typos
    typos: list[int] = field(default_factory=list)  # typo: word indexes that were changed
    instruction: str = ""
    material: str = ""


STDLIB_SKIP = ("site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3", "turtledemo")


def paragraphs(min_words: int = 20, max_words: int = 150, root: str | None = None,
               skip: tuple[str, ...] = STDLIB_SKIP) -> list[Paragraph]:
    """Prose paragraphs of the docstrings under ``root`` (the standard library), deduplicated, in a stable order.

    ``skip`` names directories not entered (tests are always skipped)."""
    root = root or sysconfig.get_paths()["stdlib"]
    skip = tuple(skip) + ("test", "tests", "__pycache__")
    seen: set[str] = set()
    out: list[Paragraph] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            try:
                tree = ast.parse(Path(path).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
                continue
            rel = os.path.relpath(path, root)
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                doc = ast.get_docstring(node)
                for para in re.split(r"\n\s*\n", doc or ""):
                    if _CODE.search(para):
                        continue
                    text = " ".join(para.split())
                    words = text.split()
                    if not min_words <= len(words) <= max_words or text in seen:
                        continue
                    if sum(w.strip(".,;:'\"()!?").isalpha() for w in words) / len(words) < 0.85:
                        continue
                    if not text[0].isupper() or text[-1] not in ".!?":
                        continue
                    seen.add(text)
                    out.append(Paragraph(rel, text))
    return out


def _typo(word: str, rng: random.Random) -> str:
    """One typo in ``word``'s letters: swap two neighbours, drop, double, or hit a neighbouring key."""
    core = re.match(r"^(\W*)(\w+)(\W*)$", word)
    if core is None:
        return word
    pre, w, post = core.groups()
    i = rng.randrange(len(w))
    op = rng.choice(("swap", "drop", "double", "key"))
    if op == "swap" and len(w) > 3 and i < len(w) - 1 and w[i] != w[i + 1]:
        w = w[:i] + w[i + 1] + w[i] + w[i + 2:]
    elif op == "drop" and len(w) > 3:
        w = w[:i] + w[i + 1:]
    elif op == "double":
        w = w[:i] + w[i] + w[i:]
    else:
        c = w[i].lower()
        row = next((r for r in KEYBOARD if c in r), None)
        if row is None:
            return pre + w + w[-1] + post
        j = row.index(c)
        n = row[j - 1] if j and (j == len(row) - 1 or rng.random() < 0.5) else row[min(j + 1, len(row) - 1)]
        n = n.upper() if w[i].isupper() else n
        w = w[:i] + n + w[i + 1:]
    return pre + w + post


def inject_typos(text: str, rng: random.Random, rate: float = 0.12) -> tuple[str, list[int]]:
    """``text`` with typos in about ``rate`` of its words of four or more letters, and their indexes."""
    words = text.split(" ")
    hit: list[int] = []
    for i, w in enumerate(words):
        if sum(ch.isalpha() for ch in w) >= 4 and rng.random() < rate:
            new = _typo(w, rng)
            if new != w:
                words[i] = new
                hit.append(i)
    if not hit:  # every typo prompt has at least one typo
        cands = [i for i, w in enumerate(words) if sum(ch.isalpha() for ch in w) >= 4]
        for i in cands[:1]:
            new = _typo(words[i], rng)
            if new != words[i]:
                words[i] = new
                hit.append(i)
    return " ".join(words), hit


def typo_scores(original: str, noisy: str, typos: list[int], answer: str) -> tuple[float, float]:
    """(share of injected typos fixed, share of the other words changed) of ``answer``.

    The answer's words are aligned to the original's; an original word counts as kept when the
    alignment maps it to an equal word. A typo is fixed when its original word is kept; every other
    original word that is not kept (dropped, replaced or misspelt) counts as changed.
    """
    orig = original.split()
    ans = answer.split()
    kept = [False] * len(orig)
    for block in difflib.SequenceMatcher(a=orig, b=ans, autojunk=False).get_matching_blocks():
        for k in range(block.size):
            kept[block.a + k] = True
    typo_set = set(typos)
    fixed = sum(kept[i] for i in typo_set) / max(len(typo_set), 1)
    others = [i for i in range(len(orig)) if i not in typo_set]
    changed = sum(not kept[i] for i in others) / max(len(others), 1)
    return fixed, changed


_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences(text: str) -> list[str]:
    return [s for s in _SENT.split(text) if s]


# Chat: templates over topics; the topic lists of the two splits are disjoint.
CHAT_TEMPLATES = (
    "What is {t}?", "Explain {t} in simple terms.", "Give me three facts about {t}.",
    "Why is {t} important?", "Write a short paragraph about {t}.", "What are the benefits of {t}?",
    "How would you describe {t} to a child?", "List some common misconceptions about {t}.",
    "Write a haiku about {t}.", "What is the history of {t}?", "Give two tips related to {t}.",
    "Summarise what you know about {t} in two sentences.",
)
CHAT_TOPICS_TRAIN = (
    "photosynthesis", "the water cycle", "gravity", "volcanoes", "the moon", "honey bees", "coffee",
    "the Roman Empire", "recycling", "exercise", "sleep", "the internet", "electric cars", "rainbows",
    "dinosaurs", "the ocean", "music", "chess", "bread baking", "gardening", "the human heart",
    "democracy", "solar power", "friendship", "libraries", "mountains", "the printing press",
    "vaccines", "clouds", "penguins", "time zones", "earthquakes", "the alphabet", "bicycles",
    "rivers", "the stock market", "a healthy diet", "learning a language", "the solar system",
    "trees", "email", "money", "weather forecasts", "the Olympic Games", "cats", "maps", "glass",
    "electricity", "recipes", "deserts", "public speaking", "teamwork", "spiders", "trains",
    "the pyramids of Egypt", "coral reefs", "paper", "programming", "mathematics", "poetry",
)
CHAT_TOPICS_HELD_OUT = (
    "the rain forest", "telescopes", "owls", "the immune system", "wind energy", "tea", "bridges",
    "museums", "tides", "reading books",
)


def chat_prompts(held_out: bool, rng: random.Random, n: int) -> list[Prompt]:
    topics = CHAT_TOPICS_HELD_OUT if held_out else CHAT_TOPICS_TRAIN
    pairs = [(tpl, t) for t in topics for tpl in CHAT_TEMPLATES]
    rng.shuffle(pairs)
    return [Prompt("chat", tpl.format(t=t)) for tpl, t in pairs[:n]]


def typo_prompt(p: Paragraph, rng: random.Random, instruction: str | None = None) -> Prompt:
    noisy, typos = inject_typos(p.text, rng)
    inst = instruction or rng.choice(TYPO_INSTRUCTIONS)
    return Prompt("typo", f"{inst}\n\n{noisy}", answer=p.text, original=p.text, noisy=noisy, typos=typos,
                  instruction=inst, material=noisy)


def continue_prompt(p: Paragraph, rng: random.Random) -> Prompt:
    inst = rng.choice(CONTINUE_INSTRUCTIONS)
    return Prompt("continue", f"{inst}\n\n{p.text}", instruction=inst, material=p.text)


def reformat_prompt(p: Paragraph, rng: random.Random) -> Prompt | None:
    sents = sentences(p.text)
    if len(sents) < 2:
        return None
    kind = rng.choice(sorted(REFORMAT))
    inst = rng.choice(REFORMAT[kind])
    answer = "\n".join(sents) if kind == "lines" else "\n".join(f"- {s}" for s in sents)
    return Prompt("reformat", f"{inst}\n\n{p.text}", answer=answer, instruction=inst, material=p.text)


def eval_prompts(seed: int = 1234) -> list[Prompt]:
    """The held-out set: 14 typo fixes (60-150 words), 10 chat questions, 6 continuations, 6 reformats."""
    rng = random.Random(seed)
    held = [p for p in paragraphs() if p.held_out]
    long = [p for p in held if 60 <= len(p.text.split()) <= 150]
    rng.shuffle(long)
    typo = [typo_prompt(p, rng, "fix the typos") for p in long[:14]]
    rest = [p for p in held if p not in long[:14] and 30 <= len(p.text.split()) <= 110]
    rng.shuffle(rest)
    cont = [continue_prompt(p, rng) for p in rest[:6]]
    refs = [r for r in (reformat_prompt(p, rng) for p in rest[6:20]) if r is not None][:6]
    return typo + chat_prompts(True, rng, 10) + cont + refs
