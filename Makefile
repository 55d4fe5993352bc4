# Set-up and entry points. `make demo` and `make test` work on a fresh clone with nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The torch build, installed before the package. 2.13.0 is a CPU build here (1 GB); on a GPU
# machine use e.g. TORCH='torch==2.14.1 torchaudio==2.11.0' (CUDA, 5.5 GB, with torchaudio).
TORCH ?= torch==2.13.0

.PHONY: install test demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python setup.cfg
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q tests

demo: install
	PATH=$(abspath $(BIN)):$$PATH bash recipes/synth/run.sh

bench: install
	$(BIN)/python bench/features.py
	$(BIN)/python bench/gmm.py
	$(BIN)/python bench/synth.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/export.py

clean:
	rm -rf $(VENV) build *.egg-info
