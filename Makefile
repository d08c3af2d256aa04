# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the tests).
# Both create or update the virtual environments first, idempotently: .venv (Ekka, vLLM)
# and .venv-sglang (SGLang's own, SGLANG_VENV; SKIP_SGLANG=1 leaves it out).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SGLANG_VENV := .venv-sglang
STAMP := $(VENV)/.ekka-installed
PYTEST_ARGS ?=
# `make test` runs the tests on TEST_WORKERS xdist workers (both cores of CI's machine: most of
# the suite waits on one single-threaded vLLM start at a time); tests/parallel.py keeps the tests
# that share a fixture or a resource on one worker. TEST_WORKERS=0 runs them in this process.
# Here and not in pyproject's addopts: `pytest tests/one_file.py` starts no workers.
TEST_WORKERS ?= 2
LINT_PATHS := ekka tests benchmarks

.PHONY: demo test venv lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh scripts/sglang-requirements.txt scripts/sgl_kernel_standin/sgl_kernel/__init__.py
	PYTHON=$(PYTHON) VENV=$(VENV) SGLANG_VENV=$(SGLANG_VENV) bash scripts/install.sh
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ekka demo

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The quality gates that CI runs (.ci/run, beside the tests): all three run, and the target
# fails when any of them fails.
lint: $(STAMP)
	@rc=0; \
	echo "CI: ruff check $(LINT_PATHS)"; \
	$(VENV)/bin/ruff check $(LINT_PATHS) || { rc=1; echo "CI: ruff check failed"; }; \
	echo "CI: ruff format --check $(LINT_PATHS)"; \
	$(VENV)/bin/ruff format --check $(LINT_PATHS) \
		|| { rc=1; echo "CI: ruff format --check failed (fix: $(VENV)/bin/ruff format FILE...)"; }; \
	echo "CI: mypy --strict ekka"; \
	$(VENV)/bin/mypy --strict ekka || { rc=1; echo "CI: mypy --strict failed"; }; \
	exit $$rc

clean:
	rm -rf $(VENV) $(SGLANG_VENV) .ekka .pytest_cache
