# neuralode developer entry points. Every target creates .venv itself if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint bench notebooks docs docs-serve clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,experiments,docs]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

## demo: set up .venv and run the flagship experiment: Table 2 of the paper, latent ODE vs RNN
## on irregular spirals, `small` preset (about 10 minutes on 2 CPU cores; writes
## runs/spirals-small/, resumes if interrupted and rerun)
demo: $(STAMP)
	$(PY) -m experiments.spirals --preset small --out runs/spirals-small

## test: set up .venv and run the test suite (slow tests excluded) plus ruff; the suite also
## builds the documentation site with --strict and runs its code blocks (tests/test_docs.py)
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

## bench: peer comparisons (installs diffrax, torch 2.13.0 CPU and torchdiffeq)
bench: $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,experiments,bench]'
	$(PY) -m benchmarks.run

## notebooks: execute every notebook in full mode and store its outputs in place
notebooks: $(STAMP)
	for nb in notebooks/*.ipynb; do \
	  echo "executing $$nb"; \
	  $(PY) -c "import nbclient, nbformat, sys; p = sys.argv[1]; nb = nbformat.read(p, 4); \
	nbclient.NotebookClient(nb, timeout=600, resources={'metadata': {'path': 'notebooks'}}).execute(); \
	nbformat.write(nb, p)" $$nb || exit 1; \
	done

## docs: build the documentation site into site/ (mkdocs build --strict; not committed)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

## docs-serve: serve the documentation site at http://127.0.0.1:8000, rebuilt on every edit
docs-serve: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

clean:
	rm -rf $(VENV) runs site .cache .pytest_cache .ruff_cache
