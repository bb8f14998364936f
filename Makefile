# Every target sets up what it needs: a virtual environment with the locked
# dependencies, this package installed in editable mode, and an Airflow home with
# a migrated SQLite metadata database. A second run only redoes what changed.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
LOCK := requirements-dev.lock
# The browser the UI tests drive (through Playwright): Debian's package, not a download of its own.
CHROMIUM := /usr/bin/chromium
UI_HOST ?= 127.0.0.1
UI_PORT ?= 8080

export AIRFLOW_HOME := $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__UNIT_TEST_MODE := False
export AIRFLOW__LOGGING__LOGGING_LEVEL := INFO
export AIRFLOW__OPENLINEAGE__DISABLED := True

.PHONY: help install airflow-db browser test lint typecheck unit demo ui bench lock wheel clean

help:
	@echo "make demo   start the mock CRM server and run the example DAGs against it"
	@echo "make ui     the Airflow UI with the Opportunity syncs page, on the demo's state"
	@echo "make test   lint, type-check and run the whole test suite"
	@echo "make bench  run the bulk-load and state-database benchmarks and print their tables"
	@echo "make lock   regenerate $(LOCK) from pyproject.toml"

$(BIN)/uv:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.installed: $(BIN)/uv $(LOCK) pyproject.toml
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python $(LOCK)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python --no-deps -e .
	touch $@

install: $(VENV)/.installed

$(AIRFLOW_HOME)/airflow.db: $(VENV)/.installed
	mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate >/dev/null
	touch $@

airflow-db: $(AIRFLOW_HOME)/airflow.db

# As root (CI, a container) the browser is installed; otherwise say what to run. CI without it
# fails here rather than skipping the browser tests.
browser:
	@if [ -x $(CHROMIUM) ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		echo "Installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	else \
		echo "The browser tests need Debian's chromium at $(CHROMIUM); install it with:"; \
		echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium"; \
		if [ "$(CI)" = true ]; then exit 1; fi; \
		echo "Without it they are skipped."; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: airflow-db browser
	$(BIN)/pytest -q

test: lint typecheck unit

demo: airflow-db
	$(BIN)/python scripts/demo.py

demo-output/sync-state.db:
	$(MAKE) demo

ui: airflow-db demo-output/sync-state.db
	UI_HOST=$(UI_HOST) UI_PORT=$(UI_PORT) $(BIN)/python scripts/ui.py

bench: airflow-db
	$(BIN)/python -m benchmarks.bulk_load
	$(BIN)/python -m benchmarks.state_databases --rows 100000

lock: $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 -o $(LOCK)

clean:
	rm -rf $(VENV) $(AIRFLOW_HOME) dist build .mypy_cache .ruff_cache .pytest_cache test-artifacts
