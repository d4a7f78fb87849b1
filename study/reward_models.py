"""Reward models of every family, called one way: rewards of shape (K, B).

- **multi-head** (Ahmed et al.): one encoder and one ``nn.Linear(hidden, K)`` score layer, an
  ordinary Hugging Face sequence-classification model with ``num_labels = K``;
- **full ensemble** (Coste et al.): K separate models with ``num_labels = 1``, scored together by
  ``torch.func.vmap`` over their stacked weights (no Python loop over members);
- **single**: K = 1.

The encoder is any Hugging Face ``AutoModel`` (the SFT policy's backbone by default). The reward is
read at the last attended token, found from the attention mask, so left- and right-padded batches
give the same rewards and a tokenizer whose pad token equals its EOS token is handled.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
from safetensors import SafetensorError
from torch.func import functional_call, stack_module_state
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    PreTrainedTokenizerBase,
)

from study.device import on
from study.modeling_reward import MultiHeadRewardModel, RewardModelConfig

FAMILIES = ("single", "multihead", "ensemble")
ENSEMBLE_MANIFEST = "ensemble.json"


class RewardModelError(ValueError):
    """A reward model that cannot be used as asked (wrong K, wrong directory, mixed members)."""


AutoConfig.register(RewardModelConfig.model_type, RewardModelConfig)
AutoModelForSequenceClassification.register(RewardModelConfig, MultiHeadRewardModel)
# save_pretrained copies study/modeling_reward.py into the checkpoint and writes config.auto_map
RewardModelConfig.register_for_auto_class()
MultiHeadRewardModel.register_for_auto_class("AutoModelForSequenceClassification")


class EnsembleRewardModel(nn.Module):
    """K separate single-head reward models of one architecture, scored as one model: (K, B).

    With `vectorize` (the default) the members' weights are stacked once
    (``torch.func.stack_module_state``) into tensors with a leading K axis and scoring is one
    ``vmap`` over that axis: the K forward passes run as batched matrix products, not a Python
    loop. Without it the members run one after the other, which `study.cost` measures beside the
    vmap path (on a 2-core CPU the loop was measured faster; on a GPU batching is what pays).
    Training happens member by member, before the ensemble is assembled.
    """

    def __init__(self, members: Sequence[MultiHeadRewardModel], vectorize: bool = True):
        super().__init__()
        if not members:
            raise RewardModelError("an ensemble needs at least one member")
        first = members[0].config.to_dict()
        for i, m in enumerate(members):
            if m.k != 1:
                raise RewardModelError(f"ensemble member {i} has {m.k} heads; members have 1")
            if m.config.encoder != first["encoder"]:
                raise RewardModelError(
                    f"ensemble member {i} has a different encoder architecture than member 0"
                )
        self.config = copy.deepcopy(members[0].config)
        self.vectorize = vectorize
        if not vectorize:
            self.members = nn.ModuleList([m.eval() for m in members])
            return
        params, buffers = stack_module_state([m.eval() for m in members])
        self.stacked = nn.ParameterDict(
            {
                k.replace(".", "/"): nn.Parameter(v.detach(), requires_grad=False)
                for k, v in params.items()
            }
        )
        self._buffers_stacked = {k: v.detach() for k, v in buffers.items()}
        base = copy.deepcopy(members[0]).to("meta")
        with contextlib.suppress(ValueError, AttributeError):  # SDPA has no vmap batching rule
            base.set_attn_implementation("eager")
        self._base = [base]  # a list: not a registered submodule

    def _apply(self, fn, *args, **kwargs):
        """`.to(device)` and friends move the stacked buffers too (a plain dict, not registered)."""
        out = super()._apply(fn, *args, **kwargs)
        if self.vectorize:
            self._buffers_stacked = {k: fn(v) for k, v in self._buffers_stacked.items()}
        return out

    @property
    def k(self) -> int:
        if not self.vectorize:
            return len(self.members)
        return next(iter(self.stacked.values())).shape[0]

    def _params(self) -> dict[str, torch.Tensor]:
        return {k.replace("/", "."): v for k, v in self.stacked.items()}

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Rewards (K, B) of a batch of token ids (B, T)."""
        if not self.vectorize:
            return torch.cat([m.rewards(input_ids, attention_mask) for m in self.members], dim=0)
        base = self._base[0]

        def one(p: dict, b: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return functional_call(base, (p, b), (ids, mask)).logits[:, 0]  # (B,)

        return torch.vmap(one, in_dims=(0, 0, None, None))(
            self._params(), self._buffers_stacked, input_ids, attention_mask
        )

    def member(self, i: int) -> MultiHeadRewardModel:
        """Member i as a stand-alone single-head model (a copy of its weights)."""
        if not self.vectorize:
            return copy.deepcopy(self.members[i])
        m = MultiHeadRewardModel(copy.deepcopy(self.config))
        state = {k: v[i].clone() for k, v in self._params().items()}
        state.update({k: v[i].clone() for k, v in self._buffers_stacked.items()})
        m.load_state_dict(state)
        return m.eval()

    def save_pretrained(self, path: str | Path) -> None:
        """One Hugging Face directory per member plus a manifest naming them."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        names = [f"member_{i:02d}" for i in range(self.k)]
        for i, name in enumerate(names):
            self.member(i).save_pretrained(path / name)
        (path / ENSEMBLE_MANIFEST).write_text(
            json.dumps({"family": "ensemble", "k": self.k, "members": names}, indent=2)
        )


RewardModel = MultiHeadRewardModel | EnsembleRewardModel


class Scorer(Protocol):
    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor: ...


# ------------------------------------------------------------------------------------ building


def encoder_source(encoder: str, policy_dir: str | Path) -> str:
    """Where the encoder comes from: 'policy' and 'scratch' mean the SFT policy's directory."""
    return str(policy_dir) if encoder in ("policy", "scratch") else encoder


def build_reward_model(
    encoder: str,
    policy_dir: str | Path,
    k: int,
    seed: int,
    head_init_std: float = 0.02,
    pad_token_id: int | None = None,
    head_init: str = "normal",
) -> MultiHeadRewardModel:
    """A fresh K-head reward model; the heads are drawn from `seed`.

    encoder: 'policy' (the SFT policy's backbone weights), 'scratch' (the policy's architecture,
    freshly initialised from `seed`) or a Hugging Face id / directory of any encoder.
    """
    source = encoder_source(encoder, policy_dir)
    try:
        enc_config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise RewardModelError(
            f"reward.encoder: cannot load an encoder from {source!r}: {e}"
        ) from e
    config = RewardModelConfig(
        encoder=enc_config.to_dict(),
        num_labels=k,
        head_init=head_init,
        head_init_std=head_init_std,
        pad_token_id=pad_token_id if pad_token_id is not None else enc_config.pad_token_id,
    )
    torch.manual_seed(seed)
    model = MultiHeadRewardModel(config)
    if encoder != "scratch":
        pretrained = AutoModel.from_pretrained(source)
        missing, _ = model.encoder.load_state_dict(pretrained.state_dict(), strict=False)
        if missing:
            raise RewardModelError(f"reward.encoder {source!r}: weights missing for {missing[:5]}")
    return model


def load_reward_model(
    path: str | Path, k: int | None = None, vectorize: bool = True
) -> RewardModel:
    """A saved multi-head model or ensemble; `k` (if given) must match its heads / members.

    vectorize: score an ensemble's members with vmap (True) or one after the other (False)."""
    path = Path(path)

    def load(d: Path) -> MultiHeadRewardModel:
        try:
            return AutoModelForSequenceClassification.from_pretrained(d).eval()
        except (OSError, ValueError, RuntimeError, SafetensorError) as e:
            raise RewardModelError(
                f"{d}: cannot read the reward model's files ({type(e).__name__}: {str(e)[:200]}); "
                "a truncated or corrupt checkpoint: rerun the stage that wrote it "
                "(dvc repro --force <its rm stage>)"
            ) from e

    if (path / ENSEMBLE_MANIFEST).is_file():
        try:
            manifest = json.loads((path / ENSEMBLE_MANIFEST).read_text())
            names = list(manifest["members"])
        except (ValueError, KeyError, TypeError) as e:
            raise RewardModelError(f"{path / ENSEMBLE_MANIFEST}: unreadable ({e})") from e
        model: RewardModel = EnsembleRewardModel([load(path / n) for n in names], vectorize)
    elif (path / "config.json").is_file():
        model = load(path)
        if not isinstance(model, MultiHeadRewardModel):
            raise RewardModelError(f"{path}: not a study reward model ({type(model).__name__})")
    else:
        raise RewardModelError(
            f"{path}: no reward model here (neither config.json nor {ENSEMBLE_MANIFEST}); "
            "run the reward-model stage first (dvc repro)"
        )
    if k is not None and model.k != k:
        raise RewardModelError(
            f"{path}: the saved model has K = {model.k}, but K = {k} was asked for"
        )
    return model


def num_parameters(model: RewardModel) -> int:
    """Parameters of a reward model (all members of an ensemble)."""
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------- scoring


def encode(
    tokenizer: PreTrainedTokenizerBase,
    queries: Sequence[str],
    responses: Sequence[str],
    finished: Sequence[bool],
    max_length: int,
) -> list[list[int]]:
    """Token ids of query + response (+ EOS where the response ended), cut to `max_length`."""
    q_ids = tokenizer(list(queries))["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    out = []
    for q, r, f in zip(q_ids, r_ids, finished, strict=True):
        out.append((q + r + ([eos] if f and eos is not None else []))[:max_length])
    return out


def right_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists -> (ids, mask), both (B, T_max), padded on the right."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


@torch.no_grad()
def score_ids(
    model: Scorer, seqs: Sequence[Sequence[int]], pad_id: int, batch_size: int = 256
) -> torch.Tensor:
    """Rewards (K, N) of N token-id sequences, scored in length-sorted batches where the model is
    (in the caller's autocast, if any); float32 on the CPU."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        ids, mask = on(model, *right_pad([seqs[i] for i in idx], pad_id))
        out.append(model.rewards(ids, mask).float().cpu())
    rewards = torch.cat(out, dim=1)  # (K, N) in sorted order
    return rewards[:, torch.argsort(torch.as_tensor(order))]
