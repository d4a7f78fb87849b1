"""Win rate against the SFT policy, as the world's annotator would judge it.

The "human evaluation" the paper's reviewers asked for, in the form the embedded world allows: on
each held-out prompt, the policy's response is compared with the SFT policy's response to the
same prompt by the annotator that labelled the world's preference pairs. That annotator prefers
the response with the higher gold reward and flips its verdict with probability `flip_rate`
(`preferences.flip_rate`, as AlpacaFarm's simulated annotators carry label noise); a gold tie is a
coin. The win rate is the annotator's expected verdict, averaged over prompts (no coin is drawn,
so it carries no sampling noise beyond the prompts and the policy's own samples):

    P(win) = (1 - flip_rate) * 1[gold > gold_sft] + flip_rate * 1[gold < gold_sft] + 1/2 * 1[tie]

The SFT policy's responses are the evaluation at step 0 of the same run (`eval_samples`), so both
sides answer the same prompts, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from study.analysis import require_columns

SAMPLE_COLUMNS = ("prompt", "gold", "kl", "step")


def annotator_win_rate(gold: np.ndarray, gold_sft: np.ndarray, flip_rate: float) -> float:
    """The annotator's expected win rate of responses scored `gold` against `gold_sft` (same
    prompts, same order)."""
    gold, gold_sft = np.asarray(gold, float), np.asarray(gold_sft, float)
    if gold.shape != gold_sft.shape or gold.ndim != 1 or len(gold) == 0:
        raise ValueError(
            f"gold {gold.shape} and gold_sft {gold_sft.shape}: two 1-D arrays of one length"
        )
    if not 0.0 <= flip_rate <= 0.5:
        raise ValueError(f"flip_rate must be in [0, 0.5], got {flip_rate}")
    win = np.where(gold > gold_sft, 1.0 - flip_rate, np.where(gold < gold_sft, flip_rate, 0.5))
    return float(win.mean())


def _against_sft(samples: pd.DataFrame, step: int, flip_rate: float, where: str) -> float:
    """Each evaluation answers the same held-out prompts in the same order (a prompt may appear
    twice), so the responses are paired by position, after checking that the prompts agree."""
    sft = samples[samples["step"] == samples["step"].min()]
    later = samples[samples["step"] == step]
    if later["prompt"].tolist() != sft["prompt"].tolist():
        raise ValueError(
            f"{where}: step {step} answers other prompts (or in another order) than the SFT "
            "evaluation at step 0"
        )
    return annotator_win_rate(later["gold"].to_numpy(), sft["gold"].to_numpy(), flip_rate)


def run_win_rates(
    samples: pd.DataFrame, levels: Sequence[float], flip_rate: float, where: str = "eval_samples"
) -> dict[str, float]:
    """Of one run's held-out samples (`eval_samples`: prompt, gold, kl, step): the win rate of
    its final evaluation against the SFT policy, and of its first evaluation whose mean KL
    reached each level in `levels` (NaN where the run never reached it)."""
    require_columns(samples, SAMPLE_COLUMNS, where)
    steps = samples.groupby("step")["kl"].mean().sort_index()
    out = {"win_rate_final": _against_sft(samples, int(steps.index[-1]), flip_rate, where)}
    for level in levels:
        reached = steps[steps >= level]
        out[f"win_rate_at_kl{level:g}"] = (
            _against_sft(samples, int(reached.index[0]), flip_rate, where)
            if len(reached)
            else float("nan")
        )
    return out
