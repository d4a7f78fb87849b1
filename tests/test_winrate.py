"""The win rate against the SFT policy, by the world's annotator, against hand-computed cases."""

import numpy as np
import pandas as pd
import pytest

from study.winrate import annotator_win_rate, run_win_rates


def test_a_noiseless_annotator_counts_wins_and_halves_ties():
    gold = np.array([2.0, 1.0, 0.5, 3.0])
    sft = np.array([1.0, 1.0, 1.0, 1.0])
    # win, tie, loss, win
    assert annotator_win_rate(gold, sft, 0.0) == pytest.approx((1 + 0.5 + 0 + 1) / 4)


def test_label_noise_pulls_the_win_rate_towards_a_half():
    gold, sft = np.array([2.0, 0.0, 3.0]), np.array([1.0, 1.0, 1.0])  # win, loss, win
    eps = 0.25
    assert annotator_win_rate(gold, sft, eps) == pytest.approx(((1 - eps) * 2 + eps) / 3)
    # the identity: noisy = eps + (1 - 2 eps) * clean, for any responses without ties
    rng = np.random.default_rng(0)
    g, s = rng.normal(size=500), rng.normal(size=500)
    clean = annotator_win_rate(g, s, 0.0)
    assert annotator_win_rate(g, s, 0.4) == pytest.approx(0.4 + 0.2 * clean)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="one length"):
        annotator_win_rate(np.ones(3), np.ones(4), 0.1)
    with pytest.raises(ValueError, match="flip_rate"):
        annotator_win_rate(np.ones(3), np.ones(3), 0.7)


def samples() -> pd.DataFrame:
    """Three prompts at steps 0, 5 and 10; the later responses beat SFT on 1 then 2 prompts;
    mean KL 0, 4 and 12. Prompt "a" is asked twice, as a held-out set drawn with replacement
    can: responses are paired by position."""
    rows = []
    prompts = ["a", "b", "a"]
    gold = {0: [1.0, 2.0, 3.0], 5: [1.5, 1.0, 2.0], 10: [2.0, 1.0, 3.5]}
    kl = {0: 0.0, 5: 4.0, 10: 12.0}
    for step, gs in gold.items():
        for p, g in zip(prompts, gs, strict=True):
            rows.append({"prompt": p, "gold": g, "kl": kl[step], "step": step})
    return pd.DataFrame(rows)


def test_a_run_is_read_at_its_end_and_where_it_first_reached_each_level():
    out = run_win_rates(samples(), [2.0, 10.0, 20.0], flip_rate=0.0)
    assert out["win_rate_final"] == pytest.approx(2 / 3)  # step 10: both a's win, b loses
    assert out["win_rate_at_kl2"] == pytest.approx(1 / 3)  # step 5, the first past KL 2
    assert out["win_rate_at_kl10"] == pytest.approx(2 / 3)
    assert np.isnan(out["win_rate_at_kl20"])  # never reached


def test_a_step_that_answers_other_prompts_is_named():
    s = samples()
    s.loc[s["step"] == 10, "prompt"] = ["b", "a", "a"]
    with pytest.raises(ValueError, match="other prompts"):
        run_win_rates(s, [], 0.25, where="results/ppo/single/seed0")
