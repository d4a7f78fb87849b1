"""The result tables of the README and of docs/results.md, generated from the committed result
files, never typed.

Blocks of those pages (`study.pages.PAGES`) between `<!-- generated: NAME -->` and `<!-- /generated: NAME -->`
are rewritten by `python -m study.readme` from the tables the pipeline wrote (and git carries):
the claims, gold at matched KL run by run, the aggregations, the number of heads, the cheap arms,
the replication, the reward models and the world (`SOURCES`). A test holds the pages to them.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from study.pages import write_pages
from study.stats import mean_ci

HEADLINE = ("single", "ensemble_min", "ensemble-k1_min", "multihead_min", "multihead-3ep_min",
            "multihead-authors_min", "gold")  # fmt: skip


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table of every column of `df`."""
    head = "| " + " | ".join(map(_cell, df.columns)) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def claims_block(claims: pd.DataFrame) -> str:
    """The claims table: claim, measure, what was measured, the design and the verdict."""
    cols = ["claim", "measure", "measured", "design", "verdict"]
    df = claims[[c for c in cols if c in claims.columns]].fillna("")
    df = df.assign(verdict=[f"**{v}**" if v.startswith("not supported") else v
                            for v in df["verdict"]])  # fmt: skip
    return markdown_table(df)


def matched_level(claims: pd.DataFrame) -> float | None:
    """The largest KL level of the PPO claims at which every compared seed reached it (no row
    of that level says 'level reached by'), or None."""
    levels = {}
    for m, v in zip(claims["measure"], claims["verdict"].astype(str), strict=True):
        if m.startswith("PPO gold at KL "):
            x = float(m.removeprefix("PPO gold at KL "))
            levels[x] = levels.get(x, True) and "level reached by" not in v
    full = [x for x, ok in levels.items() if ok]
    return max(full) if full else None


def headline_claims_block(claims: pd.DataFrame) -> str:
    """The claims at the matched KL level every seed of every arm reached, under best-of-n, and
    whether the single proxy overoptimises; the rest are in the file (and the report)."""
    level = matched_level(claims)
    keep = claims["measure"].str.startswith(("PPO runs overoptimised", "BoN gold"))
    if level is not None:
        keep |= claims["measure"] == f"PPO gold at KL {level:g}"
    rest = len(claims) - int(keep.sum())
    return claims_block(claims[keep]) + (
        f"\n\n{rest} further rows (every other KL level, final gold, calibration, cost) are in "
        "`results/report/claims.csv` and the report."
        if rest
        else ""
    )


def _fmt(values: np.ndarray) -> str:
    m, ci, n = mean_ci(values)
    if n == 0:
        return "not reached"
    text = f"{m:.2f}" if math.isnan(ci) else f"{m:.2f} ± {ci:.2f}"
    return text


def matched_kl_block(
    runs: pd.DataFrame, levels: Sequence[float], wins: pd.DataFrame | None = None
) -> str:
    """Per variant: seeds, runs overoptimised, gold at each KL level (mean ± 95% interval over
    seeds; the seeds that reached it when not all), final gold and the range of final KL; with
    `wins` (`results/ppo/win_rate.csv`), the win rate against SFT at the largest level every
    seed of every proxy variant (gold aside, the ceiling) reached."""
    proxies = runs[runs["variant"] != "gold"]
    top = max((x for x in levels if proxies[f"gold_at_kl{x:g}"].notna().all()), default=None)
    rows = []
    order = [v for v in HEADLINE if v in set(runs["variant"])]
    order += [v for v in dict.fromkeys(runs["variant"]) if v not in order]
    for v in order:
        r = runs[runs["variant"] == v]
        row = {"variant": f"`{v}`", "seeds": len(r),
               "overoptimised": f"{int(r['overoptimised'].sum())}/{len(r)}"}  # fmt: skip
        for x in levels:
            vals = r[f"gold_at_kl{x:g}"].to_numpy(float)
            reached = int(np.isfinite(vals).sum())
            text = _fmt(vals)
            if 0 < reached < len(vals):
                text += f" ({reached}/{len(vals)} reached)"
            row[f"gold at KL {x:g}"] = text
        row["final gold"] = _fmt(r["gold_final"].to_numpy(float))
        row["final KL"] = f"{r['kl_final'].min():.1f}–{r['kl_final'].max():.1f}"
        if wins is not None and top is not None:
            w = wins.loc[wins["variant"] == v, f"win_rate_at_kl{top:g}"].to_numpy(float)
            reached = int(np.isfinite(w).sum())
            row[f"win rate vs SFT at KL {top:g}"] = _fmt(w) + (
                f" ({reached}/{len(w)} reached)" if 0 < reached < len(w) else ""
            )
        rows.append(row)
    return markdown_table(pd.DataFrame(rows))


