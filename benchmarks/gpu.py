"""The GPU check: dlm's dLLM and AR decoding at real model shapes, random weights, one table.

One command, for a machine with an accelerator (an H200 runs it in a few minutes):

    python benchmarks/gpu.py --fastdllm /path/to/Fast-dLLM      # CUDA, bfloat16, 256 tokens
    python benchmarks/gpu.py --tiny                             # the same code paths on a CPU, tiny shapes

Rows (random weights built directly on the device in bfloat16: nothing is read from disk):

- LLaDA-8B shape: the ``quality``, ``fast-dllm`` and ``speedy`` profiles with ``cache`` none,
  prefix and dual, each against Fast-dLLM's own ``generate``, ``generate_with_prefix_cache`` and
  ``generate_with_dual_cache`` (``threshold = None`` for ``quality``, 0.9 for the others) on the
  same weights (their model is built on the meta device and given dlm's tensors: one copy);
- Dream-7B shape: the same three profiles and caches (dlm only);
- a SmolLM2-1.7B-shaped target with a SmolLM2-135M-shaped draft: ``ar`` against ``speculative``.

Columns: tokens/s (generated tokens up to the first end token ÷ seconds), NFE (target forwards),
peak memory (``torch.cuda.max_memory_allocated``, weights included), bandwidth achieved (weight
bytes × forwards ÷ seconds: the weight reads alone, as gpt-fast reports it) and the ratio of
dlm's tokens/s to Fast-dLLM's (≥ 1: dlm is faster). Each row runs once to warm up (a short
decode), then ``--reps`` times; the fastest is kept. Timings sit between ``torch.cuda.synchronize``
calls.

Random weights give every token about the same probability; the output layer is rescaled so that
logits have a standard deviation of ``--logit-std`` (8 by default), which makes confidences spread
out the way a trained model's do, so threshold rules commit several tokens per step. The
repetition stop is off (random text repeats).

What it needs on the machine: torch with CUDA, transformers (the versions in pyproject.toml), and
for the Fast-dLLM rows a Fast-dLLM checkout or git directory (NVlabs/Fast-dLLM; its
``llada/generate.py`` and ``llada/model/``) given by ``--fastdllm PATH``, ``$FASTDLLM_REPO``, or
present at ``shared/Fast-dLLM`` or ``third_party/Fast-dLLM`` in this checkout. Nothing is
downloaded: without a checkout (or when it cannot be imported) the Fast-dLLM rows say why and the
other rows still run. Their LLaDA code imports ``einops``; when it is not installed, a stand-in
module is given whose ``rearrange`` is never reached by their Llama-block path.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# Published configs (config.json keys of each family), sizes only.
LLADA_8B = dict(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288, vocab_size=126464,
                embedding_size=126464, mask_token_id=126336, eos_token_id=126081, max_sequence_length=4096,
                rope_theta=500000.0)
DREAM_7B = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                intermediate_size=18944, vocab_size=152064, mask_token_id=151666, eos_token_id=151643,
                max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6)
SMOLLM2_17B = dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                   intermediate_size=8192, vocab_size=49152, eos_token_id=0, max_position_embeddings=8192,
                   rope_theta=130000.0, tie_word_embeddings=True)
SMOLLM2_135M = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, eos_token_id=0, max_position_embeddings=8192,
                    rope_theta=100000.0, tie_word_embeddings=True)
# --tiny: the same families and code paths, a few thousand parameters.
TINY_LLADA = dict(LLADA_8B, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden_size=128, vocab_size=512,
                  embedding_size=512, mask_token_id=500, eos_token_id=501)
TINY_DREAM = dict(DREAM_7B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=512, mask_token_id=500, eos_token_id=501)
TINY_TARGET = dict(SMOLLM2_17B, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=128, vocab_size=512)
TINY_DRAFT = dict(SMOLLM2_135M, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                  intermediate_size=64, vocab_size=512)

DLLM_PROFILES = ("quality", "fast-dllm", "speedy")
CACHES = ("none", "prefix", "dual")
FASTDLLM_PLACES = ("shared/Fast-dLLM", "third_party/Fast-dLLM")


@dataclass
class Row:
    model: str
    method: str
    cache: str
    tokens: int
    seconds: float
    nfe: int
    peak_gib: float | None
    bandwidth_gbs: float
    ratio: float | None = None
    note: str = ""
    output: tuple[int, ...] = ()

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


# -- the device ----------------------------------------------------------------------------------


def synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: Any) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def free(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def building(device: Any, dtype: Any, seed: int) -> Iterator[None]:
    """Modules built inside are created on ``device`` in ``dtype`` directly (no float32 copy, no host copy)."""
    import torch

    old = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def sharpen(net: Any, logit_std: float, seed: int) -> None:
    """Redraw the output layer so that logits over a unit-RMS hidden state have standard deviation ``logit_std``."""
    import torch

    head = net.get_output_embeddings() if hasattr(net, "get_output_embeddings") else net.lm_head
    if getattr(net.config, "tie_word_embeddings", False):
        return  # a tied head is the input embedding: rescaling it would change the whole network
    w = head.weight
    g = torch.Generator(device=w.device).manual_seed(seed)
    with torch.no_grad():
        fresh = torch.randn(w.shape, generator=g, device=w.device, dtype=torch.float32)
        w.copy_((fresh * (logit_std / w.shape[1] ** 0.5)).to(w.dtype))


def weight_bytes(net: Any) -> int:
    return sum(p.numel() * p.element_size() for p in net.parameters())


# -- models with random weights ------------------------------------------------------------------


def random_dllm(family: str, cfg: dict[str, Any], device: Any, dtype: Any, logit_std: float, seed: int) -> Any:
    """A dlm :class:`~dlm_cli.models.base.Denoiser` of ``family`` with the shape ``cfg``, random weights."""
    from dlm_cli.models import dream, llada
    from dlm_cli.models.base import Denoiser, ModelInfo

    module = {"llada": llada, "dream": dream}[family]
    spec = module.spec(cfg)
    with building(device, dtype, seed):
        net = spec.network(spec.config)
    net.eval()
    sharpen(net, logit_std, seed + 1)
    params = sum(p.numel() for p in net.parameters())
    info = ModelInfo(name=f"random-{family}", family=family, path="(random weights)", parameters=params,
                     dtype=str(dtype).replace("torch.", ""), device=str(device), chat_template=False)
    mask = spec.mask_id if spec.mask_id is not None else spec.default_mask_id
    return Denoiser(net=net, tokenizer=None, info=info, mask_id=int(mask), eos_ids=(int(cfg["eos_token_id"]),),
                    max_length=spec.max_length, shift=spec.shift, block_size=spec.block_size)


def random_causal(name: str, cfg: dict[str, Any], device: Any, dtype: Any, logit_std: float, seed: int,
                  tokenizer: Any) -> Any:
    """A dlm :class:`~dlm_cli.models.causal.CausalLM` (transformers' Llama) with the shape ``cfg``, random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from dlm_cli.models.base import ModelInfo
    from dlm_cli.models.causal import CausalLM

    keys = {k: v for k, v in cfg.items() if k != "rope_theta"}
    config = LlamaConfig(**keys, rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]})
    with building(device, dtype, seed):
        net = LlamaForCausalLM(config)
    net.eval()
    sharpen(net, logit_std, seed + 1)
    params = sum(p.numel() for p in net.parameters())
    info = ModelInfo(name=name, family="causal", path="(random weights)", parameters=params,
                     dtype=str(dtype).replace("torch.", ""), device=str(device), chat_template=False)
    return CausalLM(net=net, tokenizer=tokenizer, info=info, eos_ids=(int(cfg["eos_token_id"]),),
                    max_length=int(cfg["max_position_embeddings"]))


