# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create or update the virtual environment in .venv first, idempotently.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ekka-installed
PYTEST_ARGS ?=

.PHONY: demo test venv lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/install.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ekka demo

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check ekka tests

clean:
	rm -rf $(VENV) .ekka .pytest_cache
