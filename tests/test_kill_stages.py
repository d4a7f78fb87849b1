"""Faults: the world build, reward-model training and best-of-n, each killed (SIGKILL, SIGTERM) in
its own process at random points of its work, leave no process behind and no half-written file (a
file under its final name is the uninterrupted run's, byte for byte), and a rerun writes exactly
what a run never killed writes. (PPO, which resumes from checkpoints, is in test_faults.py.)"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import ROOT, toy_params

STAGES = ("world", "rm", "bon")

# The stage in a child process. With a fourth argument n, the child kills itself (SIGKILL) just
# before its n-th os.replace, the step that puts a finished file or directory under its final
# name: the worst moment for a writer that is not atomic. It reports how many it made.
RUN = """
import os, signal, sys
from pathlib import Path
from tests.test_kill_stages import run_stage
kill_at, made, replace = int(sys.argv[4]) if len(sys.argv) > 4 else 0, [0], os.replace
def counted(*args, **kwargs):
    made[0] += 1
    if made[0] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(*args, **kwargs)
os.replace = counted
print("ready", flush=True)
run_stage(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
print("replaces", made[0], flush=True)
"""


def kill_params():
    p = toy_params()
    return dataclasses.replace(p, bon=dataclasses.replace(p.bon, n_samples=8))


def run_stage(stage: str, inputs: Path, out: Path) -> None:
    """One stage's work, as its notebook runs it, reading `inputs` and writing under `out`."""
    params = kill_params()
    if stage == "world":
        from study.world.build import build_world

        build_world(params, out / "world", progress=False)
    elif stage == "rm":
        from study.rm_train import run_reward_stage

        run_reward_stage(params, "multihead", 0, inputs / "world", out / "model",
                         out / "results", progress=False)  # fmt: skip
    else:
        from study.bon_run import run_bon_stage

        run_bon_stage(params, inputs / "world", inputs / "rm", out / "results", ["multihead"],
                      [0], progress=False)  # fmt: skip


def _start(stage: str, inputs: Path, out: Path, kill_at: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN, stage, str(inputs), str(out), str(kill_at)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
    )  # fmt: skip


def _revisionless(obj: object) -> object:
    """A JSON value without the git revision a provenance records (a commit landing between the
    reference run and the rerun changes it, not the result)."""
    if isinstance(obj, dict):
        return {k: _revisionless(v) for k, v in obj.items() if k != "git_revision"}
    return obj


def _timeless(name: str, data: bytes) -> object:
    """A file's content with what a rerun may change without changing the result left out: the
    wall-clock `*seconds*` columns of a table and keys of a JSON file, and the git revision."""
    if name.endswith(".parquet"):
        df = pd.read_parquet(io.BytesIO(data))
        df = df.drop(columns=[c for c in df.columns if "second" in c])
        try:  # every value's bits (NaN equal to NaN)
            return list(df.columns), pd.util.hash_pandas_object(df).to_numpy().tobytes()
        except TypeError:  # a column of lists
            return df.to_json(double_precision=15)
    if name.endswith(".json"):
        obj = json.loads(data)
        obj = _revisionless(obj)
        return {k: v for k, v in obj.items() if "second" not in k} if isinstance(obj, dict) else obj
    return data


def _files(root: Path) -> dict[str, object]:
    out = {}
    for f in root.rglob("*"):
        if f.is_file():
            name = str(f.relative_to(root))  # a temporary is kept as bytes: it may be half-written
            out[name] = f.read_bytes() if ".tmp" in name else _timeless(f.name, f.read_bytes())
    return out


def _run(stage: str, inputs: Path, out: Path) -> tuple[float, int]:
    """Runs the stage to its end; returns the seconds of its work (after the imports) and the
    number of files and directories it put under their final names."""
    proc = _start(stage, inputs, out)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    rest, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, rest[-3000:]
    return time.perf_counter() - t0, int(rest.split("replaces ")[-1].split()[0])


def _no_process_left(pgid: int, what: str, seconds: float = 10.0) -> None:
    """Nothing of the stage's process group is left (its members given a moment to be reaped)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"{what}: a process of the stage's group is still alive after {seconds:.0f} s")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A toy world and a multi-head reward model (seed 0), as the stages downstream read them."""
    root = tmp_path_factory.mktemp("kill")
    run_stage("world", root, root)
    run_stage("rm", root, root / "rmrun")
    (root / "rm" / "multihead").mkdir(parents=True)
    (root / "rmrun" / "model").rename(root / "rm" / "multihead" / "seed0")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_killed_anywhere_leaves_nothing_half_written_and_reruns_to_the_same_bytes(
    stage, inputs, tmp_path
):
    work, replaces = _run(stage, inputs, tmp_path / "whole")
    whole = _files(tmp_path / "whole")
    assert whole and replaces >= 2, f"{stage} wrote {len(whole)} files, {replaces} renames"
    rng = random.Random(f"{stage}-{os.getpid()}")
    # a kill at a random point of the work, by SIGKILL and by SIGTERM; then just before the
    # first, a middle and the last rename of a finished output
    kills = [(sig, rng.uniform(0.0, 0.9) * work, 0) for sig in (signal.SIGKILL, signal.SIGTERM)]
    kills += [(signal.SIGKILL, None, n) for n in sorted({1, (replaces + 1) // 2, replaces})]
    for sig, delay, kill_at in kills:
        out = tmp_path / f"killed-{sig.name}-{kill_at}-{rng.random():.6f}"
        what = f"{stage} killed by {sig.name} " + (
            f"after {delay:.2f} s" if delay is not None else f"before rename {kill_at}"
        )
        proc = _start(stage, inputs, out, kill_at)
        assert proc.stdout.readline().strip() == "ready"
        if delay is not None:
            time.sleep(delay)
            os.killpg(proc.pid, sig)
        proc.communicate(timeout=900)
        assert proc.returncode != 0 or _files(out) == whole, what
        if kill_at:
            assert proc.returncode == -signal.SIGKILL, f"{what}: the run did not reach it"
        _no_process_left(proc.pid, what)
        # what the kill left under a final name is complete: the uninterrupted run's content
        left = {k: v for k, v in _files(out).items() if ".tmp" not in k and ".old" not in k}
        half = [k for k, v in left.items() if whole.get(k) != v]
        assert not half, f"{what}: half-written {half}"
        _run(stage, inputs, out)
        after = _files(out)
        assert not [k for k in after if ".tmp" in k or ".old" in k], f"{what}: left {sorted(after)}"
        assert after == whole, f"{what}: the rerun differs from a run never killed"
