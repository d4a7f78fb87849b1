"""Cost of the reward-model families against K: training time per epoch, peak memory, scoring
throughput and parameter count, measured side by side on the world's real preference pairs.

Each (family, K) point runs in a fresh Python process, so that one point's memory high-water mark
and allocator state cannot leak into the next. On a CPU, peak memory is the rise of the process's
peak resident set size (``ru_maxrss``) over its size before the model was built; on a GPU it is
``torch.cuda.max_memory_allocated``: ``peak_train_mb`` over training alone (measured first),
``peak_mb`` over training and scoring a batch of ``reward.eval_batch_size`` sequences. Training time per epoch is the median time of
``reward_eval.cost_steps`` optimiser steps (after 3 warm-up steps) times the steps in an epoch; for a
full ensemble, whose members train one after the other, it is the sum over its K members.

    python -m study.cost --family multihead --k 5        # one point, printed as JSON
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from study.config import Params, load_params
from study.optim import length_grouped_batches
from study.reward_models import (
    EnsembleRewardModel,
    MultiHeadRewardModel,
    build_reward_model,
    num_parameters,
    right_pad,
)
from study.rewards import bt_loss
from study.rm_train import load_pairs, member_seed, reward_tokenizer

WARMUP_STEPS = 3
COST_FAMILIES = ("multihead", "ensemble")


def _rss_mb() -> float:
    """Current resident set size of this process, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _time_training(
    model: MultiHeadRewardModel, batches: list, pairs: Any, params: Params, pad_id: int
) -> float:
    """Median seconds of one optimiser step over the given batches (after warm-up)."""
    cfg = params.reward
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    times = []
    for i, idx in enumerate(batches):
        seqs = [pairs.chosen[j] for j in idx] + [pairs.rejected[j] for j in idx]
        t0 = time.perf_counter()
        ids, mask = right_pad(seqs, pad_id)
        r_chosen, r_rejected = model.rewards(ids, mask).chunk(2, dim=1)
        loss = bt_loss(r_chosen, r_rejected)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if i >= WARMUP_STEPS:
            times.append(time.perf_counter() - t0)
    model.eval()
    return statistics.median(times)


@torch.no_grad()
def _time_scoring(model: Any, seqs: list, batch_size: int, n_batches: int, pad_id: int) -> float:
    """Median seconds to score one batch of `batch_size` sequences (after one warm-up batch)."""
    times = []
    for b in range(n_batches + 1):
        chunk = [seqs[(b * batch_size + i) % len(seqs)] for i in range(batch_size)]
        t0 = time.perf_counter()
        model.rewards(*right_pad(chunk, pad_id))
        if b > 0:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(family: str, k: int, params: Params, world_dir: str | Path) -> dict[str, Any]:
    """Cost of one (family, K) point in this process (see the module docstring)."""
    if family not in COST_FAMILIES:
        raise ValueError(f"family: {family!r} (cost is measured for {', '.join(COST_FAMILIES)})")
    torch.set_num_threads(params.run.threads)
    cfg, ev = params.reward, params.reward_eval
    cuda = torch.cuda.is_available()
    tok = reward_tokenizer(cfg, world_dir)
    _, train = load_pairs(params, world_dir, "train", tok)
    _, val = load_pairs(params, world_dir, "val", tok)
    lengths = np.array(
        [max(len(c), len(r)) for c, r in zip(train.chosen, train.rejected, strict=True)]
    )
    epoch = length_grouped_batches(
        lengths, cfg.batch_size, np.random.default_rng(0), drop_last=False
    )
    timed = epoch[: WARMUP_STEPS + ev.cost_steps]  # the same batches for every point
    policy_dir = Path(world_dir) / "policy"
    rss0 = _rss_mb()
    n_models, heads = (1, k) if family == "multihead" else (k, 1)
    members = [
        build_reward_model(cfg.encoder, policy_dir, heads, member_seed(0, 0, m), cfg.head_init_std)
        for m in range(n_models)
    ]
    scorer = members[0] if family == "multihead" else EnsembleRewardModel(members)
    # training first: ru_maxrss only rises, so its peak is read before scoring can raise it
    step_s = [_time_training(m, timed, train, params, tok.pad_token_id) for m in members]
    train_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb() - rss0
    val_seqs = val.chosen + val.rejected
    score_s = _time_scoring(
        scorer, val_seqs, cfg.eval_batch_size, ev.cost_score_batches, tok.pad_token_id
    )
    score_loop_s = float("nan")
    if family == "ensemble":  # the Python loop that vmap replaces, for reference
        looped = EnsembleRewardModel(members, vectorize=False)
        score_loop_s = _time_scoring(
            looped, val_seqs, cfg.eval_batch_size, ev.cost_score_batches, tok.pad_token_id
        )
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mb() - rss0
    epoch_s = sum(step_s) * len(epoch)
    epochs = cfg.epochs(family)
    return {
        "family": family,
        "k": k,
        "parameters": num_parameters(scorer),
        "train_step_s": sum(step_s),
        "steps_per_epoch": len(epoch),
        "train_epoch_s": epoch_s,
        "epochs": epochs,
        "train_total_s": epoch_s * epochs,
        "score_batch_s": score_s,
        "score_seq_per_s": cfg.eval_batch_size / score_s,
        "score_loop_batch_s": score_loop_s,
        "peak_train_mb": train_peak,
        "peak_mb": peak,
        "device": "cuda" if cuda else "cpu",
        "threads": params.run.threads,
    }


def measure_all(
    params_path: str | Path,
    profile: str | None,
    world_dir: str | Path,
    ks: Sequence[int],
    families: Sequence[str] = COST_FAMILIES,
    progress: bool = True,
) -> pd.DataFrame:
    """Every (family, K) point, each in its own process; one tidy row per point."""
    rows = []
    for k in ks:
        for family in families:
            cmd = [sys.executable, "-m", "study.cost", "--family", family, "--k", str(k)]
            cmd += ["--params", str(params_path), "--world", str(world_dir)]
            if profile is not None:
                cmd += ["--profile", profile]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"cost point family={family} k={k} failed:\n{done.stderr[-3000:]}"
                )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            if progress:
                r = rows[-1]
                print(
                    f"{family:9s} K={k}: {r['train_epoch_s']:.1f} s/epoch, "
                    f"{r['score_seq_per_s']:.0f} seq/s, {r['peak_train_mb']:.0f} MiB, "
                    f"{r['parameters']:,} parameters",
                    file=sys.stderr,
                )
    return pd.DataFrame(rows)


def relative_to_single(cost: pd.DataFrame) -> pd.DataFrame:
    """Each point's cost divided by the single model's (multi-head K = 1), per measure."""
    single = cost[(cost["family"] == "multihead") & (cost["k"] == 1)]
    if single.empty:
        raise ValueError("cost table has no single model (family 'multihead', k 1) to compare with")
    base = single.iloc[0]
    out = cost[["family", "k"]].copy()
    for col in ("train_epoch_s", "train_total_s", "score_batch_s", "peak_train_mb", "parameters"):
        out[f"{col}_x"] = cost[col] / base[col]
    out["extra_parameters"] = cost["parameters"] - base["parameters"]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--family", required=True, choices=COST_FAMILIES)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--world", default="artifacts/world")
    a = ap.parse_args(argv)
    print(json.dumps(measure(a.family, a.k, load_params(a.params, a.profile), a.world)))


if __name__ == "__main__":
    main()
