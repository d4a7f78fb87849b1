"""The pipeline's stages as the scheduler sees them: DVC's graph and status read once, the stages a
run needs (`plan`), and the order they start in (the longest chain of stages behind them first)."""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Stage:
    """One pipeline stage as the scheduler sees it."""

    name: str  # DVC's address: `world`, `rm@single-0`, `rloo@single-0`
    upstream: set[str] = field(default_factory=set)  # stages whose outs it reads
    cores: int = 1
    exclusive: bool = False
    minutes: float = 1.0  # the scheduling estimate (`meta: {minutes: ...}`), not a measurement
    # GPUs the stage asks for (`meta: {gpus: n}`, else one for a model stage when placement.device
    # is cuda); the Ray engine honours it
    gpus: int = 0
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


MODEL_CODE = "study/device.py"  # what every stage that runs a model depends on


def model_gpus(placement: Any) -> int:
    """GPUs a model stage asks for by default: one per data-parallel process where
    `placement.device` is 'cuda' (or 'auto' on a machine with CUDA); none on the CPU, and none for
    'cuda:N', which names its GPU itself."""
    device = getattr(placement, "device", "cpu")
    per_stage = getattr(placement, "processes", 1)
    if device == "cuda":
        return per_stage
    if device == "auto":
        import torch

        return per_stage * int(torch.cuda.is_available())
    return 0


def load_stages(repo_root: Path, params: Any) -> tuple[dict[str, Stage], set[str]]:
    """(every pipeline stage, the stale ones) from DVC's own graph and status.

    The repository is opened, read and closed here, so no lock is held once scheduling starts."""
    from dvc.repo import Repo

    default_gpus = model_gpus(getattr(params, "placement", None))

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
            runs_models = any(getattr(d, "def_path", None) == MODEL_CODE for d in s.deps)
            gpus = meta.get("gpus", default_gpus if runs_models else 0)
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
    downstream = dependents(stages, set(stages))
    run, todo = set(), [n for n in scope if force or n in stale]
    while todo:
        n = todo.pop()
        if n in scope and n not in run:
            run.add(n)
            todo.extend(downstream[n])
    return run


def dependents(stages: dict[str, Stage], within: set[str]) -> dict[str, set[str]]:
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
    downstream = dependents(stages, run)
    memo: dict[str, float] = {}

    def depth(n: str) -> float:
        if n not in memo:
            memo[n] = stages[n].minutes + max((depth(d) for d in downstream[n]), default=0.0)
        return memo[n]

    return {n: depth(n) for n in run}


def submit_order(stages: dict[str, Stage], run: set[str], prio: dict[str, float]) -> list[str]:
    """`run` in an order where every stage follows the stages it waits for, and among the stages
    free to go, the longest chain first (Ray starts tasks of equal demand in submission order)."""
    downstream = dependents(stages, run)
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
