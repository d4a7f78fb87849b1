"""dvc.yaml agrees with the notebooks it runs (static checks; no stage runs here)."""

from __future__ import annotations

import ast
import json
import re

import yaml

from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def notebook_parameters(name: str) -> dict:
    """The literal defaults of a notebook's papermill `parameters` cell."""
    nb = json.loads((ROOT / "notebooks" / name).read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    tree = ast.parse("".join(cell["source"]))
    return {
        node.targets[0].id: ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
    }


def test_every_stage_runs_a_notebook_it_declares():
    for name, stage in DVC.items():
        notebooks = re.findall(r"papermill (notebooks/\S+\.ipynb)", stage["cmd"])
        assert notebooks, f"stage {name} runs no notebook"
        assert notebooks[0] in stage["deps"], f"stage {name} does not declare {notebooks[0]}"


def test_the_evaluation_reads_exactly_the_reward_model_matrix():
    matrix = DVC["rm"]["matrix"]
    params = notebook_parameters("02c_rm_evaluation.ipynb")
    assert params["families"] == matrix["family"]
    assert params["seeds"] == matrix["seed"]
    expected = {f"results/rm/{f}/seed{s}" for f in matrix["family"] for s in matrix["seed"]}
    assert expected <= set(DVC["rm_eval"]["deps"])


def test_notebook_parameter_cells_hold_selectors_only():
    # hyperparameters live in params.yaml; a parameters cell holds paths, selectors and switches
    allowed = {"profile", "params_path", "world_dir", "build", "train", "run", "write",
               "family", "families", "seed", "seeds", "variant", "variants", "rm_root"}  # fmt: skip
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        extra = set(notebook_parameters(nb.name)) - allowed
        assert not extra, f"{nb.name}: parameters cell holds {sorted(extra)}"
