# Two commands do all the set-up and work on a fresh machine:
#   make run    - the whole batch chain on the embedded MovieLens dataset
#   make test   - the test suite (what CI runs through .ci/run)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-all bench notebooks clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: its CPU build lies on disk; a bare requirement would pull CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,spark]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/recsys run --config configs/default.toml --out runs/default

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

notebooks: $(STAMP)
	$(PY) tools/run_notebooks.py --write notebooks/*.ipynb

clean:
	rm -rf $(VENV) runs mlruns.db mlartifacts
