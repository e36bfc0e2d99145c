"""Hostile model directories: every one ends in one ``dlm: ...`` line, before anything is built or read.

Pickles reached through an index, shard paths and symlinks that leave the directory, malformed
safetensors headers and indexes, JSON nested too deep, absurd config sizes, weights of another
family, repository code that fails: each is refused with the right exit code and no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from checkpoints import make_dream, make_hub_symlinked, make_llama, make_remote, write_raw_safetensors
from test_cli import assert_one_line_error
from dlm_cli.cli import app
from dlm_cli.errors import DlmError
from dlm_cli.models.loading import LoadOptions, load


@pytest.fixture(scope="module")
def llada_src(tiny_llada):
    return tiny_llada


@pytest.fixture
def llada(llada_src, tmp_path) -> Path:
    """A private copy of the tiny LLaDA checkpoint, free to damage."""
    return Path(shutil.copytree(llada_src, tmp_path / "llada"))


def gen(model: Path | str, *extra: str):
    return CliRunner().invoke(app, ["generate", "-m", str(model), "hi", "-n", "4", "--view", "none", *extra])


def error_line(result, code: int) -> str:
    """The one ``dlm: ...`` line of a failed run (its exit code checked, no traceback)."""
    assert_one_line_error(result, code)
    return result.stderr.strip()


def index(path: Path, weight_map: object) -> None:
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def llada_names(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        return list(fh.keys())


# --- the pickle gate, whatever names the weights --------------------------------------------------------------

def pickle_shard(llada: Path) -> None:
    from safetensors.torch import load_file

    torch.save(load_file(str(llada / "model.safetensors")), llada / "pytorch_model-00001.bin")
    names = llada_names(llada)
    (llada / "model.safetensors").unlink()
    index(llada, {n: "pytorch_model-00001.bin" for n in names})


def test_a_pickle_named_by_the_index_is_refused_without_allow_pickle(llada):
    pickle_shard(llada)
    line = error_line(gen(llada), 1)
    assert "pickle weights (pytorch_model-00001.bin)" in line and "--allow-pickle" in line, line


def test_a_pickle_named_by_the_index_loads_with_allow_pickle(llada, llada_src):
    pickle_shard(llada)
    m = load(str(llada), LoadOptions(allow_pickle=True))
    ref = load(str(llada_src))
    assert torch.equal(m.net.lm_head.weight, ref.net.lm_head.weight)


def test_a_pickle_beside_safetensors_in_the_index_is_refused(llada):
    from safetensors.torch import load_file, save_file

    state = load_file(str(llada / "model.safetensors"))
    names = sorted(state)
    save_file({n: state[n] for n in names[:3]}, str(llada / "a.safetensors"))
    torch.save({n: state[n] for n in names[3:]}, llada / "b.pt")
    (llada / "model.safetensors").unlink()
    index(llada, {n: ("a.safetensors" if i < 3 else "b.pt") for i, n in enumerate(names)})
    line = error_line(gen(llada), 1)
    assert "pickle weights (b.pt)" in line, line


class NotATensor:
    """Pickled by reference to this module: the restricted unpickler refuses to import it."""


@pytest.mark.parametrize("family", ["llada", "causal"])
def test_a_pickle_that_holds_more_than_tensors_is_one_line_even_with_allow_pickle(llada, tmp_path, family):
    from safetensors.torch import load_file

    d = llada if family == "llada" else make_llama(tmp_path / "ar")
    state = load_file(str(d / "model.safetensors"))
    torch.save({**state, "extra": NotATensor()}, d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    line = error_line(gen(d, "--allow-pickle"), 1)
    assert "UnpicklingError" in line and "Weights only load failed" in line, line


# --- paths that leave the model directory -------------------------------------------------------------------

@pytest.mark.parametrize("shard", ["../../../../etc/passwd", "/etc/passwd", "sub/../../x.safetensors", "C:\\x.bin"])
def test_index_shard_paths_that_leave_the_directory_are_refused(llada, shard):
    index(llada, {n: shard for n in llada_names(llada)})
    line = error_line(gen(llada), 1)
    assert repr(shard) in line and "not a file inside the model directory" in line, line


def test_an_index_shard_in_a_subdirectory_is_fine(llada, llada_src):
    names = llada_names(llada)
    (llada / "shards").mkdir()
    (llada / "model.safetensors").rename(llada / "shards" / "w.safetensors")
    index(llada, {n: "shards/w.safetensors" for n in names})
    m = load(str(llada))
    assert torch.equal(m.net.lm_head.weight, load(str(llada_src)).net.lm_head.weight)


def outside(tmp_path: Path, src: Path) -> Path:
    target = tmp_path / "elsewhere" / src.name
    target.parent.mkdir(exist_ok=True)
    shutil.move(str(src), target)
    os.symlink(target, src)
    return target


@pytest.mark.parametrize("name", ["model.safetensors", "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"])
def test_a_file_symlinked_outside_the_directory_is_refused(llada, tmp_path, name):
    target = outside(tmp_path, llada / name)
    line = error_line(gen(llada), 1)
    assert name in line and "resolves outside the model directory" in line and str(target) in line, line
    assert "copy the file into the directory" in line


def test_a_config_symlinked_outside_the_directory_is_refused(llada, tmp_path):
    outside(tmp_path, llada / "config.json")
    line = error_line(gen(llada), 1)
    assert "config.json" in line and "resolves outside the model directory" in line, line


def test_a_shard_named_by_the_index_and_symlinked_outside_is_refused(llada, tmp_path):
    names = llada_names(llada)
    (llada / "shards").mkdir()
    (llada / "model.safetensors").rename(llada / "shards" / "w.safetensors")
    outside(tmp_path, llada / "shards" / "w.safetensors")
    index(llada, {n: "shards/w.safetensors" for n in names})
    line = error_line(gen(llada), 1)
    assert "shard 'shards/w.safetensors'" in line and "resolves outside" in line, line


def test_a_symlink_inside_the_directory_is_fine(llada):
    (llada / "model.safetensors").rename(llada / "weights.data")
    os.symlink("weights.data", llada / "model.safetensors")
    assert load(str(llada)).info.family == "llada"


def test_hub_cache_snapshots_symlink_into_their_blobs_and_load(llada_src, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snap = make_hub_symlinked(tmp_path / "hf", "org/tiny", llada_src)
    assert (snap / "model.safetensors").is_symlink()
    assert load("org/tiny").info.family == "llada"
    # ... but a snapshot file pointing outside its repository's cache folder is refused
    outside(tmp_path, snap / "chat_template.jinja")
    line = error_line(gen("org/tiny"), 1)
    assert "chat_template.jinja" in line and "resolves outside" in line, line


def test_a_symlink_loop_is_one_line(llada):
    os.symlink("loop.jinja", llada / "loop2.jinja")
    os.symlink("loop2.jinja", llada / "loop.jinja")
    line = error_line(gen(llada), 1)
    assert "loop" in line, line


# --- malformed headers, indexes and JSON ----------------------------------------------------------------------

@pytest.mark.parametrize("header, why", [
    ({"w": {"dtype": "F32", "shape": ["abc"], "data_offsets": [0, 4]}}, "not a list of non-negative integers"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "not a list of non-negative integers"),
    ([1, 2, 3], "not a JSON object"),
    ({"w": "not an object"}, "not an object"),
    ({"w": {"dtype": "F32", "shape": [1]}}, "data offsets"),
    ({"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}, "the file holds 4"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, "does not fill"),
    ({"w": {"dtype": 5, "shape": [1], "data_offsets": [0, 4]}}, "no dtype"),
])
def test_malformed_safetensors_headers_are_one_line(llada, header, why):
    write_raw_safetensors(llada / "model.safetensors", header, b"\0" * 4)
    line = error_line(gen(llada), 1)
    assert "model.safetensors is corrupt or truncated" in line and why in line, line


def test_a_truncated_safetensors_file_is_one_line(llada):
    f = llada / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    line = error_line(gen(llada), 1)
    assert "corrupt or truncated" in line and "delete it and download it again" in line, line


def test_a_header_longer_than_the_file_is_one_line(llada):
    (llada / "model.safetensors").write_bytes((10**6).to_bytes(8, "little") + b"{}")
    line = error_line(gen(llada), 1)
    assert "implausible" in line, line


@pytest.mark.parametrize("weight_map, why", [
    (["model.safetensors"], "weight_map is not a non-empty object"),
    ({}, "weight_map is not a non-empty object"),
    ({"w": 5}, "names a shard 5"),
    ({"w": None}, "names a shard None"),
    ({"w": ""}, "names a shard ''"),
])
def test_malformed_indexes_are_one_line(llada, weight_map, why):
    index(llada, weight_map)
    line = error_line(gen(llada), 1)
    assert why in line, line


def test_an_index_that_is_not_an_object_is_one_line(llada):
    (llada / "model.safetensors.index.json").write_text("[1, 2]")
    line = error_line(gen(llada), 1)
    assert "model.safetensors.index.json does not hold a JSON object" in line, line


def test_a_config_nested_200000_levels_deep_is_one_line(llada):
    (llada / "config.json").write_text('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}")
    line = error_line(gen(llada), 1)
    assert "config.json is nested too deeply" in line, line


def test_a_tokenizer_config_nested_too_deep_is_one_line(llada):
    (llada / "tokenizer_config.json").write_text("[" * 200_000 + "]" * 200_000)
    line = error_line(gen(llada), 1)
    assert "tokenizer" in line, line


def test_a_generation_config_nested_too_deep_only_loses_its_end_ids(llada):
    (llada / "generation_config.json").write_text("[" * 200_000 + "]" * 200_000)
    assert load(str(llada)).eos_ids


@pytest.mark.parametrize("content", ["[" * 200_000 + "]" * 200_000, '{"model": 5}', "[]", "\xff\xfe"])
def test_a_hostile_tokenizer_json_is_one_line(llada, content):
    (llada / "tokenizer.json").write_text(content, encoding="latin-1")
    line = error_line(gen(llada), 1)
    assert "cannot load the tokenizer" in line, line


def test_a_config_that_is_not_utf8_is_one_line(llada):
    (llada / "config.json").write_bytes(b'{"a": "\xff"}')
    line = error_line(gen(llada), 1)
    assert "config.json is not valid JSON" in line, line


# --- absurd configs, refused before anything is built -----------------------------------------------------------

def set_config(path: Path, **over) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(over)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("over, fragments", [
    ({"n_layers": 10**5}, ("n_layers = 100000 is implausible",)),
    ({"n_layers": 3000}, ("n_layers = 3000 but the weights hold 2 layers",)),
    ({"n_heads": 0}, ("n_heads = 0 must be a positive integer",)),
    ({"d_model": "32"}, ("d_model = '32' must be a positive integer",)),
    ({"n_kv_heads": -4}, ("n_kv_heads = -4",)),
    ({"max_sequence_length": 10**12}, ("max_sequence_length = 1000000000000 is implausible",)),
    ({"vocab_size": True}, ("vocab_size = True",)),
    ({"mask_token_id": "x"}, ("mask_token_id = 'x' is not a token id",)),
])
def test_absurd_llada_configs_are_refused_at_once(llada, over, fragments):
    set_config(llada, **over)
    t0 = time.monotonic()
    line = error_line(gen(llada), 1)
    assert all(f in line for f in fragments), line
    assert time.monotonic() - t0 < 10


def test_a_huge_n_with_the_largest_context_is_refused_before_allocating(llada):
    from dlm_cli.errors import UsageError
    from dlm_cli.prompting import check_length, encode

    set_config(llada, max_sequence_length=2**24)
    m = load(str(llada))
    ids = encode(m.tokenizer, "hi", context=m.max_length)
    with pytest.raises(UsageError, match="context is 16777216 tokens; lower -n"):
        check_length(len(ids), 10**8, m.max_length, m.info.name)


def test_a_causal_config_with_more_layers_than_its_weights_is_refused(tmp_path):
    d = make_llama(tmp_path / "ar")
    set_config(d, num_hidden_layers=10**5)
    line = error_line(gen(d), 1)
    assert "num_hidden_layers = 100000 is implausible" in line, line
    set_config(d, num_hidden_layers=64)
    t0 = time.monotonic()
    line = error_line(gen(d), 1)
    assert "num_hidden_layers = 64 but the weights hold 2 layers" in line, line
    assert time.monotonic() - t0 < 10
    set_config(d, num_hidden_layers=2, num_attention_heads=0)
    line = error_line(gen(d), 1)
    assert "num_attention_heads = 0 must be a positive integer" in line, line


def test_a_causal_checkpoint_lacking_weights_is_refused_not_randomly_filled(tmp_path):
    from safetensors.torch import load_file, save_file

    d = make_llama(tmp_path / "ar")
    state = load_file(str(d / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
    line = error_line(gen(d), 1)
    assert "lacks weights model.layers.1.mlp.up_proj.weight" in line, line


@pytest.mark.parametrize("family", ["dream", "causal"])
def test_a_peft_adapter_beside_the_weights_is_refused_not_merged_in(tmp_path, family):
    """transformers applies a PEFT adapter it finds in the directory (where peft is installed), past dlm's checks."""
    from safetensors.torch import save_file

    d = make_dream(tmp_path / "m") if family == "dream" else make_llama(tmp_path / "m")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                       "target_modules": ["q_proj"]}))
    save_file({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 32),
               "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(32, 2)},
              str(d / "adapter_model.safetensors"))
    line = error_line(gen(d), 1)
    assert "holds a PEFT adapter (adapter_config.json)" in line and "move the adapter's files out" in line, line


