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

from gpu_check import REFERENCE, compare_claims, per_stage, physical_gpu  # noqa: E402


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


def test_rows_sharing_claim_and_measure_are_matched_in_order():
    """The minimum against the mean and against the maximum share their claim and measure."""
    ref = pd.DataFrame({"claim": ["c", "c"], "measure": ["ECE", "ECE"], "measured": ["vs mean", "vs max"],
                        "verdict": ["supported", "inconclusive"]})  # fmt: skip
    here = ref.assign(verdict=["supported", "supported"])
    diff = compare_claims(ref, here)
    assert len(diff) == 2
    assert diff["measured_here"].tolist() == ["vs mean", "vs max"]
    assert diff["verdict_differs"].tolist() == [False, True]


def test_the_committed_reference_against_itself_differs_nowhere():
    ref = pd.read_csv(REFERENCE, keep_default_na=False)
    diff = compare_claims(ref, ref)
    assert len(diff) == len(ref) and not diff["verdict_differs"].any()


def test_the_gpu_sampled_is_the_one_torch_uses():
    assert physical_gpu("cuda", None) == "0"
    assert physical_gpu("cuda:1", "") == "1"
    assert physical_gpu("cuda", "3,5") == "3"
    assert physical_gpu("cuda:1", "3, 5") == "5"
    with pytest.raises(ValueError, match="shows 1"):
        physical_gpu("cuda:1", "2")


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


def test_the_reference_is_written_from_the_cpu_only(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--device", "cuda",
         "--write-reference", "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "--device cpu" in done.stderr
    assert not (tmp_path / "work").exists()
