"""A trained reward model of the pipeline as a self-describing checkpoint, with its model card:

    python -m study.export ARM SEED OUT   # artifacts/rm/<arm>/seed<N> -> OUT

`export_reward_model` writes the standard Hugging Face directories, the manifest (`study.hf`)
with the normaliser the arm's PPO run fitted, and a model card with its held-out accuracy.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from study.aggregate import METHODS
from study.hf import FORMAT, MANIFEST, checkpoint_max_length, read_manifest
from study.hub import load_tokenizer
from study.io import atomic_path, git_revision
from study.reward_models import (
    ENSEMBLE_MANIFEST,
    EnsembleRewardModel,
)
from study.reward_models import load_reward_model as load_study_dir


def heldout_accuracy(results_dir: str | Path, world_dir: str | Path | None) -> dict[str, Any]:
    """Per-head accuracy on the held-out pairs of a reward-model stage (``val_rewards.parquet``):
    against the (noisy) training labels, and, with the world's pairs, against gold."""
    rewards = pd.read_parquet(Path(results_dir) / "val_rewards.parquet")
    right = rewards["r_chosen"] > rewards["r_rejected"]
    out: dict[str, Any] = {
        "labels": right.groupby(rewards["head"]).mean().round(4).tolist(),
        "pairs": int(rewards["pair_id"].nunique()),
    }
    if world_dir is not None and (Path(world_dir) / "preferences" / "val.parquet").is_file():
        pairs = pd.read_parquet(Path(world_dir) / "preferences" / "val.parquet")
        flipped = rewards["pair_id"].map(pairs.set_index("pair_id")["flipped"]).astype(bool)
        out["gold"] = (right != flipped).groupby(rewards["head"]).mean().round(4).tolist()
    return out


def model_card(manifest: dict[str, Any]) -> str:
    """A Hugging Face model card (README.md with YAML metadata) for a reward checkpoint."""
    card, k, family = manifest.get("card", {}), manifest["k"], manifest["family"]
    what = {
        "single": "one reward model (one encoder, one linear head)",
        "multihead": f"a multi-head reward model: one shared encoder and {k} linear heads "
        "(Ahmed et al., arXiv 2406.01013), saved as one sequence classifier with num_labels = K",
        "ensemble": f"a full ensemble of {k} reward models (Coste et al., arXiv 2310.02743), one "
        "standard checkpoint per member",
    }[family]
    acc = card.get("heldout_accuracy", {})
    norm = manifest.get("normaliser")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [reward-model, rlhf, study-reward-model]",
        "---",
        "",
        f"# Reward model: {card.get('arm', family)}, seed {card.get('seed', '?')}",
        "",
        f"This directory holds {what}, trained with a Bradley–Terry loss on preference pairs of "
        "the study's embedded world (a synthetic instruction-following task scored by a known gold "
        "reward).",
        "",
        "| | |",
        "| --- | --- |",
        f"| heads K | {k} |",
        f"| aggregation | {manifest['aggregation']} over heads"
        + (f" (UWO λ = {manifest['uwo_lambda']})" if manifest["aggregation"] == "uwo" else "")
        + " |",
        f"| training pairs | {card.get('train_pairs', '?')}, label noise (flip rate) "
        f"{card.get('flip_rate', '?')} |",
        f"| epochs | {card.get('epochs', '?')} |",
        f"| held-out accuracy vs labels (per head) | {acc.get('labels', '?')} |",
        f"| held-out accuracy vs gold (per head) | {acc.get('gold', 'not measured')} |",
        f"| normaliser | {'per-head z-scores, ' + norm.get('fitted_on', '') if norm else 'none'} |",
        f"| made by | commit `{card.get('git_revision', '?')}` |",
        "",
        "## Use",
        "",
        "```python",
        "import study",
        "",
        f'reward = study.reward_fn("{card.get("name", "this-directory")}", '
        f'aggregate="{manifest["aggregation"]}")',
        "reward(prompts=[...], completions=[...])  # one float per completion",
        "```",
        "",
        "Each model directory also loads without the study:",
        "`AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)` "
        "returns K logits per sequence (the raw, unnormalised head rewards).",
        "",
    ]
    return "\n".join(lines)


