"""dvc.yaml agrees with the notebooks it runs (static checks; no stage runs here)."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import yaml

from study import subgrid
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def notebook_parameters(name: str) -> dict:
    """The literal defaults of notebooks/`name`'s papermill `parameters` cell."""
    cells = json.loads((ROOT / "notebooks" / name).read_text())["cells"]
    tagged = any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells)
    assert tagged, f"{name} has no papermill parameters cell"
    return subgrid.notebook_parameters(ROOT / "notebooks" / name)


# the one stage that runs no notebook: it resolves the active profile every other stage reads
RESOLVE = "resolve_params"


def test_every_stage_runs_a_notebook_it_declares():
    for name, stage in DVC.items():
        if name == RESOLVE:
            continue
        stage = stage.get("do", stage)  # a foreach stage's template
        notebooks = re.findall(r"papermill (notebooks/\S+\.ipynb)", stage["cmd"])
        assert notebooks, f"stage {name} runs no notebook"
        assert notebooks[0] in stage["deps"], f"stage {name} does not declare {notebooks[0]}"


HEADLINE_SEEDS = [0, 1, 2, 3, 4]  # seeds 5-9 are the replication's (stage replicate)


def test_the_evaluation_reads_exactly_the_headline_reward_models():
    matrix = DVC["rm"]["matrix"]
    params = notebook_parameters("02c_rm_evaluation.ipynb")
    assert params["families"] == matrix["family"]
    assert params["seeds"] == HEADLINE_SEEDS and matrix["seed"] == [*HEADLINE_SEEDS, 5, 6, 7, 8, 9]
    expected = {f"results/rm/{f}/seed{s}" for f in matrix["family"] for s in HEADLINE_SEEDS}
    assert expected == {d for d in DVC["rm_eval"]["deps"] if d.startswith("results/rm/")}


def test_notebook_parameter_cells_hold_selectors_only():
    # hyperparameters live in params.yaml; a parameters cell holds paths, selectors and switches
    allowed = {"profile", "params_path", "world_dir", "build", "train", "run", "write",
               "family", "families", "seed", "seeds", "variant", "variants", "rm_root",
               "tag", "tags", "override", "example_variants", "example_seed", "arms",
               "baselines"}  # fmt: skip
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        extra = set(notebook_parameters(nb.name)) - allowed
        assert not extra, f"{nb.name}: parameters cell holds {sorted(extra)}"


def matrix_items(matrix: dict) -> list[dict]:
    """Every item of a DVC matrix (the cartesian product of its lists)."""
    items = [{}]
    for key, values in matrix.items():
        items = [{**item, key: v} for item in items for v in values]
    return items


def substitute(template: str, item: dict) -> str:
    return re.sub(r"\$\{item\.(\w+)\}", lambda m: str(item[m.group(1)]), template)


# the PPO matrices beside the headline: the K sweep (heads), the mean and UWO (aggregations), the
# cheap-uncertainty arms and label noise
SIDE_PPO = ("ppo_k", "ppo_agg", "ppo_cheap", "ppo_noise")


def ppo_grid(exclude: tuple[str, ...] = ()) -> set[tuple[str, int]]:
    """(variant, seed) of every PPO stage the ppo_* matrices generate, read off their commands."""
    grid = set()
    for name, stage in DVC.items():
        if not name.startswith("ppo_") or "matrix" not in stage or name in exclude:
            continue
        template = re.search(r"-p variant (\S+)", stage["cmd"]).group(1)
        for item in matrix_items(stage["matrix"]):
            grid.add((substitute(template, item), item["seed"]))
    return grid


def test_the_ppo_summary_reads_exactly_the_ppo_grid():
    params = notebook_parameters("05_ppo_summary.ipynb")
    expected = {(v, s) for v, seeds in params["variants"].items() for s in seeds}
    # the side matrices and seeds 5-9 (replicate) have theirs
    assert expected == {(v, s) for v, s in ppo_grid(exclude=SIDE_PPO) if s < 5}
    assert {f"results/ppo/{v}/seed{s}" for v, s in expected} <= set(DVC["ppo_summary"]["deps"])


