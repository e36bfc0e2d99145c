"""The dLLM canvas of one run: every dLLM loop's bookkeeping, written once.

The canvas is the prompt followed by ``max_new_tokens`` mask slots. :class:`BlockCanvas` owns it,
the decode blocks cut at the model's block grid, end-of-text prediction (EoTP) and the run's
counts, and turns each step's decision (which rows of a block to commit, which to rewrite) into a
:class:`~.events.Step` with one host transfer. A host mirror of the canvas (numpy) is updated from
that transfer, so "how many masks are left", "where is the first mask" and "what is committed so
far" never wait for the device.

EoTP (Learn2PD): once an end-of-text token is committed (or edited in), every slot after it is
final: its masks are filled with the end token and never decoded, including slots the same step
would have committed in parallel.

The repetition stop (:mod:`.repetition`) reads the final prefix from the host mirror after each
commit; when it triggers, every slot after the cut is filled with the end token (committed ones
too, so no consumer ever sees text past the cut) and the loops run out of work.
"""

from __future__ import annotations

from typing import Any, TYPE_CHECKING

import numpy as np
import torch

from .events import Clock, Done, Start, Step
from .repetition import repetition_stop
from .sampling import wide_dtype

if TYPE_CHECKING:
    from .keys import RunSettings
    from ..models.protocols import DLLM


