# RadTriage: `make run` starts the product, `make test` runs the whole test suite.
# Both create (or reuse) the Python environment in .venv/.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Tests use the real services on this machine; override on the command line if yours differ.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/test
TEST_REDIS_URL ?= redis://127.0.0.1:6379/5
PYTEST_ARGS ?=

.PHONY: run test venv lint analyze bench bench-pipeline bench-dicom bench-load bench-batch bench-workers

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

run: $(STAMP)
	./scripts/run.sh

test: $(STAMP) lint
	./scripts/test-prereqs.sh
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) TF_CPP_MIN_LOG_LEVEL=3 \
		$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# make analyze FILE=chest.dcm CONDITION=pneumonia [OUT=overlay.png]
analyze: $(STAMP)
	$(PY) manage.py analyze "$(FILE)" --condition "$(CONDITION)" --out "$(or $(OUT),overlay.png)"

bench: $(STAMP)
	$(PY) bench/core_inference.py

bench-pipeline: $(STAMP)
	$(PY) bench/pipeline.py

bench-dicom: $(STAMP)
	$(PY) bench/dicom_ingest.py

bench-load: $(STAMP)
	$(PY) bench/load.py

bench-batch: $(STAMP)
	$(PY) bench/batch.py

bench-workers: $(STAMP)
	$(PY) bench/workers.py
