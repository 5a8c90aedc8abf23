# The two commands of the README: `make run` serves the API (+ worker, webhook deliverer, and a Redis of its
# own unless REDIS_URL is set) on the demo checkpoint unless ONEDIFFUSION_MODEL is set; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel lies on the CI machines' disk; on a GPU machine PyPI's default Linux wheel is the CUDA build.
TORCH_SPEC ?= torch==2.13.0

# Three installs, each what its commands need: serving (`make run`: torch and the project's runtime
# dependencies), the tests (`make test`: + the dev extra: pytest, playwright, schemathesis, triton for the
# kernel's CPU interpreter test, ...; and the fp8 extra, whose CPU path the tests run) and the GPU check
# (+ the fp8 extra, torchao). Each adds to the one before.
STAMP_SERVE := $(BIN)/.installed
STAMP_DEV := $(BIN)/.installed-dev
STAMP_GPU := $(BIN)/.installed-gpu

# The GPU check (benchmarks/gpu_check.py): one command on a GPU machine; ARGS='--tiny --device cpu' runs it here.
.PHONY: gpu-check
gpu-check: $(STAMP_GPU)
	$(BIN)/python -m benchmarks.gpu_check $(ARGS)

.PHONY: install install-dev run test test-fast test-durations test-model test-service fuzz bench client-codegen clean

$(STAMP_SERVE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e .
	touch $@

$(STAMP_DEV): $(STAMP_SERVE)
	$(BIN)/python -m pip install -q -e ".[dev,fp8]"
	touch $@

$(STAMP_GPU): $(STAMP_SERVE)
	$(BIN)/python -m pip install -q -e ".[fp8]"
	touch $@

install: $(STAMP_SERVE)
install-dev: $(STAMP_DEV)

# The local demo serves without API keys (its banner says so); AUTH_DISABLED=false make run turns them on.
run: install
	AUTH_DISABLED=$${AUTH_DISABLED:-true} $(BIN)/onediffusion up

# Two pytest workers (each test file stays on one, with its module's service): most of a service test is
# waiting on real processes, so two halve the wall time on a 2-core machine. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: install-dev
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

# Each test file's seconds, written to tests/durations.json: `make test` hands out the longest files first
# (tests/file_order.py). Run it on an idle machine after adding or reshaping slow tests.
test-durations: install-dev
	TEST_DURATIONS_OUT=tests/durations.json $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The unit tier: no process stacks, nothing slow (markers in pyproject.toml); under a minute on 2 cores.
test-fast: install-dev
	$(BIN)/python -m pytest -q -n 2 -m "not stack and not inprocess and not slow and not browser and not gpu"

test-model: install-dev
	$(BIN)/python -m pytest -q tests --ignore=tests/service

test-service: install-dev
	$(BIN)/python -m pytest -q tests/service

# A longer property-based run against the OpenAPI document.
fuzz: install-dev
	FUZZ_EXAMPLES=200 FUZZ_PHASES=examples,coverage,fuzzing $(BIN)/python -m pytest -q tests/service/test_openapi.py

# The Python client's task methods (clients/python/onediffusion_client/tasks.py) from the app's OpenAPI document;
# tests/client fails until this is run after a change to a task's fields.
client-codegen: install-dev
	PYTHONPATH=clients/python:. $(BIN)/python -m onediffusion_client.codegen --app

bench: install-dev
	$(BIN)/python -m benchmarks.denoiser

clean:
	rm -rf $(VENV) var .pytest_cache
