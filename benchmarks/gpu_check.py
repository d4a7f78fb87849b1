"""The smoke pipeline on a GPU: per-stage times, peak GPU memory, and the claims' difference from
the CPU run.

    bash benchmarks/gpu_check.sh                          # cuda, float32, seeds 0, 1, 5 and 6
    bash benchmarks/gpu_check.sh --dtype bfloat16 --cores 1
    python benchmarks/gpu_check.py --device cpu --write-reference   # the CPU reference, committed

Builds a smoke project in `--work` (this repository's code at the smoke profile, restricted to the
seeds given as the tests restrict it, one torch thread per stage, `placement` as given), runs every
stage the report needs with the local engine of `study.pipeline` on `--cores` cores (stages side by
side share the GPU), and samples the GPU's memory every quarter second with `nvidia-smi`. Writes
to `--out`:

- `gpu_check_stages.csv`: each stage's seconds, the GPU memory it saw at its peak above the idle
  GPU (MiB; the sum over the stages beside it when `beside` > 0: `--cores 1` gives each stage's
  own) and how many stages ran beside it;
- `gpu_check_claims.csv`: each claim's measured value and verdict here and in the reference run
  (`results/bench/gpu_check_reference_claims.csv`, the same project on this repository's CPU).

and prints the stage times, the peak and how many verdicts differ. Another device is another draw of
floating point (as another CPU is), so numbers move; the check shows by how much, and whether the
verdicts do. A stage that fails stops the run, naming it and its log.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

REFERENCE = ROOT / "results/bench/gpu_check_reference_claims.csv"
SEEDS = (0, 1, 5, 6)  # the tests' rehearsal: two seeds of each seed set


def build(work: Path, seeds: tuple[int, ...], placement: dict) -> Path:
    """A fresh smoke project in `work`/project: git and DVC initialised, nothing run."""
    from study.demo import copy_code
    from study.subgrid import write_restricted

    root = work / "project"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    copy_code(ROOT, root)
    write_restricted(root, set(seeds))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["smoke"]["run"] = {**raw["smoke"].get("run", {}), "threads": 1}
    raw["smoke"]["placement"] = placement
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def physical_gpu(device: str, visible: str | None) -> str:
    """The GPU `nvidia-smi -i` names for torch's `device` ('cuda' or 'cuda:N'), through
    CUDA_VISIBLE_DEVICES (`visible`) where it is set: torch counts the visible GPUs only."""
    index = int(device.partition(":")[2] or 0)
    shown = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    if not shown:
        return str(index)
    if index >= len(shown):
        raise ValueError(f"--device {device}: CUDA_VISIBLE_DEVICES={visible} shows {len(shown)}")
    return shown[index]


class GpuMemory:
    """`nvidia-smi`'s used memory of GPU `gpu` (MiB), sampled every `every_s` seconds in a thread,
    with the time of each sample; nothing where there is no `nvidia-smi`. A reading that fails
    stops the sampling and is kept in `error`."""

    def __init__(self, gpu: str = "0", every_s: float = 0.25):
        self.cmd = ["nvidia-smi", "-i", gpu, "--query-gpu=memory.used",
                    "--format=csv,noheader,nounits"]  # fmt: skip
        self.every_s, self.samples, self.error = every_s, [], None
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self) -> float:
        out = subprocess.run(self.cmd, capture_output=True, text=True, check=True).stdout
        return float(out.split()[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.read()))
            except (subprocess.CalledProcessError, ValueError, IndexError) as e:
                self.error = f"{' '.join(self.cmd)}: {e}"
                return
            self._stop.wait(self.every_s)

    def __enter__(self) -> GpuMemory:
        if self.available:
            self.idle = self.read()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def per_stage(timings: list[dict], t0: float, samples: list[tuple[float, float]],
              idle: float | None) -> pd.DataFrame:  # fmt: skip
    """One row per stage: its seconds, the peak of the memory samples taken while it ran, above
    `idle` (None without samples), and the number of other stages whose run overlapped its own.
    `timings` are the engine's rows, their start and end in seconds after `t0` (epoch seconds)."""
    rows = []
    for t in timings:
        start, end = t0 + t["start"], t0 + t["end"]
        seen = [used for when, used in samples if start <= when <= end]
        beside = sum(1 for u in timings if u is not t and u["start"] < t["end"] and u["end"] > t["start"])  # fmt: skip
        peak = round(max(seen) - idle, 1) if seen and idle is not None else None
        rows.append({"stage": t["stage"], "seconds": round(t["end"] - t["start"], 1),
                     "peak_gpu_mib": peak, "beside": beside})  # fmt: skip
    return pd.DataFrame(rows, columns=["stage", "seconds", "peak_gpu_mib", "beside"])


