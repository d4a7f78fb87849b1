"""The study's reward models outside the study: self-describing checkpoints, one loader, and the
aggregated reward as a TRL reward function.

A reward-model directory holds, beside Hugging Face weights and a tokenizer, a manifest
``reward.json``::

    {"format": "study-reward-model/1", "family": "multihead", "k": 3,
     "aggregation": "min", "uwo_lambda": 0.5,
     "normaliser": {"mean": [...], "std": [...], "fitted_on": "..."},
     "members": ["member_00", ...],          # ensembles only: K standard checkpoints
     "training": {...}, "card": {...}}

Every model directory (the multi-head or single model, or each ensemble member) is a standard
sequence classifier (``num_labels`` = its heads) that loads with
``AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)`` without this
package (`study.modeling_reward`). `load_reward_model` reads any family; `reward_fn` wraps one in
TRL's reward-function signature; ``python -m study.hf export`` turns a trained reward model of the
pipeline (``artifacts/rm/<arm>/seed<N>``) into such a directory with the normaliser its PPO run
fitted and a model card.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from study.aggregate import METHODS, aggregate
from study.hub import load_tokenizer
from study.io import atomic_path, git_revision
from study.modeling_reward import MultiHeadRewardModel
from study.reward_models import (
    ENSEMBLE_MANIFEST,
    FAMILIES,
    EnsembleRewardModel,
    RewardModel,
    RewardModelError,
    right_pad,
)
from study.reward_models import load_reward_model as load_study_dir

MANIFEST = "reward.json"
FORMAT = "study-reward-model/1"


class RewardCheckpointError(ValueError):
    """A directory that is not a usable reward checkpoint; the message names the file and field."""


@dataclass
class RewardBundle:
    """A loaded reward checkpoint: the model (K heads or members), its tokenizer and how the study
    turns its K rewards into one (aggregation, UWO λ, per-head normaliser)."""

    model: RewardModel
    tokenizer: PreTrainedTokenizerBase | None  # None: loaded without (`load_reward_model`)
    aggregation: str
    uwo_lambda: float
    normaliser: tuple[torch.Tensor, torch.Tensor] | None  # per-head (mean, std), (K,) each
    manifest: dict[str, Any]

    @property
    def k(self) -> int:
        return self.model.k


# ------------------------------------------------------------------------------------ manifest


def _field(manifest: dict, key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in manifest:
        raise RewardCheckpointError(f"{where}: field {key!r} is missing")
    value = manifest[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RewardCheckpointError(
            f"{where}: field {key!r} is {value!r}, expected {getattr(kind, '__name__', kind)}"
        )
    return value


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The validated ``reward.json`` of a checkpoint directory."""
    where = Path(path) / MANIFEST
    try:
        manifest = json.loads(where.read_text())
    except json.JSONDecodeError as e:
        raise RewardCheckpointError(f"{where}: not valid JSON ({e})") from e
    if not isinstance(manifest, dict):
        raise RewardCheckpointError(f"{where}: expected a JSON object")
    if manifest.get("format") != FORMAT:
        raise RewardCheckpointError(
            f"{where}: field 'format' is {manifest.get('format')!r}, expected {FORMAT!r}"
        )
    family = _field(manifest, "family", str, where)
    if family not in FAMILIES:
        raise RewardCheckpointError(
            f"{where}: field 'family' is {family!r} (known: {', '.join(FAMILIES)})"
        )
    k = _field(manifest, "k", int, where)
    if k < 1:
        raise RewardCheckpointError(f"{where}: field 'k' is {k}, expected at least 1")
    method = _field(manifest, "aggregation", str, where)
    if method not in METHODS:
        raise RewardCheckpointError(
            f"{where}: field 'aggregation' is {method!r} (known: {', '.join(METHODS)})"
        )
    _field(manifest, "uwo_lambda", (int, float), where)
    cut = manifest.get("max_length")
    if cut is not None and (not isinstance(cut, int) or isinstance(cut, bool) or cut < 1):
        raise RewardCheckpointError(
            f"{where}: field 'max_length' is {cut!r}, expected a count >= 1"
        )
    norm = manifest.get("normaliser")
    if norm is not None:
        for key in ("mean", "std"):
            values = norm.get(key) if isinstance(norm, dict) else None
            if not isinstance(values, list) or len(values) != k:
                raise RewardCheckpointError(
                    f"{where}: field 'normaliser.{key}' must be a list of k = {k} numbers"
                )
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise RewardCheckpointError(f"{where}: field 'normaliser.{key}' is not finite")
        if min(norm["std"]) <= 0:
            raise RewardCheckpointError(f"{where}: field 'normaliser.std' must be positive")
    if family == "ensemble":
        members = _field(manifest, "members", list, where)
        if len(members) != k:
            raise RewardCheckpointError(
                f"{where}: field 'members' names {len(members)} members but 'k' is {k}"
            )
        for name in members:
            if not (Path(path) / str(name) / "config.json").is_file():
                raise RewardCheckpointError(
                    f"{where}: field 'members' names {name!r}, but {Path(path) / str(name)} "
                    "holds no checkpoint (config.json)"
                )
    return manifest


