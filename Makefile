# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create or reuse .venv and install everything the project needs into it.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo demo-full quickstart test test-demo test-all lint bench

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -c constraints.txt -e ".[export,hf,lhotse,whisper,dev]"
	touch $(STAMP)

# The main job: `asrkd demo --quick` (every stage of the pipeline; see README for why --quick).
demo: $(STAMP)
	$(VENV)/bin/asrkd demo --quick

# The full demo (longer trainings: the numbers worth quoting).
demo-full: $(STAMP)
	$(VENV)/bin/asrkd demo

# The CTC-only student on synthetic digits from a YAML config (recipes/quickstart/).
quickstart: $(STAMP)
	ASRKD=$(VENV)/bin/asrkd bash recipes/quickstart/run.sh

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# `asrkd demo --quick` end to end as a test (slow-marked; .ci/run runs it after `make test`).
test-demo: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow tests/test_demo.py

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check asrkd mobile_export eval tests bench