def random_prompt(vocab: int, avoid: tuple[int, ...], length: int, seed: int) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(vocab, 30000), (length,), generator=g).tolist()
    safe = next(t for t in range(vocab) if t not in avoid)
    return [safe if t in avoid else t for t in ids]


# -- timing --------------------------------------------------------------------------------------


def timed(device: Any, fn: Callable[[], Any], reps: int) -> tuple[float, Any, float | None]:
    """The fastest of ``reps`` calls of ``fn`` (seconds, its result, peak memory of that call in GiB)."""
    best, out, peak = float("inf"), None, None
    for _ in range(reps):
        reset_peak(device)
        synchronize(device)
        t = time.perf_counter()
        result = fn()
        synchronize(device)
        seconds = time.perf_counter() - t
        if seconds < best:
            best, out, peak = seconds, result, peak_gib(device)
    return best, out, peak


def dlm_run(model: Any, ids: list[int], profile: str, sets: list[str], draft: Any = None) -> Any:
    from dlm_cli import profiles
    from dlm_cli.decode import run

    s = profiles.load(profile, sets=sets)
    done = None
    for ev in run(model, ids, s, draft=draft):
        done = ev
    return done


# -- Fast-dLLM -----------------------------------------------------------------------------------


def find_fastdllm(given: str | None) -> str | None:
    if given:
        return given
    for place in FASTDLLM_PLACES:
        if (ROOT / place).exists():
            return str(ROOT / place)
    return None


