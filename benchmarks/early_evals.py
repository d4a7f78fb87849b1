"""Probe: does the single proxy's gold rise before it falls, seen at every PPO step?

The study evaluates every `ppo.eval_every` = 5 steps, and its overoptimisation rule counts a run
only where gold first rises. This reruns the single-proxy PPO of the study's own reward models
with an evaluation at every step (everything else as the active profile), so a peak inside the
first five steps is seen. Run after `make study` (it reads artifacts/world and artifacts/rm):

    .venv/bin/python benchmarks/early_evals.py --seeds 1 2 3 --out results/bench/early_evals.csv

Writes one row per seed and step (step, kl, proxy, gold) and prints, per seed, the gold at the
start, its peak in the first `--show` steps and where.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from study.config import load_params, with_overrides
from study.io import write_csv
from study.ppo_train import run_ppo_stage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--variant", default="single")
    ap.add_argument("--show", type=int, default=12, help="steps to summarise")
    ap.add_argument("--out", default="results/bench/early_evals.csv")
    args = ap.parse_args()
    params = with_overrides(load_params("params.yaml"), ["ppo.eval_every=1"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            out = Path(tmp) / f"s{seed}"
            run_ppo_stage(params, args.variant, seed, "artifacts/world", "artifacts/rm",
                          out / "res", out / "policy", out / "ck", progress=False)  # fmt: skip
            e = pd.read_parquet(out / "res" / "evals.parquet")[["step", "kl", "proxy", "gold"]]
            rows.append(e.assign(variant=args.variant, seed=seed))
            head = e[e["step"] <= args.show]
            peak = head.loc[head["gold"].idxmax()]
            print(f"seed {seed}: gold {e['gold'].iloc[0]:.3f} at step 0, peak {peak['gold']:.3f} "
                  f"at step {int(peak['step'])} (KL {peak['kl']:.2f}), "
                  f"{e['gold'].iloc[-1]:.3f} at step {int(e['step'].iloc[-1])}")  # fmt: skip
    write_csv(args.out, pd.concat(rows, ignore_index=True))


if __name__ == "__main__":
    main()
