# The two commands a user types: `make demo` and `make test`. `make check` is the fast loop.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/orders.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check sdk handler

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -x -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/api_calls.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
