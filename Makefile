# Two commands do everything: `make up` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODEL := model_repository/resnet50v2/1/model.onnx
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
PYTEST_ARGS ?=

.PHONY: install data model up test test-fast lint format bench clean help

help:
	@echo "make up      install, build the demo model if none, serve Triton :8000 + API :5000"
	@echo "make test    install and run the whole test suite (lint included)"
	@echo "make model   run the DVC pipeline (dvc repro) and version the served model"
	@echo "make bench   benchmark (slow; see README)"

$(STAMP): requirements/api.txt requirements/train.txt requirements/dev.txt pyproject.toml
	@echo "[install] setting up $(VENV) (first time: a few minutes, ~2 GB; log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@( $(BIN)/python -m pip install --upgrade pip && \
	   $(BIN)/python -m pip install -r requirements/api.txt -r requirements/train.txt -r requirements/dev.txt && \
	   $(BIN)/python -m pip install --no-deps nvidia-pytriton==0.7.0 && \
	   $(BIN)/python -m pip install --no-deps -e . ) > $(VENV)/install.log 2>&1 || \
	   { tail -n 40 $(VENV)/install.log; echo "[install] failed: see $(VENV)/install.log"; exit 1; }
	@# nvidia-pytriton: only its tritonserver binary is used, so its numpy<2 pin is irrelevant.
	@$(BIN)/python -c "import imgcls_api, model_preparation, local_stack, tensorflow, onnxruntime; \
		from local_stack.triton import pytriton_root; assert (pytriton_root() / 'bin/tritonserver').exists()" \
		2>>$(VENV)/install.log || { echo "[install] the environment is incomplete: see $(VENV)/install.log"; exit 1; }
	@touch $@
	@echo "[install] done"

install: $(STAMP)

data: $(STAMP)
	@if [ -z "$$(ls -A data/raw 2>/dev/null)" ]; then \
		echo "[data] data/raw is empty: generating the seeded demo dataset"; \
		$(BIN)/python -m model_preparation.demo_data && dvc add -q data; \
	else echo "[data] using the images in data/raw"; fi

model: data
	@echo "[model] dvc repro (prepare → train → export → evaluate → quantize → publish)"
	dvc repro
	dvc commit -q -f model.dvc
	@$(BIN)/python -c "import json; m = json.load(open('artifacts/reports/metrics.json')); \
		q = json.load(open('artifacts/reports/int8.json')); print(f'[model] held-out accuracy ' \
		f'{m[\"accuracy\"]:.4f} FP32, {q[\"int8_accuracy\"]:.4f} INT8 (dvc metrics show: all metrics)')"

$(MODEL):
	@echo "[up] no model in model_repository: building one from data/raw (≈ 7 min on 2 cores)"
	@$(MAKE) --no-print-directory model

up: $(STAMP) $(MODEL)
	$(BIN)/python -m local_stack

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

BENCH_VENV := .cache/bench-venv
BENCH_ARGS ?=

$(BENCH_VENV)/.installed: requirements/bench.txt
	@echo "[bench] creating $(BENCH_VENV) for the Ray Serve peer (optional; ~1 GB)"
	@$(PYTHON) -m venv $(BENCH_VENV)
	@$(BENCH_VENV)/bin/python -m pip install -q -r requirements/bench.txt 2>&1 | grep -v "is ignored" || true
	@$(BENCH_VENV)/bin/python -c "import ray, onnxruntime" && touch $@ || \
		echo "[bench] Ray Serve could not be installed: its row will be skipped"

bench: $(STAMP)
	@$(MAKE) --no-print-directory $(BENCH_VENV)/.installed || true
	$(BIN)/python -m imgcls_bench $(BENCH_ARGS)

clean:
	rm -rf .cache .pytest_cache .ruff_cache
