"""``dlm generate``: resolve model and profile, build the prompt, run the decoder through a view.

stdout gets the generated text (or one JSON object with --json); stderr gets the live view, the
stats line and errors. Ctrl-C and a closed pipe keep what was already committed.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from rich.console import Console

from .errors import RUNTIME, DlmError, UsageError, interrupt_code, interrupt_word, say, silence_stdout
from .view.stats import stats_line  # noqa: F401  (the stats line; also dlm replay's)

if TYPE_CHECKING:
    from .models.protocols import Model
    from .session import LoadModel



@dataclass
class GenerateRequest:
    prompt: Optional[str]
    model: Optional[str]
    draft: Optional[str]
    profile: Optional[str]
    file: Optional[Path]
    system: Optional[str]
    flags: dict[str, Any]
    sets: list[str]
    view: Optional[str]
    color_by: str
    pace: float
    json_out: bool
    chat_template: bool
    quiet: bool
    trace: Optional[Path]
    allow_different_tokenizers: bool
    load: Any
    parse_special: bool = False  # --parse-special: control tokens in the prompt act as control tokens
    no_stdin: bool = False  # --no-stdin: never read stdin


def result_json(done: Any, text: str, settings: Any, model: Model, draft: Any, prompt_tokens: int) -> dict[str, Any]:
    return {
        "text": text,
        "generated_tokens": len(done.tokens),
        "nfe": done.nfe,
        "tokens_per_nfe": done.tokens_per_nfe,
        "seconds": done.seconds,
        "tokens_per_second": done.tokens_per_second,
        "ttft_seconds": done.ttft_seconds,
        "finish_reason": done.finish_reason,
        "prompt_tokens": prompt_tokens,
        "profile": settings.profile,
        "strategy": settings.strategy,
        "model": model.info.name,
        "family": model.info.family,
        "parameters": model.info.parameters,
        "draft": draft.info.name if draft is not None else None,
        "device": model.info.device,
        "threads": __import__("torch").get_num_threads(),
        "dtype": model.info.dtype,
        "dtype_choice": model.info.dtype_choice,
        "kernels": model.speed.kernels,  # the linear products this run used: onednn (packed) or torch
        "settings": settings.as_dict(),
        "stats": done.stats(),
    }


def dtype_label(model: Model) -> str:
    """The stats line's dtype: ``bfloat16 (auto: avx512_bf16)``, or just the dtype when --dtype named it, and
    ``, oneDNN packed`` when the linear layers ran on oneDNN's prepacked weights (``kernels``)."""
    choice = model.info.dtype_choice
    label = f"{model.info.dtype} ({choice})" if choice.startswith("auto") else model.info.dtype
    return label + (", oneDNN packed" if getattr(model.speed, "kernels", "torch") == "onednn" else "")


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:  # /dev/full, a full disk, a vanished mount
        raise output_failed(exc) from None


def output_failed(exc: OSError) -> DlmError:
    """stdout cannot be written: quiet it for the exit-time flush and say so in one line."""
    silence_stdout()
    return DlmError(f"cannot write the output to stdout: {exc.strerror or exc}; free some space or send the "
                    "output elsewhere")


def open_trace(path: Path, material: Optional[Path]) -> Any:
    """The ``--trace`` file, opened for writing; refused when it is the input or cannot be written."""
    if material is not None and path.exists() and path.resolve() == Path(material).resolve():
        raise UsageError(f"--trace {path} is the input file given with -f; writing the trace there would "
                         "destroy it, so name another file")
    if path.is_dir():
        raise UsageError(f"--trace {path} is a directory; give a file name (e.g. {path / 'trace.jsonl'})")
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write --trace {path}: {exc.strerror or exc}; give a path in a writable "
                         "directory that exists") from None


