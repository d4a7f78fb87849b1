"""Run the DVC pipeline's stale stages side by side: `python -m study.pipeline [targets] [-j N]`.

`dvc repro` runs one stage at a time, each on `run.threads` torch threads. On a machine with more
cores than that, this runner keeps several stages going; it keeps `dvc repro`'s semantics and only
changes the schedule (on the 2-core default machine, with `run.threads: 2`, it runs one stage at
a time, as `dvc repro` does). It asks DVC which stages are stale, and runs each of them, and
everything downstream of them, as `dvc repro --single-item <stage>` once every stage it depends
on has finished, as many at a time as there are cores. DVC itself hashes
the deps, runs the command, caches the outs and writes `dvc.lock`; it releases its repository lock
while a stage's command runs (and `--wait-for-lock` queues the short locked phases), so the
results are those of `dvc repro`, stage for stage, and a `dvc repro` afterwards runs nothing.

A stage occupies as many cores as the torch threads it runs with: `run.threads` of the active
profile, or the param that a stage names in its `meta: {threads: <param>}`. A stage with
`meta: {exclusive: true}` runs with nothing beside it (for timings that a neighbour would disturb).
Ready stages start in order of the longest chain of stages still to run behind them, counted in
the minutes that a stage may estimate in `meta: {minutes: <n>}` (1 if it does not), so the
critical path goes first and a long side study that only the report waits on does not start last.
An exclusive stage that is next in line waits for the running stages to end.

Each stage's output goes to `.dvc/tmp/pipeline/<stage>.log`; `.dvc/tmp/pipeline/timings.csv`
records when each started and ended. When a stage fails, nothing new starts, the stages already
running finish (their results are kept), and the runner exits non-zero naming the stage and
showing the end of its log. Ctrl-C stops every running stage.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_DIR = Path(".dvc/tmp/pipeline")


@dataclass
class Stage:
    """One pipeline stage as the scheduler sees it."""

    name: str  # DVC's address: `world`, `rm@single-0`, `rloo@single-0`
    upstream: set[str] = field(default_factory=set)  # stages whose outs it reads
    cores: int = 1
    exclusive: bool = False
    minutes: float = 1.0  # the scheduling estimate (`meta: {minutes: ...}`), not a measurement
    order: int = 0  # position in dvc.yaml, the tie-break


def _param(params: Any, dotted: str, stage: str) -> int:
    """The integer at `dotted` (say `run.threads`) of the active profile's params."""
    node = params
    for part in dotted.split("."):
        if not hasattr(node, part):
            raise ValueError(f"stage {stage}: meta.threads names {dotted!r}, which params lack")
        node = getattr(node, part)
    if not isinstance(node, int) or isinstance(node, bool) or node < 1:
        raise ValueError(f"stage {stage}: meta.threads {dotted!r} is {node!r}, not a count >= 1")
    return node


def load_stages(repo_root: Path, params: Any) -> tuple[dict[str, Stage], set[str]]:
    """(every pipeline stage, the stale ones) from DVC's own graph and status.

    The repository is opened, read and closed here, so no lock is held once scheduling starts."""
    from dvc.repo import Repo

    repo = Repo(str(repo_root))
    try:
        graph = repo.index.graph  # an edge u -> v: stage u depends on stage v
        stages: dict[str, Stage] = {}
        for i, s in enumerate(repo.index.stages):
            if not getattr(s, "cmd", None):
                continue  # a .dvc file's data, not a pipeline stage
            meta = s.meta or {}
            if not isinstance(meta, dict):
                raise ValueError(f"stage {s.addressing}: meta must be a mapping, got {meta!r}")
            threads = meta.get("threads", "run.threads")
            minutes = meta.get("minutes", 1.0)
            if not isinstance(minutes, int | float) or isinstance(minutes, bool) or minutes <= 0:
                raise ValueError(
                    f"stage {s.addressing}: meta.minutes {minutes!r}, not a number > 0"
                )
            stages[s.addressing] = Stage(
                name=s.addressing,
                cores=_param(params, str(threads), s.addressing),
                exclusive=bool(meta.get("exclusive", False)),
                minutes=float(minutes),
                order=i,
            )
        for u, v in graph.edges():
            if u.addressing in stages and v.addressing in stages:
                stages[u.addressing].upstream.add(v.addressing)
        stale = {name for name in repo.status() if name in stages}
    finally:
        repo.close()
    return stages, stale


