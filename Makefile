# Quick start on a fresh machine: `make demo` and `make test` (each creates .venv and installs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-all install onednn clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test,onednn]"
	touch $(STAMP)

install: $(STAMP)

## onednn: build the oneDNN kernel library for kernels="onednn" (cached by source hash)
onednn: $(STAMP)
	$(BIN)/python -m graphopt.targets.tvm.onednn >/dev/null

## demo: define resnet18, interpret it, compile it for this CPU, compare and report
demo: onednn
	$(BIN)/python examples/quickstart.py

## test: the default suite (slow-marked tests excluded), two workers
test: onednn
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

## test-all: everything, including the slow big-model checks
test-all: onednn
	$(BIN)/python -m pytest -n 2 -q -m "slow or not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