def test_every_ppo_stage_reads_the_reward_models_of_its_own_arm_and_seed():
    for name, stage in DVC.items():
        if not name.startswith("ppo_") or "matrix" not in stage:
            continue
        rm_deps = [d for d in stage["deps"] if d.startswith("artifacts/rm/")]
        template = re.search(r"-p variant (\S+)", stage["cmd"]).group(1)
        arm = template.partition("_")[0]
        assert rm_deps == ([] if arm == "gold" else [f"artifacts/rm/{arm}/seed${{item.seed}}"])
        for item in matrix_items(stage["matrix"]):  # every arm a PPO stage reads is trained
            if arm != "gold":
                rm = substitute(arm, item)
                trained = [it for st in ("rm", "rm_k", "rm_cheap", "rm_noise")
                           for it in matrix_items(DVC[st]["matrix"])]  # fmt: skip
                assert {"family": rm, "seed": item["seed"]} in trained, (name, item)


def test_best_of_n_reads_exactly_the_headline_reward_models():
    matrix = DVC["rm"]["matrix"]
    params = notebook_parameters("04_best_of_n.ipynb")
    assert params["families"] == matrix["family"] and params["seeds"] == HEADLINE_SEEDS
    expected = {f"artifacts/rm/{f}/seed{s}" for f in matrix["family"] for s in HEADLINE_SEEDS}
    assert expected == {d for d in DVC["bon"]["deps"] if d.startswith("artifacts/rm/")}


def test_the_replication_reads_both_seed_sets_of_every_headline_arm():
    params = notebook_parameters("09_replicate.ipynb")
    assert params["seeds"]["A"] == HEADLINE_SEEDS and not set(params["seeds"]["A"]) & set(
        params["seeds"]["B"]
    )
    grid = ppo_grid()
    deps = set(DVC["replicate"]["deps"])
    for v in params["variants"]:
        for s in params["seeds"]["A"] + params["seeds"]["B"]:
            assert (v, s) in grid and f"results/ppo/{v}/seed{s}" in deps, (v, s)


def test_the_heads_sweep_reads_exactly_what_rm_and_rm_k_train():
    params = notebook_parameters("07_heads.ipynb")
    trained = {
        (i["family"], i["seed"]) for n in ("rm", "rm_k") for i in matrix_items(DVC[n]["matrix"])
    }
    deps = set(DVC["heads"]["deps"])
    for arm in params["families"]:
        variant = "single" if arm == "single" else f"{arm}_min"
        for seed in params["seeds"]:
            assert (arm, seed) in trained, (arm, seed)
            assert (variant, seed) in ppo_grid(), (variant, seed)
            assert {f"results/rm/{arm}/seed{seed}", f"results/ppo/{variant}/seed{seed}"} <= deps
    assert set(DVC["rm_k"]["matrix"]["family"]) <= set(params["families"])


def test_the_diversity_map_reads_every_clean_label_minimum_with_heads_and_the_single_rm():
    """Every multi-head or ensemble arm PPO optimised against its minimum on the world's labels
    (the label-noise arms and K = 1 left out), on every seed it has, is a point of the map."""
    params = notebook_parameters("12_diversity_map.ipynb")
    expected = {(v.removesuffix("_min"), s) for v, s in ppo_grid()
                if v.endswith("_min") and v.partition("-")[0].partition("_")[0] != "single"
                and "-noise" not in v and v != "ensemble-k1_min"}  # fmt: skip
    assert expected == {(a, s) for a, seeds in params["arms"].items() for s in seeds}
    deps = set(DVC["diversity_map"]["deps"])
    for a, s in expected:
        assert f"results/ppo/{a}_min/seed{s}" in deps and f"results/ppo/single/seed{s}" in deps


def test_the_report_depends_on_every_figure_it_shows():
    shown = re.findall(r"figures/\w+\.png", (ROOT / "notebooks/08_report.ipynb").read_text())
    assert len(shown) >= 6
    outs = [o if isinstance(o, str) else next(iter(o)) for o in DVC["report"]["outs"]]
    for figure in shown:
        if figure in outs:
            continue
        assert figure in DVC["report"]["deps"], f"report shows {figure} but does not depend on it"


