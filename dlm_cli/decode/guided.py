"""Input-guided commits for dLLMs: prompt lookup (Aggressive Decoding) as a switch on any diffusion strategy.

With ``lookup = true``, each step looks up the n-gram that ends just before the first masked slot
of the block (the committed text so far) among the earlier n-grams of the prompt and the answer,
exactly as the AR ``lookup`` strategy drafts. The tokens that followed the most recent match are a
draft for the slots from that first mask on. This step's forward is the verification: a drafted
slot is committed when the model's own proposal there (``x0``, the argmax when greedy) equals the
draft token, scanning left to right and stopping at the first disagreement. The strategy's own
rule still commits what it would; the draft only adds the agreeing run.

When the answer copies the input (fixing typos, reformatting), long runs agree and are committed
in one step, which a confidence threshold may not dare to. Nothing is committed that the model did
not itself propose at this step.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from .drafts import LookupDraft


class GuidedCommits:
    """Per-run state: the n-gram index of the committed prefix and the count of slots committed by lookup."""

    def __init__(self, settings: Any, prompt_ids: list[int]) -> None:
        self.most = settings.lookup_draft
        self.source = LookupDraft(SimpleNamespace(ngram_min=1, ngram_max=settings.lookup_ngram,
                                                  num_draft_tokens=self.most, realign=False))
        self.prompt = list(prompt_ids)
        self.seen: list[int] = []
        self.committed = 0  # slots committed because they matched the draft (beyond the rule's own)
        self.drafts = 0

    def draft(self, prefix: list[int], room: int) -> list[int]:
        """The lookup draft (at most ``room`` tokens) following the committed ``prefix`` of the answer."""
        seq = self.prompt + prefix
        if seq[: len(self.seen)] != self.seen:  # an edit rewrote committed text: index afresh
            self.source.begin(seq, None)
        self.seen = seq
        tokens, _ = self.source.propose(seq, room)
        return tokens.tolist()

    def select(self, prefix: list[int], start: int, x0: torch.Tensor, candidates: torch.Tensor,
               tokens: torch.Tensor) -> torch.Tensor:
        """Rows of the block to commit: the run from ``start`` (the first masked row) where the draft agrees."""
        out = torch.zeros_like(candidates)
        draft = self.draft(prefix, int(candidates.shape[0]) - start)
        if draft:
            self.drafts += 1
        for j, want in enumerate(draft):
            r = start + j
            if bool(candidates[r]):
                if int(x0[r]) != want:
                    break
                out[r] = True
            elif int(tokens[r]) != want:  # committed earlier, out of order, to something else
                break
        return out
