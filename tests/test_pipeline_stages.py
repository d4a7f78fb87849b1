"""The whole pipeline at smoke scale under DVC (world, reward models, PPO grid, best-of-n, summary):
every output made, tables tidy, a second run idle, figure stages clear about bad input. Every stage
of dvc.yaml runs, on two seeds of each seed set (study.subgrid): the full grid's 283 stages would
take over an hour on two cores, most of it DVC rewriting dvc.lock."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from study.bon import bon_kl
from study.bon_run import bon_variants
from study.config import load_params
from study.ppo_train import LOG_KEYS
from study.reward_models import load_reward_model
from study.subgrid import seed_overrides, write_restricted
from tests.conftest import ROOT
from tests.test_pipeline_spec import SIDE_PPO, ppo_grid
from tests.test_world_stage import _copy_project

pytestmark = pytest.mark.slow

# the smoke project's seeds: two of the headline's seeds 0-4, two of its replication's 5-9, and
# 0-1 of every side matrix (seeds 0-2 or 0-4)
SEEDS = (0, 1, 5, 6)
MATRIX = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["rm"]["matrix"]
MATRIX = {**MATRIX, "seed": [s for s in MATRIX["seed"] if s in SEEDS]}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    # STUDY_SMOKE_PROJECT names a smoke project of an earlier run to bring up to date (the code
    # copied in again, DVC rerunning what changed) instead of building one from scratch
    reuse = os.environ.get("STUDY_SMOKE_PROJECT")
    root = Path(reuse) if reuse else tmp_path_factory.mktemp("rm_project")
    _copy_project(root)
    write_restricted(root, SEEDS)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["profile"] = "smoke"
    # one torch thread per stage, so that the runner keeps two stages going on a 2-core machine
    # and its concurrent path is under test (not faster than one stage at a time on 2 cores)
    raw["smoke"]["run"] = {"threads": 1}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CI": "true"}

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=5400)

    if not (root / ".dvc").exists():
        assert run("git", "init", "-q").returncode == 0
        assert run("dvc", "init", "-q").returncode == 0
    result = run(sys.executable, "-m", "study.pipeline")  # `make study`: dvc's stages, 2 at a time
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, run


def test_every_reward_model_output_exists(project):
    root, _ = project
    params = load_params(root / "params.yaml", "smoke")
    for family in MATRIX["family"]:
        k = params.reward.arm(family)[1].k  # smoke: reward.k = 3; ensemble-k1 has one member
        for seed in MATRIX["seed"]:
            model = load_reward_model(root / f"artifacts/rm/{family}/seed{seed}")
            assert model.k == (1 if family == "single" else k)
            assert (root / f"reports/02_reward_models_{family}_s{seed}.html").stat().st_size > 0
            training = json.loads(
                (root / f"artifacts/rm/{family}/seed{seed}/training.json").read_text()
            )
            assert training["params"]["reward"]["k"] == k and training["arm"] == family
    for rel in (
        "figures/rm_accuracy.png",
        "figures/rm_calibration.png",
        "figures/rm_cost.png",
        "figures/rm_diversity.png",
        "reports/02c_rm_evaluation.html",
        "reports/02d_rm_cost.html",
        "reports/02b_rm_diversity.html",
    ):
        assert (root / rel).stat().st_size > 0, rel


def test_tables_are_tidy(project):
    root, _ = project
    evals = pd.read_parquet(root / "results/rm/eval.parquet")
    assert {"family", "seed", "k", "unit", "name", "acc_noisy", "acc_clean"} <= set(evals.columns)
    assert set(evals["family"]) == set(MATRIX["family"])
    assert set(evals.loc[evals["unit"] == "aggregate", "name"]) == {"mean", "min", "max", "uwo"}
    assert evals["acc_clean"].between(0, 1).all()
    cost = pd.read_csv(root / "results/rm/cost.csv")
    assert {"k", "family", "train_epoch_s", "score_batch_s", "peak_train_mb", "parameters"} <= set(
        cost.columns
    )
    assert any("multi" in f for f in cost["family"]) and any(
        "ensemble" in f for f in cost["family"]
    )
    single = cost[(cost["family"] == "multihead") & (cost["k"] == 1)]["parameters"].item()
    multi3 = cost[(cost["family"] == "multihead") & (cost["k"] == 3)]["parameters"].item()
    hidden = 32  # smoke sft.n_embd
    assert multi3 - single == 2 * (hidden + 1)
    calib = pd.read_parquet(root / "results/rm/calibration.parquet")
    assert set(calib["method"]) == {"min", "mean", "max"}
    metrics = json.loads((root / "results/rm/metrics.json").read_text())
    assert "ensemble.ece_clean.min" in metrics
    sweep = pd.read_csv(root / "results/rm/diversity_sweep.csv")
    assert set(sweep["family"]) == {"multihead", "ensemble"} and "corr_reward" in sweep


def test_a_second_repro_runs_nothing_and_notebooks_open_read_only(project):
    root, run = project
    status = run("dvc", "status")
    assert "up to date" in status.stdout, status.stdout
    again = run(sys.executable, "-m", "study.pipeline")
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr
    for nb in sorted(
        (root / "notebooks").glob("*.ipynb")
    ):  # every notebook, as JupyterLab opens it
        seeds = json.dumps(seed_overrides(nb, SEEDS))  # the seeds the smoke project has
        opened = run(
            "papermill", str(nb), str(root / f"{nb.stem}.read.ipynb"), "-y", seeds, "--cwd", "."
        )  # fmt: skip
        assert opened.returncode == 0, f"{nb.name}: {opened.stderr[-3000:]}"
    status = run("dvc", "status")
    assert "up to date" in status.stdout, status.stdout


def test_a_new_arm_leaves_every_stage_up_to_date_and_a_changed_one_only_its_own(project):
    """Each reward-model stage declares its own arm (`arms.<name>` of params.resolved.yaml): an arm
    added to params.yaml makes nothing stale but resolve_params; an arm's changed override makes
    its reward models and what reads them stale, and no other arm's."""
    root, run = project
    original = (root / "params.yaml").read_text()
    raw = yaml.safe_load(original)
    arms = load_params(root / "params.yaml", "smoke").reward.arms
    try:
        wide = {"family": "multihead", "overrides": ["head_init_std=0.5"]}
        raw["smoke"]["reward"]["arms"] = {**arms, "multihead-wide": wide}
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        assert run("dvc", "repro", "--single-item", "resolve_params").returncode == 0
        status = run("dvc", "status")
        assert "up to date" in status.stdout, status.stdout
        changed = {**arms["multihead-3ep"], "overrides": ["epochs_multihead=2"]}
        raw["smoke"]["reward"]["arms"] = {**arms, "multihead-3ep": changed}
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        assert run("dvc", "repro", "--single-item", "resolve_params").returncode == 0
        stale = [line.rstrip(":") for line in run("dvc", "status").stdout.splitlines()
                 if line and not line.startswith((" ", "\t"))]  # fmt: skip
        assert set(stale) == {f"rm@multihead-3ep-{s}" for s in SEEDS}, stale
    finally:
        (root / "params.yaml").write_text(original)
        assert run("dvc", "repro", "--single-item", "resolve_params").returncode == 0
    assert "up to date" in run("dvc", "status").stdout


