# Two commands do everything: `make up` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
PYTEST_ARGS ?=
# Two pytest-xdist workers share the slow tiers (tests/scheduling.py says who takes what);
# PYTEST_WORKERS=0 runs everything in one process.
PYTEST_WORKERS ?= 2
XDIST = -n $(PYTEST_WORKERS) --dist load
MODEL_REPOSITORY ?= model_repository
UP_ARGS ?=  # e.g. --http-port 9000 --api-port 5001 (python -m local_stack --help)
# `make up` keeps what the model was asked and the users' corrections here (README "Monitoring
# and feedback"); CAPTURE_DIR= (empty) turns capture and /feedback off.
CAPTURE_DIR ?= $(CURDIR)/.capture

.PHONY: install data model up test test-fast test-integration lint format bench bench-pipeline compare search chart clean help \
	status gate rollout canary shadow promote rollback bench-lifecycle lock feedback label harvest pointing bench-explain \
	classify bench-batch

help:
	@echo "make up      install, build the demo model if none, serve Triton :8000 + API :5000"
	@echo "make test    install and run the whole test suite (lint included)"
	@echo "make test-fast         the unit tier (seconds); make test-integration: real servers"
	@echo "make model   run the DVC pipeline; a new version starts as a candidate (shadow)"
	@echo "make status  the served versions, the gate set, the candidate's gate report and live guards"
	@echo "make rollout the candidate through the labelled gate, shadow and canary steps to promote, by itself"
	@echo "make gate    the labelled gate alone: the candidate against the serving version (changes nothing)"
	@echo "make canary  PERCENT=10 VERSION=N: the candidate answers that share of requests"
	@echo "make shadow  PERCENT=100 VERSION=N: the candidate is asked in the background"
	@echo "make promote VERSION=N FORCE=1: the candidate serves everything (the labelled gate; FORCE overrides)"
	@echo "make rollback TO=N: drop the candidate, or serve the previous version again"
	@echo "make feedback   the users' corrections waiting in CAPTURE_DIR (default .capture/)"
	@echo "make harvest    add them to data/raw (IDS=\"id ...\" for some; then make model)"
	@echo "make label     ID=… LABEL=…: the class of an input the two versions disagreed on"
	@echo "make pointing   how well the served model's explanations point at the demo shapes (POINTING_ARGS=--label-shuffled: + a shuffled-label control, minutes)"
	@echo "make bench   benchmark (slow; see README)"
	@echo "make bench-pipeline  prepare/train memory and speed at two dataset sizes (~7 min)"
	@echo "make bench-explain   what explanations cost at 64² and 224² (~3 min)"
	@echo "make compare optimizer comparison as DVC experiments (params: compare; ~20 min)"
	@echo "make search  Optuna hyperparameter search, resumable (params: search; SEARCH_ARGS=--run-best)"
	@echo "             STORAGE=postgresql://user:pass@host/db: one study shared by many workers"
	@echo "make classify SRC=folder|list.txt|s3://bucket/prefix [OUT=predictions.parquet]: label"
	@echo "             an archive with the served model, resumable (CLASSIFY_ARGS=--shard 0/2 …)"
	@echo "make bench-batch  classify throughput vs Triton direct; 1 vs 2 search workers (~6 min)"
	@echo "make chart   check the Helm chart offline (lint, render, Kubernetes schemas)"
	@echo "make lock    re-lock requirements/*.lock from requirements/*.txt (UPGRADE=1: newest)"

# Installed from the locks (exact versions, every file checked against its hash): what the
# tests run is what a clone builds next year. `make lock` updates them from requirements/*.txt.
# pip installs only uv (requirements/uv.lock); uv installs the rest, the same files, several
# times faster (docs/testing.md has both times).
UV_PIP = $(BIN)/uv pip install --python $(BIN)/python
$(STAMP): requirements/uv.lock requirements/dev.lock requirements/local-triton.lock pyproject.toml
	@echo "[install] setting up $(VENV) (first time: about a minute, ~2 GB; log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@( $(BIN)/python -m pip install --require-hashes --no-deps -r requirements/uv.lock && \
	   $(UV_PIP) --require-hashes -r requirements/dev.lock && \
	   $(UV_PIP) --require-hashes --no-deps -r requirements/local-triton.lock && \
	   $(UV_PIP) --no-deps -e . ) > $(VENV)/install.log 2>&1 || \
	   { tail -n 40 $(VENV)/install.log; echo "[install] failed: see $(VENV)/install.log"; exit 1; }
	@$(BIN)/python -c "import imgcls_api, model_preparation, local_stack, tensorflow, onnxruntime; \
		from local_stack.tritonserver import pytriton_root; assert (pytriton_root() / 'bin/tritonserver').exists()" \
		2>>$(VENV)/install.log || { echo "[install] the environment is incomplete: see $(VENV)/install.log"; exit 1; }
	@touch $@
	@echo "[install] done"

