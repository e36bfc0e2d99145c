"""EAD, Entropy Adaptive Decoding (Simonds, 2025, arXiv 2502.06833): the small and the large model take turns.

Each token comes from the current model. Its entropy ``H_t = −Σ p log2 p`` (bits, from the raw
logits, before temperature) is averaged over the last ``ead_window`` tokens; while the average is
above ``ead_threshold`` the large model (the target, ``-m``) writes, otherwise the small one
(``--draft``). A switch waits until the current model has written ``ead_min_run`` tokens in a row
(the paper's "stability constraint", whose form could not be read: dlm's reading is this
hysteresis). The model that takes over first catches its KV cache up on what the other wrote, in
one forward. Lossy by design: the output is neither model's own. NFE counts the large model's
forwards, ``draft_nfe`` the small one's; ``large_share`` is the share of tokens the large one wrote.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterator, TYPE_CHECKING

import torch

from ...models.causal import rollback
from ..events import Clock, Done, Event, Start, Step
from ..sampling import gumbel_argmax, warp

if TYPE_CHECKING:
    from ..keys import RunSettings
    from ...models.protocols import ARModel


class Lane:
    """One model's KV cache over the committed sequence."""

    def __init__(self, model: ARModel) -> None:
        self.model, self.cache, self.cached, self.nfe = model, model.new_cache(), 0, 0

    def next_logits(self, buf: torch.Tensor, length: int) -> torch.Tensor:
        """Logits for the token after ``buf[:length]``, feeding only what this cache lacks."""
        logits = self.model.forward(buf[self.cached: length], self.cache, keep=1)[0]
        self.nfe += 1
        self.cached = length
        return logits


def run(target: Any, prompt_ids: list[int], settings: RunSettings, small: Any, generator: torch.Generator,
        clock: Clock) -> Iterator[Event]:
    s = settings
    device = target.device
    eos = set(target.eos_ids)
    limit = s.max_new_tokens
    buf = torch.empty(len(prompt_ids) + limit, dtype=torch.long, device=device)
    buf[: len(prompt_ids)] = torch.tensor(prompt_ids, dtype=torch.long, device=device)
    length = len(prompt_ids)
    lanes = {"large": Lane(target), "small": Lane(small)}
    current, run_length = "small", s.ead_min_run - 1  # the first token may already hand over
    window: deque[float] = deque(maxlen=s.ead_window)
    out: list[int] = []
    by_large = switches = 0
    ttft = None
    finish = "length"
    yield Start(kind="autoregressive", prompt_tokens=length, length=limit)
    while len(out) < limit:
        lane = lanes[current]
        small_buf = buf if lane.model.device == device else buf.to(lane.model.device)
        logits = lane.next_logits(small_buf, length).to(device).float()
        logp = torch.log_softmax(logits, -1)
        if s.temperature > 0:
            pick = gumbel_argmax(warp(logits.double(), s.temperature, s.top_k, s.top_p), generator)
        else:
            pick = logits.argmax()
        buf[length] = pick
        # Entropy (bits), the token and its probability: one host transfer per token.
        h, conf, token = torch.stack([-(logp.exp() * logp).sum() / math.log(2), logp[pick].exp(),
                                      pick.to(logp.dtype)]).tolist()
        token = int(token)
        length += 1
        by_large += current == "large"
        if ttft is None:
            ttft = clock.elapsed()
        yield Step(step=len(out), nfe=lanes["large"].nfe, positions=[len(out)], tokens=[token], confidences=[conf])
        if token in eos:
            finish = "eos"
            break
        out.append(token)
        window.append(h)
        run_length += 1
        mean = sum(window) / len(window)
        want = "large" if mean > s.ead_threshold else "small"
        if want != current and run_length >= s.ead_min_run:
            current, run_length = want, 0
            switches += 1
            other = lanes[current]
            rollback(other.cache, min(other.cached, length - 1))
            other.cached = min(other.cached, length - 1)
    t = clock.elapsed()
    yield Done(tokens=out, nfe=lanes["large"].nfe, steps=len(out) + (finish == "eos"), seconds=t, ttft_seconds=ttft,
               finish_reason=finish, draft_nfe=lanes["small"].nfe,
               extra={"large_share": by_large / max(len(out) + (finish == "eos"), 1), "switches": switches})
