# The two commands in README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
export DIGEST_DATABASE_URL ?= sqlite:///.var/digest.db
export DIGEST_CONFIG ?= digest.example.toml
export DIGEST_SECRET_KEY ?= demo-secret-not-for-production

.PHONY: demo test lint typecheck install bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	@mkdir -p .var
	$(BIN)/digest demo

lint: $(STAMP)
	$(BIN)/ruff check digest subscribers digest_cli.py tests bench
	$(BIN)/ruff format --check digest subscribers digest_cli.py tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/selection.py

clean:
	rm -rf .var outbox test-artifacts build *.egg-info
