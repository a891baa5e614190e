# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
STAMP := $(VENV)/.installed

.PHONY: run test lint format lock bench soak container-test install clean

# The whole dependency tree is pinned, with hashes, in requirements-dev.lock (requirements.lock for
# the image); `make lock` regenerates both from pyproject.toml.
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 --generate-hashes -q -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 --generate-hashes -q -o requirements-dev.lock

install: $(STAMP)

# Local trial: SQLite under ./var, no external service.
run: $(STAMP)
	mkdir -p var
	PORT=$(PORT) CDS_AUTH=$${CDS_AUTH:-off} $(BIN)/cds-service serve

test: $(STAMP)
	$(BIN)/python -m pytest

# Lint, format and types in one command (ruff and mypy, configured in pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP)
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get install -y -qq wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null 2>&1)); } || true
	$(BIN)/python bench/bench.py

# The image built with podman (a Debian base made with debootstrap: no registry here), run as its
# non-root user, and checked: /healthz, discovery, a hook call, a clean log.
container-test:
	scripts/container-test

clean:
	rm -rf $(VENV) var .pytest_cache

soak: $(STAMP)
	$(BIN)/python bench/soak.py
