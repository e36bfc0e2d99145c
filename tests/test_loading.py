"""Loading: hub cache and revisions, and one test per error a user can cause, each with its one-line fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from checkpoints import make_dream, make_remote, make_sdar
from dlm_cli.cli import app
from dlm_cli.errors import DlmError, UsageError
from dlm_cli.models.loading import LoadOptions, load

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return make_dream(tmp_path_factory.mktemp("load") / "dream", sharpen=4.0)


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args))


def assert_one_line(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dlm: ") and "Traceback" not in result.stderr, result.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# --- the hub cache ----------------------------------------------------------------------------------------

def hub_snapshot(home: Path, repo: str, src: Path, rev: str = REV, ref: str = "main") -> Path:
    """huggingface-hub's cache layout: models--org--name/snapshots/<commit>/... and refs/<ref>."""
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = copy(src, root / "snapshots" / rev)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(rev)
    return snap


def test_a_hub_id_loads_from_the_cache_under_HF_HOME_offline(dream_dir, tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = hub_snapshot(home, "org/tiny-dream", dream_dir)
    hub_snapshot(home, "org/tiny-dream", dream_dir, rev="f" * 40, ref="v2")
    m = load("org/tiny-dream")
    assert m.info.family == "dream" and Path(m.info.path) == snap and m.info.name == "org/tiny-dream"
    assert Path(load(f"org/tiny-dream@{REV}").info.path) == snap  # a commit
    assert Path(load("org/tiny-dream@v2").info.path).name == "f" * 40  # a tag or branch (refs/v2)


def test_an_uncached_repo_offline_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DlmError, match=r"org/absent@v3 is not in the local Hugging Face cache .*HF_HUB_OFFLINE is set"):
        load("org/absent@v3")


# --- files --------------------------------------------------------------------------------------------------

def test_a_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(UsageError, match="no config.json"):
        load(str(tmp_path))


def test_missing_weights(dream_dir, tmp_path):
    d = copy(dream_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(DlmError, match="has no weights"):
        load(str(d))


def test_a_missing_shard(dream_dir, tmp_path):
    d = copy(dream_dir, tmp_path / "m")
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors",
                            "model.norm.weight": "model-00001-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(DlmError, match="lacks weight shards model-00002-of-00002.safetensors"):
        load(str(d))


@pytest.mark.parametrize("keep", [0.5, 0.0001])
def test_a_truncated_safetensors_file(dream_dir, tmp_path, keep):
    d = copy(dream_dir, tmp_path / "m")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: max(4, int(len(data) * keep))])
    with pytest.raises(DlmError, match="corrupt or truncated.*download it again"):
        load(str(d))


def test_weights_that_do_not_match_the_config(dream_dir, tmp_path):
    d = copy(dream_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DlmError, match="config and weights do not match"):
        load(str(d))


def test_pickle_weights_are_refused_unless_allowed(dream_dir, tmp_path):
    from safetensors.torch import load_file

    d = copy(dream_dir, tmp_path / "m")
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    with pytest.raises(DlmError, match="pickle can run arbitrary code.*--allow-pickle"):
        load(str(d))
    got = load(str(d), LoadOptions(allow_pickle=True))
    ref = load(str(dream_dir))
    x = torch.tensor([[5, 6, 7, ref.mask_id, ref.mask_id]])
    assert torch.equal(got.logits(x), ref.logits(x))


# --- device, dtype, memory ----------------------------------------------------------------------------------

def test_float16_on_the_cpu_and_a_missing_gpu(dream_dir):
    with pytest.raises(UsageError, match="float16 is not supported on the CPU"):
        load(str(dream_dir), LoadOptions(device="cpu", dtype="float16"))
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA GPU"):
            load(str(dream_dir), LoadOptions(device="cuda"))


def test_bfloat16_on_the_cpu_loads(dream_dir):
    m = load(str(dream_dir), LoadOptions(dtype="bfloat16"))
    assert m.net.lm_head.weight.dtype == torch.bfloat16 and m.info.dtype == "bfloat16"


def test_a_model_too_big_for_free_memory_is_refused_before_loading(dream_dir, monkeypatch):
    from dlm_cli.models import memory

    need = memory.weight_bytes([dream_dir / "model.safetensors"], torch.float32)
    params = memory.parameter_count([dream_dir / "model.safetensors"])
    assert need == 4 * params and params > 10_000  # from the header alone, as float32
    assert memory.weight_bytes([dream_dir / "model.safetensors"], torch.bfloat16) == 2 * params
    monkeypatch.setattr(memory, "available_ram", lambda: need // 3)

    class Reached(Exception):
        pass

    def reached(cls, *a, **k):
        raise Reached

    monkeypatch.setattr("transformers.PreTrainedModel.from_pretrained", classmethod(reached))
    with pytest.raises(DlmError, match=r"needs about 0\.0 GiB .* in float32 but only 0\.0 GiB of RAM is free; "
                                       r"--dtype bfloat16 halves it"):
        load(str(dream_dir))  # refused before transformers is asked to read a single tensor
    monkeypatch.setattr(memory, "available_ram", lambda: need * 2)
    with pytest.raises(Reached):  # past the check, the weights are loaded
        load(str(dream_dir))


def test_device_map_auto_shards_with_accelerate(dream_dir):
    pytest.importorskip("accelerate")
    sharded = load(str(dream_dir), LoadOptions(device_map="auto"))
    plain = load(str(dream_dir))
    x = torch.tensor([[5, 6, 7, plain.mask_id, plain.mask_id]])
    # One device here (the CPU): accelerate's map puts every layer on it, so no dispatch hooks are needed.
    assert {p.device.type for p in sharded.net.parameters()} == {"cpu"}
    assert torch.equal(sharded.logits(x), plain.logits(x))


def test_device_map_auto_without_accelerate_says_what_to_install(dream_dir, monkeypatch):
    import importlib.util

    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else find(name, *a))
    with pytest.raises(DlmError, match=r"--device-map auto needs accelerate: pip install 'accelerate>=1.0'"):
        load(str(dream_dir), LoadOptions(device_map="auto"))


