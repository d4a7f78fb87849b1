"""The claims table: each claim of Ahmed et al. (and of Coste et al. where it bears), what the runs
measured, and a verdict read off the numbers by a fixed rule.

The verdicts follow the fixed rules of `study.verdicts` (paired over seeds where two arms share
them); the rows here say which comparisons the papers' claims are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from study.analysis import require_columns
from study.bon import bon_final_table, bon_turnover
from study.verdicts import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    Claim,
    compare,
    paired_values,
    table,
    verdict_count,
)

# INCONCLUSIVE is not used here: the report's notebook reads the three verdicts from this module
__all__ = [
    "INCONCLUSIVE",
    "NOT_SUPPORTED",
    "SUPPORTED",
    "aggregation_claims",
    "build_claims",
    "finding",
    "headline_claims",
    "matched_level",
    "ppo_row",
]


def matched_level(runs: pd.DataFrame, kl_levels: Sequence[float]) -> float | None:
    """The largest of `kl_levels` that every run of `runs` (every variant and seed; columns
    `gold_at_kl<x>`) reached, or None: the one level where all of them are compared."""
    require_columns(runs, [f"gold_at_kl{x:g}" for x in kl_levels], "PPO runs")
    reached = [x for x in kl_levels if runs[f"gold_at_kl{x:g}"].notna().all()]
    return max(reached) if reached else None


GAO, COSTE, AHMED = "Gao et al. 2023", "Coste et al. 2024", "Ahmed et al. 2024"
STUDY = "this study"  # a question the papers do not ask: an ablation of this study's own

# the headline's arms: each multi-head row says in what it differs from the full ensemble
ARMS = (
    ("ensemble_min", "full ensemble, 3 epochs each (Coste et al.; the paper's text)", COSTE),
    ("multihead_min", "multi-head, 1 epoch (the paper's text): differs from the ensemble in "
     "architecture and in epochs (1 vs 3)", AHMED),
    ("multihead-3ep_min", "multi-head, 3 epochs (epoch-matched: differs from the ensemble in "
     "architecture only)", AHMED),
    ("multihead-authors_min", "multi-head in the authors' code's regime (nn.Linear init, head "
     "lr = encoder lr × reward.head_lr_mult, 3 epochs)", AHMED),
)  # fmt: skip


def ppo_row(
    runs: pd.DataFrame, claim: str, who: str, measure: str, a: str, b: str, col: str,
    kind: str = "better", margin: float = 0.0,
) -> Claim:  # fmt: skip
    """Arms a and b through PPO, paired over the seeds both ran; a KL level counts only when
    every seed of both reached it."""
    va, vb = paired_values(runs, a, b, col)
    return compare(claim, who, measure, a, va, b, vb, kind, margin, paired=True,
                   all_seeds=col.startswith("gold_at_kl"))  # fmt: skip


def finding(runs: pd.DataFrame, a: str, b: str, col: str, margin: float = 0.0) -> str:
    """A figure title's statement of what it shows: variant `a` against `b` on `col` of the PPO
    runs, paired over the seeds both ran, with the verdict of the claims table's rule for 'a is
    better' (or, with `margin` > 0, 'a is as good as b')."""
    c = ppo_row(runs, "", "", "", a, b, col, "parity" if margin > 0 else "better", margin)
    where = col.replace("gold_at_kl", "gold at KL ").replace("gold_final", "final gold")
    return f"{where}: {c.measured} ({c.design}), {c.verdict}"


@dataclass
class _Rows:
    """The comparisons claims are made of, on one table of runs (and of best-of-n curves)."""

    runs: pd.DataFrame
    margin: float
    bon_curves: pd.DataFrame | None

    def ppo(
        self, claim: str, who: str, measure: str, a: str, b: str, col: str, kind: str = "better"
    ) -> Claim:
        return ppo_row(self.runs, claim, who, measure, a, b, col, kind, self.margin)

    def bon(self, claim: str, who: str, a: str, b: str, kind: str = "better") -> Claim:
        va, vb = paired_values(bon_final_table(self.bon_curves), a, b, "gold")
        return compare(claim, who, "BoN gold at the largest n", a, va, b, vb, kind, self.margin,
                       paired=True)  # fmt: skip