def test_toy_ppo_on_the_smoke_world_resumes_to_the_same_tables(project, tmp_path):
    from study.config import load_params
    from study.ppo_train import train_ppo

    root, _ = project
    params = load_params(root / "params.yaml", "smoke")
    args = (root / "artifacts/world", root / "artifacts/rm")
    whole = train_ppo(params, "multihead_min", 0, *args, tmp_path / "a", progress=False)
    whole_log, whole_eval = whole.log, whole.evals
    assert len(whole_log) == params.ppo.steps
    assert {"variant", "seed", "step", "kl", "proxy", "gold", "kl_k3", "head_std"} <= set(whole_log)
    assert whole_log[["kl", "proxy", "gold", "pg_loss", "vf_loss"]].notna().all().all()
    # killed after 3 steps (the last checkpoint is after step 2), then resumed
    train_ppo(params, "multihead_min", 0, *args, tmp_path / "b", progress=False, stop_after=3)
    resumed = train_ppo(params, "multihead_min", 0, *args, tmp_path / "b", progress=False)
    log, evals = resumed.log, resumed.evals
    timing = [c for c in log.columns if c.endswith("seconds")]
    pd.testing.assert_frame_equal(log.drop(columns=timing), whole_log.drop(columns=timing))
    pd.testing.assert_frame_equal(evals, whole_eval)
    pd.testing.assert_frame_equal(resumed.eval_samples, whole.eval_samples)


