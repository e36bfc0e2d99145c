"""Adapt SmolLM2-135M-Instruct to block diffusion on the CPU: the recipe behind ``smollm2-dlm``.

    python -m dlm_cli.demo.adapt all --work ~/.cache/dlm/adapt --out dlm_cli/demo/weights/smollm2-dlm
    python -m dlm_cli.demo.adapt data --work W          # the prompts, and SmolLM2's greedy answers
    python -m dlm_cli.demo.adapt train --work W         # resumable: rerun the same command to go on
    python -m dlm_cli.demo.adapt export --work W --out DIR

The recipe is Fast-dLLM v2's (Wu et al. 2025), cut down to what two CPU cores can train:

- **Objective.** Each training row is ``[x_0 ; x_t ; x_t']``: the clean sequence, then two noisy copies
  of its answer blocks that share the clean copy's position ids (BD3-LM's concatenation). ``x_t``
  masks each answer token of a block with probability ``t ~ U(eps, 1)``, drawn per block, and
  ``x_t'`` masks exactly the others (Fast-dLLM v2's complementary mask), so every answer token is a
  target once. A noisy block sees itself bidirectionally and the clean blocks before it; the clean
  copy is block-causal. The AR shift is kept: the output at ``i - 1`` predicts token ``i``, so the
  first token of a block is predicted from the clean previous block, exactly as the decoder does.
  Plain cross-entropy over the targets.
- **Block grid.** Blocks of ``--block-size`` positions counted from position 0, as dlm's decoder cuts
  them; each row draws its grid from ``--block-sizes`` so one model serves several.
- **What trains.** A LoRA (PEFT) on every linear layer, and the embedding of a new mask token; the
  base weights stay frozen, so the shipped delta is small and block size 1 stays close to SmolLM2.
- **Data, offline.** Typo fixing and reformatting of standard-library docstring paragraphs with gold
  answers (:mod:`.realtext`), and chat and continuation prompts answered by SmolLM2 itself, greedy
  (self-distillation keeps the adapted model close to its base).

Training writes ``checkpoint.pt`` every ``--checkpoint-minutes`` (atomically) and logs loss and tokens/s
to ``train.log``; the data order and masks derive from ``--seed`` and the step, so a resumed run is
the run that was not interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import realtext as R

EPS = 1e-3
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MIX = {"typo": 0.4, "chat": 0.25, "continue": 0.15, "reformat": 0.2}
MAX_PROMPT, MAX_ANSWER = 256, 224


def log(work: Path, msg: str) -> None:
    line = f"{time.strftime('%H:%M:%S')} {msg}"
    print(line, flush=True)
    with open(work / "train.log", "a") as fh:
        fh.write(line + "\n")


def base_dir() -> Path:
    from ..models.loading import LoadOptions, resolve_path

    return resolve_path("smollm2", LoadOptions(device="cpu"))[1]


# ---------------------------------------------------------------------------------------------- data
def training_prompts(seed: int, n_chat: int, n_continue: int) -> list[R.Prompt]:
    rng = random.Random(seed)
    paras = [p for p in R.paragraphs() if not p.held_out]
    out: list[R.Prompt] = []
    for p in paras:
        for _ in range(2):  # two typo draws per paragraph
            out.append(R.typo_prompt(p, rng))
        ref = R.reformat_prompt(p, rng)
        if ref is not None:
            out.append(ref)
    out += R.chat_prompts(False, rng, n_chat)
    rng.shuffle(paras)
    out += [R.continue_prompt(p, rng) for p in paras[:n_continue]]
    return out


def distill(prompts: list[R.Prompt], base: Path, work: Path, max_new: int, batch: int) -> list[str]:
    """SmolLM2's own greedy answers (transformers' generate with its KV cache), cached in ``work``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..prompting import encode

    cache = work / "distilled.jsonl"
    done: dict[str, str] = {}
    if cache.is_file():
        for line in cache.read_text().splitlines():
            row = json.loads(line)
            done[row["prompt"]] = row["answer"]
    todo = [p.prompt for p in prompts if p.prompt not in done]
    if todo:
        tok = AutoTokenizer.from_pretrained(str(base))
        tok.padding_side = "left"
        net = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
        t0, made = time.time(), 0
        with open(cache, "a") as fh, torch.inference_mode():
            for i in range(0, len(todo), batch):
                chunk = todo[i : i + batch]
                ids = [encode(tok, t) for t in chunk]
                width = max(map(len, ids))
                inp = torch.tensor([[tok.pad_token_id] * (width - len(x)) + x for x in ids])
                att = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
                out = net.generate(input_ids=inp, attention_mask=att, max_new_tokens=max_new, do_sample=False,
                                   eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                                   pad_token_id=tok.pad_token_id)
                for text, row in zip(chunk, out[:, width:]):
                    answer = tok.decode(row, skip_special_tokens=True)
                    made += int((row != tok.pad_token_id).sum())
                    done[text] = answer
                    fh.write(json.dumps({"prompt": text, "answer": answer}) + "\n")
                log(work, f"distill {min(i + batch, len(todo))}/{len(todo)} prompts, "
                          f"{made / (time.time() - t0):.0f} tok/s")
    return [done[p.prompt] for p in prompts]


