# The README's two commands: `make study` (set up, then run the whole study) and `make test`
# (set up, then lint and pass the tests). Both need only Python 3.11+ and git.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# stages call papermill and jupyter: they must come from the venv
export PATH := $(abspath $(BIN)):$(PATH)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: setup study study-agg study-k study-replicate study-cheap study-noise study-diversity figures lab demo test test-fast lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: nothing installed after it may move it (constraints.txt)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

# `dvc repro`'s stages, as many side by side as there are cores (study/pipeline.py): the headline
# (six reward-model arms and the gold control through PPO and best-of-n on five seeds) and its
# report; `study-agg` the mean and UWO against the minimum (stage aggregations) and TRL's RLOO beside
# PPO; `study-k` the number-of-heads sweep (stage heads); `study-replicate` the headline on the
# disjoint seeds 5-9 (stage replicate). rm_diversity runs with `python -m study.pipeline
# rm_diversity` or `dvc repro`.
study: setup
	$(BIN)/python -m study.pipeline report

study-agg: setup
	$(BIN)/python -m study.pipeline aggregations rloo

study-k: setup
	$(BIN)/python -m study.pipeline heads

study-replicate: setup
	$(BIN)/python -m study.pipeline replicate

study-cheap: setup
	$(BIN)/python -m study.pipeline cheap

study-noise: setup
	$(BIN)/python -m study.pipeline noise

# the head-diversity map over every multi-head and ensemble arm the targets above optimise
study-diversity: setup
	$(BIN)/python -m study.pipeline diversity_map

# the stages that read only committed tables (never a model): every figure notebook that does, the
# claims and the report, rerun in a minute on a fresh clone (a stage whose cached outputs are absent
# is not a reason to rerun what is upstream of it: --allow-missing)
FIGURE_STAGES := ppo_summary aggregations replicate cheap diversity_map open_questions report
figures: setup
	$(BIN)/dvc repro --single-item --allow-missing --force $(FIGURE_STAGES)

# a five-minute taste: the pipeline on one seed of a reduced world, three arms and gold (study/demo.py),
# in a copy of the project; writes demo/index.html
demo: setup
	$(BIN)/python -m study.demo

# JupyterLab on the notebooks; each reads the committed tables, or the DVC cache after `make study`
lab: setup
	$(BIN)/jupyter lab notebooks/

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/pytest -q

# the developer's edit-test loop: the unit tests, without models, pipelines or processes
test-fast: setup
	$(BIN)/pytest -q -m "not slow and not processes" -p no:cacheprovider

clean:
	rm -rf $(VENV)
