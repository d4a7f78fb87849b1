"""bfloat16 PPO on CUDA: fused (SDPA) attention against eager attention in the policy.

    python benchmarks/gpu_bf16_attention.py OUT      # on a CUDA machine, ~3 min on one H200

Builds the default world and the 5-member ensemble in bfloat16, then runs PPO against the
ensemble's minimum twice, its policy and reference loaded with `attn_implementation` forced to
'sdpa' and to 'eager'. Prints each run's fate (the step and the error, or the last KL, proxy and
gold). `Placement.policy_kwargs` makes the eager choice for every policy in reduced precision.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from study.config import load_params  # noqa: E402
from study.config.run import PlacementConfig  # noqa: E402
from study.device import Placement  # noqa: E402
from study.ppo_train import run_ppo_stage  # noqa: E402
from study.rm_train import run_reward_stage  # noqa: E402
from study.world.build import build_world  # noqa: E402


def main() -> int:
    out = Path(sys.argv[1])
    p = load_params(ROOT / "params.yaml", "default")
    bf16 = dataclasses.replace(p, placement=PlacementConfig(device="cuda", dtype="bfloat16"))
    build_world(bf16, out / "world", progress=False)
    run_reward_stage(bf16, "ensemble", 0, out / "world", out / "rm" / "ensemble" / "seed0",
                     out / "res", progress=False)  # fmt: skip
    rows = []
    for attention in ("sdpa", "eager"):
        # the policy and reference load with this attention whatever the placement says
        Placement.policy_kwargs = lambda self, a=attention: {"attn_implementation": a}
        t0, row = time.perf_counter(), {"attention": attention}
        try:
            run_ppo_stage(bf16, "ensemble_min", 0, out / "world", out / "rm", out / attention / "r",
                          out / attention / "p", out / attention / "ck", progress=False)  # fmt: skip
            log = pd.read_parquet(out / attention / "r" / "log.parquet")
            row.update(log[["step", "kl", "proxy", "gold"]].iloc[-1].to_dict(), error="")
        except FloatingPointError as e:
            row["error"] = str(e)[:200]
        row["seconds"] = time.perf_counter() - t0
        print(row, flush=True)
        rows.append(row)
    pd.DataFrame(rows).to_csv(out / "gpu_bf16_attention.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