def run_generate(req: GenerateRequest, *, load_model: LoadModel) -> int:
    """Run one generation; returns the exit code (0, or 130 after Ctrl-C)."""
    from .prompting import encode, gather
    from .session import RunRequest, check_early, open_session

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    run_req = RunRequest(req.model, req.draft, req.profile, tuple(req.sets), req.flags, req.allow_different_tokenizers)
    early = check_early(run_req)  # before stdin is waited on and the model loads (seconds to minutes)
    text_in = gather(req.prompt, req.file, sys.stdin, sys.stdin.isatty(), no_stdin=req.no_stdin, say=say)
    session = open_session(run_req, load_model, early=early)
    model, draft, settings = session.model, session.draft, session.settings
    from .decode import run
    from .view import show
    from .view.canvas import Canvas

    ids = encode(model.tokenizer, text_in, system=req.system, chat_template=req.chat_template,
                 parse_special=req.parse_special, context=model.max_length)
    session.check_prompt(settings, [len(ids)])
    events = run(model, ids, settings, draft=draft)

    view = req.view or ("live" if err.is_terminal and not req.json_out else "none")
    stdout_tty = sys.stdout.isatty()
    canvas = Canvas(model.tokenizer, model.eos_ids)
    trace = open_trace(Path(req.trace), req.file) if req.trace else None
    recorder = None
    trace_problem = None  # why the trace asked for is incomplete: the run ends with exit 1, after its text
    if trace is not None:
        from .trace import Recorder, header, write_line

        recorder = Recorder()
        events = recorder.wrap(events)
        try:
            write_line(trace, header(model, settings, len(ids)))
        except OSError as exc:  # a full disk: no trace, the generation goes on
            trace_problem = str(exc.strerror or exc)
            try:
                trace.close()
            except OSError:
                pass
            trace = None
    shown = None
    try:
        try:
            shown = show(events, canvas, view=view, out=sys.stdout, err_console=err, color_by=req.color_by,
                         transient=stdout_tty and not req.json_out, pace=req.pace, trace=trace,
                         stream=not stdout_tty and not req.json_out)
        except BrokenPipeError:
            silence_stdout()
            err.print(f"dlm: output pipe closed; stopped after {len(canvas.final_tokens())} tokens",
                      markup=False, highlight=False)
            return RUNTIME
        except OSError as exc:  # streaming to /dev/full, a full disk, a vanished mount
            raise output_failed(exc) from None
    finally:
        if trace is not None:
            try:
                if recorder is not None and not (shown is not None and shown.trace_error):
                    kept = canvas.done.tokens if canvas.done is not None else canvas.final_tokens()
                    write_line(trace, recorder.footer(model.tokenizer, model.tokenizer.decode(kept, skip_special_tokens=True)))
                trace.close()
            except OSError as exc:  # its last flush hit a full disk
                trace_problem = trace_problem or str(exc.strerror or exc)
    trace_problem = trace_problem or shown.trace_error
    trace_failed = (f"dlm: the trace {req.trace} is incomplete ({trace_problem}); the text is whole, "
                    "so write the trace where there is room") if trace_problem else None
    done = canvas.done
    if shown.interrupted or done is None:
        from .decode.events import Done

        kept = canvas.final_tokens()
        text = model.tokenizer.decode(kept, skip_special_tokens=True)
        if req.json_out:  # the partial result, so a script keeps what was decoded
            partial = Done(tokens=kept, nfe=canvas.nfe, steps=canvas.step + 1, seconds=0.0, ttft_seconds=None,
                           finish_reason="interrupted")
            out = result_json(partial, text, settings, model, draft, len(ids))
            out.update(seconds=None, tokens_per_second=None)
            _write(json.dumps(out, ensure_ascii=False) + "\n")
        else:
            _write(text[len(shown.streamed):] if text.startswith(shown.streamed) else "\n" + text)
            _write("\n" if text else "")
        more = len(canvas.committed_tokens()) - len(kept)
        note = f" ({more} more committed after the first masked slot)" if more > 0 else ""
        err.print(f"dlm: {interrupt_word(shown.cause)}: kept {len(kept)} committed tokens{note}", markup=False, highlight=False)
        if trace_failed:
            err.print(trace_failed, markup=False, highlight=False)
        return interrupt_code(shown.cause)

    text = model.tokenizer.decode(done.tokens, skip_special_tokens=True)
    if req.json_out:
        _write(json.dumps(result_json(done, text, settings, model, draft, len(ids)), ensure_ascii=False) + "\n")
    else:
        _write(text[len(shown.streamed):] if text.startswith(shown.streamed) else text)
        _write("\n")
    if not req.quiet:
        import torch

        line = stats_line(done, paced=req.pace > 0 and view == "live", dtype=dtype_label(model),
                          limit=settings.max_new_tokens, threads=torch.get_num_threads())
        err.print(line, style="dim", markup=False, highlight=False)
    if trace_failed:  # last, after the text: a script sees exit 1 and knows the trace it asked for is missing
        err.print(trace_failed, markup=False, highlight=False)
        return RUNTIME
    return 0

