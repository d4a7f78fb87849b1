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
        stage = stage.get("do", stage)  # a foreach stage's template
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
               "family", "families", "seed", "seeds", "variant", "variants", "rm_root",
               "tag", "tags", "override", "example_variants", "example_seed"}  # fmt: skip
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        extra = set(notebook_parameters(nb.name)) - allowed
        assert not extra, f"{nb.name}: parameters cell holds {sorted(extra)}"


def ppo_grid() -> set[tuple[str, int]]:
    """(variant, seed) of every PPO stage the ppo_* matrices generate."""
    grid = set()
    for name, stage in DVC.items():
        if not name.startswith("ppo_") or "matrix" not in stage:
            continue
        family = name.removeprefix("ppo_")
        for seed in stage["matrix"]["seed"]:
            for agg in stage["matrix"].get("agg", [None]):
                grid.add((f"{family}_{agg}" if agg else family, seed))
    return grid


def test_the_ppo_summary_reads_exactly_the_ppo_grid():
    params = notebook_parameters("05_ppo_summary.ipynb")
    expected = {(v, s) for v in params["variants"] for s in params["seeds"]}
    assert expected == ppo_grid()
    assert {f"results/ppo/{v}/seed{s}" for v, s in expected} <= set(DVC["ppo_summary"]["deps"])


def test_every_ppo_stage_reads_the_reward_models_of_its_own_family_and_seed():
    for name, stage in DVC.items():
        if not name.startswith("ppo_") or "matrix" not in stage:
            continue
        rm_deps = [d for d in stage["deps"] if d.startswith("artifacts/rm/")]
        family = name.removeprefix("ppo_")
        assert rm_deps == (
            [] if family == "gold" else [f"artifacts/rm/{family}/seed${{item.seed}}"]
        )


def test_best_of_n_reads_exactly_the_reward_model_matrix():
    matrix = DVC["rm"]["matrix"]
    params = notebook_parameters("04_best_of_n.ipynb")
    assert params["families"] == matrix["family"] and params["seeds"] == matrix["seed"]
    expected = {f"artifacts/rm/{f}/seed{s}" for f in matrix["family"] for s in matrix["seed"]}
    assert expected <= set(DVC["bon"]["deps"])


def test_the_ablation_stages_and_their_summary_agree():
    ablations = DVC["rm_ablation"]["foreach"]
    assert DVC["ppo_ablation"]["foreach"] == ablations  # one list, two stages
    params = notebook_parameters("07_ablations.ipynb")
    assert params["tags"] == list(ablations)
    assert {item["seed"] for item in ablations.values()} == {params["seed"]}
    for item in ablations.values():
        section, _, rest = item["override"].partition(".")
        assert section == "reward" and "=" in rest  # one change to the reward model
        assert item["variant"] == f"{item['family']}_min"  # PPO against the model's minimum
    assert "artifacts/rm_ablation/${key}" in DVC["ppo_ablation"]["do"]["deps"]
    assert {"results/rm_ablation", "results/ppo_ablation"} <= set(DVC["ablations"]["deps"])


def test_the_report_depends_on_every_figure_it_shows():
    shown = re.findall(r"figures/\w+\.png", (ROOT / "notebooks/08_report.ipynb").read_text())
    assert len(shown) >= 8
    for figure in shown:
        if figure in DVC["report"]["outs"]:
            continue
        assert figure in DVC["report"]["deps"], f"report shows {figure} but does not depend on it"
