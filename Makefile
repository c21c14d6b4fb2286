# Two commands do all the set-up: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv on first use and installs everything; PyTorch is pinned to the CPU
# build before the package so pip never pulls a CUDA build.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DEMO   ?= demo-run

.PHONY: setup demo test test-all lint bench clean

$(STAMP): pyproject.toml scripts/install-system-deps.sh
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,ray]'
	bash scripts/install-system-deps.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emodistill demo --out $(DEMO)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

test-all: $(STAMP)
	$(VENV)/bin/pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/emodistill bench

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache
