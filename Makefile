# The two commands in README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck install install-dev bench messages clean

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

# After changing a template's or the package's translatable strings: extract them into
# digest/locales/digest.pot and merge them into every catalog (then translate the new entries;
# tests/test_i18n.py fails until every catalog has them). Catalogs are compiled at first use.
messages: $(VENV)/.installed
	$(BIN)/pybabel extract -F babel.cfg -k N_ -k gettext -k ngettext:1,2 --no-location \
	    --sort-output --project=digest --version=$$($(BIN)/python -c 'import digest; print(digest.__version__)') --copyright-holder=digest -w 100 \
	    -o digest/locales/digest.pot .
	$(BIN)/pybabel update -i digest/locales/digest.pot -d digest/locales -D digest \
	    --no-location -w 100 --ignore-obsolete

clean:
	rm -rf .var test-artifacts build *.egg-info
