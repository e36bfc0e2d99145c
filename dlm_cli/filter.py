"""``dlm filter train``: Learn2PD's filter for a dLLM, from its own one-token-per-step decodes (minutes on a CPU).

For each training prompt: decode it one token per step (LLaDA low-confidence remasking, greedy,
no EoTP, so every slot has a reference token), then decode it again with the oracle
(:class:`~dlm_cli.decode.rules.learn2pd.Oracle`), which commits every masked position whose ``x0``
already equals the reference and records, at every step, the block's confidence vector and which
positions are right. The filter (``Linear(32, 32) → ReLU → Linear(32, 32)``) is fitted to those
labels with BCE-with-logits and AdamW (lr 3e-3, full batch), on an 80/10/10 split, as the paper's
notebook does; the report gives the held-out precision and recall at the decode threshold.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TYPE_CHECKING

import torch

from .errors import UsageError

if TYPE_CHECKING:
    from .models.protocols import Model


@dataclass
class FilterRequest:
    model: Optional[str]
    prompts: Optional[Path]
    count: int
    max_new_tokens: Optional[int]
    epochs: int
    out: Optional[Path]
    seed: int
    load: Any


def default_prompts(model: Model, count: int) -> list[str]:
    """Training prompts, never the bench's held-out ones: the toy task stream, or real paragraphs and chat topics."""
    from .models.resolve import is_toy

    if is_toy(model.info.path):
        from .demo.tasks import training_stream

        stream = training_stream(20260)
        return [next(stream).prompt for _ in range(count)]
    from .demo.realtext import chat_prompts, paragraphs, typo_prompt

    rng = random.Random(20260)
    paras = [p for p in paragraphs() if not p.held_out and 40 <= len(p.text.split()) <= 120]
    rng.shuffle(paras)
    typo = [typo_prompt(p, rng).prompt for p in paras[: (count + 1) // 2]]
    chat = [p.prompt for p in chat_prompts(False, rng, count - len(typo))]
    return (typo + chat)[:count]


def read_prompts(path: Path) -> list[str]:
    from .evals.prompt import load_prompts

    return [p.prompt for p in load_prompts(path)]


def collect(model: Model, prompt_ids: list[int], settings: Any) -> tuple[list[tuple[torch.Tensor, torch.Tensor, int]], int]:
    """One prompt's (confidences, labels, rows) samples, and the NFE the oracle needed."""
    from .decode import make_generator, run
    from .decode.events import Clock, Step
    from .decode.loops import blocks
    from .decode.rules.learn2pd import Oracle

    n = settings.max_new_tokens
    reference = torch.full((n,), -1, dtype=torch.long)
    for ev in run(model, prompt_ids, settings):
        if isinstance(ev, Step):
            reference[torch.tensor(ev.positions, dtype=torch.long)] = torch.tensor(ev.tokens, dtype=torch.long)
            if ev.filled:
                reference[torch.tensor(ev.filled, dtype=torch.long)] = ev.filled_token
    cfg = settings.frozen()
    oracle = Oracle(cfg, reference)
    nfe = 0
    for ev in blocks.run(model, prompt_ids, cfg, oracle, make_generator(model.device, cfg.seed), Clock()):
        nfe = getattr(ev, "nfe", nfe)
    return oracle.samples, nfe


def fit(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, epochs: int, seed: int,
        threshold: float) -> tuple[Any, dict[str, float]]:
    """Train the filter on an 80/10/10 split; returns it and the held-out figures at ``threshold``."""
    from .decode.rules.learn2pd import Filter

    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=g)
    n_train, n_val = int(0.8 * len(order)), int(0.1 * len(order))
    tr, va, te = order[:n_train], order[n_train: n_train + n_val], order[n_train + n_val:]
    torch.manual_seed(seed)
    net = Filter(x.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    for _ in range(epochs):
        opt.zero_grad()
        loss = (loss_fn(net(x[tr]), y[tr]) * valid[tr]).sum() / valid[tr].sum()
        loss.backward()
        opt.step()

    def figures(idx: torch.Tensor) -> dict[str, float]:
        if len(idx) == 0:
            return {}
        with torch.no_grad():
            pred = (torch.sigmoid(net(x[idx])) > threshold) & valid[idx].bool()
        truth = y[idx].bool() & valid[idx].bool()
        tp = int((pred & truth).sum())
        return {"precision": tp / max(int(pred.sum()), 1), "recall": tp / max(int(truth.sum()), 1),
                "positives": int(truth.sum()) / max(int(valid[idx].sum()), 1)}

    return net.eval(), {"final_loss": float(loss.detach()), **{f"val_{k}": v for k, v in figures(va).items()},
                        **{f"test_{k}": v for k, v in figures(te).items()}}


def run_filter_train(req: FilterRequest, *, load_model: Callable[..., Any]) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from safetensors.torch import save_file

    from . import profiles
    from .decode.rules.learn2pd import cache_path
    from .models.resolve import check_trained
    from .prompting import check_length, encode

    err = Console(stderr=True, highlight=False)
    model = load_model(req.model, req.load, err)
    if model.kind != "diffusion":
        raise UsageError(f"a Learn2PD filter is for a diffusion LLM, but {model.info.name} is an autoregressive LM")
    texts = read_prompts(req.prompts) if req.prompts else default_prompts(model, req.count)
    from .demo.realtext import ANSWER_TOKENS
    from .models.resolve import is_toy

    n = req.max_new_tokens or (64 if is_toy(model.info.path) else ANSWER_TOKENS)
    # A block-diffusion model's prefix cache is exact: the same decodes, many times faster.
    exact = ["cache=prefix"] if getattr(model, "block_size", None) is not None else []
    settings = profiles.load("baseline", sets=exact, flags={"max_new_tokens": n, "seed": req.seed})
    check_trained(model, n)
    samples: list[tuple[torch.Tensor, torch.Tensor, int]] = []
    nfe = 0
    t0 = time.perf_counter()
    with Progress(TextColumn("oracle decodes"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task("prompts", total=len(texts))
        for text in texts:
            ids = encode(model.tokenizer, text, chat_template=True)
            check_length(len(ids), n, model.max_length, model.info.name)
            got, k = collect(model, ids, settings)
            samples += got
            nfe += k
            bar.advance(task)
    if not samples:
        raise UsageError("the oracle recorded no steps; give prompts the model answers (--prompts FILE)")
    x = torch.stack([s[0] for s in samples])
    y = torch.stack([s[1] for s in samples])
    valid = torch.stack([(torch.arange(x.shape[1]) < s[2]).float() for s in samples])
    threshold = profiles.load("learn2pd").filter_threshold
    net, report = fit(x, y, valid, req.epochs, req.seed, threshold)
    out = req.out or cache_path(model.info.name)
    meta = {"model": model.info.name, "prompts": str(len(texts)), "samples": str(len(samples)),
            "max_new_tokens": str(n), "epochs": str(req.epochs), "seed": str(req.seed),
            "oracle_nfe_per_prompt": f"{nfe / len(texts):.2f}", "report": json.dumps(report)}
    from .atomic import replace_atomically

    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    try:
        replace_atomically(out, lambda tmp: save_file(state, str(tmp), metadata=meta))
    except OSError as exc:
        raise UsageError(f"cannot write the filter to {out}: {exc.strerror or exc}; pass --out PATH") from None
    figures = " · ".join(f"{k} {v:.3f}" for k, v in report.items())
    sys.stdout.write(json.dumps({"filter": str(out), "model": model.info.name, "prompts": len(texts),
                                 "samples": len(samples), "oracle_nfe_per_prompt": nfe / len(texts),
                                 "seconds": time.perf_counter() - t0, **report}) + "\n")
    err.print(f"dlm: note: wrote {out} ({len(samples)} steps from {len(texts)} prompts; {figures})", markup=False,
              highlight=False)
