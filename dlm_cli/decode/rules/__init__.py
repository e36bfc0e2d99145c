"""Commit rules for dLLM decoding, one module each; importing a module registers its strategy."""
