"""Train the embedded demo models from a seed on the CPU.

    python -m dlm_cli.demo.train all --out dlm_cli/demo/weights     # the three shipped models, in order
    python -m dlm_cli.demo.train dllm --seed 0 --steps 2000 --lr 1.5e-3 --init DIR --full-share 0.25 --out DIR2

``dllm`` is a LLaDA-layout masked-diffusion model trained with LLaDA's SFT objective: the prompt
is never masked; each answer token (the answer, ``<|eot_id|>``, then ``<|endoftext|>`` padding up
to the generation length, so the model learns where to stop) is masked with probability
``t ~ U(eps, 1)``, and the cross-entropy on masked tokens is weighted by ``1/t`` (LLaDA, Nie et
al. 2025, eq. 5). The network is dlm's own LLaDA module and the weights are saved under the
published LLaDA names, so what is trained is exactly what ``dlm`` loads.

Two choices make the dLLM learnable in minutes on a CPU. It starts from the AR target's weights
(same sizes and tokenizer; Dream starts from Qwen2.5 the same way): the embeddings and circuits
that find and copy prompt tokens are already there, and only have to learn to look both ways and
to fill a mask. And most rows use a short canvas (the answer, ``<|eot_id|>`` and 0..8 pads) with a
quarter on a full 32..64-slot one: a full canvas is mostly padding, which is easy to predict, so
short ones spend the compute on the answer tokens.

``ar`` and ``ar-draft`` are Llama-layout causal LMs (transformers' LlamaForCausalLM) trained on the
same chat-formatted task text with the loss on the answer and its ``<|eot_id|>``. The draft is
distilled from the target: its loss mixes the answer's cross-entropy with KL(target || draft) on
the same positions (``--teacher``, ``--distill``), since a draft is worth what it agrees with the
target, right or wrong. The target's first ``--focus-steps`` draw a share (``--focus-share``) of
their examples from ``lookup`` and the auxiliary ``recall`` task: the key-lookup experiments are
in ``dlm-demo``'s card.

The shipped recipes run the forwards under bfloat16 autocast (``--bf16``; the weights, the optimizer
and the saved checkpoints stay float32): on a CPU with AVX-512 BF16 a step is about 1.4x faster,
which buys the dLLM 5,000 steps instead of 2,600 within the 30-minute budget. The gain depends on
the CPU's bfloat16 support; without ``--bf16`` a model trains in float32 (and differs from the shipped one).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from . import tasks as T
from . import tokenizer as demo_tok

GEN_LENGTH = 64  # the dLLM's largest training canvas by default: dlm's default max_new_tokens
# Each full-canvas row draws its canvas length from these: shorter canvases cost less, and teach the model to
# stop within any generation length the user picks (-n); every default-suite answer fits the shortest.
GEN_LENGTHS = (32, 40, 48, 56, 64)


def gen_lengths(gen_length: int) -> tuple[int, ...]:
    """The full-canvas lengths for a largest canvas of ``gen_length`` (``--gen-length``): :data:`GEN_LENGTHS`
    for 64, else 32 and every multiple of 32 up to it (256: 32, 64, ..., 256), so that a model trained
    for GSM8K-length canvases pads every length from the default suite's to the long tasks'."""
    if gen_length == GEN_LENGTH:
        return GEN_LENGTHS
    return tuple(range(32, gen_length + 1, 32)) or (gen_length,)
EPS = 1e-3


@dataclass
class Size:
    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden: int


SIZES = {
    "dllm": Size(192, 4, 4, 512),
    "ar": Size(192, 4, 4, 512),
    "ar-draft": Size(80, 2, 2, 224),  # ~1/10 of the target's FLOPs per token
    "tiny": Size(32, 1, 2, 64),  # tests
}


def llada_config(tok: Any, size: Size) -> dict[str, Any]:
    vocab = tok.get_vocab()
    n = len(vocab)
    return {
        "activation_type": "silu", "alibi": False, "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0,
        "attention_layer_norm": False, "block_type": "llama", "d_model": size.d_model, "embedding_dropout": 0.0,
        "embedding_size": n, "eos_token_id": vocab["<|endoftext|>"], "bos_token_id": vocab["<|startoftext|>"],
        "include_bias": False, "include_qkv_bias": False, "init_std": 0.02, "layer_norm_type": "rms",
        "mask_token_id": vocab["<|mdm_mask|>"], "max_sequence_length": 512, "mlp_hidden_size": size.mlp_hidden,
        "mlp_ratio": 4, "model_type": "llada", "n_heads": size.n_heads, "n_kv_heads": size.n_heads,
        "n_layers": size.n_layers, "pad_token_id": vocab["<|endoftext|>"], "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05, "rope": True, "rope_theta": 10000.0, "torch_dtype": "float32", "use_cache": False,
        "vocab_size": n, "weight_tying": False,
    }


def generation_config(tok: Any) -> dict[str, Any]:
    vocab = tok.get_vocab()
    return {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": [vocab["<|eot_id|>"], vocab["<|endoftext|>"]],
            "pad_token_id": vocab["<|endoftext|>"]}


class Encoder:
    """Chat-formatted prompt ids, exactly as ``dlm`` encodes a prompt, and answer ids."""

    def __init__(self, tok: Any) -> None:
        from ..prompting import encode

        self.tok = tok
        self._encode = encode
        self.eot = tok.convert_tokens_to_ids("<|eot_id|>")
        self.pad = tok.convert_tokens_to_ids("<|endoftext|>")

    def prompt(self, text: str) -> list[int]:
        return self._encode(self.tok, text)

    def answer(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))


def canvas_lengths(answer_lens: list[int], rng: random.Random, full_share: float,
                   gen_length: int = GEN_LENGTH) -> list[int]:
    """Per-row canvas lengths: with probability ``full_share`` one of :data:`GEN_LENGTHS`, else the answer,
    its ``<|eot_id|>`` and 0..8 padding slots.

    Long canvases are mostly ``<|endoftext|>`` padding, which is easy to predict: short ones spend the
    steps on the answer tokens. The random padding keeps the canvas end from marking where the answer
    stops, and the full-length rows teach the model to pad any generation length.
    """
    full = gen_lengths(gen_length)
    out = []
    for n in answer_lens:
        if rng.random() < full_share:
            out.append(max(rng.choice(full), n + 1))
        else:
            out.append(min(gen_length, n + 1 + rng.randint(0, 8)))
    return out


def length_groups(lens: list[int], edges: tuple[int, ...] = (GEN_LENGTHS[0],)) -> list[list[int]]:
    """Row indices split by length at ``edges``: by default canvas lengths, short canvases and full ones
    (>= the shortest of :data:`GEN_LENGTHS`); a 256-slot model passes prompt + canvas lengths and
    :data:`LONG_EDGES`.

    Each group is its own forward: padded to one width, a batch with a quarter of 64-slot rows would be
    about twice as wide as its short rows need, and a training step would cost about twice as much."""
    bounds = (0, *edges, 1 << 30)
    groups = [[i for i, n in enumerate(lens) if lo <= n < hi] for lo, hi in zip(bounds, bounds[1:])]
    return [g for g in groups if g]


# A 256-slot model's groups, by prompt + canvas length: a long task's prompt is up to 108 tokens.
LONG_EDGES = (48, 96, 160, 224)


def dllm_batch(enc: Encoder, examples: list[T.Example], rng: random.Random,
               gen_length: int | list[int] = GEN_LENGTH, suffix_share: float = 0.0) -> tuple[torch.Tensor, ...]:
    """Left-padded ``ids``, the key mask, position ids, the answer region (each row's canvas) and the slots
    that may be masked.

    ``gen_length`` is one canvas length for every row or one per row. With probability ``suffix_share`` a
    row is a semi-autoregressive one: the canvas is cut at a random slot, everything before the cut stays
    clean and only the slots after it may be masked, as when a block is decoded left to right.
    """
    lens = gen_length if isinstance(gen_length, list) else [gen_length] * len(examples)
    rows, answer_start, cuts = [], [], []
    for ex, g in zip(examples, lens):
        p = enc.prompt(ex.prompt)
        a = enc.answer(ex.target(rng))[: g - 1] + [enc.eot]
        n = len(a)
        a += [enc.pad] * (g - len(a))
        rows.append(p + a)
        answer_start.append(len(p))
        cuts.append(rng.randint(0, n) if rng.random() < suffix_share else 0)
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), enc.pad, dtype=torch.long)
    keep = torch.zeros(len(rows), L, dtype=torch.bool)
    pos = torch.zeros(len(rows), L, dtype=torch.long)
    region = torch.zeros(len(rows), L, dtype=torch.bool)
    maskable = torch.zeros(len(rows), L, dtype=torch.bool)
    for i, r in enumerate(rows):
        off = L - len(r)
        ids[i, off:] = torch.tensor(r)
        keep[i, off:] = True
        pos[i, off:] = torch.arange(len(r))
        region[i, off + answer_start[i]:] = True
        maskable[i, off + answer_start[i] + cuts[i]:] = True
    return ids, keep, pos, region, maskable


def dllm_forward(net: Any, ids: torch.Tensor, keep: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The DenoiserStack's forward with per-row key padding and positions (training batches)."""
    hidden = net.model.embed_tokens(ids)
    rope = net.model.rotary_emb(hidden, pos)
    mask = keep[:, None, None, :]
    for layer in net.model.layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=pos, is_causal=False)
    return net.lm_head(net.model.norm(hidden))


