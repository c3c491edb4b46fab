# neuralode developer entry points. Every target creates .venv itself if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,experiments]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## demo: set up .venv and run the flagship example (writes runs/demo/)
demo: $(STAMP)
	$(PY) examples/spiral_demo.py --out runs/demo

## test: set up .venv and run the test suite (slow tests excluded) plus ruff
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

## bench: peer comparisons (installs diffrax, torch 2.13.0 CPU and torchdiffeq)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,experiments,bench]'
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
