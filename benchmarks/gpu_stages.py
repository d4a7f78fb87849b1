"""Every model stage on each of several placements: seconds, peak memory and the numbers it made.

    python benchmarks/gpu_stages.py OUT --configs cuda:float32,cuda:bfloat16,cuda:float32:ckpt
    python benchmarks/gpu_stages.py OUT --profile default --configs cuda:float32,cpu:float32

Calls each stage's function as its notebook calls it: the world (SFT policy, preference pairs),
reward models of five families (multi-head, ensemble, Laplace heads, dropout and LoRA members),
PPO against two minima, best-of-n, three RLOO steps and one cost point. A config is
`device:dtype[:ckpt]` (ckpt: the policy's activation checkpointing). The world is the tests' toy
world (`--profile toy`, seconds) or a profile of params.yaml. One row per (config, stage) goes to
OUT/gpu_stages.csv as soon as the stage ends; a stage that fails is a row with its error, and the
next one runs. Peak memory is the GPU's allocations (CUDA) or the process's RSS growth (CPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study.config import load_params  # noqa: E402
from study.config.run import PlacementConfig  # noqa: E402

FAMILIES = ("multihead", "ensemble", "multihead-laplace", "ensemble-dropout", "ensemble-lora")
VARIANTS = ("multihead_min", "ensemble_min")


def _params(profile: str, config: str, ppo_steps: int | None):
    if profile == "toy":
        from tests.conftest import toy_params

        p = toy_params(steps=ppo_steps or 6, eval_every=3, checkpoint_every=3)
    else:
        p = load_params(ROOT / "params.yaml", profile)
        if ppo_steps:
            p = dataclasses.replace(p, ppo=dataclasses.replace(p.ppo, steps=ppo_steps))
    placement = _placement(config)
    return dataclasses.replace(p, placement=placement)


def _placement(config: str) -> PlacementConfig:
    """'cuda:float32', 'cuda:1:bfloat16:ckpt', 'cpu:float32' -> the placement they name."""
    parts = config.split(":")
    if parts[0] == "cuda" and len(parts) > 1 and parts[1].isdigit():
        parts = [f"cuda:{parts[1]}", *parts[2:]]
    device, rest = parts[0], parts[1:]
    dtype = rest[0] if rest else "float32"
    return PlacementConfig(device=device, dtype=dtype, gradient_checkpointing="ckpt" in rest[1:])


def _peak_start(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return 0.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb(device: str, start: float) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start


def _stages(p, out: Path):
    """(name, function returning a dict of numbers) for every stage, in pipeline order."""
    from study.bon_run import score_bon_samples
    from study.cost import measure
    from study.ppo_train import run_ppo_stage
    from study.rloo import train_rloo
    from study.rm_train import run_reward_stage
    from study.world.build import build_world

    world, rm = out / "world", out / "rm"

    def run_world():
        s = build_world(p, world, progress=False)
        return {"sft_final_val_loss": s.get("sft", {}).get("final_val_loss", np.nan)}

    def run_rm(family):
        def f():
            info = run_reward_stage(p, family, 0, world, rm / family / "seed0",
                                    out / "res" / "rm" / family, progress=False)  # fmt: skip
            val = pd.read_parquet(out / "res" / "rm" / family / "val_rewards.parquet")
            acc = float((val["r_chosen"] > val["r_rejected"]).mean())
            return {"steps": info["steps"], "val_acc_noisy": acc,
                    "finite": bool(np.isfinite(val[["r_chosen", "r_rejected"]]).all().all())}  # fmt: skip

        return f

    def run_ppo(variant):
        def f():
            res = out / "res" / "ppo" / variant
            run_ppo_stage(p, variant, 0, world, rm, res, out / "ppo" / variant,
                          out / "ck" / variant, progress=False)  # fmt: skip
            log = pd.read_parquet(res / "log.parquet")
            last = log.iloc[-1]
            return {"steps": len(log), "kl": last["kl"], "proxy": last["proxy"],
                    "gold": last["gold"], "step_s_median": log["step_seconds"].median()}  # fmt: skip

        return f

    def run_bon():
        samples, _, _ = score_bon_samples(p, world, rm, ["multihead"], [0], False)
        return {"responses": len(samples), "mean_gold": samples["gold"].mean()}

    def run_rloo():
        table = train_rloo(p, "multihead_min", 0, world, rm, out / "ck" / "rloo",
                           progress=False, steps=3)  # fmt: skip
        return {"steps": len(table), "gold": float(table["gold"].iloc[-1])}

    def run_cost():
        row = measure("ensemble", 2, p, world)
        return {k: row[k] for k in ("train_step_s", "score_batch_s", "peak_mb", "device")}

    yield "world", run_world
    for family in FAMILIES:
        yield f"rm {family}", run_rm(family)
    for variant in VARIANTS:
        yield f"ppo {variant}", run_ppo(variant)
    yield "bon", run_bon
    yield "rloo", run_rloo
    if p.preferences.n_pairs >= 100:  # the toy world has too few batches to time
        yield "cost", run_cost


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--profile", default="toy", help="toy (the tests' world) or a params profile")
    ap.add_argument("--configs", default="cuda:float32,cuda:bfloat16,cuda:float32:ckpt")
    ap.add_argument("--ppo-steps", type=int, default=None)
    ap.add_argument("--only", default="", help="comma-separated stage name prefixes to run")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "gpu_stages.csv"
    rows = []
    only = [s for s in args.only.split(",") if s]
    for config in args.configs.split(","):
        p = _params(args.profile, config, args.ppo_steps)
        torch.set_num_threads(p.run.threads)
        out = args.out / config.replace(":", "_")
        for name, fn in _stages(p, out):
            if only and not any(name.startswith(o) for o in only):
                continue
            start = _peak_start(p.placement.device)
            t0 = time.perf_counter()
            row = {"config": config, "profile": args.profile, "stage": name}
            try:
                row.update(fn())
                row["error"] = ""
            except Exception as e:  # a failed stage is a row: the next one runs
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                traceback.print_exc()
            row["seconds"] = time.perf_counter() - t0
            row["peak_mb"] = _peak_mb(p.placement.device, start)
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
                  flush=True)  # fmt: skip
            pd.DataFrame(rows).to_csv(csv, index=False)
    env = {"torch": torch.__version__, "cuda": torch.version.cuda,
           "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none"}  # fmt: skip
    print(env)
    (args.out / "environment.txt").write_text(f"{env}\n")
    return int(any(r["error"] for r in rows))


if __name__ == "__main__":
    sys.exit(main())
