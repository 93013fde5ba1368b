# Cortex developer and CI entry points. CI runs `bash .ci/run`, which is `make test`.
# `make help` lists the targets.

# bash + pipefail so a failing command on the left of a pipe fails the recipe.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

# The pyenv shim for python3.11 only works when 3.11 is the selected pyenv version, so fall
# back to pyenv's install and then Debian's interpreter.
PYTHON311 ?= $(shell for p in python3.11 "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.11*/bin/python3.11 /usr/bin/python3.11; do \
                 "$$p" -c '' 2>/dev/null && { echo "$$p"; break; }; done)

# This machine's pip.conf lists a file:// index that pip ignores with a warning on every run.
PIP_NOISE := ^WARNING: Location 'file://

PYTEST_ARGS ?=
COV_ARGS    := --cov=cortex --cov-report=term-missing:skip-covered

.PHONY: help venv system-deps postgres proto proto-check lint typecheck imports check \
        test test-fast up up-cluster bench clean

help:
	@echo "make venv         create $(VENV) and install '.[dev]' (only when pyproject.toml changed)"
	@echo "make proto        regenerate src/cortex/_proto from proto/"
	@echo "make check        lint + typecheck + imports + proto-check"
	@echo "make test         venv, system deps, postgres, check, whole pytest suite with coverage"
	@echo "make test-fast    pytest only, no coverage, no check (PYTEST_ARGS='-k foo' to narrow)"
	@echo "make up           run hub + node in the foreground (CORTEX_HOME, default ~/.cortex)"
	@echo "make up-cluster   3 hubs on the local Postgres behind HAProxy + a node (HUBS=3)"
	@echo "make bench        run the benchmarks"
	@echo "make clean        remove caches and build output (keeps $(VENV))"

# --- environment -----------------------------------------------------------------------

$(PY):
	@test -n "$(PYTHON311)" || { echo "python3.11 not found (pyenv or apt-get install python3.11)" >&2; exit 1; }
	$(PYTHON311) -m venv $(VENV)

# Order-only on $(PY): recreating the interpreter alone must not force a reinstall loop,
# while a newer pyproject.toml than the stamp does. The stamp is touched only on success.
$(STAMP): pyproject.toml | $(PY)
	{ $(PY) -m pip install --quiet -e '.[dev]' 2>&1 1>&3 | { grep -v "$(PIP_NOISE)" || true; } >&2; } 3>&1
	@touch $@

venv: $(STAMP)

# Chromium for the browser skill and the dashboard's browser tests (Debian's, never a
# downloaded build); promtool (from Debian's prometheus package) to check /metrics;
# HAProxy for the cluster tests and `make up-cluster`.
system-deps:
	@CORTEX_NEED_BROWSER=1 CORTEX_NEED_PROMTOOL=1 CORTEX_NEED_HAPROXY=1 bash scripts/ensure_system_deps.sh

postgres:
	@bash scripts/ensure_postgres.sh

# --- code generation -------------------------------------------------------------------

proto: venv
	$(PY) scripts/gen_proto.py

proto-check: venv
	$(PY) scripts/gen_proto.py --check

# --- gates -----------------------------------------------------------------------------

lint: venv
	$(VENV)/bin/ruff check src tests bench scripts

typecheck: venv
	$(VENV)/bin/mypy --strict src

imports: venv
	$(VENV)/bin/lint-imports

# Run every gate even when an earlier one fails, so one run shows all problems; fail after.
check: venv
	@rc=0; \
	for t in lint typecheck imports proto-check; do \
	    echo "== make $$t"; \
	    $(MAKE) --no-print-directory $$t || { rc=1; echo "== make $$t FAILED"; }; \
	done; \
	exit $$rc

test: venv system-deps postgres
	$(MAKE) --no-print-directory check
	$(PY) -m pytest $(COV_ARGS) $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# --- running ---------------------------------------------------------------------------

up: venv
	CORTEX_HOME="$${CORTEX_HOME:-$$HOME/.cortex}" $(VENV)/bin/cortex up

HUBS ?= 3
up-cluster: venv postgres
	@CORTEX_NEED_HAPROXY=1 bash scripts/ensure_system_deps.sh
	CORTEX_HOME="$${CORTEX_HOME:-$$HOME/.cortex}" $(VENV)/bin/cortex cluster up --hubs $(HUBS)

# bench/__main__.py is the runner once it exists; until then each bench_*.py runs alone.
bench: venv
	@if [ -f bench/__main__.py ]; then \
	    $(PY) -m bench; \
	else \
	    shopt -s nullglob; ran=0; \
	    for f in bench/bench_*.py; do echo "== $$f"; $(PY) "$$f"; ran=1; done; \
	    [ $$ran = 1 ] || echo "no bench/__main__.py and no bench/bench_*.py yet"; \
	fi

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.* htmlcov build dist \
	       src/*.egg-info test-artifacts
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
