# Quick start: `make demo`, then `make test`. Both create the virtualenvs when missing.
#   .venv      the project with every extra but gpu (torch is installed first: a CPU wheel
#              of exactly 2.13.0; k8s lets the tests validate the Kubernetes executor, s3
#              and moto (dev) test an s3-compatible store). A training image needs only
#              `.[train]` (pyproject.toml lists what each extra is for)
#   .venv-dvc  dvc alone: its antlr4 pin breaks Dagster's asset selection syntax

PYTHON ?= python3.11
VENV := .venv
VENV_DVC := .venv-dvc
BIN := $(VENV)/bin
# Every extra but gpu (tests/test_dependencies.py holds it to pyproject.toml).
EXTRAS := train,curation,eval,tracking,orchestration,ui,dev,k8s,ocr,postgres,s3,app
HOST ?= 127.0.0.1
MLFLOW_PORT ?= 5000
DAGSTER_PORT ?= 3000
APP_PORT ?= 7860
# What `make demo` curates: the synthetic dataset (use `default` for real footage) ...
OPENSORA_DATA_CONFIG ?= synthetic
# ... and trains with (configs/stages/demo); `make ui` shows the same stage configs.
# Only demo and ui see these: the tests choose their own (tiny) settings.
OPENSORA_TRAIN_STAGES ?= demo/stage0,demo/stage1,demo/stage2,demo/stage3
OPENSORA_STAGES ?= $(OPENSORA_TRAIN_STAGES)
demo ui: export OPENSORA_DATA_CONFIG := $(OPENSORA_DATA_CONFIG)
demo ui: export OPENSORA_TRAIN_STAGES := $(OPENSORA_TRAIN_STAGES)
demo ui: export OPENSORA_STAGES := $(OPENSORA_STAGES)

.PHONY: setup demo test test-floors bench ui app clean

setup: $(VENV)/.installed $(VENV_DVC)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

$(VENV_DVC)/.installed:
	test -x $(VENV_DVC)/bin/python || $(PYTHON) -m venv $(VENV_DVC)
	$(VENV_DVC)/bin/pip install --quiet --upgrade pip
	$(VENV_DVC)/bin/pip install --quiet "dvc>=3.50"
	touch $@

# The whole pipeline through Dagster in .dagster/ (data/, artifacts/, mlruns.db here).
demo: setup
	$(BIN)/python -m orchestration.demo --out outputs/demo

test: setup
	$(BIN)/python -m pytest -q

# The declared lower bounds, installed and tested (not part of `make test`): uv resolves
# each direct dependency to the lowest version pyproject.toml allows, .ci/check_floors.py
# fails if one came out above its floor, then the fast tests run in that environment.
VENV_FLOORS := .venv-floors
test-floors:
	test -x $(VENV_FLOORS)/bin/python || $(PYTHON) -m venv $(VENV_FLOORS)
	$(VENV_FLOORS)/bin/pip install --quiet --upgrade pip uv
	$(VENV_FLOORS)/bin/pip install --quiet torch==2.13.0
	$(VENV_FLOORS)/bin/uv pip install --quiet --python $(VENV_FLOORS)/bin/python --resolution lowest-direct \
		-e ".[$(EXTRAS)]"
	$(VENV_FLOORS)/bin/python .ci/check_floors.py $(EXTRAS)
	$(VENV_FLOORS)/bin/python -m pytest -q -m "not slow"

# The training-step benchmark, tiny and reference setups (bench/model_step.py, the same as
# `opensora bench model`); every benchmark: README's Benchmark section.
bench: setup
	$(BIN)/python bench/model_step.py

# Dagster's UI (the asset graph, a local instance in .dagster/) and MLflow's UI (the
# embedded profile's SQLite store), both bound to $(HOST) only; Ctrl-C stops both.
ui: setup
	@mkdir -p .dagster
	@echo "Dagster UI: http://$(HOST):$(DAGSTER_PORT)"
	@echo "MLflow UI:  http://$(HOST):$(MLFLOW_PORT)   (Ctrl-C stops both)"
	@$(BIN)/mlflow ui --host $(HOST) --port $(MLFLOW_PORT) --backend-store-uri sqlite:///$(CURDIR)/mlruns.db & \
	mlflow_pid=$$!; trap 'kill $$mlflow_pid 2>/dev/null' EXIT; \
	DAGSTER_HOME=$(CURDIR)/.dagster $(BIN)/dagster dev -m orchestration.definitions -h $(HOST) -p $(DAGSTER_PORT)

# The web app (Generate, Compare, History) on $(HOST) only, over the registry of the
# MLflow store `make ui` shows; Ctrl-C stops it.
app: setup
	$(BIN)/opensora app --host $(HOST) --port $(APP_PORT)

clean:
	rm -rf $(VENV) $(VENV_DVC) $(VENV_FLOORS) outputs .pytest_cache data artifacts runs .dagster mlruns.db mlartifacts
