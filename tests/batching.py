"""What the batching tests share: the tiny families, their prompts, the settings, a run's visible events,
and a counter of the network's forwards and their batch sizes."""

from __future__ import annotations

import pytest

from checkpoints import make_adapter, make_dream, make_llada, make_sdar
from dlm_cli import profiles
from dlm_cli.decode.events import Done, Start, Step

TEXTS = ["sort these numbers: 3 1 2", "hello", "the quick brown fox jumps over the lazy dog and more", "fix the typos",
         "0 1 2 3", "a", "reverse the list a b c please now", "how are you today?"]
MAKERS = {"llada": lambda p: make_llada(p, sharpen=8.0), "dream": lambda p: make_dream(p, sharpen=8.0),
          "sdar": lambda p: make_sdar(p, sharpen=8.0), "adapter": lambda p: make_adapter(p)}


@pytest.fixture(scope="module", params=sorted(MAKERS))
def family(request, tmp_path_factory):
    """(name, model, the encoded TEXTS) for each tiny family."""
    from dlm_cli.models.loading import load
    from dlm_cli.prompting import encode

    model = load(str(MAKERS[request.param](tmp_path_factory.mktemp("batch") / request.param)))
    return request.param, model, [encode(model.tokenizer, t) for t in TEXTS]


def settings(profile, sets, **flags):
    return profiles.load(profile, sets=sets, flags={"seed": 0, "max_new_tokens": 40, "block_length": 8, **flags})


def view(events):
    """What a consumer sees of one run: each step's commits, fills and NFE, then the output and its counts."""
    steps = [(e.step, e.nfe, e.block, e.positions, e.tokens, e.filled) for e in events if isinstance(e, Step)]
    done = events[-1]
    assert isinstance(events[0], Start) and isinstance(done, Done)
    return steps, done.tokens, done.nfe, done.steps, done.blocks, done.finish_reason


class Forwards:
    """Counts the network's forwards and the batch size of each."""

    def __init__(self, model):
        self.sizes = []
        self.handle = model.net.register_forward_pre_hook(lambda m, args: self.sizes.append(args[0].shape[0]))

    def close(self):
        self.handle.remove()
