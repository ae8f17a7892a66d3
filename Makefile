# Microgrid Energy Exchange: every command installs what it needs first (idempotent).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PY_STAMP := $(VENV)/.installed
# Workers for `make test` (pytest-xdist): the tests mostly wait on nodes and servers, so four
# share two cores well; TEST_WORKERS=1 runs them in one process.
TEST_WORKERS ?= 4
NODE_STAMP := node_modules/.installed

.PHONY: install test bench lint compile run clean

install: $(PY_STAMP) $(NODE_STAMP)

$(PY_STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(NODE_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

lint: install
	$(PY) -m ruff check .

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS)

# Quick mode by default (a few minutes); `make bench FULL=1` for the full sizes.
bench: install
	$(PY) bench/gas.py
	$(PY) -m bench.run $(if $(FULL),--full)
	$(PY) -m bench.pages
	$(PY) bench/simulate.py
	MICROGRID_FUZZ_EXAMPLES=5000 $(PY) -m pytest -q tests/web/test_fuzz_api.py

# Everything from a fresh clone to the app on http://localhost:3000 (Ctrl-C stops it all).
run: install
	$(VENV)/bin/microgrid demo

compile: install
	$(VENV)/bin/microgrid compile

clean:
	rm -rf $(VENV) node_modules .pytest_cache .ruff_cache .hypothesis
