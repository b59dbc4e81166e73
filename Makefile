# The two commands in README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck install install-dev bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

# The main job on the embedded default: SQLite in .var/, the shipped sample newsroom, outbox.
demo: $(VENV)/.installed
	DIGEST_DATABASE_URL=$${DIGEST_DATABASE_URL:-sqlite:///.var/digest.db} \
	DIGEST_CONFIG=$${DIGEST_CONFIG:-digest.example.toml} \
	DIGEST_SECRET_KEY=$${DIGEST_SECRET_KEY:-demo-secret-not-for-production} \
	$(BIN)/digest demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check digest subscribers digest_cli.py tests bench
	$(BIN)/ruff format --check digest subscribers digest_cli.py tests bench

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.installed-dev
	$(BIN)/python bench/selection.py

clean:
	rm -rf .var test-artifacts build *.egg-info