def export_reward_model(
    rm_dir: str | Path,
    out_dir: str | Path,
    aggregation: str = "min",
    uwo_lambda: float = 0.5,
    normaliser: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
) -> Path:
    """Write the reward model of `rm_dir` (a pipeline directory) to `out_dir` as a self-describing
    checkpoint: standard model directories (one per ensemble member), the tokenizer beside each,
    ``reward.json`` and a model card. Written atomically: `out_dir` appears whole or not at all."""
    rm_dir, out_dir = Path(rm_dir), Path(out_dir)
    model = load_study_dir(rm_dir)
    tokenizer = load_tokenizer(str(rm_dir), f"{rm_dir} (tokenizer)")
    training_file = rm_dir / "training.json"
    training = json.loads(training_file.read_text()) if training_file.is_file() else {}
    family = "ensemble" if isinstance(model, EnsembleRewardModel) else "multihead"
    family = family if model.k > 1 else "single"
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "family": family,
        "k": model.k,
        "aggregation": aggregation,
        "uwo_lambda": uwo_lambda,
        "normaliser": normaliser,
        "max_length": checkpoint_max_length(rm_dir, model),
        "training": {k: v for k, v in training.items() if k != "params"},
        "params": training.get("params"),
        "card": card or {},
    }
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if isinstance(model, EnsembleRewardModel):
            manifest["members"] = json.loads((tmp / ENSEMBLE_MANIFEST).read_text())["members"]
            (tmp / ENSEMBLE_MANIFEST).unlink()
            for name in manifest["members"]:
                tokenizer.save_pretrained(tmp / name)
        if training_file.is_file():
            shutil.copy(training_file, tmp / "training.json")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        read_manifest(tmp)  # what is written must read back
        (tmp / "README.md").write_text(model_card(manifest))
    return out_dir


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m study.export",
        description="Export a trained reward model of the pipeline (artifacts/rm/<arm>/seed<N>) "
        "as a self-describing checkpoint (standard Hugging Face directories, reward.json, model "
        "card).",
    )
    parser.add_argument("arm", help="reward-model arm, e.g. multihead, ensemble, single")
    parser.add_argument("seed", type=int)
    parser.add_argument("out", type=Path, help="directory to write")
    parser.add_argument("--aggregation", default="min", choices=METHODS)
    parser.add_argument("--uwo-lambda", type=float, default=0.5)
    parser.add_argument("--root", type=Path, default=Path("."), help="the project's root")
    args = parser.parse_args(argv)

    root, arm, seed = args.root, args.arm, args.seed
    rm_dir = root / "artifacts" / "rm" / arm / f"seed{seed}"
    if not rm_dir.is_dir():
        parser.error(f"{rm_dir}: no reward model (run stage rm@{arm}-{seed} first: dvc repro)")
    # the normaliser depends on the reward model and the seed, not on the aggregation (every PPO
    # run of the arm fits it on the same SFT samples): the first run of the arm that exists
    variants = (
        ["single"] if arm == "single" else [f"{arm}_{m}" for m in (args.aggregation, *METHODS)]
    )
    runs = [root / "results" / "ppo" / v / f"seed{seed}" / "train.json" for v in variants]
    ppo = next((r for r in runs if r.is_file()), None)
    normaliser = None
    if ppo is not None:
        info = json.loads(ppo.read_text())
        normaliser = {
            "mean": info["norm_mean"],
            "std": info["norm_std"],
            "fitted_on": f"SFT samples of the RL prompts, as PPO run {ppo.parent.parent.name} "
            f"seed {seed} fitted it",
        }
    if not (rm_dir / "training.json").is_file():
        parser.error(f"{rm_dir / 'training.json'}: missing (not a reward model of the pipeline)")
    results = root / "results" / "rm" / arm / f"seed{seed}"
    training = json.loads((rm_dir / "training.json").read_text())
    params = training.get("params", {})
    card = {
        "arm": arm,
        "seed": seed,
        "name": str(args.out),
        "epochs": training.get("epochs"),
        "train_pairs": training.get("train_pairs"),
        "flip_rate": params.get("preferences", {}).get("flip_rate"),
        "git_revision": training.get("git_revision") or git_revision(root),
        "heldout_accuracy": heldout_accuracy(results, root / "artifacts" / "world")
        if (results / "val_rewards.parquet").is_file()
        else {},
    }
    out = export_reward_model(rm_dir, args.out, args.aggregation, args.uwo_lambda, normaliser, card)
    print(
        f"wrote {out} (normaliser: {'from ' + str(ppo) if ppo else 'none: no PPO run of the arm'})"
    )


__all__ = ["export_reward_model", "heldout_accuracy", "model_card"]


if __name__ == "__main__":
    main()
