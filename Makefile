# The two commands of the README: `make run` serves the API (+ worker, webhook deliverer, and a Redis
# when none answers) on the demo checkpoint unless ONEDIFFUSION_MODEL is set; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel lies on the CI machines' disk; on a GPU machine PyPI's default Linux wheel is the CUDA build.
TORCH_SPEC ?= torch==2.13.0

# The GPU check (benchmarks/gpu_check.py): one command on a lent GPU; ARGS='--tiny --device cpu' runs it here.
.PHONY: gpu-check
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check $(ARGS)

.PHONY: install run test test-model test-service fuzz bench client-codegen clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,fp8]"
	touch $@

install: $(BIN)/.installed

# The local demo serves without API keys (its banner says so); AUTH_DISABLED=false make run turns them on.
run: install
	AUTH_DISABLED=$${AUTH_DISABLED:-true} $(BIN)/onediffusion up

# Two pytest workers (each test file stays on one, with its module's service): most of a service test is
# waiting on real processes, so two halve the wall time on a 2-core machine. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

test-model: install
	$(BIN)/python -m pytest -q tests --ignore=tests/service

test-service: install
	$(BIN)/python -m pytest -q tests/service

# A longer property-based run against the OpenAPI document.
fuzz: install
	FUZZ_EXAMPLES=200 FUZZ_PHASES=examples,coverage,fuzzing $(BIN)/python -m pytest -q tests/service/test_openapi.py

# The Python client's task methods (clients/python/onediffusion_client/tasks.py) from the app's OpenAPI document;
# tests/client fails until this is run after a change to a task's fields.
client-codegen: install
	PYTHONPATH=clients/python:. $(BIN)/python -m onediffusion_client.codegen --app

bench: install
	$(BIN)/python -m benchmarks.denoiser

clean:
	rm -rf $(VENV) var .pytest_cache
