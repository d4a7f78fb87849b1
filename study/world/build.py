"""Build the world stage's artifacts: tokenizer, SFT policy, prompts, preference pairs, SFT samples.

`build_world(params, out_dir)` is the whole stage as one function; the notebook
`notebooks/01_world.ipynb` calls it and draws. Everything lands in a temporary directory that is
renamed onto `out_dir` only when complete. Layout of `out_dir`:

    tokenizer/                 Hugging Face tokenizer
    policy/                    Hugging Face causal LM (the SFT policy = PPO's reference), + tokenizer
    corpus.parquet             the generated SFT corpus (embedded world only)
    sft_history.parquet        SFT losses by step (embedded world only)
    prompts.parquet            prompts for optimisation ('rl') and evaluation ('eval')
    preferences/train.parquet  labelled, noisy pairs; preferences/val.parquet likewise
    sft_samples.parquet        fresh SFT samples on eval prompts with gold and its components
    summary.json               measured facts about the world, with provenance
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel

from study.config import Params
from study.device import Placement, resolve
from study.generation import format_queries, sample
from study.hub import load_policy, load_table, load_tokenizer, make_gold
from study.io import atomic_path, check_prompts, provenance, require, write_json, write_table
from study.preferences import assign_splits, label_pairs, validate_preferences
from study.world.grammar import (
    grammatical_share,
    parse_instruction,
    sample_corpus,
    sample_instructions,
    split_sentences,
)
from study.world.sft import build_policy, encode_sft, train_sft
from study.world.tokenizer import train_tokenizer

# Seed offsets, so that each random stream of the world is independent of the others.
SEED_CORPUS, SEED_INIT, SEED_DATA, SEED_PROMPTS, SEED_PAIRS, SEED_FLIPS, SEED_SAMPLES = range(7)


def _describe_prompts(prompts: list[str]) -> pd.DataFrame:
    rows = []
    for p in prompts:
        try:
            ins = parse_instruction(p)
            rows.append(
                {
                    "topic": ins.topic,
                    "tone": ins.tone,
                    "length": ins.length or "medium",
                    "form": ins.form,
                }
            )
        except ValueError:
            rows.append({"topic": None, "tone": None, "length": None, "form": None})
    return pd.DataFrame(rows)


def _seed(params: Params, offset: int) -> int:
    return params.run.seed * 1000 + offset


def build_world(params: Params, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Make every artifact of the world stage under `out_dir` (atomically); return the summary."""
    torch.set_num_threads(params.run.threads)
    placement = resolve(params.placement)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"profile": params.profile}
    prov = provenance(params)
    with atomic_path(out_dir) as out:
        out.mkdir(parents=True)
        t0 = time.perf_counter()
        # 1. prompts, corpus and tokenizer
        prompts = _prompts(params)
        corpus = _corpus(params) if params.sources.embedded_policy else None
        if corpus is not None:
            timings["corpus_s"] = time.perf_counter() - t0
            tokenizer = train_tokenizer([*corpus["prompt"], *corpus["response"]])
        else:
            src = params.sources
            tokenizer = load_tokenizer(src.policy if src.tokenizer == "policy" else src.tokenizer)
        tokenizer.save_pretrained(out / "tokenizer")
        # 2. the SFT policy
        t1 = time.perf_counter()
        policy = _sft_policy(params, tokenizer, corpus, out, prov, summary, placement, progress)
        timings["sft_s"] = time.perf_counter() - t1
        write_table(out / "prompts.parquet", prompts, prov)
        gold = make_gold(params)
        # 3. preference pairs: two policy samples per prompt (or a dataset), gold labels, flips
        t2 = time.perf_counter()
        pairs, counts = _preference_pairs(params, policy, tokenizer, prompts, gold, placement,
                                          progress)  # fmt: skip
        (out / "preferences").mkdir()
        for split in ("train", "val"):
            part = pairs[pairs["split"] == split].reset_index(drop=True)
            validate_preferences(part, f"preferences/{split}")
            write_table(out / "preferences" / f"{split}.parquet", part, prov)
        timings["preferences_s"] = time.perf_counter() - t2
        # 4. fresh SFT samples on eval prompts, for the report: gold by component
        t3 = time.perf_counter()
        samples = _report_samples(params, policy, tokenizer, prompts, gold, placement, progress)
        write_table(out / "sft_samples.parquet", samples, prov)
        timings["samples_s"] = time.perf_counter() - t3
        timings["total_s"] = time.perf_counter() - t0
        summary.update(
            _pairs_and_samples_summary(pairs, counts, samples, params.preferences.flip_rate)
        )
        summary["provenance"] = provenance(params)
        # the same seed writes the same bytes: wall-clock times stay out of the artifact (so a
        # rebuilt world does not make every later stage stale) and come back to the caller only
        write_json(out / "summary.json", summary)
    return {**summary, "timings_s": {k: round(v, 2) for k, v in timings.items()}}