def build_data(work: Path, seed: int, n_chat: int, n_continue: int, max_new: int, batch: int) -> Path:
    from transformers import AutoTokenizer

    from ..prompting import encode

    work.mkdir(parents=True, exist_ok=True)
    base = base_dir()
    prompts = training_prompts(seed, n_chat, n_continue)
    need = [p for p in prompts if p.answer is None]
    answers = dict(zip((p.prompt for p in need), distill(need, base, work, max_new, batch)))
    tok = AutoTokenizer.from_pretrained(str(base))
    end = tok.convert_tokens_to_ids("<|im_end|>")
    out = work / "data.jsonl"
    tmp = out.with_suffix(".tmp")
    kept = 0
    with open(tmp, "w") as fh:
        for p in prompts:
            answer = p.answer if p.answer is not None else answers[p.prompt]
            if not answer.strip():
                continue
            pids = encode(tok, p.prompt)
            aids = tok.encode(answer, add_special_tokens=False)
            finished = len(aids) < max_new or p.answer is not None
            aids = aids[:MAX_ANSWER] + ([end] if finished and len(aids) <= MAX_ANSWER else [])
            if len(pids) > MAX_PROMPT:
                continue
            fh.write(json.dumps({"kind": p.kind, "prompt_ids": pids, "answer_ids": aids}) + "\n")
            kept += 1
    os.replace(tmp, out)
    log(work, f"data: {kept} rows -> {out}")
    return out


# --------------------------------------------------------------------------------------- the network
class Adapted(torch.nn.Module):
    """The block-diffusion stack with a LoRA on its linear layers and a trainable mask embedding."""

    def __init__(self, net: torch.nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        for p in net.parameters():
            p.requires_grad_(False)
        self.lora_config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=list(TARGETS),
                                      bias="none")
        self.net = inject_adapter_in_model(self.lora_config, net)
        for name, p in self.net.named_parameters():
            p.requires_grad_("lora_" in name)
        emb = net.model.embed_tokens.weight
        self.vocab = emb.shape[0]
        self.mask_embedding = torch.nn.Parameter(emb.detach().mean(0).clone())

    @property
    def mask_id(self) -> int:
        return self.vocab

    def hidden(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = self.net.model
        is_mask = (ids == self.mask_id).unsqueeze(-1)
        h = m.embed_tokens(ids.clamp(max=self.vocab - 1))
        h = torch.where(is_mask, self.mask_embedding.to(h.dtype), h)
        rope = m.rotary_emb(h, positions)
        for layer in m.layers:
            h = layer(h, attention_mask=mask[None, None], position_embeddings=rope, position_ids=positions,
                      is_causal=False)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return F.linear(self.net.model.norm(h), self.net.model.embed_tokens.weight)


def make_row(prompt: list[int], answer: list[int], block: int, end: int, mask_id: int,
             gen: torch.Generator, pairs: int = 1) -> tuple[torch.Tensor, ...]:
    """One training row ``[x_0 ; x_t ; x_t' ; ...]``: ids, positions, attention mask, predictor rows, targets.

    ``pairs`` complementary pairs of noisy copies share one clean copy (its prompt is the costly part).
    """
    P = len(prompt)
    A = len(answer)
    L = -(-(P + A) // block) * block  # whole blocks: the answer is padded with end tokens, as decoded
    x0 = torch.tensor(prompt + answer + [end] * (L - P - A))
    S = P // block * block  # the first block holding an answer slot
    W = L - S
    span = torch.arange(S, L)
    blk = span // block
    answer_slot = span >= P
    copies, masked = [], []
    for _ in range(pairs):
        t = torch.rand(int(blk.max() - blk.min()) + 1, generator=gen) * (1 - EPS) + EPS
        draw = torch.rand(W, generator=gen) < t[blk - blk.min()]
        for m in (draw & answer_slot, ~draw & answer_slot):
            copies.append(torch.where(m, mask_id, x0[S:]))
            masked.append(m)
    ids = torch.cat([x0, *copies])
    pos = torch.cat([torch.arange(L)] + [span] * len(copies))
    stream = torch.cat([torch.zeros(L, dtype=torch.long)] +
                       [torch.full((W,), k + 1, dtype=torch.long) for k in range(len(copies))])
    b = pos // block
    sq, sk, bq, bk = stream[:, None], stream[None, :], b[:, None], b[None, :]
    mask = ((sq == 0) & (sk == 0) & (bk <= bq)) | ((sq > 0) & (sk == 0) & (bk < bq)) | \
           ((sq > 0) & (sk == sq) & (bk == bq))
    # Targets: every answer slot i (and its end padding), predicted from the output at i - 1: the clean
    # copy when i starts a block (once), else, in each pair, the noisy copy in which i is masked.
    i = torch.arange(P, L)
    first = i % block == 0
    src = [i[first] - 1]
    tgt = [x0[i[first]]]
    rest = i[~first]
    for k in range(pairs):
        in_a = masked[2 * k][rest - S]
        row_a = L + (2 * k) * W + (rest - 1 - S)
        src.append(torch.where(in_a, row_a, row_a + W))
        tgt.append(x0[rest])
    return ids, pos, mask, torch.cat(src), torch.cat(tgt)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup)))))


