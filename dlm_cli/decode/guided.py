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
    """Per-run state: the n-gram index of the committed prefix and the counts of lookup's commits and drafts."""

    def __init__(self, settings: Any, prompt_ids: list[int], device: torch.device) -> None:
        self.most = settings.draft_length
        self.source = LookupDraft(settings, ngram_min=1, realign=False)
        self.prompt = list(prompt_ids)
        self.seen: list[int] = []
        self.device = device
        # Counted on the device (a step's verdict may drop its draft); read once, at the end of the run.
        self.committed = torch.zeros((), dtype=torch.long, device=device)  # beyond the rule's own
        self.drafted = torch.zeros((), dtype=torch.long, device=device)  # steps whose draft was used

    def draft(self, prefix: list[int], room: int) -> list[int]:
        """The lookup draft (at most ``room`` tokens) following the committed ``prefix`` of the answer."""
        seq = self.prompt + prefix
        if seq[: len(self.seen)] != self.seen:  # an edit rewrote committed text: index afresh
            self.source.begin(seq, None)
        self.seen = seq
        tokens, _ = self.source.propose(seq, min(room, self.most))
        return tokens.tolist() if tokens.numel() else []  # a host tensor: no device sync

    def add(self, selected: torch.Tensor, prefix: list[int], start: int, x0: torch.Tensor, candidates: torch.Tensor,
            tokens: torch.Tensor, settled: torch.Tensor | None = None) -> torch.Tensor:
        """``selected`` plus the run from row ``start`` (the first mask) where the draft agrees with the canvas.

        A masked row agrees when the model's own proposal ``x0`` is the draft token; a row committed
        earlier (out of order) when it already holds it. The run stops at the first disagreement.
        ``settled`` (a device bool: the rule commits every mask anyway) keeps this step out of the
        counts. Computed on the device: the draft goes up without waiting, nothing comes back.
        """
        draft = self.draft(prefix, int(candidates.shape[0]) - start)
        if not draft:
            return selected
        end = start + len(draft)
        want = upload(draft, self.device)
        agree = torch.where(candidates[start:end], x0[start:end] == want, tokens[start:end] == want)
        run = torch.zeros_like(candidates)
        run[start:end] = torch.cumprod(agree.long(), 0).bool() & candidates[start:end]
        used = 1 if settled is None else (~settled).long()
        self.committed += (run & ~selected).sum() * used
        self.drafted += used
        return selected | run

    def counts(self) -> dict[str, int]:
        """The run's ``lookup_commits`` and ``lookup_drafts`` (one transfer)."""
        commits, drafts = torch.stack([self.committed, self.drafted]).tolist()
        return {"lookup_commits": commits, "lookup_drafts": drafts}


def upload(values: list[int], device: torch.device) -> torch.Tensor:
    """``values`` as a long tensor on ``device``; to a GPU from pinned memory without blocking the host."""
    host = torch.tensor(values, dtype=torch.long, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)