# -------------------------------------------------------------------------------------- loading


def _load_members(path: Path, names: Sequence[str], vectorize: bool) -> EnsembleRewardModel:
    members = []
    for name in names:
        m = AutoModelForSequenceClassification.from_pretrained(path / name).eval()
        if not isinstance(m, MultiHeadRewardModel):
            raise RewardCheckpointError(f"{path / name}: not a reward model ({type(m).__name__})")
        members.append(m)
    return EnsembleRewardModel(members, vectorize)


def _max_length(path: Path, model: RewardModel) -> int | None:
    """The length the reward model was trained to read (``reward.max_length`` of the params in
    ``training.json``), else the encoder's positions, else None."""
    training = path / "training.json"
    if training.is_file():
        with contextlib.suppress(ValueError, KeyError, AttributeError, TypeError):
            value = json.loads(training.read_text())["params"]["reward"]["max_length"]
            if isinstance(value, int) and value > 0:
                return value
    encoder = model.config.encoder or {}
    return encoder.get("n_positions") or encoder.get("max_position_embeddings")


def load_bundle(path: str | Path, tokenizer: bool = True, vectorize: bool = True) -> RewardBundle:
    """A reward checkpoint of any family with what the study reads beside it.

    A directory with ``reward.json`` (written by `export_reward_model`) gives its aggregation and
    normaliser; a reward-model directory of the pipeline without one loads with the minimum and
    no normaliser. `tokenizer`: load the tokenizer saved beside the model (a reward function needs
    it; the model alone does not). `vectorize`: score an ensemble's members with one vmap (True)
    or one after the other (False; on a CPU the loop is the faster, `reward.ensemble_scoring`)."""
    path = Path(path)
    if not path.is_dir():
        raise RewardCheckpointError(f"{path}: no such directory")
    try:
        if (path / MANIFEST).is_file():
            manifest = read_manifest(path)
            if manifest["family"] == "ensemble":
                model: RewardModel = _load_members(path, manifest["members"], vectorize)
            else:
                model = load_study_dir(path, vectorize=vectorize)
            if model.k != manifest["k"]:
                raise RewardCheckpointError(
                    f"{path / MANIFEST}: field 'k' is {manifest['k']}, but the weights have "
                    f"{model.k} {'members' if manifest['family'] == 'ensemble' else 'heads'}"
                )
        elif (path / ENSEMBLE_MANIFEST).is_file() or (path / "config.json").is_file():
            model = load_study_dir(path, vectorize=vectorize)
            family = "ensemble" if isinstance(model, EnsembleRewardModel) else "multihead"
            manifest = {"family": family if model.k > 1 else "single", "k": model.k}
            manifest.update(aggregation="min", uwo_lambda=0.5, normaliser=None)
        else:
            raise RewardCheckpointError(
                f"{path}: not a reward checkpoint (no {MANIFEST}, {ENSEMBLE_MANIFEST} or "
                "config.json)"
            )
    except RewardModelError as e:
        raise RewardCheckpointError(str(e)) from e
    manifest.setdefault("max_length", _max_length(path, model))
    norm = manifest.get("normaliser")
    normaliser = (
        (torch.tensor(norm["mean"], dtype=torch.float32), torch.tensor(norm["std"]))
        if norm
        else None
    )
    return RewardBundle(
        model=model.eval().requires_grad_(False),
        tokenizer=load_tokenizer(str(path), f"{path} (tokenizer)") if tokenizer else None,
        aggregation=manifest["aggregation"],
        uwo_lambda=float(manifest["uwo_lambda"]),
        normaliser=normaliser,
        manifest=manifest,
    )


