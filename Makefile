# Two commands: `make run` (set up and serve on SQLite) and `make test` (every test and check).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
# Test processes (pytest-xdist); every one makes its own throwaway databases.
PYTEST_WORKERS ?= 2
export FLASK_APP := wsgi

.PHONY: run test install install-dev lint migrate bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.run-deps: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .   # the `flowhooks` command
	touch $@

$(VENV)/.dev-deps: $(VENV)/.run-deps requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.run-deps
install-dev: $(VENV)/.dev-deps

migrate: install
	$(BIN)/flask db upgrade

## Set up and serve on the default SQLite database at 127.0.0.1:8000.
run: migrate
	$(BIN)/gunicorn --config gunicorn.conf.py wsgi:app

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/vulture
	$(BIN)/deptry .

## Set up and run every check and test (SQLite, and PostgreSQL when reachable).
test: lint
	mkdir -p build
	$(BIN)/pytest -n $(PYTEST_WORKERS) --junitxml=build/junit.xml $(PYTEST_ARGS)

## Ingestion benchmark (see docs/performance.md).
bench: install-dev
	bash bench/run.sh

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
