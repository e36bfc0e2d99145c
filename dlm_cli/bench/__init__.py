"""``dlm bench`` and ``dlm tune``: the same prompts through baselines and profiles, in one run.

Reading order: :mod:`.plan` (the request, the model through the run session, the prompts and the
rows), :mod:`.run` (every row on every prompt, interleaved and timed; the rows' figures),
:mod:`.render` (table, Markdown, CSV, JSON), :mod:`.command` (the CLI's entry). The prompts come
from :mod:`.suites` (the toy and real-text suites) and :mod:`.datasets` (HumanEval); :mod:`.batch`
runs a row's prompts as batches, :mod:`.machine` measures the machine (copy bandwidth, memory),
:mod:`.sweep` expands ``--set`` grids, :mod:`.tune` searches one, :mod:`.answers` shows each
prompt's answer (``--show``), and :mod:`.remote` measures a running OpenAI-compatible server as a
row (``-p url:...``).
"""
