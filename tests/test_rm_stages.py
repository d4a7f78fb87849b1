"""The reward-model stages at smoke scale under DVC: every output made, tables tidy, reruns idle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study.reward_models import load_reward_model
from tests.conftest import ROOT
from tests.test_world_stage import _copy_project

pytestmark = pytest.mark.slow

MATRIX = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["rm"]["matrix"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("rm_project")
    _copy_project(root)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["profile"] = "smoke"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CI": "true"}

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=1200)

    assert run("git", "init", "-q").returncode == 0
    assert run("dvc", "init", "-q").returncode == 0
    result = run("dvc", "repro", "rm_eval", "rm_cost", "rm_diversity")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, run


def test_every_reward_model_output_exists(project):
    root, _ = project
    for family in MATRIX["family"]:
        for seed in MATRIX["seed"]:
            model = load_reward_model(root / f"artifacts/rm/{family}/seed{seed}")
            assert model.k == (1 if family == "single" else 3)  # smoke: reward.k = 3
            assert (root / f"reports/02_reward_models_{family}_s{seed}.html").stat().st_size > 0
            training = json.loads(
                (root / f"artifacts/rm/{family}/seed{seed}/training.json").read_text()
            )
            assert training["params"]["reward"]["k"] == 3 and training["family"] == family
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
    status = run("dvc", "status", "rm_eval", "rm_cost", "rm_diversity")
    assert "up to date" in status.stdout, status.stdout
    for nb in ("02_reward_models", "02c_rm_evaluation"):
        opened = run(
            "papermill", f"notebooks/{nb}.ipynb", str(root / f"{nb}.read.ipynb"), "--cwd", "."
        )
        assert opened.returncode == 0, opened.stderr[-3000:]
    status = run("dvc", "status", "rm_eval", "rm_cost", "rm_diversity")
    assert "up to date" in status.stdout, status.stdout


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
