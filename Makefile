# haven: `make demo` runs the whole flow on a local chain; `make test` runs every test.
# Both set up a fresh machine first: .venv, npm toolchain, PostgreSQL and Redis.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup services browser demo test test-full lint typecheck contracts bench clean

setup: $(VENV)/.installed node_modules/.installed services

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "haven needs Python 3.11 or newer"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	test -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil || \
	  (echo "anvil binary missing after npm ci: is this machine linux-amd64?" >&2; exit 1)
	touch $@

services:
	@scripts/services.sh

# Headless Chromium renders the operators' report page in the tests.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && apt-get install -y -q --no-install-recommends chromium; \
	  else \
	    echo "browser: install Debian's chromium (sudo apt-get install chromium) to run the report page test" >&2; \
	  fi; }

# Each stops the servers scripts/services.sh started for it (never one that
# was already running) and keeps the exit code of the demo or the tests.
demo: setup
	@status=0; $(BIN)/haven demo || status=$$?; scripts/services.sh stop; exit $$status

test: browser lint setup
	@status=0; $(BIN)/pytest $(PYTEST_ARGS) || status=$$?; scripts/services.sh stop; exit $$status

# The long randomised suites at full count (crash matrix, reorg fuzzing, soak).
test-full: browser setup
	@status=0; HAVENTEST_FULL=1 $(BIN)/pytest --timeout=1800 $(PYTEST_ARGS) || status=$$?; \
	  scripts/services.sh stop; exit $$status

lint: $(VENV)/.installed node_modules/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	node_modules/.bin/solhint --max-warnings 0 --disc 'contracts/**/*.sol'

contracts: node_modules/.installed
	node contracts/compile.js

bench: setup
	$(BIN)/python -m benches

clean:
	rm -rf $(VENV) node_modules var .pytest_cache .ruff_cache .mypy_cache