class BlockCanvas:
    """Canvas, blocks, EoTP end, clock and TTFT of one dLLM run (positions are absolute canvas indices)."""

    def __init__(self, model: DLLM, prompt_ids: list[int], settings: RunSettings, clock: Clock,
                 block_length: int | None = None, x: torch.Tensor | None = None) -> None:
        self.model = model
        self.prompt = P = len(prompt_ids)
        self.slots = G = settings.max_new_tokens
        self.length = L = P + G
        self.mask_id = model.mask_id
        self.device = dev = model.device
        self.block_length = min(block_length or settings.block_length, G)
        self.eotp = bool(getattr(settings, "eotp", False))
        # ``x``: a ``[1, L]`` view of a batch's canvas (:mod:`.batch`), written in place like our own.
        self.x = torch.full((1, L), self.mask_id, dtype=torch.long, device=dev) if x is None else x
        self.x[0, :P] = torch.tensor(prompt_ids, dtype=torch.long, device=dev)
        self.host = np.full(L, self.mask_id, dtype=np.int64)
        self.host[:P] = prompt_ids
        self.eos_ids = np.array(model.eos_ids, dtype=np.int64)
        self.eos = torch.tensor(model.eos_ids, dtype=torch.long, device=dev)
        self.fill_token = int(model.eos_ids[0])
        self.end = L  # EoTP: slots at or after `end` are final
        self.clock = clock
        self.ttft: float | None = None
        self.steps = 0
        self.edits = 0
        self.repeats = repetition_stop(settings)
        self.fed = 0  # generation tokens the repetition stop has read
        self.stop_len: int | None = None  # the repetition stop's cut: generation tokens kept
        self.wide = wide_dtype(dev)  # confidences and the packed transfer
        self.flags: list[float] = []  # the last commit's flags, on the host

    # -- blocks ---------------------------------------------------------------------------------

    def block_stop(self, bs: int, be: int) -> int:
        """``be``, cut at the end of the model block holding ``bs`` (models with a block grid).

        A block-diffusion model conditions a block only on final earlier blocks, so a decode block
        never straddles a model block; a prompt that ends inside a model block shares it with the
        first slots.
        """
        grid = self.model.block_end(bs)
        return be if grid is None else min(be, grid)

    def next_block(self, bs: int) -> int:
        """The end of the decode block that starts at ``bs``."""
        return self.block_stop(bs, min(bs + self.block_length, self.length))

    def blocks(self) -> list[tuple[int, int]]:
        """Every decode block ``[bs, be)`` of the generation, left to right."""
        out, a = [], self.prompt
        while a < self.length:
            out.append((a, self.next_block(a)))
            a = out[-1][1]
        return out

    # -- the host mirror ------------------------------------------------------------------------

    def is_eos(self, tokens: np.ndarray) -> np.ndarray:
        """Which host ``tokens`` are end tokens (a comparison: ``np.isin`` costs more for a few ids)."""
        return (tokens[..., None] == self.eos_ids).any(-1)

    def masked(self, a: int, b: int) -> int:
        """Mask slots left in ``[a, b)``."""
        return int((self.host[a:b] == self.mask_id).sum())

    def first_mask(self, a: int, b: int) -> int | None:
        """The first masked position in ``[a, b)``, or None."""
        hits = np.flatnonzero(self.host[a:b] == self.mask_id)
        return a + int(hits[0]) if len(hits) else None

    def committed(self, a: int, b: int) -> list[int]:
        """The tokens of ``[a, b)`` as the host sees them (mask id where still masked)."""
        return self.host[a:b].tolist()

    def progress(self) -> float:
        """The fraction of generation slots already final."""
        return 1.0 - self.masked(self.prompt, self.end) / self.slots

    # -- events ---------------------------------------------------------------------------------

    def start(self) -> Start:
        return Start("diffusion", self.prompt, self.slots, self.block_length)

    def commit(self, bs: int, selected: torch.Tensor, x0: torch.Tensor, confidence: torch.Tensor, *, nfe: int,
               block: int, edited: torch.Tensor | None = None, in_order: bool = False,
               flags: tuple[torch.Tensor, ...] = ()) -> Step:
        """Write the ``selected`` rows of the block at ``bs`` (and rewrite the ``edited`` ones) to ``x0``.

        Rows are the block's, device tensors of one length. With EoTP the rows after the first end
        token written are dropped (by position), and the masks after it become final; with
        ``in_order`` the caller has already cut its rows in the order it commits them (FreeDave
        replays a one-token-per-step baseline), so no row is dropped here. ``flags`` are device
        scalars the caller needs on the host after this step (a rule's verdict, whether it edited):
        they travel in the same transfer and are left in :attr:`flags` as floats. Returns the step's event.
        """
        x = self.x
        be = bs + selected.shape[0]
        cur = x[0, bs:be]
        write = selected if edited is None else selected | edited
        if self.eotp and not in_order:
            hit = write & torch.isin(x0, self.eos)
            before = (torch.cumsum(hit.long(), 0) - hit.long()) == 0  # rows up to the first end token
            selected = selected & before
            edited = edited & before if edited is not None else None
            write = write & before
        x[0, bs:be] = torch.where(write, x0, cur)
        rows = [selected, edited if edited is not None else torch.zeros_like(selected), x0, confidence.to(self.wide)]
        packed = torch.stack(rows)  # promoted to the confidences' dtype: exact for flags and token ids
        if flags:
            packed = torch.cat([packed.flatten(), torch.stack([f.to(self.wide).reshape(()) for f in flags])])
        packed = packed.cpu().numpy()  # the step's one host transfer
        n = selected.shape[0]
        self.flags = packed[4 * n :].tolist() if flags else []
        return self.absorb(bs, packed[: 4 * n].reshape(4, n), nfe=nfe, block=block)

    def absorb(self, bs: int, packed: np.ndarray, *, nfe: int, block: int) -> Step:
        """The host half of :meth:`commit`: the block's ``[4, n]`` rows (selected, edited, x0, confidence)
        already written on the device and brought over, into the host mirror, EoTP, the repetition stop
        and the step's event. A batch (:mod:`.batch`) brings every row's over in one transfer."""
        sel = np.flatnonzero(packed[0])
        ed = np.flatnonzero(packed[1])
        tokens = packed[2].astype(np.int64)
        self.host[bs + sel] = tokens[sel]
        self.host[bs + ed] = tokens[ed]
        self.edits += len(ed)
        filled: list[int] = []
        if self.eotp:
            wrote = np.union1d(sel, ed)
            ends = wrote[self.is_eos(tokens[wrote])]
            if len(ends) and bs + int(ends[0]) + 1 < self.end:
                filled = self.fill_after(bs + int(ends[0]))
        if self.repeats is not None and self.stop_len is None:
            filled += self.check_repeats()
        step = Step(self.steps, nfe, (bs + sel - self.prompt).tolist(), tokens[sel].tolist(), packed[3][sel].tolist(),
                    block=block, filled=filled, filled_token=self.fill_token if filled else None,
                    edited=(bs + ed - self.prompt).tolist(), edited_tokens=tokens[ed].tolist())
        return self.record(step)

    def fill_after(self, j: int) -> list[int]:
        """EoTP: the end token at ``j`` makes every later slot final; returns the filled slots (generation-relative)."""
        tail = np.flatnonzero(self.host[j + 1 : self.end] == self.mask_id) + j + 1
        seg = self.x[0, j + 1 : self.end]
        self.x[0, j + 1 : self.end] = torch.where(seg == self.mask_id, torch.full_like(seg, self.fill_token), seg)
        self.host[tail] = self.fill_token
        self.end = j + 1
        return (tail - self.prompt).tolist()

    def check_repeats(self) -> list[int]:
        """Feed the slots that became final (before the first mask or end token) to the repetition stop;
        when it triggers, every slot after the cut becomes a final end token: returns those slots
        (generation-relative), which the step reports as filled."""
        a = self.prompt + self.fed
        seg = self.host[a : self.end]
        stops = np.flatnonzero((seg == self.mask_id) | self.is_eos(seg))
        b = a + (int(stops[0]) if len(stops) else len(seg))
        if b == a or not self.feed_final(self.host[a:b]):
            return []
        # The text ends at the cut: every later slot, masked or already committed, becomes the end token.
        cut = self.prompt + self.stop_len
        self.x[0, cut : self.end] = self.fill_token
        self.host[cut : self.end] = self.fill_token
        tail, self.end = list(range(self.stop_len, self.end - self.prompt)), cut
        return tail

    def feed_final(self, tokens: Any) -> bool:
        """Give the repetition stop the next final generation tokens; True when it ends the generation."""
        keep = self.repeats.feed(tokens)
        if keep is None:
            self.fed += len(tokens)
            return False
        self.stop_len = self.fed + keep
        return True

    def record(self, step: Step) -> Step:
        """Count a step built elsewhere (a loop with its own canvas) and note the time to the first token."""
        if self.ttft is None and (step.positions or step.edited):
            self.ttft = self.clock.elapsed()
        self.steps += 1
        return step

    def done(self, nfe: int, tokens: list[int] | None = None, **counts: Any) -> Done:
        """The run's end: the generated tokens up to the first end token, and the loop's counts.

        ``tokens`` replaces the canvas's own generation (a loop that keeps its own canvas).
        """
        out = self.host[self.prompt :] if tokens is None else np.array(tokens, dtype=np.int64)
        hits = np.flatnonzero(self.is_eos(out))
        cut = int(hits[0]) if len(hits) else len(out)
        reason = "eos" if len(hits) else "length"
        if self.stop_len is not None:
            cut, reason = self.stop_len, "repetition"
        return Done(tokens=out[:cut].tolist(), nfe=nfe, steps=self.steps, seconds=self.clock.elapsed(),
                    ttft_seconds=self.ttft, finish_reason=reason, **counts)
