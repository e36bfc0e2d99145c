"""Numerical equivalence of dlm's native family adapters with the families' reference modeling code.

For each family, random weights are built once, saved in the published checkpoint layout, loaded
by dlm and by the reference code, and the logits compared in float32 on the same canvas:

- ``none``: one full forward;
- ``prefix``: a full forward fills the cache, the canvas then changes inside the current block
  (as decoding does), and a forward over the block and everything after it reads the cached
  prefix (Fast-dLLM's prefix cache);
- ``dual``: the same, but the forward runs the block only and reads the cached suffix too.

References: LLaDA and Dream from NVlabs/Fast-dLLM (``llada/model``, ``dream/model``: the modeling
files of the published checkpoints plus Fast-dLLM's caches). Block diffusion (SDAR, Fast-dLLM
v2) has no public reference that runs without a GPU stack here, so it is held against
transformers' own ``Qwen3ForCausalLM`` / ``Qwen2ForCausalLM`` (the models SDAR and Fast-dLLM v2
modify) run with an explicit block-causal attention mask, uncached and with dlm's exact block
cache; Fast-dLLM v2's shifted rows are compared against the reference's output one position up.

The MoE families (LLaDA2.x, LLaDA-MoE) are held against the modeling files their checkpoints
ship: ``modeling_llada2_moe.py`` of inclusionAI/LLaDA2.0-mini and ``modeling_lladamoe.py`` of
inclusionAI/LLaDA-MoE-7B-A1B-Instruct, downloaded (code only, no weights) with huggingface_hub;
``--moe-ref PATH`` or ``$DLM_MOE_REF`` (a directory or git directory holding those files, e.g. a
checkout of ZHZisZZ/dllm, whose llada2/llada pipelines carry copies) replaces the download, and a
shallow ``git clone`` of https://github.com/ZHZisZZ/dllm is the fallback. LLaDA2 runs with its
sampler's block-causal mask (blocks of 32 from position 0), uncached and with dlm's exact prefix
cache; LLaDA-MoE with full attention. Their shims, in the temporary copy or this process only: the
plain RoPE frequencies where transformers 5 dropped ``ROPE_INIT_FUNCTIONS["default"]``, and
stand-ins for the transformers 4 helpers they import but do not call on these paths
(``modeling_attn_mask_utils``, docstring decorators).

The reference code is never part of this repository. It is copied into a temporary directory
from ``--fastdllm PATH`` or ``$FASTDLLM_REPO`` (a checkout, or a git directory such as a mirror:
files are read from HEAD), else a shallow ``git clone`` of https://github.com/NVlabs/Fast-dLLM;
when none is available the LLaDA and Dream checks print why and are skipped. Runtime shims in the
temporary copy only: LLaDA's ``config.use_cache`` read with a default (transformers 5 configs lack
it), and ``einops`` installed into the temporary directory when missing.

    python benchmarks/equivalence.py --fastdllm /path/to/Fast-dLLM [--moe-ref /path/to/dllm] [--json]

Exits 1 when a difference exceeds ``--tol`` (1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the tiny checkpoint builders: published layouts

UPSTREAM = "https://github.com/NVlabs/Fast-dLLM"

# transformers 5 dropped the "default" entry of ROPE_INIT_FUNCTIONS that Dream's rotary embedding
# looks up; this shim (appended to the temporary copy) computes the plain RoPE frequencies.
DEFAULT_ROPE = """

def _default_rope(config, device=None, **kwargs):
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    steps = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
    return 1.0 / (config.rope_theta ** (steps / dim)), 1.0
