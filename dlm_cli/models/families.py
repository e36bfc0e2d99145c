"""The model families dlm loads natively, in detection order."""

from __future__ import annotations

from . import llada
from .loading import Family, load_llada, register_family

register_family(Family("llada", "diffusion", llada.is_llada_config, load_llada,
                       example="dlm generate -m GSAI-ML/LLaDA-8B-Instruct \"...\""))
