"""The runaway-repetition stop's keys, shared by every strategy (the stop: :mod:`dlm_cli.decode.repetition`)."""

from __future__ import annotations

from ..keys import Key, register_keys

register_keys(
    None,
    [
        Key("stop_repeats", int, 2, "end generation (finish_reason \"repetition\") at a token that completes an "
            "n-gram of stop_ngram tokens already generated this many times; 0 is off", min=0),
        Key("stop_ngram", int, 16, "with stop_repeats: the length in tokens of the repeated n-gram", min=1),
    ],
)
