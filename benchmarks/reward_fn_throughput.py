"""Benchmark: `study.reward_fn` (TRL's reward-function signature, from text) against the study's own
batched scoring (`study.reward_models.score_ids`, from token ids), on the same sequences.

A multi-head reward model (K heads) on the default profile's encoder (GPT-2, 2 layers, d = 128,
random weights: throughput does not depend on them) scores N (prompt, completion) pairs of the
default world's shape. Both paths run in batches of B on `--threads` threads:

* `score_ids`: the token ids prepared beforehand (prompt ids, completion ids, EOS), scored by the
  study's scoring as the reward-model evaluation and best-of-n stages call it;
* `reward_fn`: ``reward(prompts, completions)`` from the texts, tokenisation, padding,
  normalisation and the minimum over heads included, as GRPO or RLOO would call it.

The two are timed alternately, `--repeats` times each, and the median ratio reported (so that a
load on the machine falls on both). Writes `results/bench/reward_fn_throughput.csv`.

    .venv/bin/python benchmarks/reward_fn_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from study.config.world import SFTConfig
from study.export import export_reward_model
from study.reward_models import build_reward_model, score_ids
from study.rm_train import save_reward_model
from study.trl_reward import reward_fn
from study.world.grammar import sample_corpus
from study.world.sft import build_policy
from study.world.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512, help="sequences scored per repeat")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "results/bench/reward_fn_throughput.csv")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from study.config import load_params

    world = load_params(ROOT / "params.yaml", "default").world
    ins, responses, _ = sample_corpus(world, args.n, np.random.default_rng(0))
    prompts, completions = [i.text for i in ins], list(responses)
    tok = train_tokenizer([*prompts, *completions])
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        cfg = SFTConfig(n_layer=2, n_embd=128, n_head=4, max_length=192)
        build_policy(cfg, tok, seed=0).save_pretrained(d / "policy")
        tok.save_pretrained(d / "policy")
        rm = build_reward_model("policy", d / "policy", args.k, 0, pad_token_id=tok.pad_token_id)
        save_reward_model(rm, tok, d / "rm", {"family": "multihead"})
        norm = {"mean": [0.0] * args.k, "std": [1.0] * args.k, "fitted_on": "benchmark"}
        export_reward_model(d / "rm", d / "out", "min", 0.5, norm)
        reward = reward_fn(d / "out", aggregate="min", batch_size=args.batch)
        model = reward.bundle.model

        seqs = [
            tok(p)["input_ids"] + tok(c, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            for p, c in zip(prompts, completions, strict=True)
        ]
        rows = []
        for r in range(args.repeats):
            t0 = time.perf_counter()
            score_ids(model, seqs, tok.pad_token_id, args.batch)
            t1 = time.perf_counter()
            reward(prompts, completions)
            t2 = time.perf_counter()
            rows.append({"repeat": r, "score_ids_s": t1 - t0, "reward_fn_s": t2 - t1})
    df = pd.DataFrame(rows)
    df["ratio"] = df["reward_fn_s"] / df["score_ids_s"]
    summary = {
        "n": args.n,
        "batch": args.batch,
        "k": args.k,
        "threads": args.threads,
        "score_ids_seq_per_s": args.n / statistics.median(df["score_ids_s"]),
        "reward_fn_seq_per_s": args.n / statistics.median(df["reward_fn_s"]),
        "median_ratio": statistics.median(df["ratio"]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([summary]).to_csv(args.out, index=False)
    print(df.round(4).to_string(index=False))
    print(pd.Series(summary).to_string())


if __name__ == "__main__":
    main()