def test_every_ppo_run_and_the_summary_are_written(project):
    root, _ = project
    grid = {(v, s) for v, s in ppo_grid(exclude=SIDE_PPO) if s < 5 and s in SEEDS}
    assert len(grid) == 7 * 2  # the headline: seven variants on the smoke project's seeds 0-1
    for variant, seed in grid:
        d = root / f"results/ppo/{variant}/seed{seed}"
        log = pd.read_parquet(d / "log.parquet")
        assert set(LOG_KEYS) <= set(log.columns) and len(log) == 6  # smoke: ppo.steps = 6
        assert np.isfinite(log[["kl", "proxy", "gold", "pg_loss", "vf_loss"]].to_numpy()).all()
        assert (log["variant"] == variant).all() and (log["seed"] == seed).all()
        samples = pd.read_parquet(d / "eval_samples.parquet")
        assert set(samples["step"]) == {0, 2, 4, 6} and samples["response"].map(len).gt(0).any()
        assert (root / f"artifacts/ppo/{variant}/seed{seed}/policy/model.safetensors").exists()
        assert not (root / f"artifacts/checkpoints/ppo/{variant}/seed{seed}/checkpoint.pt").exists()
    for rel in (
        "figures/ppo_gold_vs_kl.png",
        "figures/ppo_gold_summary.png",
        "figures/ppo_head_spread.png",
        "figures/bon_gold_proxy.png",
        "reports/05_ppo_summary.html",
        "reports/04_best_of_n.html",
        "reports/03_optimise_multihead_min_s0.html",
    ):
        assert (root / rel).stat().st_size > 0, rel
    runs = pd.read_csv(root / "results/ppo/runs.csv")
    assert {(v, s) for v, s in zip(runs["variant"], runs["seed"], strict=True)} == grid
    assert runs["head_corr_final"].between(-1, 1).any()  # measured on the policy's own samples
    evals = pd.read_parquet(root / "results/ppo/multihead-authors_min/seed0/evals.parquet")
    assert evals["head_corr"].between(-1, 1).all()
    metrics = json.loads((root / "results/ppo/metrics.json").read_text())
    assert "single.gold_final" in metrics and "multihead_min.overoptimised_runs" in metrics
    assert {"single.gold_at_kl10", "ensemble_min.gold_at_kl10"} <= set(metrics)


def test_best_of_n_curves_cover_every_variant(project):
    root, _ = project
    curves = pd.read_parquet(root / "results/bon/curves.parquet")
    assert set(curves["variant"]) == set(bon_variants(MATRIX["family"]))
    assert sorted(set(curves["n"])) == [1, 2, 4, 8, 16]  # smoke: bon.n_samples = 16
    for n, g in curves.groupby("n"):
        assert np.allclose(g["kl"], bon_kl(n))
    # n = 1 is a uniform draw: every variant has the same expected gold
    assert np.allclose(
        curves.loc[curves["n"] == 1, "gold"], curves.loc[curves["n"] == 1, "gold"].iloc[0]
    )


def test_the_summary_names_a_missing_column(project, tmp_path):
    root, run = project
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(root / "results/ppo", tmp_path / "results/ppo")
    broken = tmp_path / "results/ppo/single/seed0/evals.parquet"
    pd.read_parquet(broken).drop(columns=["proxy"]).to_parquet(broken)
    out = run(
        "papermill", str(root / "notebooks/05_ppo_summary.ipynb"), str(tmp_path / "out.ipynb"),
        "-y", json.dumps(seed_overrides(root / "notebooks/05_ppo_summary.ipynb", SEEDS)),
        "--cwd", str(tmp_path),
    )  # fmt: skip
    assert out.returncode != 0
    assert "missing column(s) proxy" in out.stderr + out.stdout
    assert not (tmp_path / "figures").exists()  # nothing half-written


def test_a_non_finite_reward_stops_ppo_naming_the_step_and_keeps_the_checkpoint(
    project, tmp_path, monkeypatch
):
    import study.ppo_train as ppo_train
    from study.config import load_params

    root, _ = project
    params = load_params(root / "params.yaml", "smoke")
    real = ppo_train.variant_reward_fn
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        fn, method = real(*args, **kwargs)

        def reward(batch):
            calls["n"] += 1
            r = fn(batch)
            # calls: 1 normaliser, 2 eval at 0, 3-4 steps 0-1, 5 eval at 2, 6-7 steps 2-3,
            # 8 eval at 4, 9 step 4
            return r * float("nan") if calls["n"] >= 9 else r

        return reward, method

    monkeypatch.setattr(ppo_train, "variant_reward_fn", poisoned)
    with pytest.raises(FloatingPointError, match=r"PPO step 4: .*not finite"):
        ppo_train.train_ppo(
            params, "single", 0, root / "artifacts/world", root / "artifacts/rm", tmp_path,
            progress=False,
        )  # fmt: skip
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)  # tensors and plain data
    rows = pd.read_parquet(io.BytesIO(state["tables"]["rows"].numpy().tobytes()))
    assert state["step"] == 3 and len(rows) == 4  # the last good checkpoint (after step 3)