install: $(STAMP)

data: $(STAMP)
	@$(BIN)/python -m model_preparation.tools.bootstrap --data-only

# Retrain and version: demo data if data/raw is empty, dvc repro, dvc commit model.dvc.
model: $(STAMP)
	@$(BIN)/python -m model_preparation.tools.bootstrap

# Reuse a complete model_repository, else `dvc pull` from a configured remote, else build one
# (the same step as the compose stack's model-init service), then serve until stopped.
up: export CAPTURE_DIR := $(CAPTURE_DIR)
up: $(STAMP)
	@$(BIN)/python -m model_preparation.tools.bootstrap --if-missing --repository $(MODEL_REPOSITORY)
	$(BIN)/python -m local_stack --model-repository $(MODEL_REPOSITORY) $(UP_ARGS)

# The production loop (README "Monitoring and feedback"): review, then train on the corrections.
HARVEST := $(BIN)/python -m model_preparation.tools.harvest --store "$(CAPTURE_DIR)"
feedback: $(STAMP)
	@$(HARVEST) list

harvest: $(STAMP)
	@$(HARVEST) import $(if $(IDS),$(IDS),--all) $(if $(NEW_CLASS),--new-class)

# An input to label (listed first by make feedback: of no known class, or one the candidate and
# the serving version disagreed on): its true class, after which make harvest takes it like any
# correction. NEW_CLASS=1 (here and for make harvest): the label may be a class the data lacks.
label: $(STAMP)
	@$(HARVEST) label $(ID) $(LABEL) $(if $(NEW_CLASS),--new-class)

# The explanations' quality on the demo data (README "Explanations"): the pointing game.
MODEL_FILE ?= artifacts/model.onnx
pointing: $(STAMP)
	@$(BIN)/python -m model_preparation.tools.pointing --model $(MODEL_FILE) $(POINTING_ARGS)

# Changing the served model (README "Changing the model in production"): the running stack's
# Triton (make up) is told through its admin API; TRITON_URL / API_URL point elsewhere.
LIFECYCLE := $(BIN)/python -m imgcls.lifecycle --repository $(MODEL_REPOSITORY)

status: $(STAMP)
	@$(LIFECYCLE) status

canary shadow: $(STAMP)
	@$(LIFECYCLE) $@ $(VERSION) $(if $(PERCENT),--percent $(PERCENT))

# Decided on evidence (README "Changing the model in production"): the labelled gate alone, or
# the whole roll-out (exit 0 promoted, 3 refused or rolled back, 4 inconclusive).
gate rollout: $(STAMP)
	@$(LIFECYCLE) $@ $(VERSION)

promote: $(STAMP)
	@$(LIFECYCLE) promote $(VERSION) $(if $(FORCE),--force)

rollback: $(STAMP)
	@$(LIFECYCLE) rollback $(if $(TO),--to $(TO))

# requirements/*.txt say what the project needs; the locks pin every package with its hashes:
# dev.lock (the venv: API + pipeline + tests), api.lock and train.lock (the two images, held to
# dev.lock's versions), local-triton.lock, and uv.lock (what installs the others). `make lock`
# keeps pins that still fit; `make lock UPGRADE=1` moves every package to its newest allowed one.
LOCK := $(BIN)/uv pip compile --generate-hashes --python-version 3.11 \
	--python-platform x86_64-manylinux_2_35 --native-tls --quiet $(if $(UPGRADE),--upgrade)

