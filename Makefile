# Two entry points on a fresh machine: `make run` (the main job) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test audit venv clean

venv: $(STAMP)

# torch is pinned first so pip takes the local CPU wheel, never a CUDA build.
# scml-agents goes in last with --no-deps (see pyproject.toml, extra "experts").
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps scml-agents==0.5.2
	touch $(STAMP)

# The main job, default settings. Grows into the full pipeline as stages land.
run: $(STAMP)
	$(BIN)/hrlxf audit

audit: run

test: $(STAMP)
	$(BIN)/python -m pytest -x -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info