def world_block(metrics: dict) -> str:
    """The embedded world as measured by its stage (`results/world/metrics.json`)."""
    rows = [
        ("SFT policy: validation loss (nats / token)", f"{metrics['sft_final_val_loss']:.3f}"),
        ("SFT samples that end with end-of-sequence", f"{metrics['sft_eos_share']:.1%}"),
        ("SFT sentences the grammar accepts", f"{metrics['sft_grammatical_share']:.1%}"),
        ("gold of SFT samples (mean ± sd)",
         f"{metrics['sft_gold_mean']:.2f} ± {metrics['sft_gold_std']:.2f}"),
        ("preference pairs; labels flipped",
         f"{metrics['n_pairs']:,}; {metrics['flip_rate_measured']:.1%} "
         f"(flip rate {metrics['flip_rate_param']:g})"),
    ]  # fmt: skip
    return markdown_table(pd.DataFrame(rows, columns=["quantity", "value"]))


def replicate_block(side: pd.DataFrame) -> str:
    """The headline's claims on seeds 0-4 and 5-9, side by side: those at the KL level every seed
    of both sets reached (and the claims that are no KL level); how many verdicts agree, of all."""
    level = matched_level(side.rename(columns={"verdict_all": "verdict"}))
    keep = ~side["measure"].str.startswith("PPO gold at KL ")
    if level is not None:
        keep |= side["measure"] == f"PPO gold at KL {level:g}"
    df = side.loc[keep, ["claim", "measure", "verdict_A", "verdict_B", "measured_all",
                         "verdict_all"]].rename(
        columns={"verdict_A": "verdict, seeds 0-4", "verdict_B": "verdict, seeds 5-9",
                 "measured_all": "all ten seeds", "verdict_all": "verdict, ten seeds"}
    )  # fmt: skip
    agree = side["agree"].astype(str).eq("True")
    shown = int(agree[keep].sum())
    return markdown_table(df) + (
        f"\n\n{shown} of {int(keep.sum())} verdicts shown agree between the two seed sets "
        f"({int(agree.sum())} of {len(side)} over every row of `results/replicate/claims.csv`)."
    )


# the comparisons the README's "in short" states, each as (arm a, arm b, what a against b asks)
IN_SHORT = (
    ("ensemble_min", "single", "The full ensemble's minimum against one reward model"),
    ("multihead_min", "single", "The multi-head minimum as the paper's text trains it (1 epoch) "
     "against one reward model"),
    ("multihead_min", "ensemble_min", "The same multi-head model as good as the ensemble "
     "(parity within ±0.2)"),
    ("multihead-3ep_min", "ensemble_min", "Multi-head at the ensemble's 3 epochs as good as the "
     "ensemble"),
    ("multihead-authors_min", "ensemble_min", "Multi-head in the authors' code's regime as good "
     "as the ensemble"),
    ("ensemble-k1_min", "single", "One reward model trained 3 epochs instead of 1 (the epochs "
     "alone)"),
    ("ensemble_min", "ensemble-k1_min", "Five such members against one (the ensembling alone)"),
)  # fmt: skip


def in_short_block(side: pd.DataFrame) -> str:
    """The headline in a few lines, from the replication table's pooled columns (all seeds): the
    single proxy's overoptimisation count, then each comparison of `IN_SHORT` at the largest KL
    level every seed of every arm reached."""
    level = matched_level(side.rename(columns={"verdict_all": "verdict"}))
    over = side[side["measure"] == "PPO runs overoptimised (single)"]
    lines = [f"- Optimising the single proxy overoptimises (gold peaks, then falls while the proxy "
             f"rises) in {r.measured_all}: **{r.verdict_all}**." for r in over.itertuples()]  # fmt: skip
    if level is None:
        return "\n".join([*lines, "- No KL level was reached by every seed of every arm."])
    at = side[side["measure"] == f"PPO gold at KL {level:g}"]
    for a, b, what in IN_SHORT:
        row = at[at["measured_all"].str.startswith(f"{a} ")
                 & at["measured_all"].str.contains(f" vs {b} ", regex=False)]  # fmt: skip
        if row.empty:
            continue
        r = row.iloc[0]
        diff = r["measured_all"].split("difference ", 1)[-1].split(" (margin", 1)[0]
        lines.append(f"- {what}: {diff} gold at KL {level:g}, {r['design_all']}: "
                     f"**{r['verdict_all']}**.")  # fmt: skip
    return "\n".join(lines)