def load_fastdllm(source: str | None, work: Path) -> tuple[Any, Any, Any] | str:
    """(their generate module, LLaDAConfig, LLaDAModel pieces) from a local checkout, or why not."""
    if source is None:
        return ("no Fast-dLLM checkout: pass --fastdllm PATH (a NVlabs/Fast-dLLM checkout or git directory), "
                f"set $FASTDLLM_REPO, or put one at {' or '.join(FASTDLLM_PLACES)}")
    if not Path(source).exists():
        return f"--fastdllm {source}: no such directory"
    try:
        import einops  # noqa: F401
    except ImportError:  # their Llama-block path never calls it; the import must only succeed
        (work / "einops.py").write_text(
            "def rearrange(*args, **kwargs):\n"
            "    raise NotImplementedError('einops is not installed (benchmarks/gpu.py stand-in)')\n")
        sys.path.insert(0, str(work))
    from compare_fastdllm import fetch_generate

    why = fetch_generate(source, work)  # copies from the checkout; never clones when a source is given
    if why:
        return why
    try:
        import fd_generate
        from model import modeling_llada
        from model.configuration_llada import LLaDAConfig
    except Exception as exc:  # noqa: BLE001  (their code failing to import is a reason to skip, said once)
        return f"Fast-dLLM's code does not import here ({type(exc).__name__}: {exc})"
    return fd_generate, LLaDAConfig, modeling_llada


def fastdllm_model(ours: Any, cfg: dict[str, Any], pieces: tuple[Any, Any, Any]) -> Any:
    """Their ``LLaDAModelLM``, built on the meta device and given dlm's weight tensors (no second copy)."""
    from dlm_cli.models.llada import to_llada

    _, LLaDAConfig, modeling = pieces
    full = dict(cfg, activation_type="silu", block_type="llama", rope=True, alibi=False, layer_norm_type="rms",
                include_bias=False, include_qkv_bias=False, attention_layer_norm=False, weight_tying=False,
                rms_norm_eps=1e-5, init_device="meta", flash_attention=False, use_cache=False,
                pad_token_id=cfg["eos_token_id"], model_type="llada", scale_logits=False, input_emb_norm=False,
                mlp_ratio=4, multi_query_attention=None, layer_norm_with_affine=True, bias_for_layer_norm=False,
                attention_layer_norm_with_affine=True, embedding_dropout=0.0, residual_dropout=0.0,
                attention_dropout=0.0, rope_full_precision=True, precision="amp_bf16", block_group_size=1,
                init_fn="mitchell", init_std=0.02, init_cutoff_factor=None)
    config = LLaDAConfig(**full)
    model_config = modeling.create_model_config_from_pretrained_config(config)
    model_config.init_device = "meta"
    inner = modeling.LLaDAModel(model_config, init_params=False)
    theirs = modeling.LLaDAModelLM(config, model=inner)
    state = {to_llada(k): v for k, v in ours.net.state_dict().items() if "rotary" not in k}
    theirs.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in list(theirs.named_parameters()) + list(theirs.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"Fast-dLLM's model kept meta tensors: {left[:3]}")
    return theirs.eval()


# -- the rows ------------------------------------------------------------------------------------