# --- weights of another family or shape in a LLaDA-layout directory -----------------------------------------------

def test_dream_weights_in_a_llada_directory_are_detected(llada, tmp_path):
    dream = make_dream(tmp_path / "dream")
    shutil.copy(dream / "model.safetensors", llada / "model.safetensors")
    line = error_line(gen(llada), 1)
    assert "not llada's" in line and "another family than its config.json says" in line, line


def test_llada_weights_of_another_shape_are_detected(llada):
    set_config(llada, mlp_hidden_size=48)
    line = error_line(gen(llada), 1)
    assert "has shape (32, 64) but config.json implies (32, 48)" in line, line


def test_llada_weights_missing_a_layer_are_detected(llada):
    from safetensors.torch import load_file, save_file

    state = load_file(str(llada / "model.safetensors"))
    del state["model.transformer.blocks.1.ff_out.weight"]
    save_file(state, str(llada / "model.safetensors"))
    line = error_line(gen(llada), 1)
    assert "lacks weights model.layers.1.mlp.down_proj.weight" in line, line


# --- repository code that fails ---------------------------------------------------------------------------------

@pytest.mark.parametrize("code, last", [
    ("import not_a_module_dlm_knows\n", "ImportError: This modeling file requires the following packages"),
    ("undefined_name\n", "NameError: name 'undefined_name' is not defined"),
    ("x = (\n", "SyntaxError"),
    ("raise RuntimeError('needs flash-attn\\nand a GPU')\n", "RuntimeError: and a GPU"),
])
def test_remote_code_that_fails_to_import_is_one_line(tmp_path, code, last):
    d = make_remote(tmp_path / "remote")
    (d / "modeling_tiny.py").write_text(code + (d / "modeling_tiny.py").read_text())
    result = gen(d, "--trust-remote-code")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    lines = [x for x in result.stderr.splitlines() if not x.startswith("dlm: warning: running the model code")]
    assert len(lines) == 1 and "the repository's own code (run by --trust-remote-code) failed" in lines[0]
    assert last in lines[0], lines[0]


def test_remote_code_that_fails_while_building_is_one_line(tmp_path):
    d = make_remote(tmp_path / "remote")
    src = (d / "modeling_tiny.py").read_text().replace("super().__init__(config)",
                                                       "super().__init__(config)\n        1 / 0")
    (d / "modeling_tiny.py").write_text(src)
    result = gen(d, "--trust-remote-code")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    lines = [x for x in result.stderr.splitlines() if not x.startswith("dlm: warning")]
    assert len(lines) == 1 and "ZeroDivisionError: division by zero" in lines[0], result.stderr


def test_the_validator_also_guards_direct_loads(llada):
    index(llada, {"w": "../x.bin"})
    with pytest.raises(DlmError, match="not a file inside the model directory"):
        load(str(llada))
