"""Strict profile validation: every malformed profile gets one line naming file, key, value, allowed values."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dlm_cli import profiles
from dlm_cli.errors import UsageError


def write(tmp_path: Path, text: str, name: str = "p.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text,fragments",
    [
        ('strategy = "threshold"\ntreshold = 0.8\n', ["unknown key 'treshold'", "did you mean 'threshold'", "allowed keys"]),
        ('strategy = "threshold"\nthreshold = 1.5\n', ["threshold = 1.5", "out of range", "0 ≤ threshold ≤ 1"]),
        ('strategy = "threshold"\nthreshold = "high"\n', ["threshold = 'high'", "must be a number"]),
        ('strategy = "threshold"\nblock_length = 0\n', ["block_length = 0", "≥ 1"]),
        ('strategy = "threshold"\nblock_length = 3.5\n', ["block_length = 3.5", "an integer"]),
        ('strategy = "threshold"\ncache = "triple"\n', ["cache = 'triple'", "one of 'none', 'prefix', 'dual'"]),
        ('strategy = "threshold"\neotp = "yes"\n', ["eotp = 'yes'", "true or false"]),
        ('strategy = "threshold"\ntop_p = 0\n', ["top_p = 0", "0 < top_p ≤ 1"]),
        ('strategy = "threshold"\ntemperature = -1\n', ["temperature = -1", "≥ 0"]),
        ('strategy = "factor"\nfactor = 0\n', ["factor = 0", "> 0"]),
        ('strategy = "baseline"\nremasking = "lowest"\n', ["remasking = 'lowest'", "'low_confidence', 'random'"]),
        ('strategy = "baseline"\nthreshold = 0.9\n', ["unknown key 'threshold' for strategy 'baseline'"]),
        ('strategy = "telepathy"\n', ["strategy = 'telepathy' is unknown", "allowed:"]),
        ('threshold = 0.9\n', ["no 'strategy' key"]),
        ('strategy = "threshold"\n[extra]\nx = 1\n', ["[extra] tables are not used"]),
        ('strategy = "threshold"\ndescription = 3\n', ["description = 3 must be a string"]),
        ('strategy = "threshold"\nmax_new_tokens = true\n', ["max_new_tokens = True", "an integer"]),
        ('strategy = "threshold\n', ["is not valid TOML"]),
        ('strategy = threshold\n', ["is not valid TOML"]),
    ],
)
def test_malformed_profiles_get_one_precise_line(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        profiles.load(path)
    msg = str(info.value)
    assert "\n" not in msg and info.value.exit_code == 2
    assert path in msg or "--set" in msg
    for f in fragments:
        assert f in msg, msg


def test_precedence_flags_over_set_over_file_over_defaults(tmp_path):
    path = write(tmp_path, 'strategy = "threshold"\nthreshold = 0.7\nmax_new_tokens = 40\nblock_length = 8\n')
    s = profiles.load(path, sets=["threshold=0.8", "max_new_tokens=50"], flags={"max_new_tokens": 60})
    assert (s.threshold, s.max_new_tokens, s.block_length, s.top_k) == (0.8, 60, 8, 0)
    assert s.sources["threshold"] == "--set" and s.sources["max_new_tokens"] == "flag"
    assert s.sources["block_length"] == "profile" and s.sources["top_k"] == "default"


def test_set_values_parse_as_toml_or_bare_strings():
    s = profiles.load("speedy", sets=["cache=prefix", "eotp=false", "threshold=0.75", "block_length=16"])
    assert (s.cache, s.eotp, s.threshold, s.block_length) == ("prefix", False, 0.75, 16)


def test_set_without_equals_is_a_usage_error():
    with pytest.raises(UsageError, match="must look like KEY=VALUE"):
        profiles.load("speedy", sets=["threshold"])


def test_set_strategy_switches_and_drops_the_old_strategys_keys():
    s = profiles.load("speedy", sets=["strategy=factor"])
    assert s.strategy == "factor" and "threshold" not in s.values and s.factor == 1.0
    assert s.cache == "dual"  # keys common to both strategies carry over


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(UsageError) as info:
        profiles.load("speedie")
    assert "did you mean 'speedy'" in str(info.value) and "quality" in str(info.value)


def test_user_profiles_come_from_the_xdg_config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    d = tmp_path / "dlm" / "profiles"
    d.mkdir(parents=True)
    (d / "mine.toml").write_text('strategy = "threshold"\nthreshold = 0.55\n')
    assert profiles.load("mine").threshold == 0.55
    assert profiles.available()["mine"].origin == "user"


def test_every_shipped_profile_validates():
    for name, ref in profiles.available().items():
        s = profiles.load(name)
        assert s.strategy and ref.origin == "built-in"


@pytest.mark.parametrize("strategy,old,new,value", [
    ("speculative", "gamma", "draft_length", 7), ("speculative", "adaptive_gamma", "adaptive_draft", False),
    ("lookup", "num_draft_tokens", "draft_length", 9), ("threshold", "lookup_draft", "draft_length", 5),
    ("threshold", "lookup_ngram", "ngram_max", 2), ("freedave", "freedave_drafts", "draft_length", 6),
])
def test_old_key_names_still_work_with_a_warning_naming_the_new_one(capsys, strategy, old, new, value):
    s = profiles.build({"strategy": strategy, old: value}, "mine.toml", profile="mine")
    assert s.values[new] == value and old not in s.values
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"dlm: warning: mine.toml: key {old!r} is now called {new!r}" in err
    # The run's frozen settings carry only the new name.
    cfg = s.frozen()
    assert getattr(cfg, new) == value and not hasattr(cfg, old)


def test_frozen_settings_are_typed_complete_and_immutable():
    import dataclasses

    s = profiles.load("speedy")
    cfg = s.frozen()
    assert cfg.strategy == "threshold" and cfg.threshold == 0.9 and cfg.cache == "dual" and cfg.refresh == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.threshold = 0.5
    names = {f.name for f in dataclasses.fields(cfg)}
    assert names == {"strategy", *s.values}


@pytest.mark.parametrize("sets,why", [
    (["strategy=credit", "rank=entropy"], "strategy 'credit' cannot be used with rank = 'entropy'"),
    (["strategy=freedave", "cache=dual"], "strategy 'freedave' cannot be used with cache = 'dual'"),
    (["strategy=freedave", "cache=none", "temperature=0.5"], "lossless against greedy"),
    (["strategy=s2d2", "cache=none", "lookup=true"], "runs its own draft-and-verify loop"),
    (["refresh=2", "cache=none"], "refresh = 2 refreshes a KV cache, but cache = 'none'"),
    (["strategy=adablock", "adablock_min=9", "adablock_max=8"], "adablock_min = 9 is above adablock_max = 8"),
])
def test_conflicts_declared_with_keys_and_strategies_are_refused_in_one_line(sets, why):
    from dlm_cli.errors import UsageError

    with pytest.raises(UsageError, match=re.escape(why)):
        profiles.load("speedy", sets=sets)
