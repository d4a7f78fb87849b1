"""`make demo`: the reduced profile it runs, the project copy it runs in, what it reports."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from study.config import load_params
from study.demo import ARMS, DEMO, copy_project, demo_params, figure, table
from tests.conftest import ROOT


def test_the_demo_profile_is_the_default_reduced_and_valid(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = demo_params(raw)
    assert out["profile"] == "default" and raw["profile"] == "default"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(out))
    p, base = load_params(tmp_path / "params.yaml"), load_params(ROOT / "params.yaml")
    assert p.ppo.steps == DEMO["ppo"]["steps"] < base.ppo.steps
    assert p.sft.steps == DEMO["sft"]["steps"] < base.sft.steps
    assert p.reward.k == 3 and p.ppo.kl_coef == base.ppo.kl_coef  # the rest is the study's
    assert raw == yaml.safe_load((ROOT / "params.yaml").read_text())  # the input is not modified
    with pytest.raises(KeyError, match=r"demo override ppo\.stepz: no such parameter"):
        demo_params(raw, {"ppo": {"stepz": 3}})


def test_the_copy_is_a_project_of_its_own(tmp_path):
    copy_project(ROOT, tmp_path)
    assert (tmp_path / ".git").is_dir() and (tmp_path / ".dvc").is_dir()
    assert (tmp_path / "dvc.yaml").read_text() == (ROOT / "dvc.yaml").read_text()
    assert load_params(tmp_path / "params.yaml").world.corpus_size == DEMO["world"]["corpus_size"]
    assert not (tmp_path / "results").exists()  # nothing of the study's own results


def test_the_table_reads_peak_and_last_and_the_figure_is_drawn(tmp_path):
    run = pd.DataFrame({"step": [0, 5, 10], "kl": [0.0, 2.0, 6.0], "gold": [1.0, 1.5, 0.7]})
    runs = {variant: run for _, variant, _ in ARMS}
    t = table(runs)
    assert len(t) == len(ARMS)
    row = t.iloc[0].to_dict()
    assert row["gold_start"] == 1.0 and row["gold_peak"] == 1.5 and row["kl_at_peak"] == 2.0
    assert row["gold_last"] == 0.7 and row["kl_last"] == 6.0
    figure(runs, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
