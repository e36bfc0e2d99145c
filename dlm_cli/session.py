"""One run session: everything a command does between its options and the decoder.

``generate``, ``bench``, ``tune``, ``serve`` and the lm-eval adapter all prepare a run here, the
same way:

1. :func:`check_early` refuses what can be refused before stdin is read and a model loads (a bad
   profile, key or value);
2. :func:`open_session` loads the model (``-m``, else the profile's ``model``), the profile (``-p``,
   else the model's own decoding or the default for its kind) and the draft (``--draft``, else the
   profile's ``draft``), and checks that they go together;
3. :meth:`Session.settings_for` gives a run's settings: the profile with the user's keys, the
   model's defaults, the tokenizer switch, and the strategy checked against what the model offers
   (:mod:`.capabilities`) and the draft it needs;
4. :meth:`Session.check_prompt` runs the length checks of one prompt (or a bench's prompts): the
   context, the model's trained range, an AR model's cap shrunk to the room left.

A command never re-implements a step; the server runs step 3 and 4 per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from .models.protocols import Model

# How each front end names the generation length, for the refusals that tell the user what to lower.
LENGTH_FLAGS = {"cli": "-n", "serve": "max_tokens", "lm-eval": "max_gen_toks"}


@dataclass(frozen=True)
class RunRequest:
    """What the user asked for, before anything loads."""

    model: Optional[str] = None
    draft: Optional[str] = None
    profile: Optional[str] = None
    sets: tuple[str, ...] = ()
    flags: Mapping[str, Any] = field(default_factory=dict)
    allow_different_tokenizers: bool = False
    front: str = "cli"  # cli, serve or lm-eval: how messages name the length option


def check_early(req: RunRequest) -> Any:
    """Refuse a bad profile, key or value before the model loads; the profile's settings when ``-p`` named one."""
    from . import profiles

    if req.profile is not None:
        return profiles.load(req.profile, sets=req.sets, flags=dict(req.flags))
    from .models.resolve import predict

    kind, own = predict(req.model)
    profiles.check_early(req.sets, dict(req.flags), profiles.default_for(kind, bool(req.draft), own) if kind else None)
    return None


LoadModel = Callable[[Optional[str], str], Any]  # (spec or None for the default, role "model" or "draft") -> model


def default_loader(load: Any = None) -> LoadModel:
    """Load with :func:`dlm_cli.models.loading.load` and ``load`` options (the library's and lm-eval's way)."""
    from .models.loading import LoadOptions, load as load_model

    opts = load if load is not None else LoadOptions()

    def call(spec: Optional[str], role: str) -> Any:
        return load_model(spec, opts, role=role)

    return call


@dataclass
class Session:
    """A loaded model (and draft) with the profile its runs take by default."""

    model: Model
    draft: Any
    profile: str
    request: RunRequest
    settings: Any = None  # the settings of the profile the command asked for (or the default), validated
    load_model: Optional[LoadModel] = None  # how a later draft loads (:meth:`attach_draft`)

    @property
    def diffusion(self) -> bool:
        return self.model.kind == "diffusion"

    def settings_for(self, profile: Optional[str] = None, *, sets: Sequence[str] = (),
                     flags: Optional[Mapping[str, Any]] = None, settings: Any = None) -> Any:
        """A run's validated settings: ``profile`` (default: the session's) with ``sets`` and ``flags``,
        the model's defaults below them, checked against the model and the draft. ``settings``: an
        already loaded profile to finish instead."""
        from . import profiles

        if settings is None:
            settings = profiles.load(profile or self.profile, sets=tuple(sets), flags=dict(flags or {}))
        from .models.resolve import model_defaults

        settings.fill(model_defaults(self.model.info.name), f"the defaults of {self.model.info.name}")
        if self.request.allow_different_tokenizers and "allow_different_tokenizers" in settings.values:
            settings.allow_different_tokenizers = True
        self.check_fits(settings)
        return settings

    def attach_draft(self, spec: str) -> None:
        """Load the draft a bench row's profile names (an AR target only)."""
        if not self.diffusion:
            self.draft = self.load_model(spec, "draft")

    def check_fits(self, settings: Any) -> None:
        """The strategy fits the model: its kind, and every capability it needs (a missing draft is refused by the
        strategy itself, which knows what kind of draft it takes)."""
        from .decode import STRATEGIES, check_fits

        check_fits(STRATEGIES[settings.strategy], self.model)

    def check_prompt(self, settings: Any, prompt_lengths: Sequence[int]) -> None:
        """The length checks of a run over prompts of these lengths: an AR model's cap shrinks to the room
        left (an explicit length does not), every prompt fits the context, and a dLLM stays in its trained range."""
        from .models.resolve import check_trained
        from .prompting import check_length

        model = self.model
        if model.kind == "autoregressive" and settings.sources.get("max_new_tokens") not in ("flag", "--set"):
            room = model.max_length - max(prompt_lengths)  # a profile's cap shrinks to the room left; -n does not
            if 0 < room < settings.max_new_tokens:
                settings.max_new_tokens = room
        flag = LENGTH_FLAGS[self.request.front]
        check_length(max(prompt_lengths), settings.max_new_tokens, model.max_length, model.info.name, flag=flag)
        check_trained(model, settings.max_new_tokens, flag=flag)


def open_session(req: RunRequest, load_model: LoadModel, *, early: Any = None) -> Session:
    """Load the model, the draft and the default profile of ``req`` and check they go together.

    ``early``: the settings :func:`check_early` returned (``-p`` given), so the profile is read once.
    """
    from . import profiles

    settings = early
    if settings is None and req.profile is not None:
        settings = profiles.load(req.profile, sets=req.sets, flags=dict(req.flags))
    model = load_model(req.model or (settings.meta.get("model") if settings else None), "model")
    if model.kind == "drafter":
        raise UsageError(f"{model.info.name} is a learned drafter, not a model to decode with; pass it as --draft next "
                         f"to its target: -m {model.target.get('name', 'TARGET')} --draft {req.model}")
    draft_spec = req.draft or (settings.meta.get("draft") if settings else None)
    profile = req.profile or profiles.default_for(model.kind, bool(draft_spec), getattr(model, "profile", None))
    if req.draft and model.kind == "diffusion":
        raise UsageError(f"--draft is for speculative decoding of an AR target, but {model.info.name} is a diffusion "
                         "LLM; drop --draft (dLLM strategies draft from the model itself, e.g. -p s2d2 or -p freedave)")
    if settings is None:
        settings = profiles.load(profile, sets=req.sets, flags=dict(req.flags))
        draft_spec = req.draft or settings.meta.get("draft")
    session = Session(model, None, profile, req, load_model=load_model)
    from .decode import STRATEGIES, check_fits

    check_fits(STRATEGIES[settings.strategy], model)  # before a draft loads: the profile may not fit at all
    if draft_spec and model.kind != "diffusion":
        session.draft = load_model(draft_spec, "draft")
        if getattr(session.draft, "kind", None) == "drafter" and req.profile is None and early is None:
            # A learned drafter decodes with its own method's strategy, not speculative's.
            session.profile = profile = session.draft.method
            settings = profiles.load(profile, sets=req.sets, flags=dict(req.flags))
    session.settings = session.settings_for(settings=settings)
    return session