def headline_claims(
    runs: pd.DataFrame,
    claims_kl: float,
    margin: float,
    kl_levels: Sequence[float] = (),
    bon_curves: pd.DataFrame | None = None,
) -> list[Claim]:
    """The headline rows: the single proxy overoptimises; each arm's minimum against the single
    RM and against the full ensemble's, at the two highest matched-KL levels up to `claims_kl`
    (and through best-of-n when `bon_curves` is given); one epoch against three."""
    at = f"gold_at_kl{claims_kl:g}"
    require_columns(
        runs, ("variant", "seed", "overoptimised", "gold_final", at), "results/ppo/runs.parquet"
    )
    rows = _overoptimisation_rows(runs, bon_curves)
    levels = ([x for x in kl_levels if x <= claims_kl] or [claims_kl])[-2:]
    c, variants = _Rows(runs, margin, bon_curves), set(runs["variant"])
    for v, label, who in ARMS:
        if v in variants:
            rows += _arm_rows(c, v, label, who, levels)
    if {"ensemble_min", "ensemble-k1_min"} <= variants:
        rows += _budget_rows(c, levels)
    if {"multihead_min", "multihead-3ep_min"} <= variants:
        rows.append(c.ppo("One epoch per head is enough: 1 epoch protects as well as 3", AHMED,
                          f"PPO gold at KL {claims_kl:g}", "multihead_min", "multihead-3ep_min",
                          at, "parity"))  # fmt: skip
    return rows


def _overoptimisation_rows(runs: pd.DataFrame, bon_curves: pd.DataFrame | None) -> list[Claim]:
    """Whether the single proxy overoptimises: in PPO (gold peaks, then falls) and best-of-n."""
    over = runs.loc[runs["variant"] == "single", "overoptimised"].astype(bool)
    rows = [
        Claim(
            "Optimising a single proxy overoptimises: gold peaks, then falls while the proxy rises",
            f"{GAO}; {COSTE}",
            "PPO runs overoptimised (single)",
            f"{int(over.sum())} of {len(over)} seeds",
            str(len(over)),
            verdict_count(int(over.sum()), len(over)),
            "count over seeds",
        )
    ]
    if bon_curves is not None:
        require_columns(bon_curves, ("variant", "seed", "n", "gold", "gold_se"), "bon curves")
        turned, n_bon, desc = bon_turnover(bon_curves, "single")
        rows.append(
            Claim(
                "... also under best-of-n sampling (the gold curve turns over as n grows)",
                GAO,
                "BoN gold at the largest n more than 2 SE below its peak (single)",
                f"{turned} of {n_bon} seeds: {desc}",
                str(n_bon),
                verdict_count(turned, n_bon),
                "count over seeds",
            )
        )
    return rows


def _arm_rows(c: _Rows, v: str, label: str, who: str, levels: Sequence[float]) -> list[Claim]:
    """Arm `v`'s minimum against the single RM, and (but the ensemble) against the ensemble's."""
    rows = [c.ppo(f"{label}: its minimum mitigates overoptimisation against a single RM", who,
                  f"PPO gold at KL {level:g}", v, "single", f"gold_at_kl{level:g}")
            for level in levels]  # fmt: skip
    if c.bon_curves is not None:
        rows.append(c.bon(f"{label}: its minimum mitigates overoptimisation (best-of-n)", who, v,
                          "single"))  # fmt: skip
    if v == "ensemble_min":
        return rows
    parity = f"{label}: its minimum protects as well as the full ensemble's"
    for level in levels:
        rows.append(c.ppo(parity, AHMED, f"PPO gold at KL {level:g}", v, "ensemble_min",
                          f"gold_at_kl{level:g}", "parity"))  # fmt: skip
    rows.append(c.ppo(parity, AHMED, "PPO final gold", v, "ensemble_min", "gold_final", "parity"))
    if c.bon_curves is not None:
        rows.append(c.bon(f"{parity} (best-of-n)", AHMED, v, "ensemble_min", "parity"))
    return rows


def _budget_rows(c: _Rows, levels: Sequence[float]) -> list[Claim]:
    """One member of the ensemble (K = 1, its 3 epochs, its seed) is the single RM at the
    ensemble's epochs per member, so the ensemble's gain splits into what training each member
    longer gives and what ensembling K of them adds (this study's own ablation)."""
    budget = (
        "A single RM trained for the ensemble's 3 epochs (one member) mitigates "
        "overoptimisation against the 1-epoch single RM: the epochs alone"
    )
    members = (
        "The full ensemble's minimum beats one of its members: ensembling itself, "
        "epochs per member held equal (the ensemble trains K times as much)"
    )
    rows = []
    for level in levels:
        rows.append(c.ppo(budget, STUDY, f"PPO gold at KL {level:g}", "ensemble-k1_min", "single",
                          f"gold_at_kl{level:g}"))  # fmt: skip
        rows.append(c.ppo(members, STUDY, f"PPO gold at KL {level:g}", "ensemble_min",
                          "ensemble-k1_min", f"gold_at_kl{level:g}"))  # fmt: skip
    if c.bon_curves is not None:
        rows.append(c.bon(f"{budget} (best-of-n)", STUDY, "ensemble-k1_min", "single"))
        rows.append(c.bon(f"{members} (best-of-n)", STUDY, "ensemble_min", "ensemble-k1_min"))
    return rows