def load_rows(path: Path) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["kind"], []).append(row)
    return rows


def pick(rows: dict[str, list[dict[str, Any]]], rng: random.Random) -> dict[str, Any]:
    kinds = [k for k in MIX if rows.get(k)]
    kind = rng.choices(kinds, weights=[MIX[k] for k in kinds])[0]
    return rng.choice(rows[kind])


def build_model(rank: int, alpha: float) -> Adapted:
    from ..models.adapter import build_base
    from ..models.loading import read_config

    base = base_dir()
    net = build_base(base, read_config(base), "llama", torch.float32, torch.device("cpu"))
    return Adapted(net, rank, alpha)


def train(work: Path, *, seed: int, steps: int, rows_per_step: int, lr: float, rank: int, alpha: float,
          block_sizes: tuple[int, ...], bf16: bool, checkpoint_minutes: float, stop_minutes: float | None,
          pairs: int = 2, stop_step: int | None = None) -> Path:
    torch.manual_seed(seed)
    model = build_model(rank, alpha)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    ckpt = work / "checkpoint.pt"
    step = 0
    if ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["opt"])
        step = int(state["step"])
        log(work, f"resumed at step {step}")
    data = load_rows(work / "data.jsonl")
    end = 2  # <|im_end|>
    n_params = sum(p.numel() for p in params)
    log(work, f"train: {n_params / 1e6:.2f}M trainable params, {steps} steps x {rows_per_step} rows, lr {lr}, "
              f"rank {rank}, blocks {block_sizes}, {pairs} mask pairs, bf16 {bf16}")
    t_start = last_save = time.time()
    tokens = targets = 0
    window = time.time()
    losses: list[float] = []

    def save() -> None:
        tmp = ckpt.with_suffix(".tmp")
        trainable = {k: v for k, v in model.state_dict().items() if "lora_" in k or k == "mask_embedding"}
        torch.save({"model": trainable, "opt": opt.state_dict(), "step": step}, tmp)
        os.replace(tmp, ckpt)

    while step < min(steps, stop_step or steps):
        rng = random.Random(seed * 1_000_003 + step)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup=max(1, steps // 25))
        total = 0.0
        batch = []
        for _ in range(rows_per_step):
            row = pick(data, rng)
            block = rng.choice(block_sizes)
            batch.append(make_row(row["prompt_ids"], row["answer_ids"], block, end, model.mask_id, gen, pairs))
        n_targets = sum(len(r[4]) for r in batch)
        for ids, pos, mask, src, tgt in batch:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                h = model.hidden(ids[None], pos[None], mask)
                logits = model.logits(h[0, src])
            loss = F.cross_entropy(logits.float(), tgt, reduction="sum") / n_targets
            loss.backward()
            total += float(loss.detach())
            tokens += len(ids)
            targets += len(tgt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(total)
        if step % 10 == 0 or step == steps:
            dt = time.time() - window
            log(work, f"step {step}/{steps} loss {sum(losses) / len(losses):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                      f"{tokens / dt:.0f} tok/s ({targets / dt:.0f} targets/s) elapsed {(time.time() - t_start) / 60:.1f} min")
            losses, tokens, targets, window = [], 0, 0, time.time()
        if time.time() - last_save > checkpoint_minutes * 60 or step in (steps, stop_step):
            save()
            last_save = time.time()
        if stop_minutes is not None and time.time() - t_start > stop_minutes * 60:
            save()
            log(work, f"stopped after {stop_minutes} min at step {step}; rerun to resume")
            break
    return ckpt


def export(work: Path, out: Path, *, rank: int, alpha: float, block_size: int, meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    from ..models import adapter

    state = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=True)
    lora = {}
    for k, v in state["model"].items():
        if "lora_" in k:
            name = k.removeprefix("net.").replace(".default", "")
            lora[name] = v.to(torch.bfloat16).contiguous()
    mask = state["model"]["mask_embedding"].float().contiguous()
    out.mkdir(parents=True, exist_ok=True)
    save_file(lora, str(out / adapter.ADAPTER_FILE), metadata={"format": "pt"})
    save_file({"mask_embedding": mask}, str(out / adapter.MASK_FILE), metadata={"format": "pt"})
    (out / adapter.ADAPTER_CONFIG).write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none",
        "target_modules": list(TARGETS), "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps({
        "model_type": adapter.MODEL_TYPE, "base_model": "smollm2", "layers": "llama", "block_size": block_size,
        "shift": True, "training": {**meta, "step": int(state["step"])},
    }, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dlm_cli.demo.adapt", description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", choices=("data", "train", "export", "all"))
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "dlm" / "adapt")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "weights" / "smollm2-dlm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--rows-per-step", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--block-sizes", default="8,16")
    ap.add_argument("--block-size", type=int, default=8, help="the grid the exported model decodes on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast (2.3x slower than float32 here)")
    ap.add_argument("--pairs", type=int, default=2, help="complementary pairs of noisy copies per row")
    ap.add_argument("--checkpoint-minutes", type=float, default=10.0)
    ap.add_argument("--stop-minutes", type=float, default=None, help="stop (resumably) after this long")
    ap.add_argument("--stop-step", type=int, default=320,
                    help="stop at this step of the --steps schedule: the shipped run stopped at 320 (see the card); "
                    "0 runs the whole schedule")
    ap.add_argument("--chat", type=int, default=300)
    ap.add_argument("--continue-prompts", type=int, default=150)
    ap.add_argument("--distill-tokens", type=int, default=160)
    ap.add_argument("--distill-batch", type=int, default=20)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    sizes = tuple(int(s) for s in a.block_sizes.split(","))
    if a.stage in ("data", "all"):
        build_data(a.work, a.seed, a.chat, a.continue_prompts, a.distill_tokens, a.distill_batch)
    if a.stage in ("train", "all"):
        train(a.work, seed=a.seed, steps=a.steps, rows_per_step=a.rows_per_step, lr=a.lr, rank=a.rank,
              alpha=a.alpha, block_sizes=sizes, bf16=a.bf16, checkpoint_minutes=a.checkpoint_minutes,
              stop_minutes=a.stop_minutes, pairs=a.pairs, stop_step=a.stop_step or None)
    if a.stage in ("export", "all"):
        meta = {"seed": a.seed, "steps": a.steps, "rows_per_step": a.rows_per_step, "lr": a.lr, "rank": a.rank,
                "alpha": a.alpha, "block_sizes": list(sizes), "bf16": a.bf16, "pairs": a.pairs,
                "stop_step": a.stop_step}
        export(a.work, a.out, rank=a.rank, alpha=a.alpha, block_size=a.block_size, meta=meta)
        log(a.work, f"exported -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
