"""What DVC's bookkeeping costs one stage as the pipeline grows: `dvc repro --single-item --force`
of the one-second stage `resolve_params` in finished projects whose dvc.lock holds more or fewer
stages, against its command alone, by plain DVC and through `python -m study.lockfile` (DVC with
the lock updated stage by stage, what `study.pipeline` runs); medians, one project at a time,
nothing else running.

    python benchmarks/lock_cost.py PROJECT [PROJECT ...] [--repeats 3] [--out results/bench/lock_cost.csv]

Each PROJECT is a finished DVC project of this study (e.g. the smoke project the tests build,
`STUDY_SMOKE_PROJECT`); the stage is rerun in place, rewriting the same bytes.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str] | str, cwd: Path, shell: bool = False) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, shell=shell, check=True, capture_output=True)
    return time.perf_counter() - t0


def measure(project: Path, repeats: int) -> dict:
    lock = (project / "dvc.lock").read_text()
    stages = len(yaml.safe_load(lock)["stages"])
    repro = ["repro", "--single-item", "--force", "resolve_params"]
    dvc = [sys.executable, "-m", "dvc", *repro]
    # this checkout's study.lockfile, whatever copy of the package the project holds
    splicer = f"import sys; sys.path.insert(0, {str(ROOT)!r}); from study.lockfile import main; "
    spliced = [sys.executable, "-c", splicer + "sys.exit(main(sys.argv[1:]))", *repro]
    command = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["resolve_params"]["cmd"]
    whole = [timed(dvc, project) for _ in range(repeats)]
    splice = [timed(spliced, project) for _ in range(repeats)]
    alone = [timed(command, project, shell=True) for _ in range(repeats)]
    return {
        "project": str(project),
        "stages_in_lock": stages,
        "lock_lines": lock.count("\n"),
        "repro_s": round(statistics.median(whole), 2),
        "command_s": round(statistics.median(alone), 2),
        "dvc_s": round(statistics.median(whole) - statistics.median(alone), 2),
        "repro_splice_s": round(statistics.median(splice), 2),
        "dvc_splice_s": round(statistics.median(splice) - statistics.median(alone), 2),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("projects", type=Path, nargs="+")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("results/bench/lock_cost.csv"))
    args = p.parse_args(argv)
    rows = [measure(project.resolve(), args.repeats) for project in args.projects]
    table = pd.DataFrame(rows).sort_values("stages_in_lock")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.drop(columns="project").to_csv(args.out, index=False)
    print(table.drop(columns="project").to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
