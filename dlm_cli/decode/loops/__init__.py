"""Decode loops, one module each; each strategy names the loop that runs it (``Strategy.loop``).

- :mod:`.blocks`: the dLLM block driver; a commit rule (:mod:`..rules`) decides each step;
- :mod:`.freedave`: FreeDave's lossless draft-and-verify of one-token-per-step decoding;
- :mod:`.s2d2`: S2D2, block-diffusion drafts verified by the same model at block size 1;
- :mod:`.gemma_native`: DiffusionGemma's own sampler, step by step;
- :mod:`.window`: Window-Diffusion, a sliding window of computed tokens over a stale cache;
- :mod:`.ar`: the AR loop (plain, speculative, lookup), with a draft source from :mod:`..drafts`.

Every loop is a generator of :mod:`..events` with the signature
``run(model, prompt_ids, settings, part, generator, clock)``; the dLLM loops keep their canvas in a
:class:`~dlm_cli.decode.canvas.BlockCanvas`.
"""