"""


def fetch(source: str | None, dest: Path) -> str | None:
    """Copy Fast-dLLM's llada/model and dream/model into ``dest``; returns None, or why they are not available."""
    if source is None:
        clone = dest / "clone"
        try:
            subprocess.run(["git", "clone", "-q", "--depth", "1", UPSTREAM, str(clone)], check=True,
                           capture_output=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            return f"no --fastdllm/$FASTDLLM_REPO given and `git clone {UPSTREAM}` failed ({exc.__class__.__name__})"
        source = str(clone)
    root = Path(source)
    for family in ("llada", "dream"):
        pkg = dest / f"{family}_ref"
        pkg.mkdir(parents=True)
        if (root / family / "model").is_dir():
            for f in (root / family / "model").glob("*.py"):
                shutil.copy(f, pkg / f.name)
            continue
        listing = subprocess.run(["git", "--git-dir", str(root), "ls-tree", "--name-only", "HEAD", f"{family}/model/"],
                                 capture_output=True, text=True)
        names = [n for n in listing.stdout.split() if n.endswith(".py")]
        if listing.returncode != 0 or not names:
            return f"{source} has no {family}/model/; point --fastdllm at a Fast-dLLM checkout or git directory"
        for name in names:
            out = subprocess.run(["git", "--git-dir", str(root), "show", f"HEAD:{name}"], capture_output=True)
            (pkg / Path(name).name).write_bytes(out.stdout)
    llada = dest / "llada_ref" / "modeling_llada.py"
    llada.write_text(llada.read_text().replace(
        "use_cache = self.config.use_cache", 'use_cache = getattr(self.config, "use_cache", False)'))
    dream = dest / "dream_ref" / "modeling_dream.py"
    dream.write_text(dream.read_text().replace(
        "ROPE_INIT_FUNCTIONS[self.rope_type]", "(ROPE_INIT_FUNCTIONS.get(self.rope_type) or _default_rope)")
        + DEFAULT_ROPE)
    try:
        import einops  # noqa: F401
    except ImportError:
        site = dest / "site"
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target", str(site), "einops"],
                           capture_output=True)
        if r.returncode != 0:
            return "the LLaDA reference needs einops, which is not installed and could not be installed"
        sys.path.insert(0, str(site))
    sys.path.insert(0, str(dest))
    return None


