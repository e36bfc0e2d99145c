"""The demo models' tokenizer: a small byte-level BPE with single-digit tokens and LLaDA's specials.

Every digit is its own token, with its leading space if it has one (numbers are spelled digit
by digit), which makes sorting and addition learnable by a small model: ten digit tokens are
seen far more often than a hundred number tokens would be (with whole-number tokens the AR target
copied 0% of held-out lists after the same 800 steps that give it 80% with digits). The special tokens and the chat template follow
LLaDA-8B-Instruct's, so the demo dLLM is prompted exactly as the real model is.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Iterator

SPECIALS = ["<|endoftext|>", "<|startoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|mdm_mask|>"]
# LLaDA-8B-Instruct's format: bos, then per message a header, two newlines, the trimmed content, <|eot_id|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
VOCAB_SIZE = 1000  # enough merges for every task word to be one token, with or without its space


def _corpus(n: int = 20000) -> Iterator[str]:
    from .tasks import DEFAULT_TASKS, TASKS

    rng = random.Random(0)
    names = sorted(DEFAULT_TASKS)  # not the long tasks: their text is made of the same tokens, and the shipped
    # weights' vocabulary is this corpus's
    for i in range(n):
        ex = TASKS[names[i % len(names)]].example(i)
        yield f"user\n\n{ex.prompt}"
        yield f"assistant\n\n{ex.target(rng)}"


def build(out: Path, vocab_size: int = VOCAB_SIZE) -> Any:
    """Train the tokenizer on task text (deterministic) and save it as a transformers fast tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r" ?[0-9]"), behavior="isolated"),
         pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|eot_id|>",
                                   pad_token="<|endoftext|>", mask_token="<|mdm_mask|>",
                                   model_max_length=512)
    fast.chat_template = CHAT_TEMPLATE
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return fast