# --- families -------------------------------------------------------------------------------------------------

def test_an_unknown_family_lists_the_supported_ones(dream_dir, tmp_path):
    d = copy(dream_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="mystery", architectures=["MysteryLM"])
    cfg.pop("auto_map")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DlmError) as err:
        load(str(d))
    msg = str(err.value)
    assert "unknown model family (model_type='mystery', architectures=MysteryLM)" in msg
    for fam in ("llada", "dream", "sdar", "fast-dllm-v2", "diffusion-gemma"):
        assert fam in msg
    assert "--trust-remote-code" not in msg  # no code ships with it: the flag would not help


def test_remote_code_needs_the_flag_and_warns_when_given(tmp_path, capsys):
    d = make_remote(tmp_path / "remote")
    with pytest.raises(DlmError, match="ships its own modeling code: --trust-remote-code runs it"):
        load(str(d))
    m = load(str(d), LoadOptions(trust_remote_code=True))
    assert "dlm: warning: running the model code shipped with" in capsys.readouterr().err
    assert m.info.family == "remote-code" and m.mask_id == m.tokenizer.get_vocab()["<|mdm_mask|>"]
    from dlm_cli import profiles
    from dlm_cli.decode import run

    s = profiles.load("speedy", flags={"seed": 0, "max_new_tokens": 8})
    done = list(run(m, m.tokenizer.encode("hello"), s))[-1]
    assert done.nfe >= 1 and m.mask_id not in done.tokens


def test_a_custom_tokenizer_class_loads_without_its_code(dream_dir, tmp_path):
    """Dream ships ``DreamTokenizer`` (a Qwen2 BPE copy) in tokenization_dream.py: dlm must not run it."""
    from tokenizers import Tokenizer

    d = copy(dream_dir, tmp_path / "m")
    Tokenizer.from_file(str(d / "tokenizer.json")).model.save(str(d))
    (d / "tokenizer.json").unlink()
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.update(tokenizer_class="DreamTokenizer", auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]})
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    (d / "tokenization_dream.py").write_text("raise SystemExit('remote tokenizer code ran')\n")
    m = load(str(d))
    assert type(m.tokenizer).__name__ == "Qwen2Tokenizer" and m.tokenizer.eos_token == "<|endoftext|>"


# --- the CLI contract -------------------------------------------------------------------------------------------

def test_cli_generate_and_bench_run_a_block_diffusion_checkpoint(tmp_path):
    d = make_sdar(tmp_path / "sdar", sharpen=4.0)
    r = run_cli("generate", "-m", str(d), "sort: 3 1 2", "-n", "12", "--seed", "0", "--json")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["family"] == "sdar" and out["nfe"] >= 1
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "sort: 3 1 2", "answer": "1 2 3", "task": "sort"}\n')
    r = run_cli("bench", "-m", str(d), "--prompts", str(prompts), "-p", "speedy", "--reps", "1", "-n", "8", "--json")
    assert r.exit_code == 0, r.stderr
    rows = {row["profile"]: row for row in json.loads(r.stdout)["rows"]}
    assert set(rows) == {"baseline", "baseline+eotp", "speedy"} and rows["baseline"]["nfe"] == 8


def test_cli_errors_are_one_line_with_an_exit_code(dream_dir, tmp_path):
    d = copy(dream_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="mystery", architectures=["MysteryLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    assert_one_line(run_cli("generate", "-m", str(d), "hi", "-n", "4"), 1, "unknown model family", "--trust-remote-code")
    assert_one_line(run_cli("generate", "-m", str(dream_dir), "hi", "--dtype", "float16", "--device", "cpu"), 2,
             "--dtype float32 or bfloat16")
    p = copy(dream_dir, tmp_path / "p")
    (p / "model.safetensors").rename(p / "pytorch_model.bin")
    assert_one_line(run_cli("generate", "-m", str(p), "hi", "-n", "4"), 1, "pickle", "--allow-pickle")


def test_the_gpu_check_reads_free_gpu_memory(dream_dir, monkeypatch):
    """No GPU here: the check's arithmetic and message, with torch.cuda.mem_get_info stubbed."""
    from dlm_cli.models import memory

    files = [dream_dir / "model.safetensors"]
    need = memory.weight_bytes(files, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need // 2, 80 * memory.GIB))
    with pytest.raises(DlmError, match=r"of GPU memory is free; --device-map auto spreads it"):
        memory.check_fits(files, torch.bfloat16, torch.device("cuda"), "tiny")
    assert memory.check_fits(files, torch.bfloat16, torch.device("cuda"), "tiny", device_map="auto") == need
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (need * 2, 80 * memory.GIB))
    assert memory.check_fits(files, torch.bfloat16, torch.device("cuda"), "tiny") == need


def test_end_ids_include_the_generation_config(dream_dir, tmp_path):
    d = copy(dream_dir, tmp_path / "m")
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, 8]}))
    ids = load(str(d)).eos_ids
    assert 7 in ids and 8 in ids and ids[0] == json.loads((d / "config.json").read_text())["eos_token_id"]