def state_of(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


def canvas(vocab: int, mask_id: int, prompt: int, length: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (1, length), generator=g)
    x[0, prompt:] = mask_id
    return x


def commit_some(x: torch.Tensor, bs: int, be: int, vocab: int) -> torch.Tensor:
    """The canvas a few steps later: half the block's masks committed (the cache is now stale)."""
    y = x.clone()
    y[0, bs:be:2] = torch.arange(bs, be, 2) % (vocab - 1)
    return y


def diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# --- LLaDA ------------------------------------------------------------------------------------------------

def check_llada(work: Path) -> dict[str, float]:
    from checkpoints import make_llada
    from llada_ref.configuration_llada import LLaDAConfig
    from llada_ref.modeling_llada import LLaDAModelLM

    from dlm_cli.models.loading import load

    ckpt = make_llada(work / "llada", n_heads=4, n_kv_heads=2, d_model=64, mlp_hidden_size=96, n_layers=3)
    cfg = json.loads((ckpt / "config.json").read_text())
    ours = load(str(ckpt))
    ref = LLaDAModelLM(LLaDAConfig(**{**cfg, "init_device": "cpu"}))
    ref.load_state_dict(state_of(ckpt), strict=True)
    ref = ref.float().eval()
    V, P, L, bs, be = cfg["vocab_size"], 9, 41, 17, 25
    x = canvas(V, ours.mask_id, P, L, 0)
    with torch.no_grad():
        out = {"none": diff(ref(x).logits[..., :V], ours.logits(x))}
        # prefix: their cache holds [B, H, L, D] per layer; keep the positions before the block
        past = ref(x, use_cache=True).past_key_values
        y = commit_some(x, bs, be, V)
        pre = [tuple(t[:, :, :bs] for t in layer) for layer in past]
        theirs = ref(y[:, bs:], past_key_values=pre, use_cache=True).logits
        cache = ours.new_cache()
        ours.logits(x, 0, L, cache=cache)
        cache.truncate(bs)
        out["prefix"] = diff(theirs[..., :V], ours.logits(y, bs, L, cache=cache))
        # dual: the whole canvas stays cached; only the block runs, written over its cached slots
        past = ref(x, use_cache=True).past_key_values
        replace = torch.zeros_like(x, dtype=torch.bool)
        replace[:, bs:be] = True
        theirs = ref(y[:, bs:be], past_key_values=past, use_cache=True, replace_position=replace).logits
        cache = ours.new_cache()
        ours.logits(x, 0, L, cache=cache)
        out["dual"] = diff(theirs[..., :V], ours.logits(y, bs, be, cache=cache))
    return out


# --- Dream ------------------------------------------------------------------------------------------------

def check_dream(work: Path) -> dict[str, float]:
    from checkpoints import make_dream
    from dream_ref.configuration_dream import DreamConfig
    from dream_ref.modeling_dream import DreamModel

    from dlm_cli.models.loading import load

    ckpt = make_dream(work / "dream", hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    cfg = json.loads((ckpt / "config.json").read_text())
    ours = load(str(ckpt))
    keys = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "mask_token_id",
            "pad_token_id", "tie_word_embeddings")
    rcfg = DreamConfig(**{k: cfg[k] for k in keys})
    rcfg._attn_implementation = "sdpa"
    ref = DreamModel(rcfg)
    missing, unexpected = ref.load_state_dict(state_of(ckpt), strict=False)
    assert not unexpected and all("rotary_emb" in m for m in missing), (missing, unexpected)
    ref = ref.float().eval()
    V, P, L, bs, be = ours.token_count or cfg["vocab_size"], 9, 41, 17, 25
    x = canvas(V, ours.mask_id, P, L, 1)

    def shifted(logits: torch.Tensor) -> torch.Tensor:
        # Dream's own sampler: row i reads output i - 1 (row 0 keeps its own)
        return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[..., :V]

    with torch.no_grad():
        out = {"none": diff(shifted(ref(x).logits), ours.logits(x))}
        # prefix: their cache holds [B, L, D] per layer (keys before RoPE); keep the positions before the block.
        # Their cached forward has no output at bs - 1, so compare rows bs + 1 .. L (outputs bs .. L - 1).
        past = ref(x, use_cache=True).past_key_values
        y = commit_some(x, bs, be, V)
        pre = [tuple(t[:, :bs] for t in layer) for layer in past]
        theirs = ref(y[:, bs:], past_key_values=pre, use_cache=True).logits[:, :-1, :V]
        cache = ours.new_cache()
        ours.logits(x, 0, L, cache=cache)
        cache.truncate(bs)
        out["prefix"] = diff(theirs, ours.logits(y, bs, L, cache=cache, rows=(bs + 1, L)))
        past = ref(x, use_cache=True).past_key_values
        replace = torch.zeros_like(x, dtype=torch.bool)
        replace[:, bs:be] = True
        theirs = ref(y[:, bs:be], past_key_values=past, use_cache=True, dual_cache=True,
                     replace_position=replace).logits[:, :-1, :V]
        cache = ours.new_cache()
        ours.logits(x, 0, L, cache=cache)
        out["dual"] = diff(theirs, ours.logits(y, bs, be, cache=cache, rows=(bs + 1, be)))
    return out


# --- block diffusion against transformers' own Qwen models with a block-causal mask -------------------------

def _block_reference(ckpt: Path, model_cls: type, cfg_cls: type, block: int) -> Callable[[torch.Tensor], torch.Tensor]:
    from dlm_cli.models import qwen

    cfg = json.loads((ckpt / "config.json").read_text())
    hf = qwen.hf_config(cfg_cls, cfg, "reference")
    hf._attn_implementation = "eager"
    ref = model_cls(hf)
    ref.load_state_dict(state_of(ckpt), strict=False)
    ref = ref.float().eval()

    def run(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        blocks = torch.arange(n) // block
        allowed = blocks[None, :] <= blocks[:, None]
        bias = torch.zeros(n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)[None, None]
        return ref(input_ids=x, attention_mask=bias).logits

    return run


def check_block(work: Path, family: str) -> dict[str, float]:
    from checkpoints import make_fast_dllm_v2, make_sdar
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    from dlm_cli.models.loading import load

    if family == "sdar":
        ckpt = make_sdar(work / family, block_size=4, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32)
        run = _block_reference(ckpt, Qwen3ForCausalLM, Qwen3Config, 4)
    else:
        ckpt = make_fast_dllm_v2(work / family, bd_size=8, hidden_size=64, intermediate_size=96,
                                 num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2)
        run = _block_reference(ckpt, Qwen2ForCausalLM, Qwen2Config, 8)
    ours = load(str(ckpt))
    B, V = ours.block_size, ours.token_count or ours.vocab_size
    P, L = 3 * B + 1, 6 * B  # the prompt ends inside a model block
    x = canvas(V, ours.mask_id, P, L, 2)
    y = commit_some(x, P, 4 * B, V)
    s = 1 if ours.shift else 0
    with torch.no_grad():
        want = run(y)[..., :V]
        # a shifted row i reads the reference's output at i - 1
        out = {"none": diff(want[:, : L - s], ours.logits(y, rows=(s, L)))}
        # exact block cache, as the decode loop drives it: prefix filled from the canvas before the
        # block changed, then the block (which starts mid-model-block) asked for with the cache
        cache = ours.new_cache()
        ours.logits(x, 0, 4 * B, cache=cache, rows=(P, 4 * B))
        cache.truncate(P)
        got = ours.logits(y, P, 4 * B, cache=cache, rows=(P, 4 * B))
        out["prefix"] = diff(want[:, P - s : 4 * B - s], got)
    return out


# --- MoE families against the modeling code their checkpoints ship -------------------------------------------

MOE_UPSTREAM = "https://github.com/ZHZisZZ/dllm"
# package -> (HF repository of a published checkpoint, its modeling file, its configuration file)
MOE_REFS = {
    "llada2_ref": ("inclusionAI/LLaDA2.0-mini", "modeling_llada2_moe.py", "configuration_llada2_moe.py"),
    "lladamoe_ref": ("inclusionAI/LLaDA-MoE-7B-A1B-Instruct", "modeling_lladamoe.py", "configuration_lladamoe.py"),
}

# transformers 4 helpers the MoE references import; on the paths run here none of them is called.
MOE_SHIMS = """
import sys, types
import torch
import transformers.pytorch_utils as _pu
import transformers.utils as _tu
import transformers.utils.import_utils as _iu


def _default_rope(config, device=None, seq_len=None, **kwargs):
    base = getattr(config, "rope_theta", None) or config.rope_parameters["rope_theta"]
    factor = getattr(config, "partial_rotary_factor", None)
    factor = factor if factor and factor > 0 else 1.0
    dim = int((getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads) * factor)
    steps = torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float)
    return 1.0 / (base ** (steps / dim)), 1.0


def _not_here(*args, **kwargs):
    raise RuntimeError("a transformers 4 mask helper was called: this check does not support that path")


class _MaskConverter:
    def __init__(self, *args, **kwargs):
        pass

    to_4d = _not_here


if "transformers.modeling_attn_mask_utils" not in sys.modules:
    _m = types.ModuleType("transformers.modeling_attn_mask_utils")
    for _n in ("_prepare_4d_causal_attention_mask", "_prepare_4d_causal_attention_mask_for_sdpa",
               "_prepare_4d_attention_mask"):
        setattr(_m, _n, _not_here)
    _m.AttentionMaskConverter = _MaskConverter
    sys.modules[_m.__name__] = _m
_pu.is_torch_greater_or_equal_than_1_13 = True
if not hasattr(_pu, "ALL_LAYERNORM_LAYERS"):
    _pu.ALL_LAYERNORM_LAYERS = []
if not hasattr(_iu, "is_torch_fx_available"):
    _iu.is_torch_fx_available = lambda: False
for _n in ("add_start_docstrings", "add_start_docstrings_to_model_forward", "replace_return_docstrings"):
    if not hasattr(_tu, _n):
        setattr(_tu, _n, lambda *a, **k: (lambda f: f))
for _n in ("is_flash_attn_2_available", "is_flash_attn_greater_or_equal_2_10"):
    if not hasattr(_tu, _n):
        setattr(_tu, _n, lambda *a, **k: False)
"""


def _find(root: Path, name: str) -> bytes | None:
    """The file ``name`` anywhere under ``root`` (a directory or a git directory's HEAD); shortest path wins."""
    if root.is_dir() and not (root / "HEAD").is_file():
        hits = sorted(root.rglob(name), key=lambda p: len(p.parts))
        return hits[0].read_bytes() if hits else None
    listing = subprocess.run(["git", "--git-dir", str(root), "ls-tree", "-r", "--name-only", "HEAD"],
                             capture_output=True, text=True)
    hits = sorted((n for n in listing.stdout.split() if n.rsplit("/", 1)[-1] == name), key=lambda n: n.count("/"))
    if listing.returncode != 0 or not hits:
        return None
    return subprocess.run(["git", "--git-dir", str(root), "show", f"HEAD:{hits[0]}"], capture_output=True).stdout


def _download(repo: str, name: str, dest: Path) -> bytes | None:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, name, cache_dir=str(dest / "hf"))).read_bytes()
    except Exception:  # offline, rate-limited, renamed upstream: fall back to the git copies
        return None


