"""Probe: does the CPU's kernel choice alone change the world's SFT policy?

Builds the world's corpus, tokenizer and SFT policy exactly as the world stage does (no pairs, no
samples) and prints fingerprints of each step and the final validation loss, the number
`results/world/metrics.json` records as `sft_final_val_loss`. Run it twice on one machine with
PyTorch's vectorised kernels capped at another instruction set, and compare:

    .venv/bin/python benchmarks/sft_kernels.py
    ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/sft_kernels.py

Same corpus, tokenizer and initial weights in both; a different final loss means the kernels'
floating point, not the seeds, is what differs between machines.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pandas as pd
import torch

from study.config import load_params
from study.generation import format_queries
from study.world import build


def main() -> None:
    params = load_params("params.yaml")
    torch.set_num_threads(params.run.threads)
    t0 = time.perf_counter()
    rng = np.random.default_rng(build._seed(params, build.SEED_CORPUS))
    instructions, responses, _ = build.sample_corpus(params.world, params.world.corpus_size, rng)
    corpus = pd.DataFrame({"prompt": [i.text for i in instructions], "response": responses})
    corpus["split"] = build.assign_splits(len(corpus), params.world.corpus_val_fraction, rng)
    tok = build.train_tokenizer([*corpus["prompt"], *corpus["response"]])
    vocab = json.dumps(sorted(tok.get_vocab().items())).encode()
    queries = format_queries(corpus["prompt"].tolist(), params.sources.prompt_template)
    ids, mask, labels, kept = build.encode_sft(tok, queries, corpus["response"].tolist(),
                                               params.sft.max_length)  # fmt: skip
    is_val = (corpus["split"] == "val").to_numpy()[kept]
    policy = build.build_policy(params.sft, tok, seed=build._seed(params, build.SEED_INIT))
    with torch.no_grad():
        init = float(sum(p.double().sum() for p in policy.parameters()))
    history = build.train_sft(policy, (ids[~is_val], mask[~is_val], labels[~is_val]),
                              (ids[is_val], mask[is_val], labels[is_val]), params.sft,
                              seed=build._seed(params, build.SEED_DATA), progress=False)  # fmt: skip
    print(json.dumps({
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY", "(unset)"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "vocab_md5": hashlib.md5(vocab).hexdigest(),
        "token_ids_sum": int(ids.sum()),
        "init_weights_sum": init,
        "first_train_loss": float(history["train_loss"].iloc[0]),
        "sft_final_val_loss": float(history["val_loss"].dropna().iloc[-1]),
        "seconds": round(time.perf_counter() - t0, 1),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