def dllm_loss(net: Any, batch: tuple[torch.Tensor, ...], mask_id: int, gen: torch.Generator) -> torch.Tensor:
    """LLaDA SFT loss: mask answer tokens with probability t, weight masked cross-entropy by 1/t."""
    total, slots = dllm_loss_terms(net, batch, mask_id, gen)
    return total / slots


def dllm_loss_terms(net: Any, batch: tuple[torch.Tensor, ...], mask_id: int,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dllm_loss`'s numerator (the weighted masked cross-entropy) and denominator (maskable slots),
    so that the loss of a batch split into groups is the sum of numerators over the sum of denominators."""
    ids, keep, pos, region = batch[:4]
    maskable = batch[4] if len(batch) > 4 else region
    B = ids.shape[0]
    # Stratified t (one per row, spread over [eps, 1)): the same expectation, lower variance.
    u = (torch.arange(B) + torch.rand(B, generator=gen)) / B
    t = EPS + (1 - EPS) * u[torch.randperm(B, generator=gen)]
    masked = (torch.rand(ids.shape, generator=gen) < t[:, None]) & maskable
    x = torch.where(masked, torch.full_like(ids, mask_id), ids)
    logits = dllm_forward(net, x, keep, pos)
    ce = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    # 1/t with t the row's realised mask ratio (masked / slots), not the drawn one: the same weights in
    # expectation, but a row with one masked token no longer outweighs a whole batch (with 64-slot
    # answers and batch 64, the drawn-t weights made each step's gradient that of one or two tokens).
    ratio = masked.sum(1).clamp(min=1) / maskable.sum(1).clamp(min=1)
    weights = (1.0 / ratio)[:, None].expand_as(ids)[masked]
    return (ce * weights).sum(), maskable.sum()


def ar_batch(enc: Encoder, examples: list[T.Example], rng: random.Random) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask and labels (-100 outside answer + <|eot_id|>)."""
    rows, labels = [], []
    for ex in examples:
        p, a = enc.prompt(ex.prompt), enc.answer(ex.target(rng)) + [enc.eot]
        rows.append(p + a)
        labels.append([-100] * len(p) + a)
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), enc.pad, dtype=torch.long)
    att = torch.zeros(len(rows), L, dtype=torch.long)
    lab = torch.full((len(rows), L), -100, dtype=torch.long)
    for i, (r, lb) in enumerate(zip(rows, labels)):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
        lab[i, : len(r)] = torch.tensor(lb)
    return ids, att, lab


def load_teacher(path: Path) -> Any:
    """The AR target a draft is distilled from (frozen, eval mode)."""
    from transformers import LlamaForCausalLM

    net = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    net.eval()
    net.requires_grad_(False)
    return net


def distill_loss(net: Any, teacher: Any, ids: torch.Tensor, att: torch.Tensor, lab: torch.Tensor,
                 weight: float) -> torch.Tensor:
    """``(1 - weight) * CE(answer) + weight * KL(teacher || student)`` over the answer positions.

    A draft is only useful where it predicts what the target will write, right or wrong; matching
    the target's distribution (DistillSpec, Zhou et al. 2024) raises the greedy acceptance rate
    well beyond what the ground truth alone teaches, most on tasks the target does not solve.
    """
    with torch.no_grad():
        t_logits = teacher(input_ids=ids, attention_mask=att).logits[:, :-1]
    s_logits = net(input_ids=ids, attention_mask=att).logits[:, :-1]
    tgt = lab[:, 1:]
    keep = tgt != -100
    s_rows, t_rows = s_logits[keep], t_logits[keep]
    ce = F.cross_entropy(s_rows, tgt[keep])
    kl = F.kl_div(F.log_softmax(s_rows, -1), F.log_softmax(t_rows, -1), log_target=True, reduction="batchmean")
    return (1 - weight) * ce + weight * kl


def build_dllm(tok: Any, size: Size) -> tuple[Any, dict[str, Any]]:
    from ..models import llada

    cfg = llada_config(tok, size)
    net = llada.build_net(cfg)
    init_weights(net)
    return net, cfg


def build_ar(tok: Any, size: Size) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = tok.get_vocab()
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=size.d_model, intermediate_size=size.mlp_hidden,
                      num_hidden_layers=size.n_layers, num_attention_heads=size.n_heads,
                      num_key_value_heads=size.n_heads, max_position_embeddings=512, rms_norm_eps=1e-5,
                      bos_token_id=vocab["<|startoftext|>"], eos_token_id=[vocab["<|eot_id|>"], vocab["<|endoftext|>"]],
                      pad_token_id=vocab["<|endoftext|>"], tie_word_embeddings=False)
    net = LlamaForCausalLM(cfg)
    init_weights(net)
    return net


def init_weights(net: torch.nn.Module) -> None:
    """Normal(0, 0.02) weights, residual output projections scaled down by depth (GPT-2 style)."""
    layers = sum(1 for n, _ in net.named_modules() if n.endswith("self_attn"))
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() < 2:
                continue
            std = 0.02 / math.sqrt(2 * max(layers, 1)) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
            p.normal_(0.0, std)


def load_init(net: torch.nn.Module, kind: str, path: Path) -> None:
    """Start from saved weights (a second training stage); the shapes must match.

    A dLLM may also start from the demo AR target (same sizes, same tokenizer): transformers' Llama names
    are our module's names. Its embeddings, attention and MLPs then only have to learn to look both ways
    and to predict the token under a mask instead of the next one (as Dream starts from Qwen2.5)."""
    from safetensors.torch import load_file

    from ..models import llada

    state = load_file(str(path / "model.safetensors"))
    cfg = json.loads((path / "config.json").read_text())
    if kind == "dllm" and llada.is_llada_config(cfg):
        state = {llada.to_ours(k): v for k, v in state.items()}
    else:
        state = {("model." + k if not k.startswith(("model.", "lm_head")) else k): v for k, v in state.items()}
    net.load_state_dict(state, strict=True)


def save_dllm(net: Any, cfg: dict[str, Any], tok: Any, out: Path, gen_length: int = GEN_LENGTH) -> None:
    from safetensors.torch import save_file

    from ..models import llada

    out.mkdir(parents=True, exist_ok=True)
    state = {llada.to_llada(k): v.detach().contiguous().clone() for k, v in net.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = {**cfg, "dlm_max_new_tokens": gen_length}  # dlm refuses longer canvases, which it never saw
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(generation_config(tok), indent=2) + "\n")
    tok.save_pretrained(str(out))


def save_ar(net: Any, tok: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    net.generation_config.update(**generation_config(tok))
    net.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def batches(seed: int, batch: int, focus_steps: int = 0, focus_share: float = 1.0,
            tasks: list[str] | None = None) -> Iterator[list[T.Example]]:
    """Training batches from the mix of ``tasks`` (default: the default suite); in the first ``focus_steps``,
    each example comes with probability ``focus_share`` from :data:`~dlm_cli.demo.tasks.FOCUS_TASKS`
    instead (1.0: only those)."""
    focus = T.training_stream(seed + 1, T.FOCUS_TASKS)
    stream = T.training_stream(seed, tasks)
    coin = random.Random(seed + 2)
    step = 0
    while True:
        if step < focus_steps:
            yield [next(focus) if focus_share >= 1.0 or coin.random() < focus_share else next(stream)
                   for _ in range(batch)]
        else:
            yield [next(stream) for _ in range(batch)]
        step += 1


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(kind: str, *, seed: int, steps: int, out: Path, batch: int = 64, lr: float = 1e-3,
          warmup: int = 100, minutes: float | None = None, size: Size | None = None, stop_after: int | None = None,
          save_every: int = 0, init: Path | None = None, log: Callable[[str], None] = print,
          on_save: Callable[[int], None] | None = None, full_share: float = 1.0,
          suffix_share: float = 0.0, teacher: Path | None = None, distill: float = 0.0,
          focus_steps: int = 0, focus_share: float = 1.0, bf16: bool = False, tasks: list[str] | None = None,
          gen_length: int = GEN_LENGTH, ckpt: Path | None = None) -> list[float]:
    """Train one demo model; returns the per-step losses. Saves to ``out`` at the end (and every ``save_every``).

    ``ckpt``: a file that every ``save_every`` steps gets the whole training state (weights, optimizer,
    random states, step); a run started with the same arguments and an existing ``ckpt`` resumes from it
    and ends with the same weights as one run through."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    tok = demo_tok.build(out)
    enc = Encoder(tok)
    size = size or SIZES[kind]
    examples = batches(seed, batch, focus_steps, focus_share, tasks)
    long_canvas = gen_length != GEN_LENGTH
    if kind == "dllm":
        net, cfg = build_dllm(tok, size)
        mask_id = cfg["mask_token_id"]
        def loss_fn(exs: list[T.Example]) -> torch.Tensor:
            targets = [T.Example(ex.task, ex.prompt, ex.target(rng)) for ex in exs]  # fix the random draws
            lens = canvas_lengths([len(enc.answer(ex.answer)) + 1 for ex in targets], rng, full_share, gen_length)
            total, slots = torch.zeros(()), torch.zeros(())
            if long_canvas:  # group by the whole row: the long tasks' prompts are long too
                groups = length_groups([len(enc.prompt(ex.prompt)) + n for ex, n in zip(targets, lens)], LONG_EDGES)
            else:
                groups = length_groups(lens)
            for rows in groups:
                t, n = dllm_loss_terms(net, dllm_batch(enc, [targets[i] for i in rows], rng, [lens[i] for i in rows],
                                                       suffix_share), mask_id, gen)
                total, slots = total + t, slots + n
            return total / slots

        save = lambda: save_dllm(net, cfg, tok, out, gen_length)  # noqa: E731
    else:
        net = build_ar(tok, size)
        teacher_net = load_teacher(teacher) if teacher is not None and distill > 0 else None

        def loss_fn(exs: list[T.Example]) -> torch.Tensor:
            ids, att, lab = ar_batch(enc, exs, rng)
            if teacher_net is None:
                return net(input_ids=ids, attention_mask=att, labels=lab).loss
            return distill_loss(net, teacher_net, ids, att, lab, distill)

        save = lambda: save_ar(net, tok, out)  # noqa: E731
    if init is not None:
        load_init(net, kind, init)
    net.train()
    params = sum(p.numel() for p in net.parameters())
    log(f"{kind}: {params / 1e6:.2f}M parameters, {steps} steps of batch {batch}, seed {seed}")
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in net.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-8)
    losses: list[float] = []
    start = 0
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)  # our own file, written below
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        rng.setstate(state["rng"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch"])
        losses, start = state["losses"], state["step"]
        for _ in range(start):  # the example stream is a pure function of the seed: replay it
            next(examples)
        log(f"resumed from {ckpt} at step {start}")
    t0 = time.monotonic()
    for step in range(start, steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(next(examples))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        elapsed = time.monotonic() - t0
        if step % 20 == 0 or step == steps - 1 or stop_after is not None and step + 1 >= stop_after:
            recent = losses[-20:]
            log(f"step {step} loss {sum(recent) / len(recent):.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{elapsed / 60:.1f} min")
        if save_every and step and step % save_every == 0:
            net.eval()
            save()
            net.train()
            if ckpt is not None:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_name(ckpt.name + ".tmp")
                torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate(),
                            "gen": gen.get_state(), "torch": torch.get_rng_state(), "losses": losses,
                            "step": step + 1}, tmp)
                tmp.replace(ckpt)
            if on_save:
                on_save(step)
        if stop_after is not None and step + 1 >= stop_after:
            log(f"stopping after step {step}: --stop-after {stop_after} (the learning-rate schedule spans {steps})")
            break
        if minutes is not None and elapsed > minutes * 60:
            log(f"stopping at step {step}: --minutes {minutes} reached")
            break
    net.eval()
    save()
    log(f"saved {out} after {len(losses)} steps, {(time.monotonic() - t0) / 60:.1f} min in this run")
    return losses


# The recipes of the shipped weights (``python -m dlm_cli.demo.train all``): the AR target first, the
# dLLM starts from it, then the draft. Each is also a plain command line (see the model cards).
RECIPES: dict[str, dict[str, Any]] = {
    "ar": {"dir": "dlm-demo-ar", "seed": 0, "steps": 2000, "lr": 1.5e-3, "warmup": 100, "bf16": True},
    "dllm": {"dir": "dlm-demo-dllm", "seed": 0, "steps": 5000, "lr": 1.5e-3, "warmup": 50, "init": "dlm-demo-ar",
             "full_share": 0.25, "stop_after": None, "bf16": True},

    "ar-draft": {"dir": "dlm-demo-ar-draft", "seed": 0, "steps": 2000, "lr": 2e-3, "warmup": 100,
                 "teacher": "dlm-demo-ar", "distill": 0.5, "bf16": True},
}


def reproduce(out_dir: Path, log: Callable[[str], None] = print) -> None:
    """Train the three demo models into ``out_dir`` with :data:`RECIPES`."""
    for kind in ("ar", "dllm", "ar-draft"):
        r = dict(RECIPES[kind])
        out = out_dir / r.pop("dir")
        init = r.pop("init", None)
        teacher = r.pop("teacher", None)
        train(kind, out=out, init=out_dir / init if init else None, teacher=out_dir / teacher if teacher else None,
              log=log, **r)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dlm_cli.demo.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["dllm", "ar", "ar-draft", "all"],
                    help="one model, or 'all': the shipped recipes in order (AR target, dLLM from it, draft)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--stop-after", type=int, default=None,
                    help="stop after this many steps (the learning-rate schedule still spans --steps)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=None, help="stop early after this many minutes")
    ap.add_argument("--save-every", type=int, default=0)
    ap.add_argument("--init", type=Path, help="start from the weights in this directory: a dLLM or AR checkpoint "
                    "of the same size (a dLLM may start from the AR target)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-share", type=float, default=1.0,
                    help="dllm: share of rows on a full 32..64-slot canvas (the rest: answer + 0..8 pads)")
    ap.add_argument("--suffix-share", type=float, default=0.0,
                    help="dllm: share of semi-autoregressive rows (clean prefix, masked suffix)")
    ap.add_argument("--teacher", type=Path, help="ar-draft: distil from this AR target (with --distill)")
    ap.add_argument("--distill", type=float, default=0.0,
                    help="ar-draft: weight of KL(teacher || draft) against the answer's cross-entropy (0..1)")
    ap.add_argument("--focus-steps", type=int, default=0,
                    help="train on lookup and recall for the first N steps (an experiment)")
    ap.add_argument("--focus-share", type=float, default=1.0,
                    help="with --focus-steps: the share of those steps' examples from lookup and recall")
    ap.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward passes")
    ap.add_argument("--tasks", default="default",
                    help="comma-separated tasks or groups to train on (default, long, all; dlm_cli/demo/tasks.py)")
    ap.add_argument("--gen-length", type=int, default=GEN_LENGTH,
                    help="dllm: the largest canvas trained on, saved as the model's dlm_max_new_tokens")
    ap.add_argument("--ckpt", type=Path, help="a resumable training-state file, written every --save-every "
                    "steps; an existing one is resumed from")
    ap.add_argument("--out", type=Path, required=True, help="the model directory ('all': the directory of the three)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if args.kind == "all":
        reproduce(args.out, log)
        return 0
    train(args.kind, seed=args.seed, steps=args.steps, out=args.out, batch=args.batch, lr=args.lr,
          minutes=args.minutes, save_every=args.save_every, init=args.init, warmup=args.warmup, log=log,
          full_share=args.full_share, suffix_share=args.suffix_share, stop_after=args.stop_after,
          teacher=args.teacher, distill=args.distill, focus_steps=args.focus_steps,
          focus_share=args.focus_share, bf16=args.bf16, tasks=args.tasks.split(","), gen_length=args.gen_length,
          ckpt=args.ckpt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
