# pointpeft — the two commands: `make demo` and `make test` (both set up .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pointpeft-installed
DATA ?= synthetic
export PYTHONUNBUFFERED := 1

.PHONY: setup demo demo2d test lint bench docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup_env.sh
	bash scripts/setup_env.sh $(PYTHON) $(VENV)
	touch $(STAMP)

demo: setup
	$(PY) tools/demo.py --data $(DATA)

demo2d: setup
	$(PY) tools/demo.py --data digits2d

test: setup
	bash scripts/run_tests.sh $(PY)

lint: setup
	$(PY) -m ruff check pointpeft tools tests scripts datasets benchmarks

bench: setup
	$(PY) tools/benchmark.py --quick

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
