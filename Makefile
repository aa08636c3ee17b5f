# CardioNode: two commands do all the set-up.
#   make run   create .venv, install everything, start the node with its embedded defaults
#   make test  the same set-up, then ruff, mypy and the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint install clean bench

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Pin torch first: this resolves to the local CPU wheel; a looser requirement pulls CUDA packages.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/cardionode serve

test: lint
	$(PY) -m pytest -q -ra tests

lint: $(STAMP)
	$(VENV)/bin/ruff check node tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench.ingest
	$(PY) bench/quant.py
	$(PY) bench/infer.py

clean:
	rm -rf $(VENV) var build *.egg-info
