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

Each stage's output goes to `.dvc/tmp/pipeline/<stage>.log`; `.dvc/tmp/pipeline/timings.csv`
records when each started and ended (and on which Ray node). When a stage fails, nothing new
starts, the stages already running finish (their results are kept), and the runner exits
non-zero naming the stage and showing the end of its log. Ctrl-C and SIGTERM stop every running
stage's process group and exit 130.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_DIR = Path(".dvc/tmp/pipeline")
# DVC, its lock file updated stage by stage rather than rewritten whole (study/lockfile.py)
DVC = [sys.executable, "-m", "study.lockfile"]


@dataclass
class Stage:
    """One pipeline stage as the scheduler sees it."""

    name: str  # DVC's address: `world`, `rm@single-0`, `rloo@single-0`
    upstream: set[str] = field(default_factory=set)  # stages whose outs it reads
    cores: int = 1
    exclusive: bool = False
    minutes: float = 1.0  # the scheduling estimate (`meta: {minutes: ...}`), not a measurement
    gpus: int = 0  # GPUs the stage asks for (`meta: {gpus: n}`; the Ray engine honours it)
    order: int = 0  # position in dvc.yaml, the tie-break
    cmd: str = ""  # the stage's shell command (its programs are checked before anything runs)


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
            gpus = meta.get("gpus", 0)
            if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 0:
                raise ValueError(f"stage {s.addressing}: meta.gpus {gpus!r}, not a count >= 0")
            stages[s.addressing] = Stage(
                name=s.addressing,
                gpus=gpus,
                cores=_param(params, str(threads), s.addressing),
                exclusive=bool(meta.get("exclusive", False)),
                minutes=float(minutes),
                order=i,
                cmd=s.cmd if isinstance(s.cmd, str) else " && ".join(s.cmd),
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
    expanded: list[str] = []
    for t in targets or []:
        group = sorted(n for n in stages if n.startswith(f"{t}@"))
        if t not in stages and group:  # a matrix or foreach stage: all of its items, as DVC does
            expanded.extend(group)
            continue
        if t not in stages:
            close = sorted(n for n in stages if n.startswith(t.split("@")[0]))
            hint = f" (stages of that name: {', '.join(close)})" if close else ""
            raise ValueError(f"no pipeline stage {t!r} in dvc.yaml{hint}")
        expanded.append(t)
    targets = expanded
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
    dvc = dvc or DVC
    log_dir.mkdir(parents=True, exist_ok=True)
    prio = priorities(stages, run)
    need = {n: min(stages[n].cores, cores) for n in run}
    eta = Eta(log_dir, need, cores)
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
                    echo(f"[{_clock(t_start)}] done  {n} in {t1 - t0:.0f} s "
                         f"({len(done)}/{len(run)} done{eta.left(run - done - set(failed))})")  # fmt: skip
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
        eta.record(timings)
    if failed:
        raise_failed(log_dir, failed, run, done)
    return timings


class StageFailed(RuntimeError):
    """A stage's command exited non-zero (raised inside its Ray task)."""

    def __init__(self, stage: str, row: dict[str, Any]):
        super().__init__(f"stage {stage} failed (exit {row['returncode']})")
        self.stage, self.row = stage, row

    def __reduce__(self) -> tuple:  # pickled between Ray's processes
        return (type(self), (self.stage, self.row))


class StageSkipped(RuntimeError):
    """A stage that did not start because another failed or the run was stopped."""

    def __init__(self, stage: str):
        super().__init__(f"stage {stage} not started: the run is stopping")
        self.stage = stage

    def __reduce__(self) -> tuple:
        return (type(self), (self.stage,))


def run_stage(
    name: str, cmd: list[str], cwd: str, log: str, stop: str, path: str, *upstream: Any
) -> dict[str, Any]:
    """One stage as a Ray task: its `dvc repro --single-item` in its own process group, on
    whichever node Ray placed it (the repository on a filesystem every node shares). `upstream`
    are the rows of the stages it waits for (Ray starts it once they exist). Raises StageFailed
    on a non-zero exit; a cancellation (Ctrl-C, SIGTERM) stops the stage's whole group."""
    import ray

    if Path(stop).exists():
        raise StageSkipped(name)
    t0 = time.time()
    env = {**os.environ, "PATH": path}
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            while proc.poll() is None:
                time.sleep(0.2)
        except BaseException:  # ray.cancel raises KeyboardInterrupt here
            stop_groups([proc])
            raise
    row = {
        "stage": name,
        "start": t0,
        "end": time.time(),
        "returncode": proc.returncode,
        "node": ray.get_runtime_context().get_node_id()[:12],
    }
    if proc.returncode != 0:
        Path(stop).touch()  # before Ray hands this task's CPUs to the next stage
        raise StageFailed(name, row)
    return row


def submit_order(stages: dict[str, Stage], run: set[str], prio: dict[str, float]) -> list[str]:
    """`run` in an order where every stage follows the stages it waits for, and among the stages
    free to go, the longest chain first (Ray starts tasks of equal demand in submission order)."""
    downstream = _downstream(stages, run)
    waiting = {n: len(stages[n].upstream & run) for n in run}
    ready = [n for n in run if waiting[n] == 0]
    order: list[str] = []
    while ready:
        n = start_order(stages, set(ready), prio)[0]
        ready.remove(n)
        order.append(n)
        for d in downstream[n]:
            waiting[d] -= 1
            if waiting[d] == 0:
                ready.append(d)
    if len(order) != len(run):
        raise ValueError(f"the stages {sorted(run - set(order))} wait on each other in a cycle")
    return order


def _demand(stage: Stage, nodes: list[dict[str, float]]) -> int:
    """The CPUs a stage asks Ray for: its threads (a whole node if it is exclusive), no more than
    the largest node with its GPUs has, as the local loop caps a stage at the machine's cores.
    Raises ValueError when no node has the GPUs it asks for."""
    fit = [int(r.get("CPU", 0)) for r in nodes if int(r.get("GPU", 0)) >= stage.gpus]
    if not fit or max(fit) < 1:
        have = max((int(r.get("GPU", 0)) for r in nodes), default=0)
        raise ValueError(
            f"stage {stage.name} asks for {stage.gpus} GPU(s) (meta.gpus); no node of the "
            f"Ray cluster has {'any' if have == 0 else 'that many'} (the most on one node: {have})"
        )
    return max(fit) if stage.exclusive else min(stage.cores, max(fit))


def _cancel_all(ray: Any, refs: dict[str, Any], stop: Path) -> None:
    """Stop the run: no stage starts; every task is cancelled, which stops its stage's process
    group; wait (up to 20 s) for them to go. A second Ctrl-C or SIGTERM is ignored meanwhile, so
    the cleanup cannot be cut short and leave a stage running."""
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with contextlib.suppress(ValueError):  # not the main thread: signals stay as they are
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)
    try:
        stop.touch()
        for ref in refs.values():
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False)  # a running task stops its stage's process group
        with contextlib.suppress(Exception):
            ray.wait(list(refs.values()), num_returns=len(refs), timeout=20)
    finally:
        with contextlib.suppress(ValueError):
            for sig, handler in old.items():
                signal.signal(sig, handler)


