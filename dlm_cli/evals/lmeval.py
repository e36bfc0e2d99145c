"""dlm as an lm-evaluation-harness model, registered as ``dlm``.

lm-eval's own command line finds it through the installed ``dlm-cli-lmeval.pth`` (see
:mod:`dlm_cli.lmeval_plugin`)::

    lm_eval --model dlm --model_args model=dlm-demo,profile=speedy --tasks gsm8k

``python -m dlm_cli.evals.lmeval`` is the same command line with dlm's errors as one ``dlm: ...``
line and their exit code; from Python, ``lm_eval.simple_evaluate(model="dlm", ...)``.

``--batch_size N``: ``generate_until`` decodes N requests together (a finished one leaves and the
next joins at the next step) when the profile runs batched (:mod:`dlm_cli.decode.batch`: the
strategies threshold and baseline, no cache or a block-diffusion model's exact one; for an AR model
ar, lookup, aded and speculative: :mod:`dlm_cli.decode.batch_ar`); the texts are
batch 1's. Other profiles decode one request at a time; ``auto`` is 8 (or ``--max_batch_size``).

``--model_args``: ``model`` (a dlm model spec; default dlm's default model), ``profile`` (default:
``speedy`` for a dLLM, ``ar`` or ``speculative`` for AR), ``draft``, ``device``, ``dtype``,
``device_map``, ``trust_remote_code``, ``allow_pickle``, ``seed`` (0), ``threads``, ``mc_samples``
and ``mc_batch`` (a dLLM's likelihood estimate); any other
``KEY=VALUE`` is a profile key (as ``--set KEY=VALUE``), e.g. ``threshold=0.7``.

``generate_until`` works for every model: the context is decoded by the profile, stopped as
soon as the committed text holds one of ``until``, and cut before it; ``max_gen_toks`` is
``max_new_tokens``. ``loglikelihood`` and ``loglikelihood_rolling`` are exact for AR models (the
token log-probabilities of one forward). A dLLM has no exact likelihood: for the fully
bidirectional ones (LLaDA, Dream) ``loglikelihood`` is LLaDA's Monte-Carlo estimate (Nie et al.
2025, "Large Language Diffusion Models", eq. 6 and its evaluation code): the mean over
``mc_samples`` (128) draws of ``-Σ_masked CE / (k / L)`` with k of the L continuation tokens
masked, k stratified over the batch of ``mc_batch`` (32), and is_greedy from its one-token-per-step
low-confidence check; other dLLMs (block diffusion, DiffusionGemma) and ``loglikelihood_rolling``
on any dLLM stop with one line that says so. Contexts are sent as raw text; lm-eval's
``--apply_chat_template`` renders the model's chat template first.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, Optional

from ..errors import DlmError, UsageError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ModuleNotFoundError as exc:  # the optional extra is missing
    if (exc.name or "").split(".")[0] != "lm_eval":
        raise
    message = "lm-eval is not installed: pip install 'dlm-cli[eval]' (or: pip install lm-eval)"
    if __name__ == "__main__":
        sys.exit(f"dlm: {message}")
    raise ImportError(message) from None

NAME = "dlm"
LOAD_KEYS = ("device", "dtype", "device_map", "trust_remote_code", "allow_pickle")
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until
LM_EVAL_DEFAULT_DEVICE = "cuda:0"  # what lm-eval passes when --device is not given


class _Until:
    """One run's answer for ``generate_until``: its Done's text, or earlier, the committed prefix once it holds
    one of ``until`` (the rest cannot change the answer), cut before it."""

    def __init__(self, model: Any, until: list[str]) -> None:
        self.tok, self.eos, self.until = model.tokenizer, set(model.eos_ids), until
        self.committed: dict[int, int] = {}
        self.end: Optional[int] = None  # the first slot known to hold (or follow) an end token
        self.shown = 0

    def feed(self, ev: Any) -> Optional[str]:
        from ..decode import Done, Step

        if isinstance(ev, Done):
            return _cut(self.tok.decode(ev.tokens, skip_special_tokens=True), self.until)
        if not isinstance(ev, Step) or not self.until:
            return None
        committed = self.committed
        committed.update(zip(ev.positions, ev.tokens))
        committed.update(zip(ev.edited, ev.edited_tokens))
        if ev.filled:
            self.end = min([*ev.filled, *([self.end] if self.end is not None else [])])
        prefix = []
        while len(prefix) in committed and (self.end is None or len(prefix) < self.end):
            t = committed[len(prefix)]
            if t in self.eos:
                break
            prefix.append(t)
        if len(prefix) > self.shown:
            self.shown = len(prefix)
            text = self.tok.decode(prefix, skip_special_tokens=True)
            if any(u in text for u in self.until):
                return _cut(text, self.until)
        return None


class DlmLM(LM):
    """An lm-eval ``LM`` over a dlm model and profile; ``generate_until`` decodes ``batch_size`` requests
    together where the profile allows it (:mod:`dlm_cli.decode.batch`), else one at a time."""

    def __init__(self, model: Optional[str] = None, profile: Optional[str] = None, draft: Optional[str] = None,
                 seed: int = 0, threads: Optional[int] = None, mc_samples: int = 128, mc_batch: int = 32,
                 batch_size: Any = None, max_batch_size: Any = None, **keys: Any) -> None:
        super().__init__()
        from ..models.loading import LoadOptions
        from ..session import RunRequest, check_early, default_loader, open_session

        if threads is not None:
            import torch

            torch.set_num_threads(int(threads))
        load_args = {k: keys.pop(k) for k in LOAD_KEYS if k in keys}
        load_args = {k: v for k, v in load_args.items() if v is not None}
        device = str(load_args.get("device", "auto"))
        from ..distributed import join, world

        self.world = world()  # under accelerate launch or torchrun: this process's share of the requests
        if self.world.size > 1:
            if device == LM_EVAL_DEFAULT_DEVICE:  # lm-eval's default, not the user's: each rank its own GPU
                load_args["device"] = device = "auto"
            join(self.world, device)
            self._rank, self._world_size = self.world.rank, self.world.size
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                if device != LM_EVAL_DEFAULT_DEVICE:
                    raise UsageError(f"--device {device} was asked for but no CUDA GPU is available; "
                                     "use --device cpu (or leave it out)")
                load_args["device"] = "auto"  # lm-eval's default, not the user's choice: dlm picks the device
        for flag in ("trust_remote_code", "allow_pickle"):
            if flag in load_args:
                load_args[flag] = _bool(load_args[flag], flag)
        opts = LoadOptions(**{k: str(v) if k in ("device", "dtype", "device_map") else v
                              for k, v in load_args.items()})
        self.sets = [f"{k}={_toml(v)}" for k, v in keys.items()]
        self.seed = int(seed)
        self.mc_samples, self.mc_batch = int(mc_samples), int(mc_batch)
        if self.mc_samples < 1 or self.mc_batch < 1:
            raise UsageError("--model_args mc_samples and mc_batch must be at least 1")
        request = RunRequest(None if model is None else str(model), None if draft is None else str(draft),
                             None if profile is None else str(profile), tuple(self.sets), front="lm-eval")
        early = check_early(request)  # a bad profile or key fails before the model loads
        self.session = open_session(request, default_loader(opts), early=early)
        self.model, self.draft, self.profile = self.session.model, self.session.draft, self.session.profile
        self.templated = False
        self.batch_size = _batch_size(batch_size, max_batch_size)
        import torch

        # lm-eval's evaluator gathers its counts on this device: the process group's (gloo: the CPU).
        nccl = self.world.size > 1 and torch.distributed.get_backend() == "nccl"
        self._device = torch.device(self.model.device) if nccl else torch.device("cpu")

    # --- data parallel (lm-eval's evaluator shards the documents by rank and gathers the metrics) ---

    def all_gather(self, tensor: Any) -> Any:
        from ..distributed import all_gather_tensor

        return all_gather_tensor(tensor, self.world)

    def gather_object(self, obj: Any, dst: int = 0) -> Any:
        from ..distributed import gather

        if dst != 0:
            raise ValueError("dlm gathers on rank 0, as lm-eval's evaluator asks")
        return gather(obj, self.world)

    def barrier(self) -> None:
        from ..distributed import barrier

        barrier(self.world)

    # --- lm-eval's chat-template hooks (used with --apply_chat_template) ---

    @property
    def tokenizer_name(self) -> str:
        return self.model.info.name.replace("/", "__")

    def chat_template(self, chat_template: Any = False) -> str:
        from ..templating import template_source

        self.templated = True  # contexts now hold the template's markup: parse its control tokens
        return template_source(self.model.tokenizer) or ""

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        from ..templating import render

        if not getattr(self.model.tokenizer, "chat_template", None):
            raise DlmError(f"{self.model.info.name} has no chat template; drop --apply_chat_template")
        self.templated = True
        return render(self.model.tokenizer, chat_history, add_generation_prompt=add_generation_prompt)

    # --- requests ---

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        from tqdm import tqdm

        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="dlm generate_until")
        if self.batch_size > 1 and self.batchable:
            out = self._generate_batched(requests, bar)
        else:
            out = []
            for req in requests:
                context, gen_kwargs = req.args
                out.append(self.generate(context, dict(gen_kwargs or {})))
                bar.update(1)
        bar.close()
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    @property
    def batchable(self) -> bool:
        """Whether the profile's runs can be rows of one batch (:mod:`dlm_cli.decode.batch`)."""
        from ..decode.batch import check_batchable

        try:
            check_batchable(self.model, self.session.settings.frozen(), "batch_size")
        except UsageError:
            return False
        return True

    def _generate_batched(self, requests: list[Any], bar: Any) -> list[str]:
        """Up to ``batch_size`` requests decode together; a finished one leaves and the next joins at the next
        step (each row's text is what :meth:`generate` gives it alone). A request the batch cannot take
        (another cache, say) decodes alone between two steps."""
        from collections import deque

        from ..decode.batch import new_engine
        from ..decode.events import Done

        out: list[Any] = [None] * len(requests)
        engine = new_engine(self.model, getattr(self.session.settings.frozen(), "cache", "none"),
                            draft=self.session.draft)
        rows: dict[int, _Until] = {}
        pending = deque(range(len(requests)))
        while pending or len(engine):
            while pending and len(engine) < self.batch_size:
                i = pending.popleft()
                context, gen_kwargs = requests[i].args
                ids, settings, until = self._prepare(context, dict(gen_kwargs or {}))
                if engine.refusal(settings.frozen()) is not None:
                    out[i] = self._decode(ids, settings, until)
                    bar.update(1)
                    continue
                engine.add(i, ids, settings)
                rows[i] = _Until(self.model, until)
            if not len(engine):
                continue
            for i, ev in engine.step():
                row = rows.get(i)
                text = row.feed(ev) if row is not None else None
                if text is not None:
                    if not isinstance(ev, Done):
                        engine.drop(i)  # the rest cannot change the answer: stop decoding
                    out[i] = text
                    del rows[i]
                    bar.update(1)
        return out

    def generate(self, context: str, gen_kwargs: dict[str, Any]) -> str:
        """The continuation of ``context`` under the profile, cut before the first ``until`` string."""
        return self._decode(*self._prepare(context, gen_kwargs))

    def _prepare(self, context: str, gen_kwargs: dict[str, Any]) -> tuple[list[int], Any, list[str]]:
        """The prompt's ids, the run's settings (checked) and the ``until`` strings of one request."""
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else [u for u in until if u]
        max_gen = int(gen_kwargs.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKS))
        temperature = float(gen_kwargs.pop("temperature", 0.0) or 0.0)
        if gen_kwargs.pop("do_sample", None) is False:
            temperature = 0.0
        flags = {"max_new_tokens": max_gen, "temperature": temperature, "seed": self.seed}
        for key in ("top_k", "top_p"):
            if gen_kwargs.get(key) is not None:
                flags[key] = gen_kwargs[key]
        settings = self.session.settings_for(sets=self.sets, flags=flags)
        room = self.model.max_length - max_gen
        if room < 1:
            raise UsageError(f"max_gen_toks {max_gen} leaves no room for a prompt in {self.model.info.name}'s "
                             f"context of {self.model.max_length} tokens; lower it (--gen_kwargs max_gen_toks=N)")
        ids = self.encode(context)[-room:]  # the most recent context, as lm-eval's own models keep it
        self.session.check_prompt(settings, [len(ids)])
        return ids, settings, until

    def _decode(self, ids: list[int], settings: Any, until: list[str]) -> str:
        """One request alone: its text, stopped as soon as the committed text holds an ``until`` string."""
        from ..decode import run

        row = _Until(self.model, until)
        events: Iterator[Any] = run(self.model, ids, settings, draft=self.draft)
        try:
            for ev in events:
                text = row.feed(ev)
                if text is not None:
                    return text
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
        raise DlmError("the decoder ended without a result")  # pragma: no cover - every loop ends with Done

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        from tqdm import tqdm

        if self.model.kind != "autoregressive" and not self.estimable:
            self._need_ar("loglikelihood")
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="dlm loglikelihood"):
            context, continuation = req.args
            ctx, cont = self.encode_pair(context, continuation)
            result = self.score(ctx, cont) if self.model.kind == "autoregressive" else self.estimate(ctx, cont)
            out.append(result)
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        from tqdm import tqdm

        self._need_ar("loglikelihood_rolling")
        out = []
        for req in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="dlm loglikelihood_rolling"):
            (text,) = req.args
            tokens = self._plain(text, add_special_tokens=False)
            total = 0.0
            for window in get_rolling_token_windows(token_list=tokens, prefix_token=self.prefix_token,
                                                    max_seq_len=self.model.max_length, context_len=1):
                ctx, pred = make_disjoint_window(window)
                total += self.score(list(ctx), list(pred))[0]
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return out

    # --- helpers ---

    @property
    def estimable(self) -> bool:
        """A fully bidirectional dLLM, whose likelihood LLaDA's Monte-Carlo bound estimates."""
        from ..capabilities import BIDIRECTIONAL

        return self.model.kind == "diffusion" and BIDIRECTIONAL in self.model.capabilities

    def _need_ar(self, what: str) -> None:
        if self.model.kind != "autoregressive":
            some = "only fully bidirectional dLLMs (LLaDA, Dream) have an estimate, loglikelihood (not rolling)" \
                if what == "loglikelihood_rolling" else "dlm estimates it only for fully bidirectional dLLMs (LLaDA, Dream)"
            raise DlmError(f"{what} needs an autoregressive model, and {self.model.info.name} is a diffusion LLM, "
                           f"which has no exact likelihood ({some}); evaluate it on generate_until tasks "
                           "(e.g. gsm8k, humaneval), or pass an AR model")

    @property
    def prefix_token(self) -> int:
        """What an empty context is conditioned on: BOS, else the end-of-text token."""
        tok = self.model.tokenizer
        for t in (tok.bos_token_id, tok.eos_token_id, *self.model.eos_ids):
            if t is not None:
                return int(t)
        raise DlmError(f"{self.model.info.name}'s tokenizer has neither a BOS nor an end token to start from")

    def _plain(self, text: str, *, add_special_tokens: bool) -> list[int]:
        from ..controltokens import encode_plain

        return encode_plain(self.model.tokenizer, text, add_special_tokens=add_special_tokens,
                            parse_special=self.templated)

    def encode(self, context: str) -> list[int]:
        # A rendered chat template carries its own BOS; plain text gets the tokenizer's specials.
        ids = self._plain(context, add_special_tokens=not self.templated)
        return ids or [self.prefix_token]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """Context and continuation ids, tokenised together so the boundary is the model's own
        (trailing spaces of the context belong to the continuation, as in lm-eval's models)."""
        if not context:
            return [self.prefix_token], self._plain(continuation, add_special_tokens=False)
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    def score(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        """log p(cont | ctx) from one forward, and whether greedy decoding would produce ``cont``."""
        import torch

        if not cont:
            return 0.0, True
        ids = (ctx + cont)[-(self.model.max_length + 1):]
        x = torch.tensor(ids[:-1], dtype=torch.long, device=self.model.device)
        logits = self.model.forward(x, self.model.new_cache(), keep=len(cont)).float()
        logp = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(cont, dtype=torch.long, device=logp.device)
        ll = logp.gather(1, target[:, None]).sum().item()
        greedy = bool((logp.argmax(dim=-1) == target).all())
        return ll, greedy


    def estimate(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        """LLaDA's Monte-Carlo estimate of log p(cont | ctx) for a bidirectional dLLM, and its greedy check.

        Each draw masks k of the L continuation tokens (the context stays clean) and scores
        ``-Σ_masked CE / (k / L)``; within a batch the k are stratified, ``k, k + L/b, ...`` mod L.
        """
        import torch

        if not cont:
            return 0.0, True
        m = self.model
        keep = m.max_length - len(cont)
        if keep < 1:
            raise UsageError(f"a continuation of {len(cont)} tokens does not fit {m.info.name}'s context "
                             f"of {m.max_length} tokens")
        ctx = ctx[-keep:]
        n0, length = len(ctx), len(cont)
        device = m.device
        seq = torch.tensor(ctx + cont, dtype=torch.long, device=device)
        target = seq[n0:]
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        total, done = 0.0, 0
        with torch.inference_mode():
            while done < self.mc_samples:
                b = min(self.mc_batch, self.mc_samples - done)
                k = int(torch.randint(1, length + 1, (), generator=gen))
                counts = torch.round(torch.linspace(float(k), k + (b - 1) * (length / b), steps=b)).long()
                counts = (counts - 1) % length + 1
                ranks = torch.rand(b, length, generator=gen).argsort(dim=1).argsort(dim=1)
                masked = (ranks < counts[:, None]).to(device)  # exactly counts[i] random slots of row i
                x = seq.repeat(b, 1)
                x[:, n0:] = torch.where(masked, torch.full_like(x[:, n0:], m.mask_id), x[:, n0:])
                logp = torch.log_softmax(m.logits(x, rows=(n0, n0 + length)).float(), dim=-1)
                token_logp = logp.gather(-1, target.expand(b, -1)[..., None])[..., 0]
                weight = (length / counts.to(device).float())[:, None]
                total += float((token_logp * masked * weight).sum())
                done += b
            greedy = self._greedy_check(seq.clone(), n0)
        return total / self.mc_samples, greedy

    def _greedy_check(self, seq: Any, n0: int) -> bool:
        """Whether one-token-per-step low-confidence decoding of the masked continuation gives it back."""
        import torch

        target = seq[n0:].clone()
        seq[n0:] = self.model.mask_id
        for _ in range(len(target)):
            rows = (seq[n0:] == self.model.mask_id).nonzero()[:, 0]
            probs = torch.softmax(self.model.logits(seq[None], rows=(n0, len(seq)))[0].float(), dim=-1)[rows]
            conf, tok = probs.max(dim=-1)
            best = int(conf.argmax())
            seq[n0 + int(rows[best])] = tok[best]
        return bool((seq[n0:] == target).all())


def _cut(text: str, until: list[str]) -> str:
    for u in until:
        text = text.split(u, 1)[0]
    return text


AUTO_BATCH = 8  # lm-eval's batch_size=auto: rows per batch (no memory probe; max_batch_size caps it)


def _batch_size(value: Any, largest: Any) -> int:
    """lm-eval's ``batch_size`` (an int, "N", "auto" or "auto:N") as the rows decoded together."""
    text = "1" if value is None else str(value).strip().lower()
    if text.startswith("auto"):
        n = AUTO_BATCH if largest is None else int(largest)
    elif text.isdigit() and int(text) >= 1:
        n = int(text)
    else:
        raise UsageError(f"--batch_size {value!r} must be a whole number of at least 1, or auto")
    return max(1, n)


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise UsageError(f"--model_args {name}={value!r} must be true or false")


def _toml(value: Any) -> str:
    """A model_args value (lm-eval already turned "0.7" into 0.7, "True" into True) as a --set value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def register() -> None:
    """Register :class:`DlmLM` as lm-eval's ``dlm`` model (once, whichever module object runs this)."""
    from lm_eval.api.registry import model_registry

    if NAME not in model_registry:
        register_model(NAME)(DlmLM)


register()


def main(argv: Optional[list[str]] = None) -> None:
    """lm-eval's command line with ``--model dlm`` known; a dlm error is one ``dlm: ...`` line."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except DlmError as exc:
        sys.stderr.write(f"dlm: {exc}\n")
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