def fetch_moe(source: str | None, dest: Path) -> str | None:
    """Copy the MoE reference modeling files into ``dest`` as packages; returns None, or why they are not available."""
    roots: list[Path] = [Path(source)] if source else []
    pkgs: dict[str, dict[str, bytes]] = {}
    for pkg, (repo, *names) in MOE_REFS.items():
        if not source:
            got = {n: _download(repo, n, dest) for n in names}
            if all(got.values()):
                pkgs[pkg] = got  # type: ignore[assignment]
    if len(pkgs) < len(MOE_REFS) and not source:
        clone = dest / "dllm"
        try:
            subprocess.run(["git", "clone", "-q", "--depth", "1", MOE_UPSTREAM, str(clone)], check=True,
                           capture_output=True, timeout=180)
            roots.append(clone)
        except (OSError, subprocess.SubprocessError) as exc:
            return (f"the MoE modeling files could not be downloaded from the Hub and `git clone {MOE_UPSTREAM}` "
                    f"failed ({exc.__class__.__name__}); pass --moe-ref")
    for pkg, (_, *names) in MOE_REFS.items():
        if pkg in pkgs:
            continue
        for root in roots:
            got = {n: _find(root, n) for n in names}
            if all(got.values()):
                pkgs[pkg] = got  # type: ignore[assignment]
                break
        else:
            return f"no {' / '.join(names)} under {', '.join(map(str, roots))}"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "moe_shims.py").write_text(MOE_SHIMS)
    for pkg, files in pkgs.items():
        (dest / pkg).mkdir(parents=True, exist_ok=True)
        (dest / pkg / "__init__.py").write_text("")
        for name, data in files.items():
            text = data.decode()
            if name.startswith("modeling_"):
                text = "import moe_shims  # noqa: F401\n" + text.replace(
                    "ROPE_INIT_FUNCTIONS[self.rope_type]",
                    "(ROPE_INIT_FUNCTIONS.get(self.rope_type) or moe_shims._default_rope)")
            (dest / pkg / name).write_text(text)
    if str(dest) not in sys.path:
        sys.path.insert(0, str(dest))
    return None