def _prompts(params: Params) -> pd.DataFrame:
    """The RL and evaluation prompts (column `split`), drawn from the embedded grammar or from
    `sources.prompts`, with each one's parsed topic, tone, length and form."""
    src = params.sources
    rng = np.random.default_rng(_seed(params, SEED_PROMPTS))
    if src.prompts == "embedded":
        n_rl, n_eval = params.world.n_rl_prompts, params.world.n_eval_prompts
        pool = [i.text for i in sample_instructions(params.world, n_rl + n_eval, rng)]
    else:
        table = load_table(src.prompts, "sources.prompts", ["prompt"])
        check_prompts(table, f"sources.prompts ({src.prompts})",
                      "correct the table or point sources.prompts at another", ("prompt",))  # fmt: skip
        n_eval = min(params.world.n_eval_prompts, max(1, len(table) // 10))
        n_rl = min(params.world.n_rl_prompts, len(table) - n_eval)
        pool = table["prompt"].iloc[rng.permutation(len(table))[: n_rl + n_eval]].tolist()
    prompts = pd.DataFrame({"prompt": pool, "split": ["rl"] * n_rl + ["eval"] * n_eval})
    return pd.concat([prompts, _describe_prompts(pool)], axis=1)


def _corpus(params: Params) -> pd.DataFrame:
    """The embedded world's SFT corpus: instructions, responses, their quality, train/val split."""
    rng = np.random.default_rng(_seed(params, SEED_CORPUS))
    instructions, responses, quality = sample_corpus(params.world, params.world.corpus_size, rng)
    corpus = pd.DataFrame(
        {"prompt": [i.text for i in instructions], "response": responses, "quality": quality}
    )
    corpus["split"] = assign_splits(len(corpus), params.world.corpus_val_fraction, rng)
    return corpus


def _sft_policy(
    params: Params, tokenizer: Any, corpus: pd.DataFrame | None, out: Path, prov: dict,
    summary: dict[str, Any], placement: Placement, progress: bool,
) -> PreTrainedModel:  # fmt: skip
    """The SFT policy, saved with its tokenizer under `out/policy`: trained on `corpus` (its
    history written and summarised into `summary["sft"]`), or the hub policy of `sources.policy`
    where there is no corpus."""
    if corpus is not None:
        queries = format_queries(corpus["prompt"].tolist(), params.sources.prompt_template)
        ids, mask, labels, kept = encode_sft(
            tokenizer, queries, corpus["response"].tolist(), params.sft.max_length
        )
        is_val = (corpus["split"] == "val").to_numpy()[kept]
        train_t = (ids[~is_val], mask[~is_val], labels[~is_val])
        val_t = (ids[is_val], mask[is_val], labels[is_val])
        policy = build_policy(params.sft, tokenizer, seed=_seed(params, SEED_INIT))
        placement.put(policy)  # initialised on the CPU: the same weights on every device
        history = train_sft(
            policy, train_t, val_t, params.sft, seed=_seed(params, SEED_DATA),
            progress=progress, placement=placement,
        )  # fmt: skip
        write_table(out / "corpus.parquet", corpus, prov)
        write_table(out / "sft_history.parquet", history, prov)
        summary["sft"] = {
            "examples_too_long_dropped": int((~kept).sum()),
            "parameters": sum(p.numel() for p in policy.parameters()),
            "final_train_loss": float(history["train_loss"].tail(50).mean()),
            "final_val_loss": float(history["val_loss"].dropna().iloc[-1]),
        }
    else:
        policy = placement.put(load_policy(params.sources.policy, dtype=torch.float32))  # fp32
    policy.eval()
    policy.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    return policy


def _preference_pairs(
    params: Params, policy: PreTrainedModel, tokenizer: Any, prompts: pd.DataFrame, gold: Any,
    placement: Placement, progress: bool,
) -> tuple[pd.DataFrame, dict[str, int]]:  # fmt: skip
    """`preferences.n_pairs` labelled pairs with their `pair_id` and split: two policy samples
    per prompt (or a dataset's pairs), labelled by gold with `preferences.flip_rate` of the labels
    flipped; and the counts of pairs dropped (gold ties, empty responses)."""
    src, pref = params.sources, params.preferences
    n_draw = int(pref.n_pairs * 1.15) + 8  # a margin for gold ties and empty responses
    if src.preferences == "embedded":
        rng = np.random.default_rng(_seed(params, SEED_PAIRS))
        if src.prompts == "embedded":
            pair_prompts = [i.text for i in sample_instructions(params.world, n_draw, rng)]
        else:
            pair_prompts = prompts["prompt"].iloc[rng.integers(len(prompts), size=n_draw)].tolist()
        queries = format_queries(pair_prompts, src.prompt_template)
        doubled = [q for q in queries for _ in range(2)]  # a and b of pair i are rows 2i, 2i+1
        s = sample(policy, tokenizer, doubled, params.sampling, seed=_seed(params, SEED_PAIRS),
                   progress=progress, placement=placement)  # fmt: skip
        a, b = s.texts[0::2], s.texts[1::2]
        fa, fb = s.finished[0::2], s.finished[1::2]
    else:
        table = load_table(src.preferences, "sources.preferences", ["prompt", "chosen", "rejected"])
        validate_preferences(table, src.preferences)
        table = table.iloc[:n_draw]
        pair_prompts = table["prompt"].tolist()
        a, b = table["chosen"].tolist(), table["rejected"].tolist()
        fa = fb = np.ones(len(table), dtype=bool)
    # an empty response (EOS first) is no answer to prefer or reject: such pairs are dropped
    keep = np.array([bool(x.strip()) and bool(y.strip()) for x, y in zip(a, b, strict=True)])
    n_empty = int((~keep).sum())
    pair_prompts, a, b = (
        [v for v, k in zip(seq, keep, strict=True) if k] for seq in (pair_prompts, a, b)
    )
    fa, fb = np.asarray(fa)[keep], np.asarray(fb)[keep]
    relabel = src.preferences == "embedded" or src.relabel_with_gold
    pairs = label_pairs(
        pair_prompts, a, b, fa, fb, gold, pref.flip_rate if relabel else 0.0,
        np.random.default_rng(_seed(params, SEED_FLIPS)), labels_from_gold=relabel,
    )  # fmt: skip
    n_ties = len(pair_prompts) - len(pairs)
    if len(pairs) < pref.n_pairs and src.preferences == "embedded":
        raise RuntimeError(
            f"preferences.n_pairs={pref.n_pairs}: only {len(pairs)} usable pairs were drawn "
            f"({n_ties} gold ties and {n_empty} pairs with an empty response dropped)"
        )
    pairs = pairs.iloc[: pref.n_pairs].reset_index(drop=True)
    pairs.insert(0, "pair_id", np.arange(len(pairs)))
    split_rng = np.random.default_rng(_seed(params, SEED_FLIPS) + 1)
    pairs.insert(1, "split", assign_splits(len(pairs), pref.val_fraction, split_rng))
    counts = {"ties": n_ties, "empty": n_empty, "relabel": int(relabel)}
    return pairs, counts


def _report_samples(
    params: Params, policy: PreTrainedModel, tokenizer: Any, prompts: pd.DataFrame, gold: Any,
    placement: Placement, progress: bool,
) -> pd.DataFrame:  # fmt: skip
    """`preferences.n_samples_report` fresh SFT responses to the eval prompts, with their gold
    score by component (and their grammatical share in the embedded world)."""
    src = params.sources
    eval_prompts = prompts.loc[prompts["split"] == "eval", "prompt"].tolist()
    reps = -(-params.preferences.n_samples_report // len(eval_prompts))
    report_prompts = (eval_prompts * reps)[: params.preferences.n_samples_report]
    s = sample(policy, tokenizer, format_queries(report_prompts, src.prompt_template),
               params.sampling, seed=_seed(params, SEED_SAMPLES), progress=progress,
               placement=placement)  # fmt: skip
    samples = pd.DataFrame({"prompt": report_prompts, "response": s.texts, "finished": s.finished})
    samples["n_tokens"] = s.response_mask.sum(1).numpy()
    samples = pd.concat(
        [samples, gold.score(report_prompts, s.texts, s.finished).to_frame("gold")], axis=1
    )
    if src.gold == "embedded":
        samples["grammatical"] = [grammatical_share(*split_sentences(r)) for r in s.texts]
    return samples


def _pairs_and_samples_summary(
    pairs: pd.DataFrame, counts: dict[str, int], samples: pd.DataFrame, flip_rate: float
) -> dict[str, Any]:
    return {
        "n_pairs": len(pairs),
        "n_train_pairs": int((pairs["split"] == "train").sum()),
        "n_val_pairs": int((pairs["split"] == "val").sum()),
        "gold_ties_dropped": int(counts["ties"]),
        "empty_response_pairs_dropped": counts["empty"],
        "flip_rate_param": flip_rate if counts["relabel"] else 0.0,
        "flip_rate_measured": float(pairs["flipped"].mean()),
        "pairs_gold_margin_mean": float(pairs["gold_margin"].mean()),
        "sft_samples": {
            "n": len(samples),
            "eos_share": float(samples["finished"].mean()),
            "grammatical_share": float(samples["grammatical"].mean())
            if "grammatical" in samples
            else None,
            "gold_mean": float(samples["gold"].mean()),
            "gold_std": float(samples["gold"].std()),
            "mean_tokens": float(samples["n_tokens"].mean()),
        },
    }


def load_summary(world_dir: str | Path) -> dict[str, Any]:
    """The summary that `build_world` wrote."""
    return json.loads(require(Path(world_dir) / "summary.json", "the world stage").read_text())
