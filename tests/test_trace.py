"""Trace files: the header and footer --trace writes, dlm replay, and the decode-order map in a real browser."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile

import pytest
from typer.testing import CliRunner

from dlm_cli.cli import app

runner = CliRunner()
SORT = "Sort these numbers: 4 7 1 9 3"


def record(tmp_path, *args, name="t.jsonl"):
    trace = tmp_path / name
    r = runner.invoke(app, ["generate", *args, "--trace", str(trace), "--view", "none", "-q"])
    assert r.exit_code == 0, r.stderr
    return trace, r.stdout


def test_replay_shows_the_recorded_text_without_the_model(tmp_path):
    trace, text = record(tmp_path, "-m", "dlm-demo", "-p", "quality", "-n", "16", SORT)
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    head, foot = lines[0], lines[-1]
    assert head["event"] == "Trace" and head["model"] == "dlm-demo" and head["strategy"] == "baseline"
    assert foot["event"] == "Vocab" and foot["text"] == text.strip() == "1 3 4 7 9"
    assert set(foot["pieces"]) >= {str(t) for t in lines[-2]["tokens"]}
    for view in ("none", "plain"):
        r = runner.invoke(app, ["replay", str(trace), "--view", view, "--pace", "0"])
        assert r.exit_code == 0, r.stderr
        assert r.stdout == text
        assert "replay of dlm-demo · quality · 5 tokens · 16 NFE" in r.stderr


def test_a_trace_cut_mid_line_still_replays(tmp_path):
    trace, text = record(tmp_path, "-m", "dlm-demo", "-p", "quality", "-n", "16", SORT)
    lines = trace.read_text().splitlines()
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # header, Start, 3 steps, half a step
    r = runner.invoke(app, ["replay", str(cut), "--view", "none", "--pace", "0"])
    assert r.exit_code == 0, r.stderr
    assert "the recorded run stopped early" in r.stderr and text.startswith(r.stdout.strip())


@pytest.mark.parametrize("content,words", [
    (None, "cannot read trace"),
    ("", "is empty"),
    ('{"event": "Start", "kind": "diffusion", "prompt_tokens": 1, "length": 4}\n', "no trace header"),
    ('{"event": "Trace", "version": 99}\n', "trace version 99"),
    ('{"event": "Trace", "version": 1}\nnot json\n{"event": "Done"}\n', ":2 is not JSON"),
    ('{"event": "Trace", "version": 1}\n{"event": "Start", "kind": "diffusion", "prompt_tokens": 1, "length": 4, '
     '"colour": 1}\n', "unknown fields ['colour']"),
    ('{"event": "Trace", "version": 1}\n{"event": "Boom"}\n', "unknown event 'Boom'"),
])
def test_a_bad_trace_is_one_line(tmp_path, content, words):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_text(content)
    for cmd in (["replay", str(path)], ["trace", "html", str(path), "-o", str(tmp_path / "m.html")]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2, (r.exit_code, r.stderr)
        err = r.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dlm: ") and words in err[0], err
    assert not (tmp_path / "m.html").exists()


def test_the_map_marks_each_token_with_its_step_and_origin(tmp_path):
    trace, text = record(tmp_path, "-m", "dlm-demo", "-p", "quality", "-n", "16", SORT)
    out = tmp_path / "map.html"
    r = runner.invoke(app, ["trace", "html", str(trace), "-o", str(out)])
    assert r.exit_code == 0, r.stderr
    page = out.read_text()
    assert page.count('class="tok"') == 5 and page.count("<rect") == 16  # one token a step, 16 steps
    import re

    assert re.search(r'title="position 0 · step \d+ · confidence [01]\.\d{3} · target"', page)
    spec, _ = record(tmp_path, "-m", "dlm-demo-ar", "--draft", "dlm-demo-ar-draft", "-p", "speculative", "-n", "12",
                     SORT, name="spec.jsonl")
    runner.invoke(app, ["trace", "html", str(spec), "-o", str(out)])
    page = out.read_text()
    origins = {o for o in ("draft", "correction", "bonus") if f'data-origin="{o}"' in page}
    assert origins and "accepted" not in origins


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="needs Debian's chromium (apt-get install chromium); .ci/run installs it")
def test_the_map_renders_in_a_real_browser(tmp_path):
    from matplotlib.image import imread

    trace, text = record(tmp_path, "-m", "dlm-demo", "-p", "quality", "-n", "16", SORT)
    page = tmp_path / "map.html"
    assert runner.invoke(app, ["trace", "html", str(trace), "-o", str(page)]).exit_code == 0
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([chromium(), *flags, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=60).stdout
    assert dom.count('class="tok"') == 5 and "1 3 4 7 9" in "".join(
        part.split(">", 1)[1] for part in dom.split('<span class="tok"')[1:]).replace("</span>", "")
    shot = tmp_path / "map.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), *flags, f"--user-data-dir={profile}", "--window-size=900,400",
                        f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=60)
    pixels = (imread(str(shot))[..., :3] * 255).round().astype(int)
    colours = {tuple(p) for p in pixels.reshape(-1, 3)}

    def near(rgb):
        return any(sum(abs(a - b) for a, b in zip(rgb, c)) <= 6 for c in colours)

    import colorsys
    import re

    hues = {int(h) for h in re.findall(r'class="tok" data-step="\d+" data-origin="target" style="background:hsl\((\d+), '
                                         r'75%, 82%\)', page.read_text())}
    assert len(hues) >= 3  # the tokens came from several steps
    for h in hues:  # every token's step colour is on the screen
        assert near([round(x * 255) for x in colorsys.hls_to_rgb(h / 360, 0.82, 0.75)]), h
