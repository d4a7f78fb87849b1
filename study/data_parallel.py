"""Data parallelism for one big run: a reward-model or PPO stage on `placement.processes` processes.

With `processes: N > 1` the stage starts itself again under Hugging Face Accelerate's launcher
(`accelerate launch --multi_gpu --num_processes N`, torchrun underneath), one process per GPU on
CUDA (NCCL) or per core group on the CPU (gloo), and waits for them. Every process holds the whole
model and the same random streams:

- **reward models**: each process scores its share of every batch's pairs (every N-th pair), its
  loss weighted so that the shares sum to the batch's Bradley–Terry loss;
- **PPO**: every process samples and scores the whole rollout (the same seeds and weights give
  the same draws, checked every step), then runs the forward and backward passes of its share of
  each minibatch's rows, weighted by their share of the minibatch's response tokens.

The gradients are summed over the processes before clipping, so each optimiser step is the one a
single process takes, up to floating-point rounding (`tests/test_data_parallel.py` bounds it).
The first process writes the stage's outputs; the others write into a scratch folder.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from study.config import ConfigError, Params

MARK = "STUDY_DATA_PARALLEL"  # set in the launched processes: a stage runs, it does not relaunch
STAGES = {"rm": ("study.rm_train", "run_reward_stage"), "ppo": ("study.ppo_train", "run_ppo_stage")}


@dataclass(frozen=True)
class Shard:
    """This process's place among the data-parallel processes (`ALONE`: a single process, where
    every method leaves the numbers as they are)."""

    rank: int
    world: int

    def rows(self, n: int) -> list[int]:
        """The positions of `n` rows this process takes: every `world`-th from its rank."""
        return list(range(self.rank, n, self.world))

    def total(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the processes (a copy; every process gets the sum)."""
        out = value.detach().clone()
        if self.world > 1:
            dist.all_reduce(out)
        return out

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum each parameter's gradient over the processes. A parameter without a gradient in
        every process keeps none (as one process leaves it); one with a gradient somewhere gets
        zeros where it had none."""
        if self.world == 1:
            return
        device = params[0].device if params else torch.device("cpu")
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        for p, any_grad in zip(params, has.tolist(), strict=True):
            if not any_grad:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)

    def agree(self, value: float, what: str) -> None:
        """Stop every process if `value` is not the same in all of them."""
        nccl = dist.is_initialized() and dist.get_backend() == "nccl"  # NCCL reduces on the GPU
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        t = torch.tensor([value, -value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        if t[0].item() != value or -t[1].item() != value:
            raise RuntimeError(
                f"data parallel: {what} differs between the processes (process {self.rank}: "
                f"{value!r}); their sampling is not deterministic on this device"
            )


ALONE = Shard(0, 1)
_SHARD: Shard | None = None


def current() -> Shard | None:
    """This process's shard inside a data-parallel run, or None in a single process."""
    return _SHARD


def should_launch(params: Params) -> bool:
    """Whether a stage must start its processes: `placement.processes` > 1 and this is not one of
    them (a launched process never launches again)."""
    if params.placement.processes <= 1 or _SHARD is not None:
        return False
    if os.environ.get(MARK) == "1":
        raise RuntimeError("data parallel: a launched process has no shard (study.data_parallel)")
    return True


def check(params: Params, per_step: int, what: str) -> None:
    """Refuse, before any process starts, what N processes cannot run: more processes than rows
    to share (`per_step`, the rows of one batch or minibatch) or than GPUs, or one named GPU."""
    n, device = params.placement.processes, params.placement.device
    if n > per_step:
        raise ConfigError(
            f"placement.processes: {n} processes, but {what} has only {per_step} rows to share"
        )
    if device.startswith("cuda:"):
        raise ConfigError(
            f"placement.device: {device!r} names one GPU, but placement.processes is {n}: use "
            "device: cuda (each process takes the GPU of its local rank)"
        )
    if device in ("cuda", "auto") and torch.cuda.is_available() and torch.cuda.device_count() < n:
        raise ConfigError(
            f"placement.processes: {n}, but this machine has {torch.cuda.device_count()} CUDA "
            "device(s); one process per GPU"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(kind: str, params: Params, **kwargs: Any) -> None:
    """Run stage `kind` ('rm' or 'ppo': the module and function of `STAGES`, which called this)
    with `kwargs` on `placement.processes` processes under `accelerate launch`, and wait; a failure
    raises with the processes' last output."""
    n = params.placement.processes
    with tempfile.TemporaryDirectory(prefix="study-dp-") as tmp:
        job = Path(tmp) / "job.pkl"
        job.write_bytes(pickle.dumps((kind, params, kwargs)))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(n), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
               "-m", "study.data_parallel", str(job)]  # fmt: skip
        env = {**os.environ, MARK: "1", "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise RuntimeError(f"data parallel {kind} on {n} processes failed:\n{tail}")


def _scratch(kind: str, kwargs: dict[str, Any], root: Path) -> dict[str, Any]:
    """`kwargs` with every output folder moved under `root` (a process other than the first);
    PPO's checkpoint is copied there so that every process resumes from the same step."""
    outs = {"rm": ("model_dir", "results_dir"), "ppo": ("results_dir", "policy_dir")}[kind]
    kwargs = {**kwargs, **{k: root / k for k in outs}}
    if kind == "ppo":
        ck = Path(kwargs["checkpoint_dir"])
        mine = root / "checkpoint_dir"
        mine.mkdir(parents=True, exist_ok=True)
        if (ck / "checkpoint.pt").exists():
            shutil.copy(ck / "checkpoint.pt", mine / "checkpoint.pt")
        kwargs["checkpoint_dir"] = mine
    return kwargs


def main(job: str) -> None:
    """One launched process: join the group, take its GPU and shard, run the stage."""
    global _SHARD
    kind, params, kwargs = pickle.loads(Path(job).read_bytes())
    cuda = params.placement.device in ("cuda", "auto") and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    _SHARD = Shard(dist.get_rank(), dist.get_world_size())
    try:
        if _SHARD.rank > 0:
            kwargs = _scratch(kind, kwargs, Path(job).parent / f"rank{_SHARD.rank}")
        module, function = STAGES[kind]  # the stage's own module, imported by name
        getattr(importlib.import_module(module), function)(params, progress=False, **kwargs)
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":  # run as the package's module, where the stages look for the shard
    from study.data_parallel import main as _main

    _main(sys.argv[1])