def _reference(module: Any, conf_mod: Any, config_names: tuple[str, ...], model_name: str, cfg: dict[str, Any],
               ckpt: Path) -> Any:
    config_cls = next(getattr(conf_mod, n) for n in config_names if hasattr(conf_mod, n))
    rcfg = config_cls(**{k: v for k, v in cfg.items() if k not in ("auto_map", "architectures", "model_type")})
    rcfg._attn_implementation = "sdpa"
    ref = getattr(module, model_name)(rcfg)
    missing, unexpected = ref.load_state_dict(state_of(ckpt), strict=False)
    assert not unexpected and not missing, (missing, unexpected)
    return ref.float().eval()


def check_llada2(work: Path) -> dict[str, float]:
    """LLaDA2.x against ``LLaDA2MoeModelLM`` with its sampler's block-causal mask, uncached and with the prefix cache."""
    import importlib

    from checkpoints import make_llada2

    from dlm_cli.models.loading import load

    ckpt = make_llada2(work / "llada2", hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                       intermediate_size=96, moe_intermediate_size=24, num_experts=16, num_experts_per_tok=4,
                       n_group=4, topk_group=2, num_hidden_layers=3)
    cfg = json.loads((ckpt / "config.json").read_text())
    ours = load(str(ckpt))
    ref = _reference(importlib.import_module("llada2_ref.modeling_llada2_moe"),
                     importlib.import_module("llada2_ref.configuration_llada2_moe"), ("LLaDA2MoeConfig",),
                     "LLaDA2MoeModelLM", cfg, ckpt)
    B, V = ours.block_size, ours.token_count or cfg["vocab_size"]
    L, P = 3 * B, B + 5  # the prompt ends inside the second model block
    x = canvas(V, ours.mask_id, P, L, 3)
    y = commit_some(x, P, 2 * B, V)
    blocks = torch.arange(L) // B
    bias = torch.zeros(L, L).masked_fill(blocks[None, :] > blocks[:, None], torch.finfo(torch.float32).min)

    def theirs(z: torch.Tensor) -> torch.Tensor:
        return ref(z, attention_mask=bias[None, None], position_ids=torch.arange(L)[None]).logits[..., :V]

    with torch.no_grad():
        want = theirs(y)
        out = {"none": diff(want, ours.logits(y))}
        cache = ours.new_cache()
        ours.logits(x, 0, 2 * B, cache=cache, rows=(P, 2 * B))
        cache.truncate(P)
        out["prefix"] = diff(want[:, P : 2 * B], ours.logits(y, P, 2 * B, cache=cache, rows=(P, 2 * B)))
    return out


