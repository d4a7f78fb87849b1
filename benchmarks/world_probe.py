"""Probe: can a single proxy reward model be overoptimised in the built world?

A quick, self-contained check of the world's design, not the study: it trains one proxy reward
model (the SFT backbone with a scalar head, one epoch of Bradley–Terry on the noisy train pairs),
then optimises the SFT policy against it with REINFORCE leave-one-out (RLOO, k samples per prompt,
reward = proxy - beta * sequence KL) and logs proxy, gold and KL every step. If gold peaks and
falls while the proxy keeps rising, the world can show overoptimisation. The real reward models
and PPO live in their own stages; this probe only tells whether the world gives them something to
find. Run after `dvc repro world`:

    .venv/bin/python benchmarks/world_probe.py --steps 200 --out results/probe/world_probe.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from study.config import load_params
from study.generation import format_queries, sample
from study.hub import make_gold
from study.preferences import load_preferences


def encode_pairs(tok, queries, responses, finished):
    """Right-padded ids (B, T) of query + response (+ EOS where finished)."""
    rows = []
    for q, r, f in zip(queries, responses, finished, strict=True):
        ids = tok(q)["input_ids"] + tok(r, add_special_tokens=False)["input_ids"]
        rows.append(ids + ([tok.eos_token_id] if f else []))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def score(rm, ids, mask):
    return rm(input_ids=ids, attention_mask=mask).logits[:, 0]


def train_proxy(world, params, tok, seed, epochs=1, lr=1e-4, batch=32):
    torch.manual_seed(seed)
    rm = AutoModelForSequenceClassification.from_pretrained(world / "policy", num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    train = load_preferences(world, "train")
    q = format_queries(train["prompt"].tolist(), params.sources.prompt_template)
    c_ids, c_mask = encode_pairs(tok, q, train["chosen"], train["chosen_finished"])
    r_ids, r_mask = encode_pairs(tok, q, train["rejected"], train["rejected_finished"])
    opt = torch.optim.AdamW(rm.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    rm.train()
    for _ in range(epochs):
        order = rng.permutation(len(train))
        for s in range(0, len(train), batch):
            idx = torch.as_tensor(order[s : s + batch])
            loss = -F.logsigmoid(
                score(rm, c_ids[idx], c_mask[idx]) - score(rm, r_ids[idx], r_mask[idx])
            ).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(rm.parameters(), 1.0)
            opt.step()
    rm.eval()
    val = load_preferences(world, "val")
    qv = format_queries(val["prompt"].tolist(), params.sources.prompt_template)
    with torch.no_grad():
        sc = score(rm, *encode_pairs(tok, qv, val["chosen"], val["chosen_finished"]))
        sr = score(rm, *encode_pairs(tok, qv, val["rejected"], val["rejected_finished"]))
    agree = (sc > sr).numpy()
    clean = agree != val["flipped"].to_numpy()
    return rm, {"val_acc_noisy": float(agree.mean()), "val_acc_clean": float(clean.mean())}


def seq_logprob(model, q_ids, q_mask, r_ids, r_mask):
    """Sum over response tokens of log pi(token), (B,)."""
    ids = torch.cat([q_ids, r_ids], 1)
    mask = torch.cat([q_mask, r_mask], 1)
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[
        :, q_ids.shape[1] - 1 : -1
    ]
    lp = torch.gather(logits.log_softmax(-1), 2, r_ids.unsqueeze(-1)).squeeze(-1)
    return (lp * r_mask).sum(1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", default="artifacts/world")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--beta", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rm-epochs", type=int, default=1)
    ap.add_argument("--rm-lr", type=float, default=1e-4)
    ap.add_argument("--out", default="results/probe/world_probe.csv")
    a = ap.parse_args()
    torch.set_num_threads(2)
    world = Path(a.world)
    params = load_params(a.params)
    tok = AutoTokenizer.from_pretrained(world / "policy")
    t0 = time.perf_counter()
    rm, acc = train_proxy(world, params, tok, a.seed, epochs=a.rm_epochs, lr=a.rm_lr)
    print(f"proxy trained in {time.perf_counter() - t0:.0f}s: {acc}")
    policy = AutoModelForCausalLM.from_pretrained(world / "policy")
    ref = AutoModelForCausalLM.from_pretrained(world / "policy").eval()
    gold = make_gold(params)
    prompts = pd.read_parquet(world / "prompts.parquet")
    rl = prompts.loc[prompts["split"] == "rl", "prompt"].tolist()
    opt = torch.optim.Adam(policy.parameters(), lr=a.lr)
    rng = np.random.default_rng(a.seed)
    rows = []
    for step in range(a.steps):
        batch = [rl[i] for i in rng.integers(len(rl), size=a.prompts) for _ in range(a.k)]
        s = sample(
            policy,
            tok,
            format_queries(batch, params.sources.prompt_template),
            params.sampling,
            seed=a.seed * 10_000 + step,
        )
        with torch.no_grad():
            ids, mask = encode_pairs(
                tok, format_queries(batch, params.sources.prompt_template), s.texts, s.finished
            )
            proxy = score(rm, ids, mask)
            ref_lp = seq_logprob(ref, s.query_ids, s.query_mask, s.response_ids, s.response_mask)
        policy.train()
        lp = seq_logprob(policy, s.query_ids, s.query_mask, s.response_ids, s.response_mask)
        kl = lp.detach() - ref_lp
        reward = (proxy - a.beta * kl).view(a.prompts, a.k)
        baseline = (reward.sum(1, keepdim=True) - reward) / (a.k - 1)  # leave-one-out
        adv = (reward - baseline).view(-1)
        loss = -(adv * lp).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        g = gold.score(batch, s.texts, s.finished)
        row = {
            "step": step,
            "kl": float(kl.mean()),
            "proxy": float(proxy.mean()),
            "gold": float(g.total.mean()),
            **{k: float(v.mean()) for k, v in g.contributions.items()},
            "tokens": float(s.response_mask.sum(1).float().mean()),
        }
        rows.append(row)
        if step % 10 == 0:
            print({k: round(v, 3) for k, v in row.items()}, s.texts[0][:100])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows).assign(**acc, seed=a.seed, beta=a.beta, lr=a.lr)
    df.to_csv(out, index=False)
    print("wrote", out)


if __name__ == "__main__":
    main()
