.DEFAULT_GOAL := help
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help
help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip maturin

.PHONY: install
install: $(PY) ## venv + editable install with the test, lint and dask (cluster tests) extras
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -E test,dask

.PHONY: install-bench
install-bench: $(PY) ## install + the bench extra (loky, mpire, pebble, psutil, matplotlib)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -E test,bench

.PHONY: build-dev
build-dev: $(PY) ## debug build of the native module into the venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop

.PHONY: build-prod
build-prod: $(PY) ## optimised wheel in target/wheels
	$(VENV)/bin/maturin build --release

.PHONY: format
format: ## ruff fix + format, cargo fmt
	$(PY) -m ruff check --fix python tests benches
	$(PY) -m ruff format python tests benches
	cargo fmt

.PHONY: lint-python
lint-python: ## ruff, mypy --strict (the package and tests/typing/user_code.py), stubtest of the native module
	$(PY) -m ruff check python tests benches
	$(PY) -m ruff format --check python tests benches
	$(PY) -m mypy python/ferropool
	$(PY) -m mypy --strict tests/typing/user_code.py
	$(PY) -m mypy.stubtest ferropool._core

.PHONY: lint-rust
lint-rust: ## cargo fmt --check, clippy with warnings as errors
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

.PHONY: lint
lint: lint-python lint-rust ## all linters

.PHONY: test
test: ## the whole Python test suite, then the Rust unit tests
	$(PY) -m pytest
	cargo test

FUZZ_SECONDS ?= 90

.PHONY: fuzz
fuzz: ## every cargo-fuzz target (nightly), FUZZ_SECONDS in all (CI: 90)
	fuzz/run.sh $(FUZZ_SECONDS)

SWEEP_PNG ?= benches/sweep.png

.PHONY: bench
bench: ## ferropool against the stdlib (and loky/mpire/pebble if installed): BENCHMARKS.md + sweep chart
	$(PY) benches/run.py --repeat 5 --anchors --plot $(SWEEP_PNG) --out BENCHMARKS.md

.PHONY: bench-plot
bench-plot: ## only the task-duration sweep: its table to stdout, its chart to benches/sweep.png (SWEEP_PNG=...)
	$(PY) benches/run.py --workload sweep --repeat 5 --anchors --plot $(SWEEP_PNG)

.PHONY: bench-footprint
bench-footprint: ## only the footprint workloads (memory, imap stream, idle CPU): tables to stdout
	$(PY) benches/run.py --workload footprint --repeat 5

.PHONY: all
all: format lint test ## format, lint, test