def plan(
    stages: dict[str, Stage],
    stale: set[str],
    targets: list[str] | None = None,
    force: bool = False,
    single_item: bool = False,
) -> set[str]:
    """The stages to run: the stale ones (every one if `force`) and all downstream of them,
    within `targets` and what they depend on (every stage if no targets), or within `targets`
    alone if `single_item` (as `dvc repro --single-item`)."""
    for t in targets or []:
        if t not in stages:
            close = sorted(n for n in stages if n.startswith(t.split("@")[0]))
            hint = f" (stages of that name: {', '.join(close)})" if close else ""
            raise ValueError(f"no pipeline stage {t!r} in dvc.yaml{hint}")
    scope = set(stages)
    if single_item:
        if not targets:
            raise ValueError("--single-item needs the stages to run")
        scope = set(targets)
    elif targets:
        scope, todo = set(), list(targets)
        while todo:
            n = todo.pop()
            if n not in scope:
                scope.add(n)
                todo.extend(stages[n].upstream)
    downstream = _downstream(stages, set(stages))
    run, todo = set(), [n for n in scope if force or n in stale]
    while todo:
        n = todo.pop()
        if n in scope and n not in run:
            run.add(n)
            todo.extend(downstream[n])
    return run


def _downstream(stages: dict[str, Stage], within: set[str]) -> dict[str, set[str]]:
    """For each stage of `within`, the stages of `within` that depend on it directly."""
    down: dict[str, set[str]] = {n: set() for n in within}
    for n in within:
        for u in stages[n].upstream & within:
            down[u].add(n)
    return down


def start_order(stages: dict[str, Stage], names: set[str], prio: dict[str, float]) -> list[str]:
    """`names` in the order they start when all are ready: longest chain first, then dvc.yaml's."""
    return sorted(names, key=lambda n: (-prio[n], stages[n].order))


def priorities(stages: dict[str, Stage], run: set[str]) -> dict[str, float]:
    """For each stage to run, the estimated minutes of the longest chain of stages to run that
    starts at it (itself included; a stage without `meta.minutes` counts 1): the critical path
    goes first, and a long stage that nothing waits on does not start last."""
    downstream = _downstream(stages, run)
    memo: dict[str, float] = {}

    def depth(n: str) -> float:
        if n not in memo:
            memo[n] = stages[n].minutes + max((depth(d) for d in downstream[n]), default=0.0)
        return memo[n]

    return {n: depth(n) for n in run}


def _command(name: str, dvc: list[str], force: bool = False) -> list[str]:
    # --force: DVC reruns the stage even when it finds it up to date (`-f` of the runner)
    return [
        *dvc,
        "--wait-for-lock",
        "repro",
        "--single-item",
        *(["--force"] if force else []),
        name,
    ]


def stop_groups(procs: list[subprocess.Popen], grace_s: float = 10.0) -> None:
    """End every stage's process group (DVC, papermill and the kernel it started): SIGTERM, then
    SIGKILL for what still runs after `grace_s` seconds."""
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.time() + grace_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.time()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group's other members, if any remain
        proc.wait()


