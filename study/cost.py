"""Cost of the reward-model families against K: training time per epoch, peak memory, scoring
throughput and parameter count, measured side by side on the world's real preference pairs.

Each (family, K) point runs in a fresh Python process, so that one point's memory high-water mark
and allocator state cannot leak into the next. On a CPU, peak memory is the rise of the process's
peak resident set size (``ru_maxrss``) over its size before the model was built; on a GPU it is
``torch.cuda.max_memory_allocated``: ``peak_train_mb`` over training alone (measured first),
``peak_mb`` over training and scoring a batch of ``reward.eval_batch_size`` sequences. Training time per epoch is the median time of
``reward_eval.cost_steps`` optimiser steps (after 3 warm-up steps) times the steps in an epoch; for a
full ensemble, whose members train one after the other, a step is the sum over its K members. The
ratios to a single model (``train_x``, ``score_x``) are measured *paired* inside each process (the
median over batches of the per-batch ratio): a
reference single model steps on the same batch just before (even steps) or just after (odd steps)
the point's models, so the drift between processes (about ±20% here) and the order within a pair
(about 7%) cancel.

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

from study.bt_train import bt_step, member_seed
from study.config import Params, load_params
from study.device import CPU, Placement, on, resolve
from study.optim import length_grouped_batches
from study.reward_models import (
    EnsembleRewardModel,
    MultiHeadRewardModel,
    build_reward_model,
    num_parameters,
    right_pad,
)
from study.rm_train import load_pairs, reward_tokenizer

WARMUP_STEPS = 3
COST_FAMILIES = ("multihead", "ensemble")


def _rss_mb() -> float:
    """Current resident set size of this process, MiB (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _peak_mb(placement: Placement, rss0: float) -> float:
    """Peak memory so far, MiB: the GPU's allocations on CUDA, the process's RSS growth on the CPU."""
    if placement.device.type == "cuda":
        return torch.cuda.max_memory_allocated(placement.device) / 2**20
    return _peak_rss_mb() - rss0


class _Trainer:
    """One model's optimiser step (`study.bt_train.bt_step`) on a batch of pair indices, timed."""

    def __init__(
        self, model: MultiHeadRewardModel, pairs: Any, params: Params, pad_id: int,
        placement: Placement = CPU,
    ):  # fmt: skip
        self.model, self.pairs, self.cfg, self.pad_id = model, pairs, params.reward, pad_id
        self.placement = placement
        self.opt = torch.optim.AdamW(
            model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay
        )
        self.trainable = list(model.parameters())
        model.train()

    def step(self, idx: Sequence[int]) -> float:
        t0 = time.perf_counter()
        bt_step(
            self.model, self.opt, self.trainable, self.pairs, idx, self.pad_id, self.cfg.grad_clip,
            placement=self.placement,
        )  # fmt: skip
        self.placement.synchronize()
        return time.perf_counter() - t0


@torch.no_grad()
def _score_time(model: Any, seqs: list, pad_id: int, placement: Placement = CPU) -> float:
    t0 = time.perf_counter()
    with placement.autocast():
        model.rewards(*on(model, *right_pad(seqs, pad_id)))
    placement.synchronize()
    return time.perf_counter() - t0


def measure(family: str, k: int, params: Params, world_dir: str | Path) -> dict[str, Any]:
    """Cost of one (family, K) point in this process (see the module docstring).

    Memory is read first, with only the point's models alive. Times are then taken *paired*: a
    single reference model (K = 1) built in the same process steps on the same batch, alternately
    before and after the point's models, so `train_x` and `score_x` (point / single) cancel the
    drift between processes that absolute times carry.
    """
    if family not in COST_FAMILIES:
        raise ValueError(f"family: {family!r} (cost is measured for {', '.join(COST_FAMILIES)})")
    torch.set_num_threads(params.run.threads)
    cfg, ev = params.reward, params.reward_eval
    placement = resolve(params.placement)
    cuda = placement.device.type == "cuda"
    tok = reward_tokenizer(cfg, world_dir)
    pad = tok.pad_token_id
    train, epoch, score_batches = _workload(params, world_dir, tok)
    timed = epoch[WARMUP_STEPS : WARMUP_STEPS + ev.cost_steps]  # the same batches for every point
    policy_dir = Path(world_dir) / "policy"

    def build(heads: int, m: int) -> MultiHeadRewardModel:
        return placement.put(
            build_reward_model(cfg.encoder, policy_dir, heads, member_seed(0, 0, m),
                               cfg.head_init_std)
        )  # fmt: skip

    # 1. memory, with only this point's models alive (ru_maxrss only rises: training first)
    rss0 = _rss_mb()
    n_models, heads = (1, k) if family == "multihead" else (k, 1)
    members = [build(heads, m) for m in range(n_models)]
    trainers = [_Trainer(m, train, params, pad, placement) for m in members]
    for idx in epoch[:WARMUP_STEPS]:
        for t in trainers:
            t.step(idx)
    train_peak = _peak_mb(placement, rss0)
    scorer = members[0] if family == "multihead" else EnsembleRewardModel(members, vectorize=True)
    looped = EnsembleRewardModel(members, vectorize=False) if family == "ensemble" else None
    for m in members:
        m.eval()
    _score_time(scorer, score_batches[0], pad, placement)
    if looped is not None:
        _score_time(looped, score_batches[0], pad, placement)
    peak = _peak_mb(placement, rss0)

    # 2. training time, paired with a single reference model on the same batches
    ref = _Trainer(build(1, 99), train, params, pad, placement)
    for idx in epoch[:WARMUP_STEPS]:
        ref.step(idx)
    for m in members:
        m.train()
    ref_s, point_s = [], []
    for i, idx in enumerate(timed):  # alternate which goes first: the second of a pair runs warmer
        if i % 2 == 0:
            ref_s.append(ref.step(idx))
        point_s.append(sum(t.step(idx) for t in trainers))  # an ensemble trains member by member
        if i % 2 == 1:
            ref_s.append(ref.step(idx))
    # 3. scoring time, paired the same way (first batch: warm-up)
    ref.model.eval()
    for m in members:
        m.eval()
    ref_sc, vmap_sc, loop_sc = _paired_scoring(ref.model, scorer, looped, score_batches, pad,
                                               placement)  # fmt: skip
    loop = looped is not None and not cfg.vectorize_ensemble(cuda)
    row = {"family": family, "k": k, "parameters": num_parameters(scorer)}
    row.update(_times(cfg.epochs(family), len(epoch), point_s, ref_s, vmap_sc, loop_sc, ref_sc,
                      looped is not None, loop, cfg.eval_batch_size))  # fmt: skip
    row.update(peak_train_mb=train_peak, peak_mb=peak, device=str(placement.device),
               threads=params.run.threads)  # fmt: skip
    return row


def _workload(params: Params, world_dir: str | Path, tok: Any) -> tuple[Any, list, list]:
    """The training pairs, one epoch of length-grouped batches (a fixed order: the same batches for
    every point) and `reward_eval.cost_score_batches` + 1 scoring batches of validation sequences."""
    cfg, ev = params.reward, params.reward_eval
    _, train = load_pairs(params, world_dir, "train", tok)
    _, val = load_pairs(params, world_dir, "val", tok)
    lengths = np.array(
        [max(len(c), len(r)) for c, r in zip(train.chosen, train.rejected, strict=True)]
    )
    epoch = length_grouped_batches(
        lengths, cfg.batch_size, np.random.default_rng(0), drop_last=False
    )
    val_seqs = val.chosen + val.rejected
    score_batches = [
        [
            val_seqs[(b * cfg.eval_batch_size + i) % len(val_seqs)]
            for i in range(cfg.eval_batch_size)
        ]
        for b in range(ev.cost_score_batches + 1)
    ]
    return train, epoch, score_batches


def _paired_scoring(
    ref: Any, scorer: Any, looped: Any, score_batches: list, pad: int, placement: Placement
) -> tuple[list[float], list[float], list[float]]:
    """Seconds per batch of the reference, the point's scorer and (an ensemble) its member-by-member
    loop, the reference first on even batches and last on odd ones; the first batch is warm-up."""
    ref_sc, vmap_sc, loop_sc = [], [], []
    for b, seqs in enumerate(score_batches):
        t_ref = _score_time(ref, seqs, pad, placement) if b % 2 == 0 else None
        t_point = _score_time(scorer, seqs, pad, placement)
        t_loop = _score_time(looped, seqs, pad, placement) if looped is not None else float("nan")
        if t_ref is None:
            t_ref = _score_time(ref, seqs, pad, placement)
        if b > 0:
            for acc, t in zip((ref_sc, vmap_sc, loop_sc), (t_ref, t_point, t_loop), strict=True):
                acc.append(t)
    return ref_sc, vmap_sc, loop_sc


def _times(
    epochs: int, steps_per_epoch: int, point_s: list[float], ref_s: list[float],
    vmap_sc: list[float], loop_sc: list[float], ref_sc: list[float], ensemble: bool, loop: bool,
    batch: int,
) -> dict[str, Any]:  # fmt: skip
    """The timing columns of a cost row: medians of the point's steps and batches, and of their
    ratios to the paired reference's (`_x`); the headline scoring time is the path `loop` names."""
    med, nan = statistics.median, float("nan")

    def paired(times: list[float]) -> float:  # median over batches of (point / reference)
        return med([t / r for t, r in zip(times, ref_sc, strict=True)])

    step_s = med(point_s)
    score_vmap_s = med(vmap_sc)
    score_loop_s = med(loop_sc) if ensemble else nan
    score_s = score_loop_s if loop else score_vmap_s
    return {
        "train_step_s": step_s,
        "steps_per_epoch": steps_per_epoch,
        "train_epoch_s": step_s * steps_per_epoch,
        "epochs": epochs,
        "train_total_s": step_s * steps_per_epoch * epochs,
        "train_x": med([p / r for p, r in zip(point_s, ref_s, strict=True)]),
        "score_mode": "loop" if loop else ("vmap" if ensemble else "single model"),
        "score_batch_s": score_s,
        "score_seq_per_s": batch / score_s,
        "score_x": paired(loop_sc if loop else vmap_sc),
        "score_vmap_batch_s": score_vmap_s if ensemble else nan,
        "score_vmap_x": paired(vmap_sc) if ensemble else nan,
        "score_loop_batch_s": score_loop_s,
        "score_loop_x": paired(loop_sc) if ensemble else nan,
        "ref_train_step_s": med(ref_s),
        "ref_score_batch_s": med(ref_sc),
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
    if "train_x" in cost:  # paired, in-process ratios: the ones to quote
        out["train_epoch_paired_x"] = cost["train_x"]
        out["train_total_paired_x"] = cost["train_x"] * cost["epochs"] / base["epochs"]
        out["score_paired_x"] = cost["score_x"]
        out["score_vmap_paired_x"] = cost["score_vmap_x"]
        out["score_loop_paired_x"] = cost["score_loop_x"]
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
