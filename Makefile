# Two commands for a newcomer: `make run` (the whole product) and `make test`.
# Each creates .venv and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The core's request path compiled with mypyc (legacy_socket_server/native.py), rebuilt when
# the package changes; without a C compiler the same modules run as Python.
NATIVE := $(VENV)/.native-stamp
# axe-core (npm, package.json) for the browser accessibility tests.
AXE := node_modules/axe-core/axe.min.js

.PHONY: run test install native server desktop lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

$(NATIVE): $(STAMP) $(wildcard legacy_socket_server/*.py)
	@echo "compiling the core's hot modules (mypyc, about a minute)..."
	@$(PY) -m legacy_socket_server.native_build || \
		echo "not compiled: the core runs its Python modules (slower, the same behaviour)"
	@touch $(NATIVE)

native: $(NATIVE)

$(AXE): package.json package-lock.json
	@if command -v npm >/dev/null; then npm ci --no-audit --no-fund; \
	else echo "npm not found: the axe-core accessibility tests will be skipped"; fi

## The whole product: embedded core (TCP 5050) + web app (http://127.0.0.1:8080).
run: $(NATIVE)
	$(PY) -m app

## The whole test suite (GUI/browser tests skip on a laptop without xvfb/chromium).
test: $(NATIVE) $(AXE)
	$(PY) -m pytest -q -p no:cacheprovider

server: $(NATIVE)
	$(PY) server.py

desktop: $(STAMP)
	$(PY) chatapp.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(NATIVE)
	$(PY) bench/core_load.py

clean:
	-$(PY) -m legacy_socket_server.native_build clean
	rm -rf $(VENV) .pytest_cache node_modules
