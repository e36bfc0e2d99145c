"""``gemma-native``, DiffusionGemma's own sampler, and its keys (its loop: :mod:`dlm_cli.decode.loops.gemma_native`)."""

from __future__ import annotations

from ...capabilities import NATIVE_SAMPLER
from ..keys import Key, Strategy, own_loop, register_strategy

KEYS = (
    Key("max_denoising_steps", int, None, "decoder passes per canvas at most; default: the model's", min=1,
        optional=True),
    Key("entropy_bound", float, None, "accept the lowest-entropy slots while their summed entropy minus the "
        "largest stays under this; default: the model's", min=0.0, min_open=True, optional=True),
    Key("t_min", float, None, "sampling temperature at the last step (linear schedule); default: the model's",
        min=0.0, optional=True),
    Key("t_max", float, None, "sampling temperature at the first step; default: the model's", min=0.0,
        optional=True),
    Key("stability_threshold", int, None, "stop a canvas once its argmax is unchanged for this many steps "
        "(and confident); default: the model's", min=0, optional=True),
    Key("confidence_threshold", float, None, "…and its mean entropy is below this; default: the model's",
        min=0.0, min_open=True, optional=True),
)

register_strategy(
    Strategy(
        name="gemma-native",
        kind="diffusion",
        summary="DiffusionGemma's own sampler (entropy-bounded acceptance, renoising, self-conditioning); "
        "DiffusionGemma models only",
        keys=KEYS,
        loop="gemma-native",
        needs=(NATIVE_SAMPLER,),
        conflicts=(own_loop("gemma-native"),),
    )
)
