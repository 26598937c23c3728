# Two commands for a newcomer: `make run` (the whole product) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# axe-core (npm, package.json) for the browser accessibility tests.
AXE := node_modules/axe-core/axe.min.js

.PHONY: run test install server desktop lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

$(AXE): package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund; \
	else echo "npm not found: the axe-core accessibility tests will be skipped"; fi

## The whole product: embedded core (TCP 5050) + web app (http://127.0.0.1:8080).
run: $(STAMP)
	$(PY) -m app

## The whole test suite (GUI/browser tests skip on a laptop without xvfb/chromium).
test: $(STAMP) $(AXE)
	$(PY) -m pytest -q -p no:cacheprovider

server: $(STAMP)
	$(PY) server.py

desktop: $(STAMP)
	$(PY) chatapp.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) bench/core_load.py

clean:
	rm -rf $(VENV) .pytest_cache node_modules
