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

from typing import Any

import torch

from .drafts import LookupDraft


class GuidedCommits:
    """Per-run state: the n-gram index of the committed prefix and the count of slots committed by lookup."""

    def __init__(self, settings: Any, prompt_ids: list[int], device: torch.device) -> None:
        self.most = settings.draft_length
        self.source = LookupDraft(settings, ngram_min=1, realign=False)
        self.prompt = list(prompt_ids)
        self.seen: list[int] = []
        self.device = device
        self.committed = torch.zeros((), dtype=torch.long, device=device)  # beyond the rule's own (on device)
        self.drafts = 0

    def draft(self, prefix: list[int], room: int) -> list[int]:
        """The lookup draft (at most ``room`` tokens) following the committed ``prefix`` of the answer."""
        seq = self.prompt + prefix
        if seq[: len(self.seen)] != self.seen:  # an edit rewrote committed text: index afresh
            self.source.begin(seq, None)
        self.seen = seq
        tokens, _ = self.source.propose(seq, min(room, self.most))
        return tokens.tolist()

    def add(self, selected: torch.Tensor, prefix: list[int], start: int, x0: torch.Tensor, candidates: torch.Tensor,
            tokens: torch.Tensor) -> torch.Tensor:
        """``selected`` plus the run from row ``start`` (the first mask) where the draft agrees with the canvas.

        A masked row agrees when the model's own proposal ``x0`` is the draft token; a row committed
        earlier (out of order) when it already holds it. The run stops at the first disagreement.
        Computed on the device: no transfer.
        """
        draft = self.draft(prefix, int(candidates.shape[0]) - start)
        if not draft:
            return selected
        self.drafts += 1
        end = start + len(draft)
        want = torch.tensor(draft, dtype=torch.long, device=self.device)
        agree = torch.where(candidates[start:end], x0[start:end] == want, tokens[start:end] == want)
        run = torch.zeros_like(candidates)
        run[start:end] = torch.cumprod(agree.long(), 0).bool() & candidates[start:end]
        self.committed += (run & ~selected).sum()
        return selected | run

    def count(self) -> int:
        return int(self.committed)