lock: $(STAMP)
	$(LOCK) requirements/api.txt requirements/train.txt requirements/dev.txt -o requirements/dev.lock
	$(LOCK) requirements/api.txt -c requirements/dev.lock -o requirements/api.lock
	$(LOCK) requirements/train.txt -c requirements/dev.lock -o requirements/train.lock
	$(LOCK) requirements/local-triton.txt --no-deps -o requirements/local-triton.lock
	$(LOCK) requirements/uv.txt -c requirements/dev.lock -o requirements/uv.lock

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: $(STAMP) lint
	$(BIN)/python -m pytest $(XDIST) --durations=25 $(PYTEST_ARGS)

# Three speeds: test-fast (seconds: every unit, the app with an in-memory gateway, the contracts),
# test-integration (minutes: the real Triton and gunicorn on the tiny model, which the suite
# builds once and keeps in .cache/test-project/, keyed by everything its build reads), and
# test (everything CI runs: the pipeline, Docker, the browser, the bench smoke runs).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

test-integration: $(STAMP)
	$(BIN)/python -m pytest $(XDIST) -m "integration and not bench and not browser" $(PYTEST_ARGS)

# The Helm chart, offline: helm lint + template + Kubernetes schemas (deploy/helm/chartcheck.py).
chart: $(STAMP)
	$(BIN)/python deploy/helm/chartcheck.py --set modelRepository.dvcPull.gitUrl=https://example.invalid/imgcls.git
	$(BIN)/python deploy/helm/chartcheck.py -f deploy/helm/values-gpu-s3.yaml

BENCH_VENV := .cache/bench-venv
BENCH_ARGS ?=

$(BENCH_VENV)/.installed: requirements/bench.txt
	@echo "[bench] creating $(BENCH_VENV) for the BentoML and Ray Serve peers (optional; ~0.7 GB)"
	@$(PYTHON) -m venv $(BENCH_VENV)
	@$(BENCH_VENV)/bin/python -m pip install -q -r requirements/bench.txt 2>&1 | grep -v "is ignored" || true
	@$(BENCH_VENV)/bin/python -c "import bentoml, ray, onnxruntime" && touch $@ || \
		echo "[bench] BentoML / Ray Serve could not be installed: the peer rows will be skipped"

bench: $(STAMP)
	@$(MAKE) --no-print-directory $(BENCH_VENV)/.installed || true
	$(BIN)/python -m imgcls_bench $(BENCH_ARGS)

# A promote under load alone (make bench runs it too): p50/p99 during it vs steady state.
bench-lifecycle: $(STAMP)
	$(BIN)/python -m imgcls_bench.lifecycle $(BENCH_LIFECYCLE_ARGS)

# What explanations cost (README "Explanations"): /explain at c1/c4, CPU each, /predict with 10 % mixed in.
bench-explain: $(STAMP)
	$(BIN)/python -m imgcls_bench.explain $(BENCH_EXPLAIN_ARGS)

# Experiments (not part of dvc repro): each needs the prepared data, so prepare runs first.
compare: data
	$(BIN)/dvc repro prepare
	$(BIN)/python -m model_preparation.tools.compare $(COMPARE_ARGS)

search: data
	$(BIN)/dvc repro prepare
	$(BIN)/python -m model_preparation.tools.search $(if $(STORAGE),--storage "$(STORAGE)") $(SEARCH_ARGS)

# Label an archive with the model `make up` serves (README "Batch jobs").
OUT ?= predictions.parquet
classify: $(STAMP)
	@test -n "$(SRC)" || { echo "usage: make classify SRC=folder|list.txt|s3://bucket/prefix [OUT=predictions.parquet]"; exit 2; }
	$(BIN)/python -m imgcls_batch "$(SRC)" --out "$(OUT)" $(CLASSIFY_ARGS)

bench-batch: $(STAMP)
	$(BIN)/python -m imgcls_bench.batch $(BENCH_BATCH_ARGS)

# Scale: prepare img/s + peak RSS at two dataset sizes, train img/s per train.cache mode.
bench-pipeline: $(STAMP)
	$(BIN)/python -m imgcls_bench.pipeline $(BENCH_PIPELINE_ARGS)

clean:
	rm -rf .cache .pytest_cache .ruff_cache