def reward_models_block(metrics: dict) -> str:
    """Per reward-model arm (`results/rm/metrics.json`): clean accuracy of one head and of the
    minimum, the heads' correlation on held-out pairs, how far the heads moved from their start,
    and the ECE of min / mean / max (mean ± 95% interval over seeds)."""
    arms = list(dict.fromkeys(k.split(".")[0] for k in metrics if "." in k))

    def get(key: str, digits: int = 3) -> str:
        v = metrics.get(key)
        if v is None:
            return "—"
        if isinstance(v, dict):
            m, ci = v.get("mean"), v.get("ci95")
            if m is None or (isinstance(m, float) and math.isnan(m)):
                return "—"
            ok = ci is not None and not (isinstance(ci, float) and math.isnan(ci))
            return f"{m:.{digits}f} ± {ci:.{digits}f}" if ok else f"{m:.{digits}f}"
        return f"{v:.{digits}f}"

    rows = []
    for arm in arms:
        rows.append({
            "arm": f"`{arm}`",
            "clean accuracy, one head": get(f"{arm}.acc_clean.head_mean"),
            "clean accuracy, min": get(f"{arm}.acc_clean.min"),
            "head correlation": get(f"{arm}.head_corr", 2),
            "heads moved ‖W−W₀‖/‖W₀‖": get(f"{arm}.head_moved", 2),
            "ECE min / mean / max": " / ".join(
                get(f"{arm}.ece_clean.{m}").split(" ±")[0] for m in ("min", "mean", "max")
            ),
        })  # fmt: skip
    return markdown_table(pd.DataFrame(rows))


def cheap_block(summary: pd.DataFrame, claims: pd.DataFrame) -> str:
    """Each arm's training compute and seconds against its PPO gold at the matched level (the
    Pareto table of `results/cheap/summary.csv`), then the cheap arms' claims."""
    rows = [
        {
            "arm": f"`{r.arm}`",
            "training compute (encoder-epochs)": int(r.encoder_epochs),
            "training seconds": f"{r.train_seconds:.0f}",
            "PPO gold (mean ± 95%)": f"{r.gold:.2f} ± {r.gold_ci95:.2f}",
            "seeds": int(r.ppo_seeds),
            "on the front": "yes" if r.pareto else "",
        }
        for r in summary.itertuples(index=False)
    ]
    return markdown_table(pd.DataFrame(rows)) + "\n\n" + claims_block(claims)


def noise_block(summary: pd.DataFrame, claims: pd.DataFrame) -> str:
    """Per family and flip rate: PPO gold at the matched level, the gold lost after the peak and
    the minimum's ECE (`results/noise/summary.csv`), then the label-noise claims."""
    rows = [
        {
            "family": f"`{r.family}`",
            "flip rate": f"{r.flip_rate:g}",
            "PPO gold (mean ± 95%)": f"{r.gold:.2f} ± {r.gold_ci95:.2f}",
            "gold lost after the peak": f"{r.gold_drop:.2f} ± {r.gold_drop_ci95:.2f}",
            "overoptimised": f"{int(r.overoptimised)}/{int(r.seeds)}",
            "ECE of the minimum": f"{r.ece:.3f} ± {r.ece_ci95:.3f}",
            **(
                {"win rate against SFT": f"{r.win_rate:.3f} ± {r.win_rate_ci95:.3f}"}
                if hasattr(r, "win_rate")
                else {}
            ),
        }
        for r in summary.itertuples(index=False)
    ]
    return markdown_table(pd.DataFrame(rows)) + "\n\n" + claims_block(claims)


def diversity_map_block(summary: pd.DataFrame, claims: pd.DataFrame) -> str:
    """Per arm: its heads' diversity on the SFT policy's samples and the gold its minimum protects
    over the single reward model (`results/diversity_map/summary.csv`), then the fits."""
    rows = [
        {
            "arm": f"`{r.arm}`",
            "family": r.family,
            "head diversity (1 - correlation)": f"{r.diversity:.3f} ± {r.diversity_ci95:.3f}",
            "protection (gold over single)": f"{r.protection:+.2f} ± {r.protection_ci95:.2f}",
            "seeds": int(r.seeds),
        }
        for r in summary.itertuples(index=False)
    ]
    return markdown_table(pd.DataFrame(rows)) + "\n\n" + claims_block(claims)