def execute_ray(
    stages: dict[str, Stage],
    run: set[str],
    cores: int,
    dvc: list[str] | None = None,
    log_dir: Path = LOG_DIR,
    echo: Any = print,
    heartbeat_s: float = 60.0,
    force: bool = False,
    address: str | None = None,
) -> list[dict[str, Any]]:
    """Run the stages of `run` as Ray tasks; their timings (with the node each ran on).

    Each stage is a task that asks for `cores` CPUs (its threads; the whole of a node if it is
    exclusive) and `gpus` GPUs (`meta: {gpus: n}`), started by Ray once the tasks of the stages it
    depends on have returned. Ray orders tasks of different demand itself: an exclusive stage may
    start between two single-core stages submitted before it. Without `address` (or
    RAY_ADDRESS) Ray starts on this machine with `cores` CPUs; with one, the stages run on that
    cluster, whose nodes must share this repository's filesystem. A stage that asks for more than any node has is refused before
    anything starts. When a stage fails, no new stage starts, those running finish, and
    RuntimeError names the first failure; KeyboardInterrupt stops every running stage."""
    import ray

    dvc = dvc or DVC
    log_dir = log_dir.resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    stop = log_dir / "stop"
    stop.unlink(missing_ok=True)
    for n in run:
        (log_dir / f"{n}.log").unlink(missing_ok=True)
    address = address or os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here:
        # "local": a Ray of its own, never one that another run on this machine started
        kwargs: dict[str, Any] = {"address": address} if address else {
            "address": "local", "num_cpus": cores, "object_store_memory": 100 * 2**20,
        }  # fmt: skip
        handler = signal.getsignal(signal.SIGTERM)
        ray.init(**kwargs, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        signal.signal(signal.SIGTERM, handler)  # Ray's own handler would exit at once
    timings: list[dict[str, Any]] = []
    eta: Eta | None = None  # set once the cluster's resources are known
    refs: dict[str, Any] = {}
    done: set[str] = set()
    failed: list[str] = []
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        demand = {n: _demand(stages[n], nodes) for n in sorted(run)}  # refuses what fits no node
        total = int(sum(r.get("CPU", 0) for r in nodes)) or cores
        eta = Eta(log_dir, {n: int(d) for n, d in demand.items()}, total)
        task = ray.remote(run_stage)
        cwd, path = str(Path.cwd().resolve()), os.environ.get("PATH", "")
        t_start = time.time()
        for n in submit_order(stages, run, priorities(stages, run)):
            refs[n] = task.options(
                num_cpus=demand[n], num_gpus=stages[n].gpus, max_retries=0, name=n
            ).remote(
                n, _command(n, dvc, force), cwd, str(log_dir / f"{n}.log"), str(stop), path,
                *[refs[u] for u in sorted(stages[n].upstream & run)],
            )  # fmt: skip
        pending = {ref: n for n, ref in refs.items()}
        seen: set[str] = set()
        last_beat = time.time()
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for n in sorted(set(pending.values()) - seen):  # a stage's log appears as it starts
                if (log_dir / f"{n}.log").exists():
                    seen.add(n)
                    echo(f"[{_clock(t_start)}] start {n} ({len(done)}/{len(run)} done)")
            if time.time() - last_beat >= heartbeat_s:
                last_beat = time.time()
                for n in sorted(seen - done - set(failed)):
                    echo(f"[{_clock(t_start)}] ...   {n} running: "
                         f"{last_log_line(log_dir / f'{n}.log')}")  # fmt: skip
            for ref in finished:
                n = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = e.cause
                    if not isinstance(cause, StageFailed | StageSkipped):
                        raise  # the task itself broke (not the stage's command)
                    if isinstance(cause, StageSkipped) or cause.stage != n:
                        continue  # not started, or an upstream stage's failure
                    row = cause.row
                    failed.append(n)
                    stop.touch()  # no stage starts from now on
                    echo(f"[{_clock(t_start)}] FAILED {n} (exit {row['returncode']}); "
                         f"log: {log_dir / f'{n}.log'}")  # fmt: skip
                else:
                    done.add(n)
                    echo(f"[{_clock(t_start)}] done  {n} in {row['end'] - row['start']:.0f} s "
                         f"({len(done)}/{len(run)} done{eta.left(run - done - set(failed))})")  # fmt: skip
                timings.append({**row, "start": row["start"] - t_start,
                                "end": row["end"] - t_start,
                                "seconds": row["end"] - row["start"]})  # fmt: skip
    except BaseException as e:  # Ctrl-C, SIGTERM (main turns it into KeyboardInterrupt), or Ray
        _cancel_all(ray, refs, stop)
        if isinstance(e, ray.exceptions.RayError):
            raise RuntimeError(f"the Ray cluster failed: {e}") from e
        raise
    finally:
        stop.unlink(missing_ok=True)
        _write_timings(log_dir / "timings.csv", timings)
        if eta is not None:
            eta.record(timings)
        if started_here:
            ray.shutdown()
    if failed:
        raise_failed(log_dir, failed, run, done)
    return timings


def raise_failed(log_dir: Path, failed: list[str], run: set[str], done: set[str]) -> None:
    """RuntimeError naming the first failed stage, the stages not run and the end of its log."""
    first = failed[0]
    tail = (log_dir / f"{first}.log").read_text(errors="replace")[-3000:]
    left = sorted(run - done - set(failed))
    raise RuntimeError(
        f"stage {first} failed; stages not run: {', '.join(left) or 'none'}\n"
        f"--- end of {log_dir / f'{first}.log'} ---\n{tail}"
    )


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


class Eta:
    """The time left, from each stage's seconds in earlier runs (`history.json` in the log
    directory: stage -> seconds of its last successful run). A stage never run before counts as
    the median of its stage group (the name before '@'), or of every known stage."""

    def __init__(self, log_dir: Path, need: dict[str, int], cores: int):
        self.path = log_dir / "history.json"
        try:
            self.seconds: dict[str, float] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.seconds = {}
        self.need, self.cores = need, max(1, cores)

    def expected(self, stage: str) -> float | None:
        if stage in self.seconds:
            return self.seconds[stage]
        group = [v for k, v in self.seconds.items() if k.split("@")[0] == stage.split("@")[0]]
        known = group or list(self.seconds.values())
        return statistics.median(known) if known else None

    def left(self, remaining: set[str]) -> str:
        """'~N min left' for the stages in `remaining` (core-seconds over the cores), or ''."""
        est = [(self.expected(n), self.need.get(n, 1)) for n in remaining]
        if not remaining or any(e is None for e, _ in est):
            return ""
        return f", ~{sum(e * c for e, c in est) / self.cores / 60:.0f} min left"

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Remember the seconds of this run's successful stages."""
        self.seconds.update({r["stage"]: r["seconds"] for r in rows if r["returncode"] == 0})
        with contextlib.suppress(OSError):
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.seconds, indent=1, sort_keys=True))
            tmp.replace(self.path)


SHELL_BUILTINS = {"cd", "export", "set", "exit", "true", "false", "test", "[", "echo", "exec"}


def missing_tools(stages: dict[str, Stage], run: set[str]) -> list[str]:
    """The programs that the commands of `run` start (the first word of each part between `&&`,
    `||`, `;` and `|`, past any `VAR=value`) and that are neither on PATH nor shell builtins."""
    progs = set()
    for n in run:
        for part in re.split(r"&&|\|\||;|\|", stages[n].cmd):
            words = [w for w in shlex.split(part) if not re.match(r"^[A-Za-z_]\w*=", w)]
            if words:
                progs.add(words[0])
    return sorted(p for p in progs if p not in SHELL_BUILTINS and shutil.which(p) is None)


def _clock(t0: float) -> str:
    s = int(time.time() - t0)
    return f"{s // 60:3d}:{s % 60:02d}"


def _write_timings(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(
            f, ["stage", "start", "end", "seconds", "returncode", "node"], restval=""
        )
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
        return 0
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
