"""benchmarks/gpu_check.py: the GPU memory each stage saw, the claims against the CPU run's, and a
device this machine lacks refused before anything is built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check import compare_claims, per_stage  # noqa: E402


def test_each_stage_gets_the_peak_of_the_samples_taken_while_it_ran():
    t0 = 1000.0
    timings = [
        {"stage": "world", "start": 0.0, "end": 10.0},
        {"stage": "rm@a", "start": 10.0, "end": 20.0},
        {"stage": "rm@b", "start": 12.0, "end": 15.0},  # beside rm@a
        {"stage": "report", "start": 25.0, "end": 26.0},  # no sample falls in it
    ]
    samples = [(1001.0, 600.0), (1009.0, 900.0), (1011.0, 700.0), (1013.0, 1500.0), (1019.0, 800.0),
               (1022.0, 2000.0)]  # fmt: skip
    table = per_stage(timings, t0, samples, idle=500.0).set_index("stage")
    assert table.loc["world", "peak_gpu_mib"] == 400.0  # 900 - 500
    assert table.loc["rm@a", "peak_gpu_mib"] == 1000.0  # 1500 - 500: the pair's sum
    assert table.loc["rm@b", "peak_gpu_mib"] == 1000.0
    assert pd.isna(table.loc["report", "peak_gpu_mib"])  # the 2000 at t=22 is between stages
    assert table["beside"].to_dict() == {"world": 0, "rm@a": 1, "rm@b": 1, "report": 0}
    assert table.loc["rm@a", "seconds"] == 10.0


def test_without_samples_no_stage_has_a_peak():
    table = per_stage([{"stage": "world", "start": 0.0, "end": 1.0}], 0.0, [], idle=None)
    assert table["peak_gpu_mib"].isna().all()


def test_claims_are_matched_by_claim_and_measure_and_verdicts_compared():
    ref = pd.DataFrame({
        "claim": ["a", "a", "b"], "measure": ["PPO", "BoN", "PPO"],
        "measured": ["+0.5 ± 0.1", "+0.2 ± 0.3", "3 of 5"],
        "verdict": ["supported", "inconclusive", "supported"], "seeds": [2, 2, 2],
    })  # fmt: skip
    here = pd.DataFrame({
        "claim": ["a", "a", "c"], "measure": ["BoN", "PPO", "PPO"],
        "measured": ["+0.1 ± 0.3", "+0.4 ± 0.1", "1 of 2"],
        "verdict": ["inconclusive", "supported", "inconclusive"],
    })  # fmt: skip
    diff = compare_claims(ref, here).set_index(["claim", "measure"])
    assert diff.loc[("a", "PPO"), "measured_cpu"] == "+0.5 ± 0.1"
    assert diff.loc[("a", "PPO"), "measured_here"] == "+0.4 ± 0.1"
    assert not diff.loc[("a", "PPO"), "verdict_differs"]
    assert not diff.loc[("a", "BoN"), "verdict_differs"]
    assert diff.loc[("b", "PPO"), "verdict_differs"] and pd.isna(
        diff.loc[("b", "PPO"), "verdict_here"]
    )
    assert diff.loc[("c", "PPO"), "verdict_differs"] and pd.isna(
        diff.loc[("c", "PPO"), "verdict_cpu"]
    )
    assert int(diff["verdict_differs"].sum()) == 2


def test_a_claims_table_without_verdicts_is_named():
    ok = pd.DataFrame(
        {"claim": ["a"], "measure": ["m"], "measured": ["1"], "verdict": ["supported"]}
    )
    with pytest.raises(
        ValueError, match=r"this run's claims table lacks the columns \['verdict'\]"
    ):
        compare_claims(ok, ok.drop(columns="verdict"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_stops_before_building(tmp_path):
    reference = tmp_path / "claims.csv"
    reference.write_text("claim,measure,measured,verdict\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--work", str(tmp_path / "work"),
         "--reference", str(reference)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert "placement.device: 'cuda'" in done.stderr and "no CUDA device" in done.stderr
    assert not (tmp_path / "work").exists()
