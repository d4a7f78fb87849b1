"""The report's readings (example steps, RLOO summary) and the K sweep's rows, on hand-made tables."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from study.heads import heads_claims, rm_summary, sweep_row
from study.report import example_steps, executed_pages


def test_example_steps_nearest_each_reached_level_and_the_last():
    evals = pd.DataFrame({"step": [0, 5, 10, 15, 20], "kl": [0.0, 1.8, 4.0, 6.5, 6.0]})
    # KL 0 -> 0, 2 -> 5, 5 -> 10 (|4-5| < |6-5|... 6.0 at step 20 is 1.0 away: the first wins),
    # 10 and 20 never reached; the last step is always shown
    assert example_steps(evals, [2.0, 5.0, 10.0, 20.0]) == [0, 5, 10, 20]
    with pytest.raises(KeyError, match="missing column"):
        example_steps(evals.drop(columns="kl"), [2.0])


def test_rm_summary_and_sweep_row_by_hand():
    # two heads, three pairs; pair 2's label was flipped (the clean winner is 'rejected')
    r_c = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 1.0]])
    rows = [
        {"pair_id": p, "head": h, "r_chosen": float(r_c[h, p]), "r_rejected": 0.0}
        for h in range(2) for p in range(3)
    ]  # fmt: skip
    pairs = pd.DataFrame({"pair_id": [2, 0, 1], "flipped": [True, False, False]})
    rm = rm_summary(pd.DataFrame(rows), pairs, uwo_lambda=0.5)
    # min over heads prefers chosen on pairs 0 and 2: clean-right on 0 only -> 1/3
    assert rm["acc_clean_min"] == pytest.approx(1 / 3)
    assert rm["acc_clean_head_mean"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    evals = pd.DataFrame(
        {"variant": "multihead-k2_min", "seed": 0, "step": [0, 5, 10], "kl": [0.0, 3.0, 6.0],
         "proxy": [0.0, 1.0, 2.0], "gold": [1.0, 2.0, 1.2]}
    )  # fmt: skip
    info = {"family": "multihead", "k": 2, "epochs": 1, "train_seconds": 9.0}
    row = sweep_row("multihead-k2", 0, info, rm, evals, [5.0], 0.25, "x")
    assert (row["arm"], row["family"], row["k"], row["seed"]) == ("multihead-k2", "multihead", 2, 0)
    assert row["gold_peak"] == 2.0 and row["gold_final"] == 1.2 and row["overoptimised"]
    assert row["gold_at_kl5"] == pytest.approx(2.0 + (2 / 3) * (1.2 - 2.0))
    single = sweep_row(
        "single", 0, {**info, "family": "single", "k": 1}, rm, evals, [5.0], 0.25, "x"
    )
    assert single["family"] == "multihead" and single["k"] == 1  # K = 1 of the multi-head family
    with pytest.raises(KeyError, match="train_seconds"):
        sweep_row("multihead-k2", 0, {"family": "multihead", "k": 2, "epochs": 1}, rm, evals,
                  [5.0], 0.25, "x")  # fmt: skip


def test_heads_claims_pair_the_seeds_of_each_k():
    rows = []
    for seed in range(3):
        for k, gold in ((1, 1.0), (3, 2.0), (10, 2.05)):
            rows.append({"family": "multihead", "k": k, "seed": seed,
                         "gold_at_kl10": gold + 0.001 * seed * k})  # fmt: skip
    dup = [{**r, "gold_at_kl10": 9.0} for r in rows if r["k"] == 3]  # a second arm with K = 3
    t = heads_claims(pd.DataFrame(rows + dup), 10.0, 0.2)
    more = t[t["claim"] == "More heads mitigate more"].iloc[0]
    assert more["verdict"] == "supported" and more["design"] == "paired over 3 seeds"
    assert "multihead K=10" in more["measured"] and "vs multihead K=1" in more["measured"]
    enough = t[t["claim"] == "Three heads are enough"].iloc[0]
    # differences -0.05, -0.057, -0.064: interval -0.057 ± 0.017, inside ±0.2
    assert enough["verdict"] == "supported"


def test_headline_metrics_take_the_level_every_seed_reached():
    import pandas as pd

    from study.report import headline_metrics

    runs = pd.DataFrame({
        "variant": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1],
        "gold_at_kl2": [1.0, 2.0, 3.0, 5.0], "gold_at_kl5": [1.0, 1.0, 2.0, float("nan")],
    })  # fmt: skip
    bon = pd.DataFrame({
        "variant": ["a", "a", "b", "b", "c"], "seed": [0, 1, 0, 1, 0],
        "n": [256, 256, 256, 8, 256], "gold": [1.0, 2.0, 4.0, 9.0, 7.0],
    })  # fmt: skip
    claims = pd.DataFrame({"verdict": ["supported", "inconclusive (level reached by 1/5)",
                                       "inconclusive", "not supported"]})  # fmt: skip
    m = headline_metrics(runs, bon, claims, [2.0, 5.0])
    assert m["matched_kl"] == 2.0  # b's seed 1 never reached KL 5
    assert m["ppo_gold_at_matched_kl"] == {"a": 1.5, "b": 4.0}
    assert m["bon_gold_at_max_n"] == {"a": 1.5, "b": 4.0}  # c is no PPO variant; b's max n is 256
    assert m["verdicts"] == {"inconclusive": 2, "supported": 1, "not supported": 1}


def test_executed_pages_are_the_executed_notebooks_dvc_yaml_declares_matrix_expanded(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  world:\n"
        "    cmd: echo\n"
        "    outs: [reports/01_world.ipynb, results/world.json]\n"
        "  ppo:\n"
        "    matrix: {arm: [single, ensemble], seed: [0, 1]}\n"
        "    cmd: echo\n"
        "    outs:\n"
        "      - reports/03_${item.arm}_s${item.seed}.ipynb\n"
        "  open_questions:\n"
        "    cmd: echo\n"
        "    outs: [reports/13_open_questions.ipynb, reports/open_questions.html]\n"
        "  report:\n"
        "    cmd: echo\n"
        "    outs: [reports/08_report.ipynb, reports/index.html]\n"
    )
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    # a lock another stage is halfway through writing is never read
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  world:\n    cmd: [")
    pages = executed_pages(tmp_path)  # nothing on disk: the list is the declaration's
    assert pages.to_dict("records") == [
        {"stage": "world", "item": "", "page": "01_world.html"},
        {"stage": "ppo", "item": "single-0", "page": "03_single_s0.html"},
        {"stage": "ppo", "item": "single-1", "page": "03_single_s1.html"},
        {"stage": "ppo", "item": "ensemble-0", "page": "03_ensemble_s0.html"},
        {"stage": "ppo", "item": "ensemble-1", "page": "03_ensemble_s1.html"},
        # a page its stage renders itself keeps its stage's name for it; the report links no page
        # of its own
        {"stage": "open_questions", "item": "", "page": "open_questions.html"},
    ]
