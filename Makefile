# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Both create or reuse .venv and install everything the project needs into it.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test test-all lint bench

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -c constraints.txt -e ".[export,hf,dev]"
	touch $(STAMP)

demo: $(STAMP)
	ASRKD=$(VENV)/bin/asrkd bash configs/quickstart/run.sh

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m ""

lint: $(STAMP)
	$(VENV)/bin/ruff check asrkd mobile_export eval tests bench