def dllm_rows(label: str, model: Any, ids: list[int], tokens: int, reps: int, theirs: Any, fd: Any,
              why_not: str | None) -> list[Row]:
    import torch

    device = model.device
    nbytes = weight_bytes(model.net)
    # Eager, as Fast-dLLM's functions are: compiling an 8B dLLM's dynamic shapes would not fit the budget.
    base = [f"max_new_tokens={tokens}", "seed=0", "stop_repeats=0", "compile=off"]
    rows: list[Row] = []
    their_rows: dict[tuple[str, str], Row] = {}
    fns = {"none": "generate", "prefix": "generate_with_prefix_cache", "dual": "generate_with_dual_cache"}

    def cut(out: list[int]) -> int:
        for i, t in enumerate(out):
            if t in model.eos_ids:
                return i
        return len(out)

    for cache in CACHES:
        for profile in DLLM_PROFILES:
            sets = base + [f"cache={cache}"]
            dlm_run(model, ids, profile, sets[1:] + [f"max_new_tokens={min(tokens, 32)}"])  # warm-up
            seconds, done, peak = timed(device, lambda: dlm_run(model, ids, profile, sets), reps)
            row = Row(label, f"dlm {profile}", cache, len(done.tokens), seconds, done.nfe, peak,
                      nbytes * done.nfe / seconds / 1e9, output=tuple(done.tokens))
            if theirs is not None:
                tau = None if profile == "quality" else 0.9
                key = (cache, str(tau))
                if key not in their_rows:
                    fn = getattr(fd, fns[cache])
                    x = torch.tensor([ids], device=device)

                    def call(n: int = tokens) -> Any:
                        with torch.no_grad():  # their generate() has no no_grad of its own
                            return fn(theirs, x, steps=n, gen_length=n, block_length=min(32, n), temperature=0.0,
                                      remasking="low_confidence", mask_id=model.mask_id, threshold=tau)

                    call(32 if tokens % 32 == 0 and tokens >= 32 else tokens)  # warm-up
                    t_s, (out, nfe), t_peak = timed(device, call, reps)
                    gen = out[0, len(ids):].tolist()
                    n_tok = cut(gen)
                    their_rows[key] = Row(label, f"Fast-dLLM {fns[cache]} (threshold {tau})", cache, n_tok, t_s,
                                          int(nfe), t_peak, nbytes * int(nfe) / t_s / 1e9, output=tuple(gen[:n_tok]))
                    rows.append(their_rows[key])
                ref = their_rows[key]
                row.ratio = row.tokens_per_second / ref.tokens_per_second if ref.tokens_per_second else None
                row.note = "same tokens as Fast-dLLM" if row.output == ref.output else "tokens differ from Fast-dLLM"
            elif why_not:
                row.note = "no Fast-dLLM"
            rows.append(row)
    return rows


def ar_rows(label: str, target: Any, draft: Any, ids: list[int], tokens: int, reps: int) -> list[Row]:
    device = target.device
    t_bytes, d_bytes = weight_bytes(target.net), weight_bytes(draft.net)
    rows = []
    for profile, use, comp in (("ar", None, "off"), ("ar", None, "on"), ("speculative", draft, "off"),
                               ("speculative", draft, "on")):
        sets = [f"max_new_tokens={tokens}", "seed=0", "stop_repeats=0", f"compile={comp}"]
        # The warm-up run has the timed run's shapes: compile=on compiles (or loads) its graphs there.
        dlm_run(target, ids, profile, sets, draft=use)
        seconds, done, peak = timed(device, lambda: dlm_run(target, ids, profile, sets, draft=use), reps)
        seconds -= done.compile_seconds or 0.0  # 0 after the warm-up; reported apart in any case
        moved = t_bytes * done.nfe + d_bytes * (done.draft_nfe or 0)
        note = ""
        if done.drafted:
            note = f"accepted {done.accepted}/{done.drafted} drafted"
        rows.append(Row(f"{label}{' + draft' if use is not None else ''}",
                        f"dlm {profile}{', compiled' if comp == 'on' else ''}", "-",
                        len(done.tokens), seconds, done.nfe, peak, moved / seconds / 1e9, note=note))
    return rows


