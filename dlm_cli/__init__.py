"""dlm: parallel decoding for diffusion LLMs and speculative decoding for AR pairs."""

__version__ = "0.1.0"
