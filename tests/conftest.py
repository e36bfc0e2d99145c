"""Shared fixtures: tiny checkpoints built once per session, an isolated config/cache environment."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# --dtype auto picks bfloat16 on CPUs that multiply it natively: the suite's results must not depend on
# the machine's CPU, so auto means float32 here (and in every subprocess) unless a test says otherwise.
os.environ["DLM_NATIVE_BF16"] = "0"

from checkpoints import make_llada  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster than two
    threads contending with the other processes (measured: 0.17 s vs 1.0 s per tiny decode)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """No user profiles, no real HF cache, no network: every test sees the same clean machine."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def tiny_llada(tmp_path_factory) -> Path:
    """A tiny random LLaDA checkpoint with sharpened outputs (confidences far from uniform)."""
    return make_llada(tmp_path_factory.mktemp("ckpt") / "tiny-llada", sharpen=8.0)


@pytest.fixture(scope="session")
def llada_model(tiny_llada):
    from dlm_cli.models.loading import load

    return load(str(tiny_llada))


@pytest.fixture(scope="session")
def prompt_ids(llada_model):
    from dlm_cli.prompting import encode

    return encode(llada_model.tokenizer, "sort these numbers: 3 1 2")