def execute(
    stages: dict[str, Stage],
    run: set[str],
    cores: int,
    dvc: list[str] | None = None,
    log_dir: Path = LOG_DIR,
    echo: Any = print,
    poll_s: float = 0.2,
    heartbeat_s: float = 60.0,
    force: bool = False,
) -> list[dict[str, Any]]:
    """Run the stages of `run` on `cores` cores; their timings. Every `heartbeat_s` seconds each
    running stage is reported with its elapsed time and the last line of its log (a stage can run
    for minutes). Raises RuntimeError naming the first stage that failed, after the stages already
    running have finished."""
    dvc = dvc or [sys.executable, "-m", "dvc"]
    log_dir.mkdir(parents=True, exist_ok=True)
    prio = priorities(stages, run)
    need = {n: min(stages[n].cores, cores) for n in run}
    done: set[str] = set()
    running: dict[str, tuple[subprocess.Popen, float, Any]] = {}
    timings: list[dict[str, Any]] = []
    failed: list[str] = []
    t_start = time.time()
    last_beat = t_start

    def free() -> int:
        return cores - sum(need[n] for n in running)

    def ready() -> list[str]:
        if failed:
            return []
        waiting = {n for n in run - done - set(running) if stages[n].upstream & run <= done}
        return start_order(stages, waiting, prio)

    try:
        while len(done) + len(failed) < len(run) and (running or not failed):
            for n in ready():
                exclusive_running = any(stages[r].exclusive for r in running)
                if exclusive_running or (stages[n].exclusive and running):
                    break  # an exclusive stage runs alone; keep priority order behind it
                if need[n] > free():
                    break
                log = open(log_dir / f"{n}.log", "w")  # closed when the stage ends
                proc = subprocess.Popen(
                    _command(n, dvc, force), stdout=log, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
                running[n] = (proc, time.time(), log)
                echo(
                    f"[{_clock(t_start)}] start {n} ({need[n]} core(s); {len(done)}/{len(run)} done)"
                )
            if not running:
                break
            time.sleep(poll_s)
            if time.time() - last_beat >= heartbeat_s:
                last_beat = time.time()
                for n, (_, t0, _) in running.items():
                    echo(f"[{_clock(t_start)}] ...   {n} running for {_clock(t0)}: "
                         f"{last_log_line(log_dir / f'{n}.log')}")  # fmt: skip
            for n, (proc, t0, log) in list(running.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                log.close()
                del running[n]
                t1 = time.time()
                row = {"stage": n, "start": t0 - t_start, "end": t1 - t_start}
                timings.append({**row, "seconds": t1 - t0, "returncode": rc})
                if rc == 0:
                    done.add(n)
                    echo(f"[{_clock(t_start)}] done  {n} in {t1 - t0:.0f} s")
                else:
                    failed.append(n)
                    echo(f"[{_clock(t_start)}] FAILED {n} (exit {rc}); log: {log_dir / f'{n}.log'}")
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (main turns it into this)
        stop_groups([proc for proc, _, _ in running.values()])
        for _, _, log in running.values():
            log.close()
        raise
    finally:
        _write_timings(log_dir / "timings.csv", timings)
    if failed:
        first = failed[0]
        tail = (log_dir / f"{first}.log").read_text(errors="replace")[-3000:]
        left = sorted(run - done - set(failed))
        raise RuntimeError(
            f"stage {first} failed; stages not run: {', '.join(left) or 'none'}\n"
            f"--- end of {log_dir / f'{first}.log'} ---\n{tail}"
        )
    return timings


def last_log_line(path: Path, width: int = 100) -> str:
    """The last non-empty line of a stage's log, progress bars' carriage returns resolved."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [seg.strip() for line in tail.splitlines() for seg in line.split("\r")[-1:]]
    lines = [x for x in lines if x]
    return lines[-1][:width] if lines else ""


def _clock(t0: float) -> str:
    s = int(time.time() - t0)
    return f"{s // 60:3d}:{s % 60:02d}"


def _write_timings(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, ["stage", "start", "end", "seconds", "returncode"])
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = p.parse_args(argv)
    if args.cores < 1:
        p.error(f"--cores {args.cores}: must be >= 1")

    from study.config import load_params

    params = load_params(args.params)
    stages, stale = load_stages(Path.cwd(), params)
    run = plan(stages, stale, args.targets, args.force, args.single_item)
    if not run:
        print("Data and pipelines are up to date.")
        return 0
    prio = priorities(stages, run)
    print(f"{len(run)} stage(s) to run on {args.cores} core(s):")
    for n in start_order(stages, run, prio):
        s = stages[n]
        print(f"  {n}  ({s.cores} core(s){', exclusive' if s.exclusive else ''})")
    if args.dry:
        return 0
    t0 = time.time()

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    try:
        execute(stages, run, args.cores, force=args.force)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every running stage stopped; finished stages are kept", file=sys.stderr)
        return 130
    print(
        f"{len(run)} stage(s) in {(time.time() - t0) / 60:.1f} min; timings: {LOG_DIR / 'timings.csv'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