def test_every_declared_figure_and_report_is_produced(project):
    from dvc.repo import Repo

    root, run = project
    with Repo(str(root)) as repo:
        outs = [Path(o.fs_path).relative_to(root) for s in repo.index.stages for o in s.outs]
    shown = [o for o in outs if o.parts[0] in ("figures", "reports")]
    assert len([o for o in shown if o.suffix == ".png"]) >= 13  # (a)-(i) and the stages' own
    assert Path("reports/index.html") in shown
    plots = run("dvc", "plots", "show", "-o", "plots_page")
    assert plots.returncode == 0, plots.stderr[-2000:]
    page = (root / "plots_page/index.html").read_text()
    assert all(png.name in page for png in (root / "figures").glob("*.png"))
    for rel in shown:
        assert (root / rel).stat().st_size > 0, f"{rel} is declared but was not produced"


def test_the_heads_sweep_and_the_claims_table(project):
    root, _ = project
    sweep = pd.read_csv(root / "results/heads/summary.csv")
    ks = sweep.groupby("family")["k"].unique().map(sorted).to_dict()
    assert ks == {"multihead": [1, 2, 3, 8, 10], "ensemble": [1, 3]}  # smoke: reward.k = 3
    assert sweep["acc_clean_min"].between(0, 1).all() and set(sweep["seed"]) == {0, 1}
    info = json.loads((root / "results/rm/multihead-authors/seed0/train.json").read_text())
    assert info["arm"] == "multihead-authors" and info["epochs"] == 3
    assert (
        0
        < info["head_moved"]
        < json.loads((root / "results/rm/multihead/seed0/train.json").read_text())["head_moved"]
    )  # heads at a 100x smaller learning rate stay nearer their start
    claims = pd.read_csv(root / "results/report/claims.csv")
    assert claims["verdict"].str.split(" \\(").str[0].isin(
        ["supported", "not supported", "inconclusive"]
    ).all()  # fmt: skip
    # a verdict row for every arm of the headline, against the single RM and the ensemble
    for arm in ("ensemble_min", "multihead_min", "multihead-3ep_min", "multihead-authors_min"):
        assert claims["measured"].str.startswith(f"{arm} ").any(), arm
        if arm != "ensemble_min":
            assert (claims["measured"].str.startswith(f"{arm} ")
                    & claims["measured"].str.contains(" vs ensemble_min ")).sum() >= 3, arm  # fmt: skip
    assert claims["design"].fillna("").str.startswith("paired over 2 seeds").any()
    agg = pd.read_csv(root / "results/aggregations/claims.csv")  # min against mean and UWO
    # paired over the seeds that reached the KL level (none at smoke scale)
    assert len(agg) == 4 and agg["design"].str.startswith("paired over").all()
    side = pd.read_csv(root / "results/replicate/claims.csv")  # seeds 0-1 against 5-6
    assert {"verdict_A", "verdict_B", "agree"} <= set(side.columns) and len(side) >= 10
    index = (root / "reports/index.html").read_text()
    assert "The claims" in index and 'href="05_ppo_summary.html"' in index
    assert "data:image/png;base64" in index  # the figures travel inside the page


@pytest.mark.parametrize(
    ("notebook", "table", "column"),
    [
        ("07_heads", "results/ppo/multihead-k2_min/seed0/evals.parquet", "kl"),
        ("08_report", "results/ppo/runs.csv", "gold_final"),
    ],
)
def test_the_figure_stages_name_a_missing_column(project, tmp_path, notebook, table, column):
    root, run = project
    for rel in ("params.yaml", "artifacts/world", "results", "figures"):
        src, dst = root / rel, tmp_path / rel
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy(src, dst)
    broken = tmp_path / table
    if broken.suffix == ".csv":
        pd.read_csv(broken).drop(columns=[column]).to_csv(broken, index=False)
    else:
        pd.read_parquet(broken).drop(columns=[column]).to_parquet(broken)
    before = {p: p.stat().st_mtime for p in (tmp_path / "figures").iterdir()}
    out = run(
        "papermill", str(root / f"notebooks/{notebook}.ipynb"), str(tmp_path / "out.ipynb"),
        "-y", json.dumps(seed_overrides(root / f"notebooks/{notebook}.ipynb", SEEDS)),
        "-p", "write", "True", "--cwd", str(tmp_path),
    )  # fmt: skip
    assert out.returncode != 0
    assert f"missing column(s) {column}" in out.stderr + out.stdout
    after = {p: p.stat().st_mtime for p in (tmp_path / "figures").iterdir()}
    assert after == before  # nothing written


def test_the_smoke_report_opens_in_a_browser_and_every_link_resolves(project):
    from tests.test_report_browser import check_report

    root, _ = project
    claims = pd.read_csv(root / "results/report/claims.csv")
    check_report(root / "reports/index.html", claims, links_exist=True)
