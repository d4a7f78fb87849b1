"""study.subgrid: dvc.yaml on a subset of seeds, against a hand-made pipeline and the real one."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml

from study.subgrid import (
    count_stages,
    keep_seeds,
    notebook_parameters,
    restrict,
    write_restricted,
)
from tests.conftest import ROOT
from tests.test_pipeline_spec import matrix_items, substitute


def _notebook(path, source: str) -> None:
    cell = {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": source}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4}))


SPEC = {
    "stages": {
        "train": {
            "matrix": {"arm": ["a", "b"], "seed": [0, 1, 2]},
            "cmd": "papermill notebooks/t.ipynb reports/t_${item.arm}_s${item.seed}.ipynb "
            "-p seed ${item.seed}",
            "deps": ["notebooks/t.ipynb", "data"],
            "outs": ["results/${item.arm}/seed${item.seed}"],
        },
        "side": {
            "foreach": {"a-0": {"arm": "a", "seed": 0}, "a-2": {"arm": "a", "seed": 2}},
            "do": {"cmd": "papermill notebooks/t.ipynb out.ipynb", "deps": ["notebooks/t.ipynb"]},
        },
        "summary": {
            "cmd": "mkdir -p r && papermill notebooks/s.ipynb r/s.ipynb -p write True --cwd .",
            "deps": [
                "notebooks/s.ipynb",
                "results/a/seed0",
                "results/a/seed2",
                "results/b/seed1",
                "reports/t_a_s2.html",
                "results/a-k10/seed0",
            ],
        },
    }
}


@pytest.fixture
def project(tmp_path):
    _notebook(tmp_path / "notebooks/t.ipynb", "seed = 0\nrun = False\n")
    _notebook(
        tmp_path / "notebooks/s.ipynb",
        'arms = ["a", "b"]\nseeds = [0, 1, 2]\nruns = {"a": [0, 2], "b": [1]}\n'
        "example_seed = 2\nwrite = False  # a comment\n",
    )
    return tmp_path


def test_seed_axes_deps_and_summary_parameters_are_restricted(project):
    out = restrict(SPEC, [0, 1], project)
    stages = out["stages"]
    assert stages["train"]["matrix"] == {"arm": ["a", "b"], "seed": [0, 1]}
    assert stages["train"]["cmd"] == SPEC["stages"]["train"]["cmd"]  # the item's own seed
    assert list(stages["side"]["foreach"]) == ["a-0"]
    assert stages["summary"]["deps"] == [
        "notebooks/s.ipynb", "results/a/seed0", "results/b/seed1", "results/a-k10/seed0",
    ]  # fmt: skip
    # the lists of seeds, and only those, are passed on; the scalar example seed stays
    cmd = shlex.split(stages["summary"]["cmd"])
    at = cmd.index("-y")
    assert cmd[at - 2 : at] == ["notebooks/s.ipynb", "r/s.ipynb"]
    assert json.loads(cmd[at + 1]) == {"seeds": [0, 1], "runs": {"a": [0], "b": [1]}}
    assert cmd[at + 2 :] == ["-p", "write", "True", "--cwd", "."]
    assert SPEC["stages"]["train"]["matrix"]["seed"] == [0, 1, 2]  # the input is not modified
    assert count_stages(SPEC) == 9 and count_stages(out) == 6


def test_keeping_every_seed_changes_nothing(project):
    assert restrict(SPEC, [0, 1, 2], project) == SPEC


def test_a_stage_left_without_seeds_is_named(project):
    with pytest.raises(ValueError, match=r"stage train: none of its seeds \[0, 1, 2\] is kept"):
        restrict(SPEC, [7], project)
    with pytest.raises(ValueError, match=r"runs\.b: none of its seeds \[1\] is kept"):
        keep_seeds({"runs": {"a": [0], "b": [1]}}, {0}, "runs")


def test_write_restricted_rewrites_the_project_copy(project):
    (project / "dvc.yaml").write_text(yaml.safe_dump(SPEC))
    assert write_restricted(project, {1, 2}) == 6
    assert yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["train"]["matrix"][
        "seed"
    ] == [1, 2]


def _int_lists(value):
    if isinstance(value, list) and value and all(type(v) is int for v in value):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _int_lists(v)


def _outs(stages: dict) -> set[str]:
    """Every output path the stages expand to (matrix and foreach items substituted)."""
    paths = set()
    for stage in stages.values():
        body = stage.get("do", stage)
        if "matrix" in stage:
            items = matrix_items(stage["matrix"])
        elif "foreach" in stage:
            items = list(stage["foreach"].values())
        else:
            items = [{}]
        for item in items:
            for o in body.get("outs", []):
                paths.add(substitute(next(iter(o)) if isinstance(o, dict) else o, item))
    return paths


def test_the_real_pipeline_on_four_seeds_reads_only_what_it_makes():
    full = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    keep = {0, 1, 5, 6}
    out = restrict(full, keep, ROOT)
    made, made_before = _outs(out["stages"]), _outs(full["stages"])
    for name, stage in out["stages"].items():
        if "matrix" in stage or "foreach" in stage:
            continue
        for dep in stage.get("deps", []):
            # a dependency that some stage of the full grid makes is made by the restricted one
            assert dep not in made_before or dep in made, f"{name}: {dep} is no longer made"
            assert not re.search(r"seed(2|3|4|7|8|9)\b", dep), f"{name}: {dep}"
        cmd = shlex.split(stage["cmd"])
        if "-y" in cmd:
            passed = json.loads(cmd[cmd.index("-y") + 1])
            for seeds in _int_lists(passed):
                assert set(seeds) <= keep, name
    assert count_stages(out) < count_stages(full) * 0.6


def test_every_list_of_integers_among_the_notebooks_parameters_is_a_list_of_seeds():
    """What restrict relies on: in every notebook, a list of integers is a list of seeds (of one
    of dvc.yaml's seed axes), so that restricting it to the kept seeds is right."""
    full = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    axes = {
        s for st in full.values() if "seed" in st.get("matrix", {}) for s in st["matrix"]["seed"]
    }

    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for value in notebook_parameters(nb).values():
            for seeds in _int_lists(value):
                assert set(seeds) <= axes, f"{nb.name}: {seeds} are not seeds of dvc.yaml"
