"""The world stage at smoke scale: as a function (twice, for determinism) and as a DVC stage."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from study.demo import copy_code
from study.preferences import load_preferences
from study.world.build import build_world, load_summary
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory, smoke_params):
    root = tmp_path_factory.mktemp("worlds")
    for name in ("a", "b"):
        build_world(smoke_params, root / name, progress=False)
    return root / "a", root / "b"


def test_world_artifacts_exist_and_are_sane(two_builds, smoke_params):
    world, _ = two_builds
    for rel in (
        "tokenizer/tokenizer.json",
        "policy/config.json",
        "policy/model.safetensors",
        "corpus.parquet",
        "prompts.parquet",
        "preferences/train.parquet",
        "preferences/val.parquet",
        "sft_samples.parquet",
    ):
        assert (world / rel).exists(), rel
    s = load_summary(world)
    assert s["n_pairs"] == smoke_params.preferences.n_pairs
    assert s["n_val_pairs"] == round(smoke_params.preferences.val_fraction * s["n_pairs"])
    train = load_preferences(world, "train")
    assert train["flipped"].dtype == bool and {
        "gold_chosen",
        "gold_rejected",
        "gold_margin",
    } <= set(train.columns)
    assert (train["chosen"].str.len() > 0).all()
    prompts = pd.read_parquet(world / "prompts.parquet")
    assert (prompts["split"] == "eval").sum() == smoke_params.world.n_eval_prompts
    assert not any(world.parent.glob(".*tmp"))  # nothing half-written left beside it


def test_same_seed_same_world(two_builds):
    a, b = two_builds
    for split in ("train", "val"):
        pd.testing.assert_frame_equal(load_preferences(a, split), load_preferences(b, split))
    wa, wb = (
        load_file(a / "policy" / "model.safetensors"),
        load_file(b / "policy" / "model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    pd.testing.assert_frame_equal(
        pd.read_parquet(a / "sft_samples.parquet"), pd.read_parquet(b / "sft_samples.parquet")
    )


def test_same_seed_same_bytes_so_a_rebuilt_world_leaves_later_stages_up_to_date(two_builds):
    a, b = two_builds
    files = sorted(f.relative_to(a) for f in a.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(b) for f in b.rglob("*") if f.is_file())
    differ = [str(f) for f in files if (a / f).read_bytes() != (b / f).read_bytes()]
    assert not differ, f"rebuilt with the same seed, these files differ: {differ}"


def _copy_project(dst: Path) -> None:
    copy_code(ROOT, dst)


def test_world_stage_runs_under_dvc_at_smoke_scale(tmp_path):
    _copy_project(tmp_path)
    raw = yaml.safe_load((tmp_path / "params.yaml").read_text())
    raw["profile"] = "smoke"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CI": "true"}

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )

    assert run("git", "init", "-q").returncode == 0
    assert run("dvc", "init", "-q").returncode == 0
    result = run("dvc", "repro", "world")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (tmp_path / "reports/01_world.html").exists()  # a page is no stage's output
    rendered = run(sys.executable, "-m", "study.render")  # after a plain `dvc repro`
    assert rendered.returncode == 0 and "rendered 1 page(s)" in rendered.stdout, rendered.stderr
    for rel in (
        "figures/world_gold_components.png",
        "figures/world_sft_loss.png",
        "reports/01_world.html",
        "results/world/sample_responses.csv",
        "artifacts/world/summary.json",
    ):
        assert (tmp_path / rel).stat().st_size > 0, rel
    executed = json.loads((tmp_path / "reports/01_world.ipynb").read_text())
    images = [
        o
        for c in executed["cells"]
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 2  # the report shows its figures, not only files beside it
    metrics = json.loads((tmp_path / "results/world/metrics.json").read_text())
    assert metrics["profile"] == "smoke" and 0 <= metrics["sft_eos_share"] <= 1
    status = run("dvc", "status", "world")
    assert "up to date" in status.stdout, status.stdout
    # a reader opens the notebook with its default parameters: it reads, and writes nothing
    opened = run(
        "papermill", "notebooks/01_world.ipynb", str(tmp_path / "read.ipynb"), "--cwd", "."
    )
    assert opened.returncode == 0, opened.stderr[-3000:]
    status = run("dvc", "status", "world")
    assert "up to date" in status.stdout, status.stdout
