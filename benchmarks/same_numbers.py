"""Does a code change move any number? Build a world, train reward models of every family (the
cheap ones included), run PPO, best-of-n and a few RLOO steps with two revisions of the package on
this machine, and compare what they write: every weight file byte for byte, every Parquet table
value for value (timing columns aside).

    python benchmarks/same_numbers.py 2e1d17a            # that revision against the working tree
    python benchmarks/same_numbers.py A B --profile smoke

Floating point differs between CPUs, so numbers made on another machine are not the reference:
both revisions run here. Prints one line per file and exits non-zero if any differs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("single", "multihead", "multihead-authors", "ensemble", "multihead-laplace",
            "ensemble-dropout", "ensemble-lora")  # fmt: skip
VARIANTS = ("single", "multihead_min", "ensemble_min", "gold")

RUN = """
import sys
from study.bon_run import run_bon_stage
from study.config import load_params
from study.ppo_train import run_ppo_stage
from study.rloo import train_rloo
from study.rm_train import run_reward_stage
from study.world.build import build_world
out, profile = sys.argv[1], sys.argv[2] or None
p = load_params("params.yaml", profile)
build_world(p, f"{out}/world", progress=False)
for fam in FAMILIES:
    run_reward_stage(p, fam, 0, f"{out}/world", f"{out}/rm/{fam}/seed0",
                     f"{out}/res/rm/{fam}/seed0", progress=False)
for v in VARIANTS:
    run_ppo_stage(p, v, 0, f"{out}/world", f"{out}/rm", f"{out}/res/ppo/{v}",
                  f"{out}/ppo/{v}", f"{out}/ck/{v}", progress=False)
run_bon_stage(p, f"{out}/world", f"{out}/rm", f"{out}/res/bon", ["single", "multihead"], [0],
              progress=False)
table = train_rloo(p, "multihead_min", 0, f"{out}/world", f"{out}/rm", f"{out}/ck/rloo",
                   progress=False, steps=3)
table.to_parquet(f"{out}/res/rloo.parquet")
"""


def tree(rev: str | None, tmp: Path) -> Path:
    """The package at `rev` (a git worktree under `tmp`), or the working tree for None."""
    if rev is None:
        return ROOT
    path = tmp / f"tree-{rev}"
    subprocess.run(["git", "worktree", "add", "-f", "--detach", str(path), rev], cwd=ROOT,
                   check=True, capture_output=True)  # fmt: skip
    return path


def run(src: Path, out: Path, profile: str) -> None:
    code = RUN.replace("FAMILIES", repr(FAMILIES)).replace("VARIANTS", repr(VARIANTS))
    subprocess.run([sys.executable, "-c", code, str(out), profile], cwd=src, check=True,
                   env={**os.environ, "PYTHONPATH": str(src)})  # fmt: skip


def same(a: Path, b: Path) -> bool:
    if a.suffix == ".parquet":
        x, y = pd.read_parquet(a), pd.read_parquet(b)
        timing = [c for c in x.columns if "second" in c or "elapsed" in c]
        return x.drop(columns=timing).equals(y.drop(columns=[c for c in timing if c in y]))
    return hashlib.md5(a.read_bytes()).digest() == hashlib.md5(b.read_bytes()).digest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="a git revision")
    ap.add_argument("new", nargs="?", help="a git revision (default: the working tree)")
    ap.add_argument("--profile", default="", help="params.yaml profile (default: its own)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        outs = []
        try:
            for i, rev in enumerate((args.old, args.new)):
                src, out = tree(rev, tmp), tmp / f"out{i}"
                print(f"running {rev or 'the working tree'} ...", flush=True)
                run(src, out, args.profile)
                outs.append(out)
        finally:
            for path in tmp.glob("tree-*"):
                subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT,
                               check=False)  # fmt: skip
        listed = [
            {
                f.relative_to(out)
                for f in out.rglob("*")
                if f.suffix in (".safetensors", ".parquet")  # RLOO's policy under ck/ too
            }
            for out in outs
        ]
        files = sorted(listed[0] | listed[1])
        if not files:
            raise SystemExit("neither revision wrote a weight file or a table: nothing compared")
        differ = 0
        for f in files:
            a, b = outs[0] / f, outs[1] / f
            ok = a.exists() and b.exists() and same(a, b)
            differ += not ok
            print(f"{'same  ' if ok else 'DIFFER'} {f}")
    print(f"{len(files) - differ} of {len(files)} files the same")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
