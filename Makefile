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
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The suite runs against the embedded emulator and LocalStack: LocalStack (host mode,
# offline; docs/localstack.md) is brought up first and stopped after, whatever pytest's
# result. RUNG_LOCALSTACK=0 make test skips it.
test: lint typecheck sam-validate
	infra/localstack/with-localstack.sh $(BIN)/pytest -q --durations=25

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -q -x -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/api_calls.py
	$(BIN)/python bench/observability.py
	$(BIN)/python bench/partition_heat.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/versions.py
	$(BIN)/python bench/async_fanout.py
	$(BIN)/python bench/async_client.py

localstack-up:
	infra/localstack/up.sh

localstack-down:
	infra/localstack/down.sh

# The data plane of template.yaml on LocalStack; prints the stack's outputs as JSON.
localstack-deploy: $(STAMP) localstack-up
	$(BIN)/python infra/localstack/deploy.py $(or $(APP),examples.orders:app) --stack $(or $(STACK),rung-localstack)

clean:
	rm -rf $(VENV) .venv-sam .localstack .rung .pytest_cache .mypy_cache .ruff_cache

# -- The Lambda bundle -------------------------------------------------------------------
# `sam build` runs build-<Function> for each of the template's functions (BuildMethod: makefile
# in template.yaml's function Metadata) with ARTIFACTS_DIR set; `make build-WorkerFunction
# ARTIFACTS_DIR=dir` does the same by hand. A bundle holds:
#   - rung, and exactly the packages pinned in infra/requirements-lambda.txt: its
#     dependencies and `lambda` extra (pydantic, boto3, aws-lambda-powertools) without the
#     CLI's (click, rich: the worker never imports them), no moto, no dev tools; as wheels
#     for Lambda's RUNG_PYTHON (3.12 or 3.13, default 3.12) on RUNG_ARCH (arm64 or x86_64,
#     default arm64), whatever the build machine: the same as the template's PythonRuntime
#     and Architecture parameters (rung-bundle.json records them; handler/_bundle.py
#     refuses to start in a function of another kind, with what to do);
#   - RUNG_REQUIREMENTS, if set: a requirements file of your tasks' own dependencies;
#   - handler/, and your task code: each directory in RUNG_CODE_DIRS, copied to the top of
#     the bundle under its own name (RUNG_APP must import from there).
# E.g. `RUNG_CODE_DIRS=shop RUNG_REQUIREMENTS=shop/requirements.txt sam build`. More in
# docs/deploying.md.
RUNG_CODE_DIRS ?= examples
RUNG_REQUIREMENTS ?=
LAMBDA_PIP ?= $(PYTHON) -m pip
RUNG_ARCH ?= arm64
RUNG_PYTHON ?= 3.12
LAMBDA_PLATFORM = --platform manylinux2014_$(if $(filter arm64,$(RUNG_ARCH)),aarch64,x86_64) \
	--implementation cp --python-version $(RUNG_PYTHON) --only-binary=:all:

.PHONY: build-WorkerFunction build-ReconcilerFunction build-ApiFunction build-CallbackFunction lambda-requirements sam-validate

build-WorkerFunction build-ReconcilerFunction build-ApiFunction build-CallbackFunction:
	$(if $(ARTIFACTS_DIR),,$(error ARTIFACTS_DIR is not set: `sam build` sets it; or pass ARTIFACTS_DIR=dir))
	$(if $(and $(filter 1,$(words $(RUNG_ARCH))),$(filter $(RUNG_ARCH),arm64 x86_64)),,$(error RUNG_ARCH is "$(RUNG_ARCH)": set arm64 or x86_64, as the template's Architecture))
	$(if $(and $(filter 1,$(words $(RUNG_PYTHON))),$(filter $(RUNG_PYTHON),3.12 3.13)),,$(error RUNG_PYTHON is "$(RUNG_PYTHON)": set 3.12 or 3.13, as the template's PythonRuntime))
	$(LAMBDA_PIP) install --quiet --disable-pip-version-check --no-compile --no-warn-conflicts \
		--upgrade --target "$(ARTIFACTS_DIR)" $(LAMBDA_PLATFORM) --no-deps \
		--requirement infra/requirements-lambda.txt .
	$(if $(RUNG_REQUIREMENTS),$(LAMBDA_PIP) install --quiet --disable-pip-version-check \
		--no-compile --no-warn-conflicts --upgrade --target "$(ARTIFACTS_DIR)" $(LAMBDA_PLATFORM) \
		--constraint infra/requirements-lambda.txt --requirement "$(RUNG_REQUIREMENTS)")
	rm -rf "$(ARTIFACTS_DIR)/bin"
	cp -R handler $(RUNG_CODE_DIRS) "$(ARTIFACTS_DIR)/"
	printf '{"architecture": "%s", "python": "%s"}\n' $(RUNG_ARCH) $(RUNG_PYTHON) \
		> "$(ARTIFACTS_DIR)/rung-bundle.json"
	find "$(ARTIFACTS_DIR)" -name __pycache__ -type d -prune -exec rm -rf {} +

# Re-pin infra/requirements-lambda.txt (after changing pyproject.toml's dependencies, or to
# take newer releases): what pip resolves for the Lambda platform today.
lambda-requirements:
	$(PYTHON) infra/lambda_requirements.py $(LAMBDA_PLATFORM)

# `sam validate --lint` with the SAM CLI in its own venv, .venv-sam (about 80 s to create;
# an old bundled pip takes twice as long to resolve aws-sam-cli, hence the upgrade first).
SAM_PYTHON ?= $(PYTHON)
.venv-sam/bin/sam:
	$(SAM_PYTHON) -m venv .venv-sam
	.venv-sam/bin/pip install --quiet --disable-pip-version-check --upgrade pip
	.venv-sam/bin/pip install --quiet --disable-pip-version-check aws-sam-cli

sam-validate: .venv-sam/bin/sam
	SAM_CLI_TELEMETRY=0 .venv-sam/bin/sam validate --lint --template template.yaml
