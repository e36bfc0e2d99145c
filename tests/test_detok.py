"""Streaming text: incremental, equal to a full decode, and linear in the answer's length."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

# The real SmolLM2 tokenizer, from the user's converted cache (read, never written); found before
# the test environment is isolated.
_REAL = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlm" / "converted" / "smollm2-135m-instruct"

from dlm_cli.view.detok import CONTEXT, SEGMENT, StreamingText


class Counting:
    """A tokenizer wrapper that counts how many token ids ``decode`` was given in all."""

    def __init__(self, tok):
        self.tok, self.decoded = tok, 0

    def decode(self, ids, **kw):
        self.decoded += len(ids)
        return self.tok.decode(ids, **kw)


def tokenizers():
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from checkpoints import make_tokenizer

    from transformers import AutoTokenizer

    out = []
    out.append(("tiny", lambda tmp: AutoTokenizer.from_pretrained(make_tokenizer(tmp / "tok"))))

    def smollm2(tmp):  # byte-level BPE: multi-byte characters span tokens
        if not (_REAL / "tokenizer.json").is_file():
            pytest.skip("no converted SmolLM2 in the user cache (run `dlm generate -m smollm2` once)")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            if (_REAL / name).is_file():
                shutil.copy(_REAL / name, tmp / name)
        return AutoTokenizer.from_pretrained(str(tmp))

    out.append(("smollm2", smollm2))
    return out


TEXT = ("Streaming must match: naïve café, 東京 and emoji 🙂🙂 — with spaces, new\nlines and  double  spaces. " * 12)


@pytest.mark.parametrize("name,make", tokenizers(), ids=[n for n, _ in tokenizers()])
def test_streamed_text_equals_the_full_decode_at_every_step_and_costs_linear_time(tmp_path, name, make):
    tok = make(tmp_path)
    ids = tok.encode(TEXT, add_special_tokens=False)
    assert len(ids) > 4 * SEGMENT
    counting = Counting(tok)
    stream = StreamingText(counting)
    rng = random.Random(0)
    n = 0
    while n < len(ids):
        n = min(len(ids), n + rng.randint(1, 5))
        got = stream.text(ids[:n])
        full = tok.decode(ids[:n], skip_special_tokens=True)
        if not full.endswith("\ufffd"):  # mid-character the replacement chars may differ; whole text may not
            assert got == full
    assert stream.text(ids) == tok.decode(ids, skip_special_tokens=True)
    # Each update decodes at most CONTEXT + 2 * SEGMENT + 5 tokens (plus the context's own decode):
    # linear overall, where decoding everything again would be quadratic.
    updates = len(ids)  # an upper bound on the number of calls above
    assert counting.decoded <= updates * 2 * (CONTEXT + 2 * SEGMENT + 5)
    assert counting.decoded < len(ids) * len(ids) / 8


def test_an_edit_of_settled_text_starts_afresh(tmp_path):
    import sys

    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).parent))
    from checkpoints import make_tokenizer

    tok = AutoTokenizer.from_pretrained(make_tokenizer(tmp_path / "tok"))
    ids = tok.encode("one two three four five six seven eight nine ten " * 4, add_special_tokens=False)
    stream = StreamingText(tok)
    stream.text(ids)
    edited = [ids[1]] + ids[1:]
    assert stream.text(edited) == tok.decode(edited, skip_special_tokens=True)
