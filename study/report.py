"""Small readings for the report page (`notebooks/08_report.ipynb`): which evaluations to show as
examples, the summary of an RLOO run beside PPO, the headline metrics, and the executed notebook
of every stage the pipeline declares."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from study.analysis import require_columns
from study.claims import matched_level
from study.render import page_of


def example_steps(evals: pd.DataFrame, kl_levels: Sequence[float]) -> list[int]:
    """Steps of the evaluations nearest KL 0 and each level the run reached, then the last step;
    each once, in order of step."""
    require_columns(evals, ("step", "kl"), "PPO evaluations")
    targets = [0.0, *[x for x in kl_levels if x <= evals["kl"].max()]]
    steps = {int(evals.loc[(evals["kl"] - t).abs().idxmin(), "step"]) for t in targets}
    steps.add(int(evals["step"].max()))
    return sorted(steps)


def headline_metrics(
    runs: pd.DataFrame, bon: pd.DataFrame, claims: pd.DataFrame, kl_levels: Sequence[float]
) -> dict:
    """The headline numbers `dvc metrics show` lists (about fifteen): the largest KL level every
    seed of every PPO variant reached and each variant's mean gold there; each PPO variant's mean
    best-of-n gold at its largest n; and how many claims got each verdict."""
    require_columns(runs, ("variant", "seed"), "PPO runs")
    require_columns(bon, ("variant", "seed", "n", "gold"), "best-of-n curves")
    level = matched_level(runs, kl_levels)
    out: dict = {"matched_kl": level}
    if level is not None:
        col = f"gold_at_kl{level:g}"
        out["ppo_gold_at_matched_kl"] = runs.groupby("variant", sort=False)[col].mean().to_dict()
    bon = bon[bon["variant"].isin(runs["variant"].unique())]
    top = bon[bon["n"] == bon.groupby("variant")["n"].transform("max")]
    out["bon_gold_at_max_n"] = top.groupby("variant", sort=False)["gold"].mean().to_dict()
    verdicts = claims["verdict"].str.split(" (", regex=False).str[0].value_counts()
    out["verdicts"] = {k: int(v) for k, v in verdicts.items()}
    return out


def executed_pages(root: Path | str = ".") -> pd.DataFrame:
    """The HTML page of every executed notebook that a stage of `root`'s dvc.yaml writes under
    reports/ (DVC expands `foreach` and `matrix`; `study.render` renders the pages), in the order
    of dvc.yaml: columns `stage` (the stage's name before `@`), `item` (the part after it, '' for
    a plain stage) and `page` (the file name under reports/). Read from the pipeline's
    declaration, not from the disk, so the list is the same wherever the report is rendered. (DVC
    refuses dvc.yaml as a dependency: a stage added to it joins the list when the report next
    runs.)"""
    from dvc.dvcfile import ProjectFile
    from dvc.repo import Repo

    # dvc.yaml expanded by DVC's own resolver, without dvc.lock: a stage running beside this one
    # may be rewriting the lock
    repo = Repo(str(root))
    try:
        path = repo.fs.join(repo.root_dir, "dvc.yaml")
        stages = ProjectFile(repo, path).resolver.resolve()["stages"]
    finally:
        repo.close()
    rows = []
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            page = Path(next(iter(out)) if isinstance(out, dict) else out)
            if page.parts[0] == "reports" and page.suffix == ".ipynb" and name != "report":
                rows.append({"stage": name.split("@")[0], "item": name.partition("@")[2],
                             "page": page_of(page.name)})  # fmt: skip
    return pd.DataFrame(rows, columns=["stage", "item", "page"])