def render(rows: list[Row], header: str) -> str:
    out = [header, "", "| model | method | cache | tok/s | NFE | peak GiB | GB/s | vs Fast-dLLM | note |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = f"{r.peak_gib:.1f}" if r.peak_gib is not None else "-"
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "-"
        out.append(f"| {r.model} | {r.method} | {r.cache} | {r.tokens_per_second:.1f} | {r.nfe} | {peak} | "
                   f"{r.bandwidth_gbs:.3g} | {ratio} | {r.note} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: the same code paths, in seconds")
    ap.add_argument("--fastdllm", default=os.environ.get("FASTDLLM_REPO"),
                    help="a Fast-dLLM checkout or git directory (default: $FASTDLLM_REPO, then shared/Fast-dLLM)")
    ap.add_argument("--no-fastdllm", action="store_true", help="skip the Fast-dLLM rows even if a checkout is found")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--tokens", type=int, default=None, help="tokens to generate (default 256; 32 with --tiny)")
    ap.add_argument("--prompt-tokens", type=int, default=None, help="prompt length (default 64; 16 with --tiny)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (a CPU run only)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--logit-std", type=float, default=8.0)
    ap.add_argument("--only", default="llada,dream,smollm2", help="comma-separated: llada, dream, smollm2")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)

    import torch

    from dlm_cli.errors import DlmError

    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu.py: no CUDA device here (torch.cuda.is_available() is False); run with --tiny on a CPU",
              file=sys.stderr)
        return 2
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    tokens = args.tokens or (32 if args.tiny else 256)
    args.prompt_tokens = args.prompt_tokens or (16 if args.tiny else 64)
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    shapes = ((TINY_LLADA, TINY_DREAM, TINY_TARGET, TINY_DRAFT) if args.tiny
              else (LLADA_8B, DREAM_7B, SMOLLM2_17B, SMOLLM2_135M))
    started = time.perf_counter()
    rows: list[Row] = []
    why_not = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if "llada" in only:
                model = random_dllm("llada", shapes[0], device, dtype, args.logit_std, seed=0)
                ids = random_prompt(model.vocab_size, (model.mask_id, *model.eos_ids), args.prompt_tokens, 0)
                pieces = ("--no-fastdllm" if args.no_fastdllm
                          else load_fastdllm(find_fastdllm(args.fastdllm), Path(tmp)))
                theirs = fd = None
                if isinstance(pieces, str):
                    why_not = pieces
                    print(f"gpu.py: Fast-dLLM rows skipped: {why_not}", file=sys.stderr)
                else:
                    theirs, fd = fastdllm_model(model, shapes[0], pieces), pieces[0]
                rows += dllm_rows("LLaDA-8B shape" if not args.tiny else "LLaDA tiny", model, ids, tokens, args.reps,
                                  theirs, fd, why_not)
                del model, theirs
                free(device)
            if "dream" in only:
                model = random_dllm("dream", shapes[1], device, dtype, args.logit_std, seed=1)
                ids = random_prompt(model.vocab_size, (model.mask_id, *model.eos_ids), args.prompt_tokens, 1)
                rows += dllm_rows("Dream-7B shape" if not args.tiny else "Dream tiny", model, ids, tokens, args.reps,
                                  None, None, None)
                del model
                free(device)
            if "smollm2" in only:
                vocab = object()  # one tokenizer object shared by target and draft: same ids by construction
                target = random_causal("random-smollm2-1.7b", shapes[2], device, dtype, args.logit_std, 2, vocab)
                draft = random_causal("random-smollm2-135m", shapes[3], device, dtype, args.logit_std, 3, vocab)
                ids = random_prompt(target.vocab_size, target.eos_ids, args.prompt_tokens, 2)
                label = "SmolLM2 tiny" if args.tiny else "SmolLM2-1.7B shape (135M-shape draft)"
                rows += ar_rows(label, target, draft, ids, tokens, args.reps)
                del target, draft
                free(device)
    except DlmError as exc:
        print(f"gpu.py: {exc}", file=sys.stderr)
        return 1
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (f"{name} · {args.dtype} · random weights · {args.prompt_tokens}-token prompt · {tokens} tokens · "
              f"best of {args.reps} · {time.perf_counter() - started:.0f} s in all"
              + (f"\nFast-dLLM rows skipped: {why_not}" if why_not else ""))
    print(render(rows, header))
    if args.json:
        args.json.write_text(json.dumps([dict({k: v for k, v in r.__dict__.items() if k != "output"},
                                              tokens_per_second=r.tokens_per_second) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
