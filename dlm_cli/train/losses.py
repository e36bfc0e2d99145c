"""The distillation objectives, as pure functions of logits (checked against hand computations in the tests).

- **dParallel** (Chen et al., arXiv 2509.26488; ``czg1225/dParallel``, ``DLMTrainer.compute_loss``):
  ``L = CE_m + CE_m̄ + β·(H_m + H_m̄)``. ``CE_v`` is the mean of ``−log p_i(y_i)`` over the masked
  positions of view ``v`` (``m̄`` masks the complement of ``m`` inside the active block); ``H_v`` is
  the mean, over the masked positions of view ``v`` whose argmax already equals ``y_i``, of the
  entropy of ``softmax(z_i / T)`` (``T = 0.5``), with gradient: certainty forcing pushes the model to
  be sure where it is already right, so that a confidence or entropy threshold commits more at once.
- **CD4LM** (Liang et al., arXiv 2601.02236; ``yihao-liang/CDLM``, ``ConsistencyTrainer.compute_loss``):
  over the student's masked set ``S``,
  ``L = λ·τ²·KL(softmax(z_t/τ) ‖ softmax(z_s/τ)) + (1 − λ)·CE(z_s, y)``, KL summed over the vocabulary
  and averaged over ``S`` (``batchmean``), ``τ = 2``, each term clamped to ``[0, 5]``; the frozen
  teacher saw fewer masks (``T ⊆ S``). ``λ`` holds 0.9 for the first 10% of the steps, then follows
  a cosine down to 0.5 (:func:`cd4lm_lambda`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DPARALLEL_T = 0.5
CD4LM_TAU = 2.0
CD4LM_CLAMP = 5.0


def entropy_of(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy (nats) of ``softmax(logits / temperature)`` along the last axis."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def dparallel_loss(logits: torch.Tensor, targets: torch.Tensor, view: torch.Tensor, beta: float,
                   temperature: float = DPARALLEL_T) -> tuple[torch.Tensor, dict[str, float]]:
    """dParallel's loss for one sample: ``logits [N, V]`` at the ``N`` masked targets of both views.

    ``view [N]`` says which view (0 = ``m``, 1 = ``m̄``) masked each target. A view with no target
    adds 0; so does a view with no correct argmax to its entropy term. Returns the loss and its parts.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, targets, reduction="none")
    right = logits.argmax(-1) == targets
    h = entropy_of(logits, temperature) if beta else torch.zeros_like(ce)
    total = logits.new_zeros(())
    ce_sum = h_sum = 0.0
    for v in (0, 1):
        in_v = view == v
        if bool(in_v.any()):
            ce_v = ce[in_v].mean()
            total = total + ce_v
            ce_sum += float(ce_v.detach())
        sure = in_v & right
        if beta and bool(sure.any()):
            h_v = h[sure].mean()
            total = total + beta * h_v
            h_sum += float(h_v.detach())
    return total, {"ce": ce_sum, "entropy": h_sum, "accuracy": float(right.float().mean()) if len(right) else 0.0}


def cd4lm_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, lam: float,
               tau: float = CD4LM_TAU, clamp: float = CD4LM_CLAMP) -> tuple[torch.Tensor, dict[str, float]]:
    """CD4LM's loss over the student's masked set: ``student``/``teacher`` logits ``[N, V]``, ``targets [N]``."""
    student, teacher = student.float(), teacher.float().detach()
    n = max(student.shape[0], 1)
    log_s = F.log_softmax(student / tau, dim=-1)
    log_t = F.log_softmax(teacher / tau, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum() / n * tau * tau
    ce = F.cross_entropy(student, targets, reduction="mean") if student.shape[0] else student.new_zeros(())
    kl_c, ce_c = kl.clamp(0.0, clamp), ce.clamp(0.0, clamp)
    loss = lam * kl_c + (1 - lam) * ce_c
    right = student.argmax(-1) == targets
    return loss, {"kl": float(kl.detach()), "ce": float(ce.detach()),
                  "accuracy": float(right.float().mean()) if len(right) else 0.0}


def cd4lm_lambda(step: int, steps: int, start: float = 0.9, end: float = 0.5, hold: float = 0.1) -> float:
    """``λ`` at ``step`` of ``steps``: ``start`` for the first ``hold`` share, then a cosine down to ``end``."""
    first = hold * steps
    if step < first or steps <= 0:
        return start
    frac = min(1.0, (step - first) / max(1.0, steps - first))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * frac))
