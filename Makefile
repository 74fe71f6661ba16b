# Two commands on a fresh clone (README "Quick start"):
#   make run    set up .venv (CPU torch first), then run suites/resolution.yaml with its CPU defaults
#   make test   set up .venv, then the checks exactly as CI runs them (.ci/run calls this): the formatter
#               (ruff format --check), the linter (ruff check), then the test suite (pytest)
# Variables: PYTHON (interpreter that creates the venv), VENV, DEVICE (for `make run`, default cpu).

PYTHON ?= python3
VENV ?= .venv
DEVICE ?= cpu
PY := $(VENV)/bin/python
STAMP := $(VENV)/.attnbench-installed

.PHONY: setup run test clean-venv

setup: $(STAMP)

# CPU torch is installed before the project so that pip never resolves `torch>=2.4` to a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[test,triton,plot,imagenet,distributed]"
	touch $(STAMP)

run: setup
	$(PY) -m attnbench run suites/resolution.yaml --set device=$(DEVICE)

# pytest exit 5 (nothing collected) is a failure too, with a message saying so.
test: setup
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .
	@$(PY) -m pytest -q --benchmark-disable -n 2 tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; exit 1; fi; \
	exit $$rc

clean-venv:
	rm -rf $(VENV)
