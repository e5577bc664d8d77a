# Two entry points for a fresh machine: `make run` (the main job) and `make test` (what CI runs).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install install-all run test

# The serving system and its dev tools.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Everything, vLLM included (about 2 GB): torch 2.13.0 first so vLLM installs against the CPU build on
# this machine; torchvision/torchaudio/torchcodec would pull in a mismatched torch and break `import vllm`.
$(VENV)/.installed-vllm: $(VENV)/.installed
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[vllm,dev]'
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

install: $(VENV)/.installed

install-all: $(VENV)/.installed-vllm

run: install
	$(BIN)/ecoserve up

test: install-all
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest
