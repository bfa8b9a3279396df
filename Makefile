# focalbench: the user's entry points. Every target installs what it needs first (idempotently).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= cpu
TABLES ?= 1a 1b 1c 1d
SEEDS ?= 1
export WANDB_MODE ?= offline

.PHONY: install test test-all reproduce-ablations reproduce-imbalance search dashboard bench bench-gpu

install: $(STAMP)

# Re-install only when the dependency set changes. torch/torchvision come from this machine's disk
# (pip's configured cap); everything else is pinned by constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test,all]'
	$(PY) -m pip check
	touch $(STAMP)

test: install
	$(VENV)/bin/pytest -m "not slow"

test-all: install
	$(VENV)/bin/pytest

# Where reproduce-ablations writes (and resumes): outputs/results/$(PROFILE)/ (git-ignored) by default;
# RESULTS=DIR -> DIR/$(PROFILE)/; RESULTS=results or UPDATE_REFERENCE=1 -> the committed reference results/$(PROFILE)/
# (--update-reference). WORKERS=N worker processes (default: cores / the profile's trainer.num_threads).
RESULTS ?=
UPDATE_REFERENCE ?=
WORKERS ?=
USER_RESULTS := outputs/results
ifneq ($(filter 1 yes true,$(UPDATE_REFERENCE))$(filter results results/ ./results,$(RESULTS)),)
LOCATION_ARGS := --update-reference
RESULTS_DIR := results/$(PROFILE)
else
LOCATION_ARGS := $(if $(RESULTS),--results $(RESULTS))
RESULTS_DIR := $(or $(RESULTS),$(USER_RESULTS))/$(PROFILE)
endif

# The paper's Table 1a-1d (TABLES="1a 1b 1c 1d 3"), one Optuna study per table, resumable; writes $(RESULTS_DIR)/
# and ends with comparison.md: every row beside the committed results/$(PROFILE)/.
reproduce-ablations: install
	$(PY) -m focalbench.reproduce --profile $(PROFILE) --tables $(TABLES) --seeds $(SEEDS) $(LOCATION_ARGS) \
		$(if $(WORKERS),--workers $(WORKERS))

# TPE search over loss.gamma x loss.alpha with median pruning (sweeps/search_gamma_alpha.yaml), our Optuna sweeper.
SEARCH_CMD = $(PY) -m focalbench.train -m --config-dir sweeps --config-name search_gamma_alpha profile=$(PROFILE)
search: install
	$(SEARCH_CMD)
	$(PY) -m focalbench.sweeps.report --storage sqlite:///results/$(PROFILE)/optuna.db --study search_gamma_alpha \
		--out results/$(PROFILE)/search --command "make search PROFILE=$(PROFILE)"

# Rebuild $(DASH_DIR)/dashboard.html from runs/ (the tables and seeds of the last run, unless TABLES/SEEDS
# are given), then serve optuna-dashboard on the table studies
# (localhost only; STORAGE=sqlite:///results/$(PROFILE)/optuna.db shows the gamma/alpha search instead).
# DASH_DIR: the location RESULTS/UPDATE_REFERENCE name; without them your own reproduction
# (outputs/results/$(PROFILE)/) once it exists, else the committed results/$(PROFILE)/.
ifeq ($(LOCATION_ARGS),)
ifeq ($(wildcard $(USER_RESULTS)/$(PROFILE)/manifest.json),)
DASH_ARGS := --update-reference
DASH_DIR := results/$(PROFILE)
else
DASH_ARGS :=
DASH_DIR := $(USER_RESULTS)/$(PROFILE)
endif
else
DASH_ARGS := $(LOCATION_ARGS)
DASH_DIR := $(RESULTS_DIR)
endif
STORAGE ?= $(DASH_DIR)/studies.journal
PORT ?= 8080
dashboard: install
	$(PY) -m focalbench.reproduce --profile $(PROFILE) --report-only $(DASH_ARGS) \
		$(if $(filter command line,$(origin TABLES)),--tables $(TABLES)) $(if $(filter command line,$(origin SEEDS)),--seeds $(SEEDS))
	@echo "dashboard page: $(DASH_DIR)/dashboard.html; live studies: http://127.0.0.1:$(PORT)"
	$(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port $(PORT) $(if $(filter %.journal %.log,$(STORAGE)),--storage-class JournalFileStorage) $(STORAGE)

# Focal loss beyond detection: CE / alpha-CE / FL / tuned FL at imbalance 1:1..1:10,000 (sweeps/imbalance.yaml).
reproduce-imbalance: install
	$(PY) -m focalbench.classify.study --profile $(PROFILE) --seeds $(if $(filter command line,$(origin SEEDS)),$(SEEDS),3)

# Speed and memory vs torchvision / pycocotools / whole-set NMS, paired medians -> results/bench/README.md
bench: install
	$(PY) benchmarks/run.py

# The GPU figures (results/bench/gpu/), on a machine with one CUDA GPU: under 8 minutes
bench-gpu: install
	PY=$(PY) bash benchmarks/gpu_check.sh