def check_llada_moe(work: Path) -> dict[str, float]:
    """LLaDA-MoE against ``LLaDAMoEModelLM`` (full attention; its code has no cache to compare with)."""
    import importlib

    from checkpoints import make_llada_moe

    from dlm_cli.models.loading import load

    ckpt = make_llada_moe(work / "llada-moe", hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                          dense_intermediate_size=96, expert_intermediate_size=24, num_experts=16,
                          num_experts_per_tok=4, num_hidden_layers=3, moe_layer_freq=[0, 1, 1])
    cfg = json.loads((ckpt / "config.json").read_text())
    ours = load(str(ckpt))
    ref = _reference(importlib.import_module("lladamoe_ref.modeling_lladamoe"),
                     importlib.import_module("lladamoe_ref.configuration_lladamoe"), ("LLaDAMoEConfig", "LLaDAConfig"),
                     "LLaDAMoEModelLM", cfg, ckpt)
    V = ours.token_count or cfg["vocab_size"]
    x = canvas(V, ours.mask_id, 9, 41, 4)
    with torch.no_grad():
        return {"none": diff(ref(x).logits[..., :V], ours.logits(x))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fastdllm", default=os.environ.get("FASTDLLM_REPO") or None,
                    help="Fast-dLLM checkout or git directory (default: $FASTDLLM_REPO, else git clone)")
    ap.add_argument("--moe-ref", default=os.environ.get("DLM_MOE_REF") or None,
                    help="directory or git directory with the LLaDA2 / LLaDA-MoE modeling files "
                         "(default: $DLM_MOE_REF, else the Hub, else git clone of ZHZisZZ/dllm)")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="dlm-equivalence-"))
    try:
        why = fetch(args.fastdllm, tmp / "ref")
        if why:
            results["llada"] = results["dream"] = f"skipped: {why}"
        else:
            results["llada"] = check_llada(tmp)
            results["dream"] = check_dream(tmp)
        results["sdar (vs Qwen3 + block mask)"] = check_block(tmp, "sdar")
        results["fast-dllm-v2 (vs Qwen2 + block mask)"] = check_block(tmp, "fast-dllm-v2")
        why = fetch_moe(args.moe_ref, tmp / "moe_ref")
        if why:
            results["llada2"] = results["llada-moe"] = f"skipped: {why}"
        else:
            results["llada2"] = check_llada2(tmp)
            results["llada-moe"] = check_llada_moe(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    worst = max((v for r in results.values() if isinstance(r, dict) for v in r.values()), default=0.0)
    if args.json:
        print(json.dumps({"results": results, "tolerance": args.tol, "max_abs_diff": worst}, indent=2))
    else:
        for family, r in results.items():
            if isinstance(r, str):
                print(f"{family:38s} {r}")
                continue
            print(f"{family:38s} " + "  ".join(f"{mode}: {v:.2e}" for mode, v in r.items()))
        print(f"max |Δlogit| = {worst:.2e} (tolerance {args.tol:g}): {'OK' if worst <= args.tol else 'FAIL'}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    raise SystemExit(main())