def load_reward_model(path: str | Path, vectorize: bool = True) -> RewardModel:
    """The reward model of a checkpoint directory, any family: `.rewards(ids, mask)` is (K, B)."""
    return load_bundle(path, tokenizer=False, vectorize=vectorize).model


# ------------------------------------------------------------------------------ reward function


class RewardFunction:
    """The aggregated (and normalised) reward of a checkpoint, in TRL's reward-function signature:
    ``f(prompts, completions, completion_ids=None, **kwargs) -> list[float]``.

    Each prompt is tokenised as given (the policy's input, template included; plain text only); the
    sequence is cut to the length the reward model was trained on (``max_length``); the completion
    follows as `completion_ids` (TRL passes them, through the EOS where the completion ended) or,
    without them, as the tokenised completion text plus EOS (a finished response; pass
    ``finished=[...]`` to say otherwise). Completion ids are the policy's tokens: they are read as
    they are when the policy shares the reward model's vocabulary (`policy_tokenizer` None or the
    same vocabulary); otherwise the completion texts are re-tokenised by the reward model's
    tokenizer and an EOS added where the ids end in the policy's EOS. Scoring runs in
    length-sorted batches of `batch_size` on the model's device, as the study's `score_ids` does.
    """

    def __init__(
        self,
        bundle: RewardBundle,
        aggregate: str,
        normalise: bool,
        uwo_lambda: float | None = None,
        batch_size: int = 64,
        name: str = "reward",
        policy_tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        if aggregate not in METHODS:
            raise ValueError(
                f"reward_fn: aggregate={aggregate!r} is not an aggregation "
                f"(known: {', '.join(METHODS)})"
            )
        if normalise and bundle.normaliser is None:
            raise RewardCheckpointError(
                f"reward_fn: normalise=True, but the checkpoint's {MANIFEST} has no 'normaliser' "
                "(export one with `python -m study.hf export`, or pass normalise=False)"
            )
        if batch_size < 1:
            raise ValueError(f"reward_fn: batch_size must be at least 1, got {batch_size}")
        self.bundle, self.method, self.batch_size = bundle, aggregate, batch_size
        self.uwo_lambda = bundle.uwo_lambda if uwo_lambda is None else float(uwo_lambda)
        self.normaliser = bundle.normaliser if normalise else None
        tok = bundle.tokenizer
        if tok is None:
            raise ValueError("reward_fn: the bundle was loaded without its tokenizer")
        self.max_length = bundle.manifest.get("max_length")  # as the reward model was trained
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.shared_vocab = (
            policy_tokenizer is None or policy_tokenizer.get_vocab() == tok.get_vocab()
        )
        self.policy_eos = (policy_tokenizer or tok).eos_token_id
        self.on_call: Callable[[RewardCallInfo], None] | None = None  # sees every call
        self.__name__ = self.__qualname__ = name  # TRL logs rewards/<name>/mean

    @property
    def device(self) -> torch.device:
        return next(self.bundle.model.parameters()).device

    def heads(
        self,
        prompts: Sequence[str],
        completions: Sequence[str] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        finished: Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """Per-head rewards (K, B), normalised if the function normalises."""
        tok = self.bundle.tokenizer
        if not prompts:
            return torch.zeros(self.bundle.k, 0)
        if completion_ids is not None and not self.shared_vocab:  # re-tokenise the texts
            if completions is None:
                raise ValueError(
                    "reward_fn: the policy's vocabulary is not the reward model's, so its "
                    "completion_ids cannot be read: give the completion texts too"
                )
            if finished is None:
                finished = [len(c) > 0 and int(c[-1]) == self.policy_eos for c in completion_ids]
            completion_ids = None
        if completion_ids is None:
            if completions is None:
                raise ValueError("reward_fn: give completions or completion_ids")
            if len(completions) != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
            ends = [True] * len(completions) if finished is None else list(finished)
            texts = [_text(c, "completion") for c in completions]
            body = tok(texts, add_special_tokens=False)["input_ids"]
            completion_ids = [
                [*b, tok.eos_token_id] if e else b for b, e in zip(body, ends, strict=True)
            ]
        elif len(completion_ids) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(completion_ids)} completion_ids")
        queries = tok([_text(p, "prompt") for p in prompts])
        cut = self.max_length  # as `study.reward_models.encode` cuts the training pairs
        seqs = [
            [*q, *(int(t) for t in c)][:cut]
            for q, c in zip(queries["input_ids"], completion_ids, strict=True)
        ]
        # length-sorted batches, right-padded (positions count from the first token, so this
        # gives the rewards of the rollout layout, left-padded prompt then completion)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = []
        device = self.device
        for s in range(0, len(order), self.batch_size):
            ids, mask = right_pad([seqs[i] for i in order[s : s + self.batch_size]], self.pad_id)
            with torch.no_grad():
                out.append(self.bundle.model.rewards(ids.to(device), mask.to(device)).float().cpu())
        rewards = torch.cat(out, dim=1)[:, torch.argsort(torch.as_tensor(order))]  # (K, B)
        if self.normaliser is not None:
            mean, std = self.normaliser
            rewards = (rewards - mean[:, None]) / std[:, None]
        return rewards

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        finished: Sequence[bool] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        t0 = time.perf_counter()
        heads = self.heads(prompts, completions, completion_ids, finished)
        scores = aggregate(heads, self.method, self.uwo_lambda)
        if not torch.isfinite(scores).all():
            raise FloatingPointError(
                f"reward {self.__name__}: non-finite rewards {scores.tolist()}"
            )
        if self.on_call is not None:
            self.on_call(
                RewardCallInfo(
                    prompts, completions, completion_ids, heads, scores,
                    time.perf_counter() - t0, kwargs.get("trainer_state"),
                )
            )  # fmt: skip
        return scores.tolist()


@dataclass
class RewardCallInfo:
    """One call of a `RewardFunction`, as its `on_call` hook sees it."""

    prompts: Sequence[str]
    completions: Sequence[str] | None
    completion_ids: Sequence[Sequence[int]] | None
    heads: torch.Tensor  # (K, B), normalised if the function normalises
    scores: torch.Tensor  # (B,)
    seconds: float  # spent scoring
    trainer_state: Any  # TRL's TrainerState, when TRL called


def _text(value: Any, what: str) -> str:
    """A prompt or completion as text. Conversational input (a list of messages) is refused: the
    study's reward models read plain text, and no chat template made their training data."""
    if isinstance(value, str):
        return value
    raise TypeError(
        f"reward_fn: each {what} must be text, got {type(value).__name__} (conversational "
        "datasets are not supported: the reward models were trained on plain-text prompts)"
    )


def reward_fn(
    path: str | Path | RewardBundle,
    aggregate: str = "min",
    normalise: bool = True,
    uwo_lambda: float | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    policy_tokenizer: PreTrainedTokenizerBase | None = None,
) -> RewardFunction:
    """A TRL reward function (``prompts, completions, **kwargs -> list[float]``) over the
    checkpoint at `path`: the per-head rewards, z-scored by the saved normaliser (`normalise`), then
    aggregated over heads (`aggregate`: min, mean, max or uwo). Pass it as GRPO's or RLOO's single
    ``reward_funcs``; TRL *sums* several reward functions, so an ensemble is one function. Pass the
    policy's tokenizer as `policy_tokenizer` when it is not the reward model's."""
    bundle = path if isinstance(path, RewardBundle) else load_bundle(path)
    if device is not None:
        bundle.model.to(device)
    name = f"{bundle.manifest['family']}_{aggregate}"
    return RewardFunction(
        bundle, aggregate, normalise, uwo_lambda, batch_size, name, policy_tokenizer
    )


# ------------------------------------------------------------------------------------- export


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
        "max_length": _max_length(rm_dir, model),
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
        prog="python -m study.hf",
        description="Export a trained reward model of the pipeline as a self-describing "
        "checkpoint (standard Hugging Face directories, reward.json, model card).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="artifacts/rm/<arm>/seed<N> -> a checkpoint directory")
    ex.add_argument("arm", help="reward-model arm, e.g. multihead, ensemble, single")
    ex.add_argument("seed", type=int)
    ex.add_argument("out", type=Path, help="directory to write")
    ex.add_argument("--aggregation", default="min", choices=METHODS)
    ex.add_argument("--uwo-lambda", type=float, default=0.5)
    ex.add_argument("--root", type=Path, default=Path("."), help="the project's root")
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


if __name__ == "__main__":
    main()


__all__ = [
    "MANIFEST",
    "RewardBundle",
    "RewardCheckpointError",
    "RewardFunction",
    "export_reward_model",
    "load_bundle",
    "load_reward_model",
    "model_card",
    "read_manifest",
    "reward_fn",
]
