# The README's two commands: `make study` (set up, then run the whole study) and `make test`
# (set up, then lint and pass the tests). Both need only Python 3.11+ and git.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# stages call papermill and jupyter: they must come from the venv
export PATH := $(abspath $(BIN)):$(PATH)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup study test lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: nothing installed after it may move it (constraints.txt)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# `dvc repro`'s stages, as many side by side as there are cores (study/pipeline.py)
study: setup
	$(BIN)/python -m study.pipeline

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV)
