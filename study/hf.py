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
package (`study.modeling_reward`). `load_reward_model` reads any family; `study.trl_reward.reward_fn`
wraps one in TRL's reward-function signature; ``python -m study.export`` (`study.export`)
turns a trained reward model of the pipeline (``artifacts/rm/<arm>/seed<N>``) into such a
directory with the normaliser its PPO run fitted and a model card.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from study.aggregate import METHODS
from study.hub import load_tokenizer
from study.modeling_reward import MultiHeadRewardModel
from study.reward_models import (
    ENSEMBLE_MANIFEST,
    FAMILIES,
    EnsembleRewardModel,
    RewardModel,
    RewardModelError,
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


def checkpoint_max_length(path: Path, model: RewardModel) -> int | None:
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

    A directory with ``reward.json`` (written by `study.export.export_reward_model`) gives its aggregation and
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
    manifest.setdefault("max_length", checkpoint_max_length(path, model))
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


if __name__ == "__main__":  # a library: the command that writes such directories is elsewhere
    raise SystemExit(
        "study.hf has no command; a reward model exports with: python -m study.export ARM SEED OUT"
    )


__all__ = [
    "MANIFEST",
    "RewardBundle",
    "RewardCheckpointError",
    "load_bundle",
    "load_reward_model",
    "read_manifest",
]
