# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8080
STAMP := $(VENV)/.installed

.PHONY: run test bench install clean evaluate

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Local trial: SQLite under ./var, no external service.
run: $(STAMP)
	mkdir -p var
	PORT=$(PORT) CDS_AUTH=$${CDS_AUTH:-off} $(BIN)/gunicorn -c gunicorn.conf.py cds_service.wsgi:app

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/bench.py

clean:
	rm -rf $(VENV) var .pytest_cache
