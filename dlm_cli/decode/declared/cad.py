"""CD4LM's confidence-adaptive decoding, ``cad`` (the rule: :mod:`dlm_cli.decode.rules.cad`)."""

from __future__ import annotations

from ..keys import Key, Strategy, register_strategy
from .threshold import THRESHOLD

register_strategy(
    Strategy(
        name="cad",
        kind="diffusion",
        summary="CD4LM's confidence-adaptive decoding: threshold commits capped at cad_max_commits per step, no "
                "end token before cad_eos_progress of the answer, all left committed after cad_max_steps",
        keys=(THRESHOLD,
              Key("cad_max_commits", int, 32, "the most positions one step may commit (K_max)", min=1),
              Key("cad_eos_progress", float, 0.3, "hold end-of-text commits back until this share of the answer is "
                  "final (ρ)", min=0.0, max=1.0),
              Key("cad_max_steps", int, 0, "commit everything left after this many steps of a block (0: the "
                  "block's length)", min=0)),
        impl="dlm_cli.decode.rules.cad:ConfidenceAdaptive",
    )
)