# each block: the committed file it is generated from, and how
SOURCES: dict[str, tuple[str, Callable[[Path], str]]] = {}


def _claims(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def _matched_kl(path: Path) -> str:
    runs = pd.read_csv(path)
    levels = [
        float(c.removeprefix("gold_at_kl")) for c in runs.columns if c.startswith("gold_at_kl")
    ]
    wins = path.with_name("win_rate.csv")
    return matched_kl_block(runs, levels, pd.read_csv(wins) if wins.exists() else None)


def figures_block(dvc_yaml: Path) -> str:
    """Which stage and notebook draws each figure, from the pipeline's own outs; a figure not
    made yet says the command that makes it."""
    import subprocess

    import yaml

    # what a fresh clone shows: the figures git carries (others live in DVC's cache, or are not
    # made yet); outside a git checkout, the files that exist
    git = subprocess.run(["git", "ls-files", "figures"], cwd=dvc_yaml.parent, capture_output=True,
                         text=True, check=False)  # fmt: skip
    tracked = set(git.stdout.split()) if git.returncode == 0 else None

    def made(path: str) -> bool:
        return path in tracked if tracked is not None else (dvc_yaml.parent / path).exists()

    rows = []
    for name, stage in yaml.safe_load(dvc_yaml.read_text())["stages"].items():
        nb = re.search(r"papermill (notebooks/\S+\.ipynb)", stage.get("cmd", ""))
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
        for path in outs:
            if path.startswith("figures/") and path.endswith(".png") and "${" not in path:
                pdf = path.removesuffix(".png") + ".pdf"  # its vector copy, where there is one
                vector = f" ([PDF]({pdf}))" if pdf in outs and made(pdf) else ""
                rows.append({
                    "figure": f"[`{path}`]({path}){vector}" if made(path)
                    else f"`{path}` (not in git: `python -m study.pipeline {name}` makes it)",
                    "stage": f"`{name}`", "notebook": f"`{nb.group(1)}`" if nb else "",
                })  # fmt: skip
    return markdown_table(pd.DataFrame(rows))


SOURCES.update({
    "figures": ("dvc.yaml", figures_block),
    "claims": ("results/report/claims.csv", lambda p: headline_claims_block(_claims(p))),
    "matched-kl": ("results/ppo/runs.csv", _matched_kl),
    "aggregations": ("results/aggregations/claims.csv", lambda p: claims_block(_claims(p))),
    "heads": ("results/heads/claims.csv", lambda p: claims_block(_claims(p))),
    "cheap": (
        "results/cheap/summary.csv",
        lambda p: cheap_block(pd.read_csv(p), _claims(p.with_name("claims.csv"))),
    ),
    "noise": (
        "results/noise/summary.csv",
        lambda p: noise_block(pd.read_csv(p), _claims(p.with_name("claims.csv"))),
    ),
    "diversity-map": (
        "results/diversity_map/summary.csv",
        lambda p: diversity_map_block(pd.read_csv(p), _claims(p.with_name("claims.csv"))),
    ),
    "replicate": ("results/replicate/claims.csv", lambda p: replicate_block(_claims(p))),
    "in-short": ("results/replicate/claims.csv", lambda p: in_short_block(_claims(p))),
    "world": ("results/world/metrics.json", lambda p: world_block(json.loads(p.read_text()))),
    "reward-models": (
        "results/rm/metrics.json", lambda p: reward_models_block(json.loads(p.read_text()))
    ),
})  # fmt: skip


def blocks(root: str | Path = ".") -> dict[str, str]:
    """Every generated block from the committed result files under `root`; a block whose file
    is not there says which command writes it."""
    root = Path(root)
    out = {}
    for name, (rel, make) in SOURCES.items():
        path = root / rel
        out[name] = (
            make(path)
            if path.exists()
            else f"*Not generated yet: `{rel}` is written by the pipeline (see the commands below).*"
        )
    return out


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    for page, names in write_pages(root, blocks(root)).items():
        print(f"{page}: {', '.join(names) or 'no generated block'}")
