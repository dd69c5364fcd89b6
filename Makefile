# The two commands a user types: `make demo` and `make test`. `make check` is the fast loop.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test check lint typecheck bench clean localstack-up localstack-down localstack-deploy

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/orders.py --dev

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check sdk handler

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs against the embedded emulator and LocalStack: LocalStack (host mode,
# offline; docs/localstack.md) is brought up first and stopped after, whatever pytest's
# result. RUNG_LOCALSTACK=0 make test skips it.
test: lint typecheck
	infra/localstack/with-localstack.sh $(BIN)/pytest -q

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest -q -x -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/api_calls.py

localstack-up:
	infra/localstack/up.sh

localstack-down:
	infra/localstack/down.sh

# The data plane of template.yaml on LocalStack; prints the stack's outputs as JSON.
localstack-deploy: $(STAMP) localstack-up
	$(BIN)/python infra/localstack/deploy.py $(or $(APP),examples.orders:app) --stack $(or $(STACK),rung-localstack)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
