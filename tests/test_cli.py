"""The CLI contract: text on stdout, stats on stderr, --json, input sources, and one-line errors with exit codes."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from dlm_cli.cli import app

runner = CliRunner()


def dlm(*args: str, input: str | bytes | None = None):
    return runner.invoke(app, list(args), input=input)


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: "), result.stderr
    assert "Traceback" not in result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_generate_writes_text_to_stdout_and_stats_to_stderr(tiny_llada):
    r = dlm("generate", "-m", str(tiny_llada), "hello world", "-n", "16", "--seed", "1")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.endswith("\n") and r.stdout.strip()
    assert "NFE" in r.stderr and "tok/s" in r.stderr and "TTFT" in r.stderr
    assert "\x1b[" not in r.stdout + r.stderr  # not a terminal: plain text, no ANSI codes


def test_quiet_drops_the_stats_line(tiny_llada):
    r = dlm("generate", "-m", str(tiny_llada), "hello", "-n", "8", "--quiet")
    assert r.exit_code == 0 and r.stderr == ""


def test_json_has_the_promised_fields(tiny_llada):
    r = dlm("generate", "-m", str(tiny_llada), "hello", "-n", "16", "--json", "--seed", "3", "-p", "speedy")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("text", "generated_tokens", "nfe", "tokens_per_nfe", "seconds", "tokens_per_second",
                "ttft_seconds", "profile", "model", "settings"):
        assert key in out
    assert out["profile"] == "speedy" and out["settings"]["strategy"] == "threshold"
    assert out["settings"]["seed"] == 3 and out["settings"]["max_new_tokens"] == 16
    assert out["tokens_per_nfe"] == pytest.approx(out["generated_tokens"] / out["nfe"])
    from dlm_cli.models.loading import load

    assert out["parameters"] == sum(p.numel() for p in load(str(tiny_llada)).net.parameters()) > 0
    assert out["stats"]["blocks"] >= 1 and out["stats"]["cache"] == "dual"  # typed Done fields, as JSON


def test_json_reports_the_seed_it_drew_so_the_run_can_be_repeated(tiny_llada):
    first = json.loads(dlm("generate", "-m", str(tiny_llada), "hi", "-n", "12", "--json",
                           "--temperature", "1").stdout)
    again = json.loads(dlm("generate", "-m", str(tiny_llada), "hi", "-n", "12", "--json", "--temperature", "1",
                           "--seed", str(first["settings"]["seed"])).stdout)
    assert again["text"] == first["text"]


def test_piped_stdin_is_the_material_and_the_argument_the_instruction(tiny_llada, llada_model):
    from dlm_cli.prompting import encode

    r = dlm("generate", "-m", str(tiny_llada), "fix the typos", "-n", "8", "--json", input="teh cat sat\n")
    expected = encode(llada_model.tokenizer, "fix the typos\n\nteh cat sat\n")
    assert json.loads(r.stdout)["prompt_tokens"] == len(expected)


def test_dash_reads_stdin_and_file_reads_a_file(tiny_llada, llada_model, tmp_path):
    from dlm_cli.prompting import encode

    r = dlm("generate", "-m", str(tiny_llada), "-", "-n", "8", "--json", input="hello world")
    assert json.loads(r.stdout)["prompt_tokens"] == len(encode(llada_model.tokenizer, "hello world"))
    f = tmp_path / "notes.md"
    f.write_text("some notes")
    r = dlm("generate", "-m", str(tiny_llada), "summarise", "-f", str(f), "-n", "8", "--json")
    assert json.loads(r.stdout)["prompt_tokens"] == len(encode(llada_model.tokenizer, "summarise\n\nsome notes"))


def test_no_chat_template_sends_raw_text(tiny_llada, llada_model):
    r = dlm("generate", "-m", str(tiny_llada), "hello", "-n", "8", "--json", "--no-chat-template")
    assert json.loads(r.stdout)["prompt_tokens"] == len(llada_model.tokenizer.encode("hello"))


def test_missing_model_path(tmp_path):
    assert_one_line_error(dlm("generate", "-m", str(tmp_path / "nope"), "hi"), 2, "does not exist")


def test_directory_that_is_not_a_model(tmp_path):
    assert_one_line_error(dlm("generate", "-m", str(tmp_path), "hi"), 2, "not a model directory", "config.json")


def test_corrupt_safetensors(tiny_llada, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llada, broken)
    w = broken / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    assert_one_line_error(dlm("generate", "-m", str(broken), "hi"), 1, "corrupt or truncated", "download it again")


def test_unknown_family(tiny_llada, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_llada, other)
    (other / "config.json").write_text(json.dumps({"model_type": "telepathy", "architectures": ["MindReader"]}))
    assert_one_line_error(dlm("generate", "-m", str(other), "hi"), 1, "unknown model family", "llada")


def test_unknown_profile(tiny_llada):
    assert_one_line_error(dlm("generate", "-m", str(tiny_llada), "-p", "speedie", "hi"), 2, "unknown profile", "speedy")


def test_malformed_toml(tiny_llada, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('strategy = "threshold\n')
    assert_one_line_error(dlm("generate", "-m", str(tiny_llada), "-p", str(bad), "hi"), 2, "not valid TOML", str(bad))


@pytest.mark.parametrize("args,stdin,fragment", [
    (["   "], None, "the prompt is empty"),
    ([], "", "stdin is empty"),
    (["-"], "  \n", "stdin is empty"),
    ([], b"\xff\xfe\xfa", "not UTF-8"),
    ([], b"abc\x00def", "looks binary"),
])
def test_empty_or_binary_input(tiny_llada, args, stdin, fragment):
    assert_one_line_error(dlm("generate", "-m", str(tiny_llada), *args, input=stdin), 2, fragment)


def test_prompt_longer_than_the_context(tiny_llada):
    assert_one_line_error(dlm("generate", "-m", str(tiny_llada), "word " * 400), 2, "context is 256 tokens")


def test_room_left_in_the_context_is_suggested(tiny_llada):
    assert_one_line_error(dlm("generate", "-m", str(tiny_llada), "hello", "-n", "250"), 2, "lower -n to")


@pytest.mark.parametrize("n", ["0", "-5"])
def test_non_positive_max_new_tokens(tiny_llada, n):
    assert_one_line_error(dlm("generate", "-m", str(tiny_llada), "hi", "-n", n), 2, "max_new_tokens", "≥ 1")


def test_bad_set_value(tiny_llada):
    assert_one_line_error(dlm("generate", "-m", str(tiny_llada), "hi", "--set", "threshold=2"), 2,
                   "--set threshold=2", "out of range")


def test_unknown_option_is_one_line():
    assert_one_line_error(dlm("generate", "--bogus"), 2, "No such option: --bogus")


def test_plain_view_with_json_is_refused(tiny_llada):
    assert_one_line_error(dlm("generate", "-m", str(tiny_llada), "hi", "--json", "--view", "plain"), 2, "--json")


def test_hub_id_offline_and_not_cached():
    assert_one_line_error(dlm("generate", "-m", "GSAI-ML/LLaDA-8B-Instruct", "hi"), 1,
                   "not in the local Hugging Face cache", "HF_HUB_OFFLINE")


def test_plain_view_streams_the_text(tiny_llada):
    r = dlm("generate", "-m", str(tiny_llada), "hello", "-n", "24", "--view", "plain", "--seed", "2", "-q")
    j = dlm("generate", "-m", str(tiny_llada), "hello", "-n", "24", "--json", "--seed", "2")
    assert r.exit_code == 0 and r.stdout == json.loads(j.stdout)["text"] + "\n"


def test_trace_file_holds_every_event(tiny_llada, tmp_path):
    trace = tmp_path / "t.jsonl"
    r = dlm("generate", "-m", str(tiny_llada), "hi", "-n", "16", "-p", "quality", "--trace", str(trace), "--json")
    lines = [json.loads(x) for x in trace.read_text().splitlines()]
    assert [x["event"] for x in lines[:2] + lines[-2:]] == ["Trace", "Start", "Done", "Vocab"]
    assert sum(x["event"] == "Step" for x in lines) == json.loads(r.stdout)["nfe"] == 16


def test_profiles_list_and_show():
    r = dlm("profiles", "list", "--json")
    names = {p["name"] for p in json.loads(r.stdout)}
    assert {"speedy", "quality", "baseline"} <= names
    r = dlm("profiles", "show", "speedy", "--set", "threshold=0.7", "--json")
    shown = json.loads(r.stdout)
    assert shown["settings"]["threshold"] == {"value": 0.7, "source": "--set"}
    assert shown["strategy"] == "threshold"


def test_models_lists_embedded_models_and_families():
    out = json.loads(dlm("models", "--json").stdout)
    assert "dlm-demo" in {m["name"] for m in out["embedded"]}
    assert "llada" in {f["family"] for f in out["families"]}


def test_threads_are_set_and_reported(tiny_llada):
    import torch

    before = torch.get_num_threads()
    try:
        out = json.loads(dlm("generate", "-m", str(tiny_llada), "hi", "-n", "8", "--json", "--threads", "2").stdout)
        assert out["threads"] == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    assert dlm("generate", "-m", str(tiny_llada), "hi", "--threads", "0").exit_code == 2


def test_unknown_model_lists_every_short_name_and_each_strategy_has_a_profile():
    r = dlm("generate", "-m", "no-such-model", "hi")
    assert_one_line_error(r, 2, "smollm2-dlm", "smollm2)", "dlm-demo")
    from dlm_cli import profiles
    from dlm_cli.decode.keys import STRATEGIES

    assert set(STRATEGIES) - {s.strategy for s in map(profiles.load, profiles.available())} == set()


def test_profiles_list_says_which_profile_is_the_default():
    rows = {r["name"]: r for r in json.loads(dlm("profiles", "list", "--json").stdout)}
    assert rows["speedy"]["default"] == "default for a dLLM" and rows["ar"]["default"].startswith("default for an AR")
    assert rows["quality"]["default"] is None
    table = dlm("profiles", "list").stdout
    assert "speedy*" in table and "default for a dLLM" in table
