# Quick start: `make demo` and `make test`. Both set up .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-quick fuzz schema clean

venv: $(STAMP)

# torch is installed first, pinned by constraints.txt: an unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m paramio.demo

test: $(STAMP)
	$(PY) -m pytest

# Benchmarks against the stock tools (not part of `make test`); checkpoints go to a temporary folder.
bench: $(STAMP)
	$(PY) -m benchmarks

bench-quick: $(STAMP)
	$(PY) -m benchmarks --quick

schema: $(STAMP)
	$(VENV)/bin/paramio schema

clean:
	rm -rf $(VENV) demo-out .pytest_cache