def aggregation_claims(
    runs: pd.DataFrame, claims_kl: float, margin: float, families: Sequence[str]
) -> pd.DataFrame:
    """The minimum against the mean (the minimum is better) and against UWO (about as good) of
    each family, through PPO at gold at KL `claims_kl`, paired over seeds."""
    at = f"gold_at_kl{claims_kl:g}"
    require_columns(runs, ("variant", "seed", at), "the aggregation runs")
    rows = []
    for fam in families:
        for method in ("mean", "uwo"):
            rows.append(ppo_row(
                runs,
                "The minimum is the better aggregation" if method == "mean"
                else "UWO (mean − λ·variance) does about as well as the minimum",
                AHMED if fam == "multihead" and method == "mean" else COSTE,
                f"PPO gold at KL {claims_kl:g}", f"{fam}_min", f"{fam}_{method}", at,
                "better" if method == "mean" else "parity", margin,
            ))  # fmt: skip
    return table(rows)


def build_claims(
    runs: pd.DataFrame,
    ece: pd.DataFrame,
    cost: dict,
    bon_curves: pd.DataFrame,
    claims_kl: float,
    margin: float,
    kl_levels: Sequence[float] = (),
    policy_ece: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The study's claims table from the stages' outputs: `runs` (results/ppo/runs.parquet),
    `ece` (results/rm/ece.csv: family, seed, method, target, ece), `cost`
    (results/rm/cost_metrics.json) and `bon_curves` (results/bon/curves.parquet). A missing
    column raises a KeyError naming it. `policy_ece` (results/ppo/policy_ece.csv) adds the
    calibration on the policy's own samples. The aggregations (`aggregation_claims`, stage
    `aggregations`) and the number of heads (`study.heads.heads_claims`, stage `heads`) have
    tables of their own."""
    require_columns(ece, ("family", "seed", "method", "target", "ece"), "results/rm/ece.csv")
    for key in ("multihead_train_epoch_x", "ensemble_train_total_x", "multihead_extra_parameters"):
        if key not in cost:
            raise KeyError(f"results/rm/cost_metrics.json: missing key {key}")
    rows = headline_claims(runs, claims_kl, margin, kl_levels, bon_curves)
    ahmed = AHMED
    ratio = cost["multihead_train_epoch_x"] / cost["ensemble_train_total_x"]
    rows.append(
        Claim(
            "A multi-head RM costs a fraction of a full ensemble to train (1 epoch vs 3, one encoder)",
            ahmed,
            "training time relative to a single RM (results/rm/cost_metrics.json)",
            f"multi-head {cost['multihead_train_epoch_x']:.2f}× vs ensemble "
            f"{cost['ensemble_train_total_x']:.2f}× (ratio {ratio:.3f}); "
            f"{cost['multihead_extra_parameters']} extra parameters for the heads",
            "1 (timing)",
            SUPPORTED if ratio < 0.5 else NOT_SUPPORTED,
        )
    )
    clean = ece[ece["target"] == "clean"]
    for fam in ("multihead", "ensemble"):
        e = clean[clean["family"] == fam].rename(columns={"method": "variant"})
        for other in ("mean", "max"):
            a, b = paired_values(e, "min", other, "ece")
            rows.append(compare(
                "The minimum's uncertainty is better calibrated than the mean's or the max's",
                ahmed, f"ECE on held-out pairs, clean labels ({fam})", "min", a, other, b,
                "worse", digits=3, paired=True,
            ))  # fmt: skip
    if policy_ece is not None:
        require_columns(
            policy_ece, ("variant", "seed", "method", "ece"), "results/ppo/policy_ece.csv"
        )
        for v in ("multihead_min", "ensemble_min"):
            e = policy_ece[policy_ece["variant"] == v].drop(columns="variant")
            e = e.rename(columns={"method": "variant"})
            for other in ("mean", "max"):
                a, b = paired_values(e, "min", other, "ece")
                rows.append(compare(
                    "The minimum's uncertainty is better calibrated than the mean's or the max's",
                    ahmed, f"ECE on PPO samples against the SFT response, gold labels ({v})",
                    "min", a, other, b, "worse", digits=3, paired=True,
                ))  # fmt: skip
    return table(rows)
