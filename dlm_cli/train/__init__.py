"""What learns: ``dlm distill`` (dParallel, CD4LM) over any dLLM dlm loads.

:mod:`.losses` holds the methods' objectives as pure functions of logits, :mod:`.rows` the masked
training rows built from a prompt and its teacher answer, :mod:`.data` the prompts and the teacher's
answers, :mod:`.distill` the resumable training loop and the export of a LoRA delta.
"""
