"""The demo task suite: short prompt/answer pairs whose answers can be checked.

Two kinds of task, as in ParallelBench:

* deterministic tasks (copy, reverse, sort, add, lookup, story) have one right answer, scored by
  exact match. In copy and sort the answer tokens barely depend on each other, so committing many
  at once is safe; in addition the digits are tied by carries.
* random tasks (pick) have many right answers, scored by validity: k items, no repeats, all from
  the given list. Tokens committed in parallel without seeing each other tend to repeat an item.

The long tasks (copy-long, sort-long, story-long, json) have answers of 41-95 tokens, meant for
GSM8K's 256-slot canvas (``-n 256``), where how many tokens a method commits per step shows on a long
answer. They are not in the default suite (:data:`DEFAULT_TASKS`, decoded on 64 slots);
``tasks=["long"]`` or ``--tasks long`` names them. ``dlm-demo-long`` (the demo dLLM fine-tuned on
256-slot canvases) has learned them; the 64-slot ``dlm-demo`` has not (their cards).

Every example is a pure function of ``(task, seed)``. A hash of the prompt text splits prompts into
train and held-out sets, so no held-out prompt is ever trained on, whatever seed produced it.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

HELD_OUT_PERCENT = 5
SUITE_SEED = 1_000_003

WORDS = ["apple", "river", "stone", "cloud", "lamp", "tiger", "bread", "chair", "moon", "honey",
         "glass", "train", "piano", "wolf", "sugar", "paper", "storm", "coin", "rope", "mint"]
KEYS = ["ax", "bo", "cu", "di", "ek", "fa", "gu", "hi", "jo", "ka", "lu", "me", "no", "pi", "ro", "su"]
NAMES = ["Mia", "Leo", "Ana", "Sam", "Ivy", "Max", "Zoe", "Tom", "Eva", "Ben", "Lia", "Noah"]
ANIMALS = ["cat", "dog", "fox", "owl", "frog", "duck", "goat", "bear", "seal", "crow"]
PLACES = ["park", "lake", "market", "forest", "beach", "garden", "hill", "library", "harbor", "farm"]
LONG_STORIES = {
    "walk": "{name} walked the {animal} to the {place}. {friend} came with a {pet}. At the {place}, the {animal} "
            "and the {pet} played. Then {name} and {friend} went home to the {home}. The {pet} was happy.",
    "lost": "{name} lost a {animal} near the {place}. {friend} and the {pet} looked for it. They found the "
            "{animal} at the {home}. {name} gave {friend} a {pet} as a gift. The {animal} was happy.",
    "gift": "At the {place}, {name} got a {animal} as a gift. {friend} got a {pet}. The {animal} and the {pet} "
            "walked to the {home}. {name} and {friend} found it again. The {animal} was happy.",
}
STORIES = {
    "walk": "{name} walked the {animal} to the {place}.",
    "lost": "{name} lost a {animal} near the {place} and found it again.",
    "gift": "At the {place}, {name} got a {animal} as a gift.",
}


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    answer: Optional[str]  # None for random tasks: any valid answer counts
    items: tuple[str, ...] = ()  # pick: the list to draw from
    k: int = 0  # pick: how many to draw

    def target(self, rng: random.Random) -> str:
        """A training answer: the answer, or for random tasks a fresh valid draw."""
        if self.answer is not None:
            return self.answer
        return " ".join(rng.sample(self.items, self.k))


@dataclass(frozen=True)
class Task:
    name: str
    deterministic: bool
    make: Callable[[random.Random], Example]
    description: str

    def example(self, seed: int) -> Example:
        return self.make(random.Random(f"{self.name}:{seed}"))

    def score(self, example: Example, text: str) -> bool:
        """Exact match (whitespace-normalised) for deterministic tasks, validity for random ones."""
        got = " ".join(text.split())
        if self.deterministic:
            return got == example.answer
        picked = got.split(" ") if got else []
        return len(picked) == example.k and len(set(picked)) == example.k and set(picked) <= set(example.items)


def _numbers(rng: random.Random, lo: int = 3, hi: int = 6) -> list[int]:
    return [rng.randrange(100) for _ in range(rng.randint(lo, hi))]


def _join(xs: list) -> str:
    return " ".join(str(x) for x in xs)


def _copy(rng: random.Random) -> Example:
    xs = _numbers(rng)
    return Example("copy", f"Copy: {_join(xs)}", _join(xs))


def _reverse(rng: random.Random) -> Example:
    xs = _numbers(rng)
    return Example("reverse", f"Reverse: {_join(xs)}", _join(xs[::-1]))


def _sort(rng: random.Random) -> Example:
    xs = [rng.randrange(10) for _ in range(rng.randint(3, 6))]  # one token per item: rank i is slot i
    return Example("sort", f"Sort these numbers: {_join(xs)}", _join(sorted(xs)))


def _digits(rng: random.Random, n: int) -> int:
    return rng.randrange(10 ** (n - 1) if n > 1 else 0, 10**n)


def _add(rng: random.Random) -> Example:
    # Operands of the same width (2 or 3 digits), so the columns line up; the carries still tie digits.
    n = rng.randint(2, 3)
    a, b = _digits(rng, n), _digits(rng, n)
    return Example("add", f"Add: {a} + {b}", str(a + b))


def _lookup(rng: random.Random) -> Example:
    keys = rng.sample(KEYS, rng.randint(2, 4))
    vals = [rng.randrange(100) for _ in keys]
    ask = rng.choice(keys)
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, vals))
    return Example("lookup", f"Keys: {pairs}. What is {ask}?", str(vals[keys.index(ask)]))


def _pick(rng: random.Random) -> Example:
    items = rng.sample(WORDS, rng.randint(4, 7))
    k = rng.randint(2, min(4, len(items) - 1))
    return Example("pick", f"Pick {k} different words at random from: {' '.join(items)}", None,
                   tuple(items), k)


def _story(rng: random.Random) -> Example:
    kind = rng.choice(sorted(STORIES))
    slots = {"name": rng.choice(NAMES), "animal": rng.choice(ANIMALS), "place": rng.choice(PLACES)}
    prompt = f"Tell the {kind} story: name: {slots['name']}, animal: {slots['animal']}, place: {slots['place']}"
    return Example("story", prompt, STORIES[kind].format(**slots))


def _copy_long(rng: random.Random) -> Example:
    xs = _numbers(rng, 24, 48)  # 41-95 tokens: one per digit
    return Example("copy-long", f"Copy: {_join(xs)}", _join(xs))


def _sort_long(rng: random.Random) -> Example:
    xs = [rng.randrange(10) for _ in range(30)]  # 59 tokens: 30 digits and 29 commas
    return Example("sort-long", f"Sort with commas: {_join(xs)}", ", ".join(str(x) for x in sorted(xs)))


def _story_long(rng: random.Random) -> Example:
    kind = rng.choice(sorted(LONG_STORIES))
    name, friend = rng.sample(NAMES, 2)
    animal, pet = rng.sample(ANIMALS, 2)
    place, home = rng.sample(PLACES, 2)
    slots = {"name": name, "friend": friend, "animal": animal, "pet": pet, "place": place, "home": home}
    prompt = f"Tell the long {kind} story: " + ", ".join(f"{k}: {v}" for k, v in slots.items())
    return Example("story-long", prompt, LONG_STORIES[kind].format(**slots))


def _json(rng: random.Random) -> Example:
    keys = rng.sample(WORDS, rng.randint(6, 10))  # 48-80 tokens: every word is one token, quoted or not
    vals = [rng.randrange(10, 100) for _ in keys]
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, vals))
    return Example("json", f"Write as JSON: {pairs}", "{" + ", ".join(f'"{k}": {v}' for k, v in zip(keys, vals)) + "}")


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("copy", True, _copy, "repeat a list of numbers"),
        Task("reverse", True, _reverse, "reverse a list of numbers"),
        Task("sort", True, _sort, "sort a list of one-digit numbers"),
        Task("add", True, _add, "add two numbers of two or three digits (carries)"),
        Task("lookup", True, _lookup, "read a value from key=value pairs"),
        Task("pick", False, _pick, "pick k different words at random from a list (scored by validity)"),
        Task("story", True, _story, "fill a story template from named slots"),
        Task("copy-long", True, _copy_long, "repeat a list of 24-48 numbers (41-95 tokens)"),
        Task("sort-long", True, _sort_long, "sort 30 one-digit numbers, comma-separated (59 tokens)"),
        Task("story-long", True, _story_long, "fill a five-sentence story template from six slots (48-64 tokens)"),
        Task("json", True, _json, "rewrite 6-10 key=value pairs as a JSON object (48-80 tokens)"),
    ]
}
# The default suite (64-slot answers) and the long one (40-200-token answers, for a 256-slot canvas).
DEFAULT_TASKS = ["copy", "reverse", "sort", "add", "lookup", "pick", "story"]
LONG_TASKS = ["copy-long", "sort-long", "story-long", "json"]
GROUPS = {"default": DEFAULT_TASKS, "long": LONG_TASKS, "all": DEFAULT_TASKS + LONG_TASKS}


def task_names(spec: Optional[list[str]]) -> list[str]:
    """Task names with the groups (``default``, ``long``, ``all``) expanded; ``None``: the default suite.

    Raises ``ValueError`` on an unknown name."""
    out: list[str] = []
    for name in spec or ["default"]:
        for t in GROUPS.get(name, [name]):
            if t not in TASKS and t not in AUX_TASKS:
                raise ValueError(f"unknown task {t!r}; tasks: {', '.join(TASKS)} (groups: {', '.join(GROUPS)})")
            if t not in out:
                out.append(t)
    return out


def _recall(rng: random.Random) -> Example:
    # Training only: 4..6 queries per example on 3..6 pairs, each answered as "key=value". Every answer
    # token is a bound value, so the key-to-value binding that `lookup` needs gets several times the
    # signal. Measured on the AR target it is not enough: lookup alone stays at chance (35% after 2,500
    # steps), lookup and recall half each read 48% of held-out lookups after 1,000 (dlm-demo's card).
    keys = rng.sample(KEYS, rng.randint(3, 6))
    vals = [rng.randrange(100) for _ in keys]
    pairs = " ".join(f"{k}={v}" for k, v in zip(keys, vals))
    asks = [rng.choice(keys) for _ in range(rng.randint(4, 6))]
    return Example("recall", f"Recall: {pairs}", " ".join(f"{k}={vals[keys.index(k)]}" for k in asks))


# Auxiliary training tasks, drawn only when named (``training_stream(seed, [...])``), never in the
# suite: their answers are not a function of the prompt (the queried keys are drawn at random).
AUX_TASKS: dict[str, Task] = {
    "recall": Task("recall", False, _recall, "answer random queries on key=value pairs (training only)"),
}


def held_out(prompt: str) -> bool:
    """Whether ``prompt`` belongs to the held-out split (never trained on)."""
    return int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 100 < HELD_OUT_PERCENT


# How often each task is drawn for training: the ones tied by carries or order need more examples.
TRAIN_WEIGHTS = {"copy": 1.0, "reverse": 1.2, "sort": 1.0, "add": 4.5, "lookup": 0.8, "pick": 0.6, "story": 0.4,
                 "recall": 1.0, "copy-long": 2.0, "sort-long": 2.5, "story-long": 0.6, "json": 2.0}
# ``train --focus-steps N --focus-share S``: in the first N steps, a share S of the examples come
# from these. Neither alone nor inside the mix has the key-to-value binding formed within this
# project's training budget (the experiments are in dlm-demo's card).
FOCUS_TASKS = ["lookup", "recall"]


def training_stream(seed: int, tasks: Optional[list[str]] = None) -> Iterator[Example]:
    """Endless training examples, tasks drawn by :data:`TRAIN_WEIGHTS`, held-out prompts skipped.

    ``tasks`` may name groups and auxiliary tasks (:data:`AUX_TASKS`); by default it is the default suite's.
    """
    every = {**TASKS, **AUX_TASKS}
    names = task_names(tasks)
    weights = [TRAIN_WEIGHTS.get(n, 1.0) for n in names]
    rng = random.Random(seed)
    while True:
        name = rng.choices(names, weights)[0]
        ex = every[name].example(rng.randrange(2**62))
        if not held_out(ex.prompt):
            yield ex


def suite(per_task: int, tasks: Optional[list[str]] = None) -> list[Example]:
    """``per_task`` held-out examples of each task (the same ones on every call); ``tasks`` may name groups."""
    out: list[Example] = []
    tries = 200 * per_task + 20_000  # ~20 seeds per held-out prompt; the rest finds a small task's last ones
    for name in task_names(tasks):
        found: list[Example] = []
        seen: set[str] = set()
        for seed in range(SUITE_SEED, SUITE_SEED + tries):
            if len(found) == per_task:
                break
            ex = TASKS[name].example(seed)
            if held_out(ex.prompt) and ex.prompt not in seen:
                seen.add(ex.prompt)
                found.append(ex)
        else:
            if len(found) < per_task:  # e.g. story: 3,600 prompts in all, 198 held out
                raise ValueError(f"task {name!r} has only {len(found)} held-out prompts; ask for at most "
                                 f"{len(found)} per task")
        out.extend(found)
    return out