def compare_claims(reference: pd.DataFrame, here: pd.DataFrame) -> pd.DataFrame:
    """Each claim of either table: its measured value and verdict in both, and whether the verdict
    differs. Rows are matched by claim and measure, and where several rows share those (the
    minimum against the mean and against the maximum), by their order among them. A claim only
    one table has is a row with the other side empty."""
    key = ["claim", "measure"]
    for name, df in (("reference", reference), ("this run", here)):
        missing = {*key, "measured", "verdict"} - set(df.columns)
        if missing:
            raise ValueError(f"the {name}'s claims table lacks the columns {sorted(missing)}")
    cols = [*key, "measured", "verdict"]
    a, b = (df[cols].assign(nth=df.groupby(key).cumcount()) for df in (reference, here))
    out = a.merge(b, on=[*key, "nth"], how="outer", suffixes=("_cpu", "_here"))
    out["verdict_differs"] = out["verdict_cpu"] != out["verdict_here"]
    return out.drop(columns="nth")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="placement.device (default cuda)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument(
        "--checkpointing", action="store_true", help="the policy's activation checkpointing"
    )
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated (0,1,5,6)")
    ap.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="stages side by side")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_check"))
    ap.add_argument("--out", type=Path, default=Path("gpu_check"))
    ap.add_argument("--reference", type=Path, default=REFERENCE)
    ap.add_argument("--write-reference", action="store_true",
                    help=f"write this run's claims to --reference ({REFERENCE.relative_to(ROOT)})")  # fmt: skip
    args = ap.parse_args()
    # the run changes into the project: every path given is taken from here, before it does
    args.work, args.out, args.reference = (
        p.resolve() for p in (args.work, args.out, args.reference)
    )
    if args.write_reference and args.device != "cpu":
        ap.error("--write-reference: the reference is the CPU run's (--device cpu)")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    placement = {"device": args.device, "dtype": args.dtype,
                 "gradient_checkpointing": args.checkpointing}  # fmt: skip
    if not args.write_reference and not args.reference.exists():
        sys.exit(
            f"error: no reference claims table at {args.reference} (--write-reference makes one)"
        )
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])

    from study.config import ConfigError, load_params
    from study.config.run import PlacementConfig
    from study.device import resolve
    from study.engines import execute
    from study.stage_graph import load_stages, plan

    try:  # a device or dtype this machine lacks stops here, before anything is built
        resolve(PlacementConfig(**placement))
    except ConfigError as e:
        sys.exit(f"error: {e}")
    root = build(args.work, seeds, placement)
    os.chdir(root)
    params = load_params(root / "params.yaml")
    stages, stale = load_stages(root, params)
    run = plan(stages, stale, ["report"])
    print(f"{len(run)} stages of a smoke project (seeds {args.seeds}) on {args.cores} core(s), "
          f"placement {placement}", flush=True)  # fmt: skip
    cuda = args.device.startswith("cuda")
    gpu_index = physical_gpu(args.device, os.environ.get("CUDA_VISIBLE_DEVICES")) if cuda else "0"
    with GpuMemory(gpu_index) as gpu:
        t0 = time.time()  # the engine's clock starts within milliseconds of this one
        try:
            timings = execute(stages, run, args.cores, force=True)
        except RuntimeError as e:  # names the stage that failed and its log
            sys.exit(f"error: {e}")
    wall = time.time() - t0
    table = per_stage(timings, t0, gpu.samples, getattr(gpu, "idle", None))
    here = pd.read_csv(root / "results/report/claims.csv")
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "gpu_check_stages.csv", index=False)
    print(table.sort_values("seconds", ascending=False).to_string(index=False))
    print(
        f"\n{len(table)} stages in {wall / 60:.1f} min on {placement['device']} ({args.dtype})",
        end="",
    )
    if gpu.samples:
        print(f"; peak GPU memory {max(u for _, u in gpu.samples) - gpu.idle:.0f} MiB above idle")
    else:
        print("; no nvidia-smi: GPU memory not sampled")
    if gpu.error:
        print(f"warning: GPU memory sampling stopped early, peaks are low: {gpu.error}")
    if args.write_reference:
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        here.to_csv(args.reference, index=False)
        print(f"reference claims written to {args.reference}")
        return 0
    diff = compare_claims(pd.read_csv(args.reference), here)
    diff.to_csv(args.out / "gpu_check_claims.csv", index=False)
    with pd.option_context("display.max_colwidth", 60, "display.width", 200):
        print(diff[["measure", "measured_cpu", "measured_here", "verdict_cpu", "verdict_here"]])
    print(f"{int(diff['verdict_differs'].sum())} of {len(diff)} verdicts differ from the CPU run; "
          f"tables in {args.out}/")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
