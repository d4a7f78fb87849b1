"""Benchmark: the Ray engine of `study.pipeline` against its local loop, on the same DVC pipeline.

A toy DVC project of `--stages` shell stages (a fan-out of independent stages, then one that reads
them all, each sleeping `--sleep` seconds) runs under both engines, alternately, `--repeats` times
each, every stage forced (`dvc repro --force`, so DVC's run cache restores nothing). The
wall-clock time of each run covers what the runner does: Ray's start and stop, scheduling, and
each stage's `dvc repro` (DVC's start-up dominates a stage's own cost). The overhead of the Ray
engine is its median wall time over the local loop's.

    .venv/bin/python benchmarks/scheduler_overhead.py            # --stages 12 --sleep 5

Writes `results/bench/scheduler_overhead.csv` (one row per run) and prints the medians.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from study.engines import execute, execute_ray
from study.stage_graph import load_stages, plan

ROOT = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]


def project(root: Path, n: int, sleep: float) -> None:
    subprocess.run([*DVC, "init", "--no-scm", "-q"], cwd=root, check=True)
    lines = ["stages:"]
    for i in range(n - 1):
        lines += [f"  s{i}:", f"    cmd: sleep {sleep} && echo {i} > s{i}.txt", "    outs:",
                  f"      - s{i}.txt"]  # fmt: skip
    lines += [f"  join:\n    cmd: cat {' '.join(f's{i}.txt' for i in range(n - 1))} > join.txt"]
    lines += ["    deps:", *[f"      - s{i}.txt" for i in range(n - 1)]]
    lines += ["    outs:", "      - join.txt"]
    (root / "dvc.yaml").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=12)
    ap.add_argument("--sleep", type=float, default=5.0)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "results/bench/scheduler_overhead.csv")
    args = ap.parse_args()
    params = SimpleNamespace(run=SimpleNamespace(threads=1))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        project(root, args.stages, args.sleep)
        os.chdir(root)
        engines = {"local": execute, "ray": execute_ray}
        for r in range(args.repeats):
            for name, engine in engines.items():
                stages, stale = load_stages(root, params)
                run = plan(stages, stale, force=True)
                t0 = time.perf_counter()
                engine(stages, run, args.cores, dvc=DVC, log_dir=root / "logs",
                       echo=lambda *_: None, force=True)  # fmt: skip
                rows.append({"repeat": r, "engine": name, "seconds": time.perf_counter() - t0})
                print(rows[-1], flush=True)
    df = pd.DataFrame(rows).assign(stages=args.stages, sleep=args.sleep, cores=args.cores)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    med = df.groupby("engine")["seconds"].median()
    ideal = args.sleep * (-(-(args.stages - 1) // args.cores) + 1)
    print(med.round(2).to_string())
    print(f"sleep alone (the critical path on {args.cores} cores): {ideal:.1f} s")
    print(f"ray / local: {med['ray'] / med['local']:.3f}")
    print(f"per-repeat ratios: {[round(x, 3) for x in ratio(df)]}")


def ratio(df: pd.DataFrame) -> list[float]:
    wide = df.pivot(index="repeat", columns="engine", values="seconds")
    return list(wide["ray"] / wide["local"])


if __name__ == "__main__":
    main()