def _study_imports(source: str, package: str = "study") -> set[str]:
    """The `study` modules a piece of Python imports (absolute and relative), dotted."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "study"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1],
                                 *([base] if base else [])])  # fmt: skip
            if base.split(".")[0] == "study":
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}  # `from study import x`
    return {m for m in found if _module_file(m) is not None}


def _module_file(module: str):
    path = ROOT / module.replace(".", "/")
    if path.with_suffix(".py").exists():
        return path.with_suffix(".py")
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return None


def _runs_nothing(source: str) -> bool:
    """A package marker whose import computes nothing: only a docstring, `__future__` / `typing`
    imports, `__all__` and function definitions (a module-level `__getattr__` that imports on
    first use loads nothing at import)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.ImportFrom) and node.module in ("__future__", "typing"):
            continue
        if isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == [
            "__all__"
        ]:
            continue
        if isinstance(node, ast.FunctionDef):
            continue
        return False
    return True


def _closure(modules: set[str]) -> set[str]:
    """Every `study` module that importing `modules` loads (packages' __init__ included)."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        f = _module_file(m)
        package = m if f.name == "__init__.py" else m.rpartition(".")[0]
        if f.name == "__init__.py" and _runs_nothing(f.read_text()):
            continue  # its imports happen on first use of a name, not at import
        todo.extend(_study_imports(f.read_text(), package) - seen)
        parts = m.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return seen


def test_a_package_marker_runs_nothing_only_without_top_level_code():
    assert _runs_nothing('"""doc"""\nfrom __future__ import annotations\n__all__ = ["f"]\n')
    assert _runs_nothing("def __getattr__(name):\n    from study import hf\n    return hf\n")
    assert not _runs_nothing("from study import hf\n")
    assert not _runs_nothing("import torch\n")
    assert not _runs_nothing("X = compute()\n")
    assert _runs_nothing((ROOT / "study" / "__init__.py").read_text())


def test_every_stage_declares_every_study_module_its_notebook_loads():
    """A change to any module a stage runs (directly or through another module) makes it stale,
    and a change to one it never loads does not (study/ppo.py: the PPO stages only)."""
    missing, extra = [], []
    for name, stage in DVC.items():
        if name == RESOLVE:
            continue
        stage = stage.get("do", stage)
        notebook = re.findall(r"papermill (notebooks/\S+\.ipynb)", stage["cmd"])[0]
        nb = json.loads((ROOT / notebook).read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        deps = [d.rstrip("/") for d in stage["deps"]]
        loaded: set[str] = set()
        for module in sorted(_closure(_study_imports(code))):
            f = _module_file(module)
            rel = str(f.relative_to(ROOT))
            if f.name == "__init__.py" and _runs_nothing(f.read_text()):
                continue  # a package marker that computes nothing at import
            if not any(rel == d or rel.startswith(d + "/") for d in deps):
                missing.append(f"{name}: {rel}")
            loaded.add(rel)
        # and nothing else: a change to a module a stage never loads must not make it stale
        for d in deps:
            if d.startswith("study") and not any(f == d or f.startswith(d + "/") for f in loaded):
                extra.append(f"{name}: {d}")
    assert not missing, "stages load study modules they do not declare:\n" + "\n".join(missing)
    assert not extra, "stages declare study modules they never load:\n" + "\n".join(extra)


def test_the_aggregations_read_every_ppo_agg_run_and_the_minimum_on_its_seeds():
    params = notebook_parameters("05b_aggregations.ipynb")
    grid = ppo_grid()
    deps = set(DVC["aggregations"]["deps"])
    agg = {(v, s) for v, s in ppo_grid(exclude=tuple(n for n in DVC if n != "ppo_agg"))}
    expected = {(f"{f}_{m}", s) for f in params["families"] for m in ("min", "mean", "uwo")
                for s in params["seeds"]}  # fmt: skip
    assert agg == {(v, s) for v, s in expected if not v.endswith("_min")}
    for v, s in expected:
        assert (v, s) in grid and f"results/ppo/{v}/seed{s}" in deps, (v, s)


def test_no_published_output_is_git_ignored():
    """Every out with `cache: false` is published in git: no .gitignore (DVC writes one for cached
    outs, and keeps stale lines when an out stops being cached) may hide it."""
    import subprocess

    from dvc.repo import Repo

    repo = Repo(str(ROOT))
    try:
        published = sorted(
            {
                str(Path(o.fs_path).relative_to(ROOT))
                for s in repo.index.stages
                for o in s.outs
                if not o.use_cache
            }
        )
    finally:
        repo.close()
    assert "results/report/claims.csv" in published
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-v", *published],
        cwd=ROOT, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert not ignored, "published outputs that git ignores:\n" + ignored


def test_the_table_plots_read_committed_columns_and_metrics_are_the_headline_only():
    import pandas as pd

    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    table_plots = [next(iter(p.values())) for p in spec["plots"] if isinstance(p, dict)]
    assert table_plots, "no plot drawn by DVC from a table"
    for plot in table_plots:
        for path, column in plot["y"].items():
            cols = pd.read_csv(ROOT / path, nrows=1).columns  # committed: a fresh clone plots it
            assert {plot["x"], column} <= set(cols), (path, plot["x"], column)
    metrics = [m for s in spec["stages"].values() for m in s.get("metrics", [])]
    assert [next(iter(m)) if isinstance(m, dict) else m for m in metrics] == [
        "results/report/metrics.json"
    ]


def test_every_stage_reads_its_params_from_the_resolved_active_profile():
    """No stage declares a profile block of params.yaml (an edit to an inactive profile would make
    it stale): each names the sections or keys it reads in the resolved file, and the resolved
    file is what `resolve_params` writes from params.yaml now."""
    import yaml

    from study.config import RESOLVED, load_params

    assert DVC[RESOLVE]["deps"] == ["params.yaml", "study/config"]
    for name, stage in DVC.items():
        stage = stage.get("do", stage)
        for entry in stage.get("params", []):
            assert isinstance(entry, dict) and list(entry) == [RESOLVED], (name, entry)
            assert "profile" in entry[RESOLVED], name
    resolved = yaml.safe_load((ROOT / RESOLVED).read_text())
    p = load_params(ROOT / "params.yaml")
    arms = {}
    for name in ("single", "multihead", "ensemble", *p.reward.arms):
        family, cfg = p.reward.arm(name)
        arms[name] = {"family": family, **{k: v for k, v in dataclasses.asdict(cfg).items()
                                           if k != "arms"}}  # fmt: skip
    expected = {**p.to_dict(), "arms": arms, "placement": dataclasses.asdict(p.placement)}
    assert resolved == yaml.safe_load(yaml.safe_dump(expected))


def test_a_reward_model_stage_declares_its_own_arm_and_no_stage_the_whole_reward_section():
    """Adding or changing one arm of reward.arms leaves every other arm's stages up to date: a
    reward-model stage declares its arm's resolved section, and no stage declares `reward` whole
    (which holds every arm)."""
    from study.config import RESOLVED

    for name, stage in DVC.items():
        stage = stage.get("do", stage)
        keys = [k for e in stage.get("params", []) for k in e.get(RESOLVED, [])]
        assert "reward" not in keys, name
        if "notebooks/02_reward_models.ipynb" in stage["cmd"]:
            assert "arms.${item.family}" in keys, name
        if name in ("rm_diversity", "rm_cost"):  # the two base sections they train on
            assert {"arms.multihead", "arms.ensemble"} <= set(keys), name


def test_an_edit_to_an_inactive_profile_leaves_the_resolved_params_byte_identical(tmp_path):
    """What every stage but resolve_params reads is params.resolved.yaml: an edit to the smoke or
    paper block, with the default profile active, rewrites it to the same bytes, so DVC finds
    the default pipeline up to date after resolve_params reruns."""
    import yaml

    from study.config import write_resolved

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "default"
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    raw["smoke"]["ppo"]["steps"] = raw["smoke"]["ppo"]["steps"] + 1
    raw["paper"]["sampling"]["batch_size"] = 7
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    def resolved(name: str) -> str:  # the file less its header, which names the source file
        out = write_resolved(tmp_path / f"{name}.yaml", tmp_path / f"{name}.resolved.yaml")
        return "".join(x for x in out.read_text().splitlines(True) if not x.startswith("#"))

    assert resolved("a") == resolved("b")
    raw["default"] = {**(raw.get("default") or {}), "bon": {"n_samples": 128}}  # the active one
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert resolved("c") != resolved("a")
