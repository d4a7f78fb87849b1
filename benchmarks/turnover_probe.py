"""Probe: in how many seeds does the single proxy's gold rise before it falls, and what changes it?

The headline asks for the single proxy's turn-over (gold first gains, then loses at least
`report.min_gain_lost` of the gain while the proxy rises; `study.analysis.peak_and_fall`) in at
least 4 of 5 seeds. In some seeds gold falls from the first PPO step: the proxy is wrong in the
direction PPO first moves. This trains the single reward model and runs its PPO for each seed,
exactly as the stages `rm@single-<seed>` and `ppo_single@<seed>` do, in a world built with the
given overrides (or an existing world), and applies the study's rule. Overrides of the sections
the world stage reads (`WORLD_SECTIONS`) build a new world; others reuse `--world`.

    .venv/bin/python benchmarks/turnover_probe.py --tag base --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/turnover_probe.py --tag pairs18k -S preferences.n_pairs=18000

Appends one row per seed (the run's `peak_and_fall` summary, the reward model's validation
accuracy, the tag and overrides) to `--out`, and prints the count.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from study.analysis import run_summaries
from study.config import load_params, with_overrides
from study.export import heldout_accuracy
from study.io import write_csv
from study.ppo_train import run_ppo_stage
from study.rm_train import run_reward_stage
from study.world.build import build_world

WORLD_SECTIONS = ("world", "gold", "sft", "sampling", "preferences", "sources", "run")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", required=True, help="name of this setting in the table")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                    help="section.key=value, as `dvc exp run -S` takes it")  # fmt: skip
    ap.add_argument("--world", default="artifacts/world", help="world to reuse (no world override)")
    ap.add_argument("--out", default="results/bench/turnover.csv")
    args = ap.parse_args()
    params = with_overrides(load_params("params.yaml"), args.overrides, "--set")
    rebuild = any(o.split(".", 1)[0] in WORLD_SECTIONS for o in args.overrides)
    rows = []
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(args.out).parent) as tmp:
        tmp = Path(tmp)
        world = Path(args.world)
        if rebuild:
            t0 = time.perf_counter()
            world = tmp / "world"
            build_world(params, world, progress=False)
            print(f"[{args.tag}] world built in {time.perf_counter() - t0:.0f} s", flush=True)
        for seed in args.seeds:
            t0 = time.perf_counter()
            rm = tmp / "rm" / "single" / f"seed{seed}"
            res = tmp / "res" / f"s{seed}"
            run_reward_stage(params, "single", seed, world, rm, res / "rm", progress=False)
            run_ppo_stage(params, "single", seed, world, tmp / "rm", res / "ppo", tmp / "pol",
                          tmp / f"ck{seed}", progress=False)  # fmt: skip
            evals = pd.read_parquet(res / "ppo" / "evals.parquet")
            row = run_summaries(evals, params.report.kl_levels, params.report.min_gain_lost)
            row = row.assign(tag=args.tag, overrides=" ".join(args.overrides),
                             val_accuracy=heldout_accuracy(res / "rm", None)["labels"][0],
                             seconds=time.perf_counter() - t0)  # fmt: skip
            rows.append(row)
            r = row.iloc[0]
            print(f"[{args.tag}] seed {seed}: gold {r['gold_initial']:.3f} -> peak "
                  f"{r['gold_peak']:.3f} at step {int(r['step_peak'])} -> {r['gold_final']:.3f}, "
                  f"overoptimised {bool(r['overoptimised'])}, val acc {r['val_accuracy']:.3f} "
                  f"({r['seconds']:.0f} s)", flush=True)  # fmt: skip
    table = pd.concat(rows, ignore_index=True)
    out = Path(args.out)
    if out.exists():
        table = pd.concat([pd.read_csv(out), table], ignore_index=True)
    write_csv(out, table)
    mine = table[table["tag"] == args.tag]
    print(f"[{args.tag}] overoptimised in {int(mine['overoptimised'].sum())} of {len(mine)} seeds")


if __name__ == "__main__":
    main()
