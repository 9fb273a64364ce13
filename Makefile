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
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench,report]'
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

# The long reliability run (README "Reliability"; `make test` runs a bounded share of each part):
# mutation fuzzing of every reader in capped worker processes (FUZZ_CASES files per format, FUZZ_SEED to
# replay a run), coverage-guided fuzzing with atheris (FUZZ_SECONDS per format), and the property tests with
# HYPOTHESIS_PROFILE=long. Findings and worker logs go to fuzz-out/; the exit code is 1 if any part found one.
FUZZ_CASES ?= 3000
FUZZ_SECONDS ?= 300
fuzz: $(STAMP)
	$(PY) -m pip install -q -c constraints.txt atheris
	mkdir -p fuzz-out
	status=0; \
	$(PY) -m tests.fuzzing --cases $(FUZZ_CASES) $(if $(FUZZ_SEED),--seed $(FUZZ_SEED)) --out fuzz-out \
		--json fuzz-out/mutation.json || status=1; \
	for format in safetensors hdf5 onnx torch; do \
		(cd fuzz-out && PYTHONPATH=$(CURDIR) $(CURDIR)/$(PY) -m tests.fuzz_atheris $$format \
			-max_total_time=$(FUZZ_SECONDS) -timeout=20 -max_len=1000000) || status=1; \
	done; \
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -q -p no:cacheprovider tests/test_properties.py || status=1; \
	exit $$status

schema: $(STAMP)
	$(VENV)/bin/paramio schema

clean:
	rm -rf $(VENV) demo-out .pytest_cache
