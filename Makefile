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

.PHONY: install test test-all reproduce-ablations search dashboard

install: $(STAMP)

# Re-install only when the dependency set changes. torch/torchvision come from this machine's disk
# (pip's configured cap); everything else is pinned by constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	$(PY) -m pip check
	touch $(STAMP)

test: install
	$(VENV)/bin/pytest -m "not slow"

test-all: install
	$(VENV)/bin/pytest

# The paper's Table 1a-1d (TABLES="1a 1b 1c 1d 3"), one Optuna study per table, resumable; writes results/$(PROFILE)/.
reproduce-ablations: install
	$(PY) -m focalbench.reproduce --profile $(PROFILE) --tables $(TABLES) --seeds $(SEEDS)

# TPE search over loss.gamma x loss.alpha with median pruning (sweeps/search_gamma_alpha.yaml), our Optuna sweeper.
search: install
	$(PY) -m focalbench.train -m --config-dir sweeps --config-name search_gamma_alpha profile=$(PROFILE)

# Rebuild results/$(PROFILE)/dashboard.html from runs/, then serve optuna-dashboard on the table studies
# (localhost only; STORAGE=sqlite:///results/$(PROFILE)/optuna.db shows the gamma/alpha search instead).
STORAGE ?= results/$(PROFILE)/studies.journal
PORT ?= 8080
dashboard: install
	$(PY) -m focalbench.reproduce --profile $(PROFILE) --tables $(TABLES) --seeds $(SEEDS) --report-only
	@echo "dashboard page: results/$(PROFILE)/dashboard.html; live studies: http://127.0.0.1:$(PORT)"
	$(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port $(PORT) $(if $(filter %.journal %.log,$(STORAGE)),--storage-class JournalFileStorage) $(STORAGE)
