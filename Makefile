# Nitro toolkit. `make demo` runs the whole flow in local simulation; `make test` runs the tests.
# Both create the virtual environment (.venv) on their own.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help venv test lint typecheck bench demo clean

help: ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: Python 3.11 or newer is needed (found: $$($(PYTHON) --version 2>&1)); set PYTHON=..."; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

venv: $(STAMP) ## create .venv with the project and its test extras

test: $(STAMP) ## run the test suite
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check
	$(VENV)/bin/ruff check .

typecheck: $(STAMP) ## mypy: strict for attestation/, clean for enclave/, parent/, simulator/
	$(VENV)/bin/mypy

bench: $(STAMP) ## run the benchmarks (see docs/benchmarks.md)
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) bench/run_all.py

demo: $(STAMP) ## the whole flow in local simulation
	$(PY) -m simulator demo

clean: ## remove the venv and build outputs
	rm -rf $(VENV) build .pytest_cache .hypothesis

include mk/enclave.mk
