"""Run the DVC pipeline's stale stages side by side: `python -m study.pipeline [targets] [-j N]`.

`dvc repro` runs one stage at a time, each on `run.threads` torch threads. This runner keeps
`dvc repro`'s semantics and only changes the schedule: it asks DVC which stages are stale, and
runs each of them, and everything downstream of them, as `dvc repro --single-item <stage>` once
every stage it depends on has finished, as many at a time as the cores allow. DVC itself hashes
the deps, runs the command, caches the outs and writes `dvc.lock`; it releases its repository lock
while a stage's command runs (and `--wait-for-lock` queues the short locked phases), so the
results are those of `dvc repro`, stage for stage, and a `dvc repro` afterwards runs nothing.

The engine is Ray (`--engine ray`, the default): each stage is a Ray task that asks for its
cores and GPUs and takes the tasks of its upstream stages as arguments, so Ray starts it once they
have returned and places it on a node with the resources free. Without an address Ray starts on
this machine with `-j` CPUs; with `--address` (or `RAY_ADDRESS`) the stages run on that cluster,
whose nodes share this repository's filesystem (docs/scaling.md). `--engine local` is a loop of
subprocesses on this machine with the same behaviour, for where Ray cannot start.

A stage occupies as many cores as the torch threads it runs with: `run.threads` of the active
profile, or the param that a stage names in its `meta: {threads: <param>}`; `meta: {gpus: n}`
asks for GPUs, and a stage that asks for more than any node has is refused before anything runs.
A stage with `meta: {exclusive: true}` runs with nothing beside it on its node (for timings that
a neighbour would disturb). Ready stages start in order of the longest chain of stages still to
run behind them, counted in the minutes that a stage may estimate in `meta: {minutes: <n>}` (1 if
it does not), so the critical path goes first.

When the stages have finished (or stopped on a failure), the executed notebooks they wrote are
rendered to HTML in one process (`study.render`). Each stage's output goes to
`.dvc/tmp/pipeline/<stage>.log`; `.dvc/tmp/pipeline/timings.csv` records when each started and
ended (and on which Ray node). When a stage fails, nothing new starts, the stages already running
finish (their results are kept), and the runner exits non-zero naming the stage and showing the
end of its log. Ctrl-C and SIGTERM stop every running stage's process group and exit 130.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from study.engines import LOG_DIR, execute, execute_ray
from study.stage_graph import load_stages, missing_tools, plan, priorities, start_order


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="*", help="stages to bring up to date (default: all)")
    p.add_argument(
        "-j", "--cores", type=int, default=os.cpu_count() or 1, help="cores to fill (default: all)"
    )
    p.add_argument("-f", "--force", action="store_true", help="rerun every stage in scope")
    p.add_argument(
        "-s", "--single-item", action="store_true", help="the targets only, not their upstream"
    )
    p.add_argument("--dry", action="store_true", help="print the plan, run nothing")
    p.add_argument(
        "--engine",
        choices=("ray", "local"),
        default=os.environ.get("STUDY_ENGINE", "ray"),
        help="ray: stages as Ray tasks, on this machine or the cluster at --address (default); "
        "local: a loop of subprocesses on this machine, for where Ray cannot start",
    )
    p.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="a running Ray cluster (default: $RAY_ADDRESS; none: Ray on this machine)",
    )
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    if args.cores < 1:
        p.error(f"--cores {args.cores}: must be >= 1")

    from dvc.lock import LockError

    from study.config import load_params

    try:
        params = load_params(args.params)
        stages, stale = load_stages(Path.cwd(), params)
        run = plan(stages, stale, args.targets, args.force, args.single_item)
    except ValueError as e:  # a bad target, param or stage meta: named, before anything runs
        print(f"error: {e}", file=sys.stderr)
        return 2
    except LockError as e:  # another dvc command (a running pipeline) holds the repository
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        holders = list(dict.fromkeys(x for x in lines if x.startswith("(PID")))
        print(f"error: another DVC command is running here ({lines[0]})", *holders,
              "Run this again when it has finished; if no such process exists, remove "
              ".dvc/tmp/rwlock.", sep="\n  ", file=sys.stderr)  # fmt: skip
        return 2
    if not run:
        print("Data and pipelines are up to date.")
        return 0 if args.dry else _render()
    prio = priorities(stages, run)
    where = f"the Ray cluster at {args.address}" if args.address else f"{args.cores} core(s)"
    print(f"{len(run)} stage(s) to run on {where} ({args.engine}):")
    for n in start_order(stages, run, prio):
        s = stages[n]
        print(f"  {n}  ({s.cores} core(s){', exclusive' if s.exclusive else ''})")
    if args.dry:
        return 0
    # stages run papermill and jupyter from the environment this runner runs in, activated or not
    os.environ["PATH"] = os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    )
    missing = missing_tools(stages, run)
    if missing:
        print(f"error: the stages' commands need {', '.join(missing)}, not found on PATH "
              f"(install the project: make setup)", file=sys.stderr)  # fmt: skip
        return 2
    t0 = time.time()

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    try:
        if args.engine == "ray":
            execute_ray(stages, run, args.cores, force=args.force, address=args.address)
        else:
            execute(stages, run, args.cores, force=args.force)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        _render()  # the pages of the stages that did finish
        return 1
    except KeyboardInterrupt:
        print("interrupted: every running stage stopped; finished stages are kept", file=sys.stderr)
        return 130
    print(
        f"{len(run)} stage(s) in {(time.time() - t0) / 60:.1f} min; timings: {LOG_DIR / 'timings.csv'}"
    )
    return _render()


def _render() -> int:
    """The executed notebooks' HTML pages, rendered once for the whole run (study.render)."""
    from study.io import ArtifactError
    from study.render import render

    try:
        pages = render()
    except ArtifactError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if pages:
        print(f"rendered {len(pages)} executed notebook(s) to HTML under reports/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
