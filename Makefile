# Two entry points, each sets itself up (virtualenv + packages) and is safe to run again:
#   make quickstart   the main job on the embedded default
#   make test         the test suite
PYTHON ?= python3
VENV ?= .venv
# The CPU build on this project's machines; GPU users: make TORCH_SPEC="torch --index-url ..." ...
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.eva_rl-installed
BIN := $(VENV)/bin

.PHONY: quickstart test lint setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[dev,ray]"  # ray: the Ray executor's test runs too
	touch $(STAMP)

quickstart: $(STAMP)
	$(BIN)/eva-rl quickstart

# one pytest worker per core this process may use (tests/conftest.py), long tests spread by work stealing
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check eva_rl tests benchmarks
