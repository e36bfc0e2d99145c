"""The static block-diffusion cache and the precomputed block-causal mask: the same logits as before, no regrowth."""

from __future__ import annotations

import pytest
import torch

from checkpoints import make_adapter, make_fast_dllm_v2, make_sdar
from dlm_cli import profiles
from dlm_cli.decode import run
from dlm_cli.decode.events import Done
from dlm_cli.models.kv import DenoiserCache
from dlm_cli.models.loading import load

BUILDERS = {"sdar": make_sdar, "fast-dllm-v2": make_fast_dllm_v2, "adapter": make_adapter}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    return {name: load(str(build(root / name))) for name, build in BUILDERS.items()}


class Seen:
    """Keeps every logits result and every cache a run makes (to compare runs forward by forward)."""

    def __init__(self, model, static: bool):
        self.model, self.static, self.logits, self.caches = model, static, [], []

    def __enter__(self):
        inner_logits, inner_cache = self.model.logits, self.model.new_cache

        def logits(*args, **kwargs):
            out = inner_logits(*args, **kwargs)
            self.logits.append(out.clone())
            return out

        def new_cache(size=0):
            cache = inner_cache(size if self.static else 0)
            self.caches.append(cache)
            return cache

        self.model.logits, self.model.new_cache = logits, new_cache
        return self

    def __exit__(self, *exc):
        del self.model.logits, self.model.new_cache


def decode(model, ids, **sets):
    s = profiles.load("speedy", sets=[f"{k}={v}" for k, v in sets.items()], flags={"seed": 0, "max_new_tokens": 21})
    return list(run(model, ids, s))


@pytest.mark.parametrize("family", list(BUILDERS))
@pytest.mark.parametrize("sets", [{"cache": "prefix"}, {"cache": "dual"}, {"cache": "prefix", "block_length": 3},
                                  {"cache": "prefix", "temperature": 0.8}])
def test_the_static_cache_gives_the_growing_caches_logits_bit_for_bit(models, family, sets):
    model = models[family]
    ids = model.tokenizer.encode("sort these numbers: 3 1 2")
    runs = {}
    for static in (False, True):
        with Seen(model, static) as seen:
            done = decode(model, ids, **sets)[-1]
        runs[static] = (seen, done)
    (old, a), (new, b) = runs[False], runs[True]
    assert isinstance(b, Done) and a.tokens == b.tokens and a.nfe == b.nfe == len(new.logits) > 2
    assert all(torch.equal(x, y) for x, y in zip(old.logits, new.logits))
    assert new.caches[0].cursor.static >= len(ids) + 21 and old.caches[0].cursor.static == 0


def test_each_layer_allocates_its_buffers_once_and_attention_reads_views_of_them(models):
    model = models["adapter"]
    ids = model.tokenizer.encode("hello world, again")
    buffers = []
    with Seen(model, True) as seen:
        original = model.logits

        def logits(*args, **kwargs):
            out = original(*args, **kwargs)
            cache = kwargs.get("cache")
            if cache is not None:
                buffers.append([(layer._buffers[0].data_ptr(), layer.keys.data_ptr()) for layer in cache.layers])
            return out

        model.logits = logits
        done = decode(model, ids, cache="prefix")[-1]
    assert done.nfe == len(buffers) > 3
    first = [k for k, _ in buffers[0]]
    # The same storage at every forward: written in place, never concatenated onto a copy.
    assert all([k for k, _ in step] == first for step in buffers)
    assert all(view == buf for step in buffers for buf, view in step)
    assert len(seen.caches) == 1


def test_a_static_cache_truncates_and_regrows_in_place():
    cache = DenoiserCache(16)
    layer_of = lambda: cache.layers[0]  # noqa: E731
    k = torch.randn(1, 2, 10, 4)
    cache.cursor.start = 0
    cache.update(k, k.clone(), 0)
    buf = layer_of()._buffers[0]
    cache.truncate(6)
    assert cache.length == 6
    cache.cursor.start = 6
    k2 = torch.randn(1, 2, 5, 4)
    keys, _ = cache.update(k2, k2.clone(), 0)
    assert keys.shape[-2] == 11 and layer_of()._buffers[0] is buf
    assert torch.equal(keys[..., :6, :], k[..., :6, :]) and torch.equal(keys[..., 6:, :], k2)
    cache.cursor.start = 11
    k3 = torch.randn(1, 2, 8, 4)  # past the declared size: the buffers grow once, keeping what they hold
    keys, _ = cache.update(k3, k3.clone(), 0)
    assert keys.shape[-2] == 19 and torch.equal(keys[..., 11:, :], k3) and torch.equal(keys[..., 6:11, :], k2)
    cache.clear()
    assert cache.length == 0
    cache.cursor.start = 3
    with pytest.raises(ValueError):
        cache.update(k2, k2.clone(), 0)


def test_the_block_mask_is_a_slice_of_one_precomputed_mask(models):
    model = models["sdar"]
    size = model.block_size
    for q0, q1, kv in [(0, 8, 8), (4, 12, 12), (8, 16, 20), (3, 5, 40), (0, 1, 1)]:
        q_block = torch.arange(q0, q1) // size
        kv_block = torch.arange(kv) // size
        want = kv_block[None, :] <= q_block[:, None]
        assert torch.equal(model._mask(q0, q1, kv, torch.device("cpu")), want)
    first = model.speed.masks[(size, torch.device("cpu"))]
    model._mask(5, 9, 30, torch.device("cpu"))
    assert model.speed.masks[(size, torch.device("cpu"))] is first  # not rebuilt
    assert torch.equal(model._mask(0, 4, 4, torch.device("cpu"), size=1), torch.ones(4, 4).tril().bool())
