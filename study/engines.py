"""The two engines that run a plan's stages, each as `dvc repro --single-item <stage>` in its own
process group: a loop of subprocesses on this machine (`execute`) and Ray tasks on this machine or
a cluster (`execute_ray`). Both stop a stage's whole process group on Ctrl-C or SIGTERM, and
report through `study.progress.Progress`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from study.progress import Eta, Progress
from study.stage_graph import Stage, priorities, start_order, submit_order

LOG_DIR = Path(".dvc/tmp/pipeline")
# DVC, its lock file updated stage by stage rather than rewritten whole (study/lockfile.py)
DVC = [sys.executable, "-m", "study.lockfile"]


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
    progress = Progress(run, log_dir, Eta(log_dir, need, cores), echo, heartbeat_s)
    running: dict[str, tuple[subprocess.Popen, float, Any]] = {}

    def startable() -> list[str]:
        """The stages to start now: ready ones in priority order, while cores are free; an
        exclusive stage runs alone (and the stages behind it wait their turn)."""
        if progress.failed:
            return []
        finished = progress.done
        waiting = {n for n in run - finished - set(running) if stages[n].upstream & run <= finished}
        free, chosen = cores - sum(need[n] for n in running), []
        for n in start_order(stages, waiting, prio):
            alone = stages[n].exclusive and (running or chosen)
            if any(stages[r].exclusive for r in [*running, *chosen]) or alone or need[n] > free:
                break
            chosen.append(n)
            free -= need[n]
        return chosen

    try:
        while len(progress.done) + len(progress.failed) < len(run) and (
            running or not progress.failed
        ):
            for n in startable():
                log = open(log_dir / f"{n}.log", "w")  # closed when the stage ends
                proc = subprocess.Popen(_command(n, dvc, force), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
                running[n] = (proc, time.time(), log)
                progress.started(n, need[n])
            if not running:
                break
            time.sleep(poll_s)
            progress.beat({n: t0 for n, (_, t0, _) in running.items()})
            for n, (proc, t0, log) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    del running[n]
                    row = {
                        "stage": n,
                        "start": t0,
                        "end": time.time(),
                        "returncode": proc.returncode,
                    }
                    progress.ended(n, row)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (main turns it into this)
        stop_groups([proc for proc, _, _ in running.values()])
        for _, _, log in running.values():
            log.close()
        raise
    finally:
        progress.close()
    progress.raise_if_failed()
    return progress.timings


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


def _demand(stage: Stage, nodes: list[dict[str, float]]) -> int:
    """The CPUs a stage asks Ray for: its threads (a whole node if it is exclusive), no more than
    the largest node with its GPUs has, as the local loop caps a stage at the machine's cores.
    Raises ValueError when no node has the GPUs it asks for."""
    fit = [int(r.get("CPU", 0)) for r in nodes if int(r.get("GPU", 0)) >= stage.gpus]
    if not fit or max(fit) < 1:
        have = max((int(r.get("GPU", 0)) for r in nodes), default=0)
        raise ValueError(
            f"stage {stage.name} asks for {stage.gpus} GPU(s) (meta.gpus, or placement.device: "
            f"cuda for a model stage); no node of the Ray cluster has "
            f"{'any' if have == 0 else 'that many'} (the most on one node: {have})"
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


def _start_ray(ray: Any, address: str | None, cores: int) -> bool:
    """Connect to the cluster at `address`, or start a Ray of this run's own on this machine with
    `cores` CPUs; whether it was started here (and so is shut down at the end)."""
    if ray.is_initialized():
        return False
    # "local": a Ray of its own, never one that another run on this machine started
    kwargs: dict[str, Any] = {"address": address} if address else {
        "address": "local", "num_cpus": cores, "object_store_memory": 100 * 2**20,
    }  # fmt: skip
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(**kwargs, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    signal.signal(signal.SIGTERM, handler)  # Ray's own handler would exit at once
    return True


def _task_row(ray: Any, ref: Any, name: str) -> dict[str, Any] | None:
    """The row of a finished task: its stage's row, or None for a stage that did not start (the
    run stopping, or an upstream stage's failure)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = e.cause
        if not isinstance(cause, StageFailed | StageSkipped):
            raise  # the task itself broke (not the stage's command)
        if isinstance(cause, StageSkipped) or cause.stage != name:
            return None
        return cause.row


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
    cluster, whose nodes must share this repository's filesystem. A stage that asks for more than
    any node has is refused before anything starts. When a stage fails, no new stage starts, those
    running finish, and RuntimeError names the first failure; KeyboardInterrupt stops every
    running stage."""
    import ray

    dvc = dvc or DVC
    log_dir = log_dir.resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    stop = log_dir / "stop"
    stop.unlink(missing_ok=True)
    for n in run:
        (log_dir / f"{n}.log").unlink(missing_ok=True)
    started_here = _start_ray(ray, address or os.environ.get("RAY_ADDRESS"), cores)
    progress: Progress | None = None  # made once the cluster's resources are known
    refs: dict[str, Any] = {}
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        demand = {n: _demand(stages[n], nodes) for n in sorted(run)}  # refuses what fits no node
        total = int(sum(r.get("CPU", 0) for r in nodes)) or cores
        eta = Eta(log_dir, {n: int(d) for n, d in demand.items()}, total)
        progress = Progress(run, log_dir, eta, echo, heartbeat_s)
        task = ray.remote(run_stage)
        cwd, path = str(Path.cwd().resolve()), os.environ.get("PATH", "")
        for n in submit_order(stages, run, priorities(stages, run)):
            refs[n] = task.options(
                num_cpus=demand[n], num_gpus=stages[n].gpus, max_retries=0, name=n
            ).remote(
                n, _command(n, dvc, force), cwd, str(log_dir / f"{n}.log"), str(stop), path,
                *[refs[u] for u in sorted(stages[n].upstream & run)],
            )  # fmt: skip
        pending = {ref: n for n, ref in refs.items()}
        seen: set[str] = set()
        while pending:
            finished, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for n in sorted(set(pending.values()) - seen):  # a stage's log appears as it starts
                if (log_dir / f"{n}.log").exists():
                    seen.add(n)
                    progress.started(n)
            progress.beat(dict.fromkeys(sorted(seen - progress.done - set(progress.failed))))
            for ref in finished:
                n = pending.pop(ref)
                row = _task_row(ray, ref, n)
                if row is not None:
                    progress.ended(n, row)
                    if row["returncode"] != 0:
                        stop.touch()  # no stage starts from now on
    except BaseException as e:  # Ctrl-C, SIGTERM (main turns it into KeyboardInterrupt), or Ray
        _cancel_all(ray, refs, stop)
        if isinstance(e, ray.exceptions.RayError):
            raise RuntimeError(f"the Ray cluster failed: {e}") from e
        raise
    finally:
        stop.unlink(missing_ok=True)
        if progress is not None:
            progress.close()
        if started_here:
            ray.shutdown()
    progress.raise_if_failed()
    return progress.timings
