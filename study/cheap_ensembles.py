"""Cheap uncertainty from one trained reward model, materialised as a family the pipeline reads.

Each method turns one trained single-head reward model into K reward functions without training K
encoders, and saves them in a format `study.reward_models.load_reward_model` already reads, so
PPO, best-of-n and the aggregations take them like any other family:

- **Bayesian last layer** (`laplace_heads`): a Laplace approximation of the posterior over the
  head's weights given the encoder's features, for the Bradley–Terry likelihood. With features
  x_i = φ(chosen_i) − φ(rejected_i), the log-posterior's Hessian at the trained head w is
  H = Σ_i p_i (1 − p_i) x_i x_iᵀ + λ I (p_i = σ(w·x_i), λ the prior precision); K heads drawn from
  N(w, H⁻¹) make a multi-head model (one encoder, K heads). The head's bias does not enter the
  pair likelihood and is kept as trained. `laplace_predictive` gives the closed-form predictive
  mean w·φ and standard deviation √(φᵀ H⁻¹ φ) of one response's reward.
  (laplace-torch is not used: it requires torchvision, which cannot be installed beside the
  pinned CPU build of torch; for a linear head under this likelihood the closed form is exact.)
- **Dropout subnetworks** (`dropout_members`): K fixed dropout masks over the hidden units of
  every MLP block of the encoder (rate p, inverted scaling), each mask folded into a copy of the
  block's output projection, so member k computes exactly the forward pass of the trained model
  under mask k. Fixed masks make the reward deterministic (what PPO needs within and across
  steps). It is MC dropout with K masks drawn once, on the MLP's hidden units (not where GPT-2
  places its own dropout, and applied to a model trained without it): a test-time perturbation
  ensemble rather than a posterior of a dropout-trained network.
- **LoRA ensemble** (`lora_members`): one frozen encoder and K low-rank adapters with their own
  heads, each trained separately (`peft`), merged into K standard members. The backward pass
  still runs through the whole encoder, so training compute is close to K fine-tunings; what it
  saves is the optimiser state of K encoders. The merged members hold K full encoders, as an
  ensemble does (scoring with unmerged adapters on one base would save that memory).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
from transformers.pytorch_utils import Conv1D

from study.bt_train import EncodedPairs, member_seed, train_reward_model
from study.config.reward import RewardConfig
from study.device import CPU, Placement, on
from study.modeling_reward import MultiHeadRewardModel
from study.reward_models import EnsembleRewardModel, build_reward_model, right_pad


@torch.no_grad()
def pooled_features(
    model: MultiHeadRewardModel,
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    batch_size: int = 256,
) -> torch.Tensor:
    """The features (N, d) the heads read: the encoder's hidden state at each sequence's last
    token (the input of `model.score`, captured by a hook)."""
    captured: list[torch.Tensor] = []
    hook = model.score.register_forward_hook(
        lambda _m, inp, _out: captured.append(inp[0].float().cpu())
    )
    was_training = model.training
    model.eval()  # no dropout in the features
    try:
        for s in range(0, len(seqs), batch_size):
            ids, mask = on(model, *right_pad(seqs[s : s + batch_size], pad_id))
            model(ids, mask)
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).double()


def laplace_posterior(
    x: torch.Tensor, w: torch.Tensor, prior_precision: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(H, H⁻¹) of the Bradley–Terry log-posterior at head `w` (d,), for pair features x (N, d):
    H = Σ_i p_i (1 − p_i) x_i x_iᵀ + λ I with p_i = σ(w · x_i)."""
    if prior_precision <= 0:
        raise ValueError(f"prior_precision must be > 0, got {prior_precision}")
    x, w = x.double(), w.double()
    p = torch.sigmoid(x @ w)
    h = (x * (p * (1 - p))[:, None]).T @ x + prior_precision * torch.eye(x.shape[1], dtype=x.dtype)
    return h, torch.cholesky_inverse(torch.linalg.cholesky(h))


def laplace_heads(
    model: MultiHeadRewardModel,
    chosen: Sequence[Sequence[int]],
    rejected: Sequence[Sequence[int]],
    pad_id: int,
    k: int,
    prior_precision: float,
    seed: int,
) -> tuple[MultiHeadRewardModel, torch.Tensor]:
    """A K-head model whose heads are draws from the last-layer Laplace posterior of a trained
    single-head `model`, on the training pairs (chosen, rejected); and the covariance H⁻¹."""
    if model.k != 1:
        raise ValueError(f"laplace_heads takes a single-head model, got K = {model.k}")
    x = pooled_features(model, chosen, pad_id) - pooled_features(model, rejected, pad_id)
    w = model.score.weight[0].detach().cpu().double()
    h, cov = laplace_posterior(x, w, prior_precision)
    # w + L⁻ᵀ z for H = L Lᵀ has covariance H⁻¹; one row of z per head, so the first K heads of
    # a larger K are the same draws (nested head counts)
    z = torch.randn(k, w.shape[0], generator=torch.Generator().manual_seed(seed), dtype=h.dtype)
    chol = torch.linalg.cholesky(h)
    draws = w + torch.linalg.solve_triangular(chol.T, z.T, upper=True).T  # (K, d)
    config = copy.deepcopy(model.config)
    config.num_labels = k
    out = MultiHeadRewardModel(config)  # on the CPU: the caller places it
    out.encoder.load_state_dict(model.encoder.state_dict())
    with torch.no_grad():
        out.score.weight.copy_(draws.to(out.score.weight.dtype))
        out.score.bias.fill_(float(model.score.bias[0]))
    return out.eval(), cov


def laplace_predictive(
    features: torch.Tensor, w: torch.Tensor, bias: float, cov: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form predictive mean (N,) and standard deviation (N,) of rewards w·φ + b under the
    head posterior N(w, cov), for features φ (N, d)."""
    f = features.double()
    mean = f @ w.double() + bias
    std = torch.einsum("nd,de,ne->n", f, cov.double(), f).clamp_min(0).sqrt()
    return mean, std


def _mlp_outputs(encoder: nn.Module) -> list[nn.Module]:
    """The output projection of every MLP block (GPT-2's `mlp.c_proj`, a Conv1D with weight
    (hidden, d)): its input rows are the hidden units a mask drops."""
    layers = [
        m.mlp.c_proj for m in encoder.modules() if hasattr(m, "mlp") and hasattr(m.mlp, "c_proj")
    ]
    if any(not isinstance(layer, Conv1D) for layer in layers):
        raise ValueError("dropout_members: mlp.c_proj is not GPT-2's Conv1D (weight (in, out))")
    if not layers:
        raise ValueError(
            f"dropout_members: no GPT-2 style MLP (mlp.c_proj) in {type(encoder).__name__}"
        )
    return layers


def dropout_masks(
    model: MultiHeadRewardModel, k: int, p: float, seed: int
) -> list[list[torch.Tensor]]:
    """K masks, one per MLP block each: 0 for a dropped hidden unit, 1/(1 − p) for a kept one."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout rate must be in (0, 1), got {p}")
    gen = torch.Generator().manual_seed(seed)
    widths = [layer.weight.shape[0] for layer in _mlp_outputs(model.encoder)]
    return [
        [(torch.rand(w, generator=gen) >= p).float() / (1 - p) for w in widths] for _ in range(k)
    ]


def dropout_members(
    model: MultiHeadRewardModel, k: int, p: float, seed: int
) -> EnsembleRewardModel:
    """K copies of a trained single-head `model`, member k with a fixed dropout mask (rate `p`,
    kept units scaled by 1/(1 − p)) on the hidden units of every MLP block (after the activation),
    folded into the input rows of the block's output projection: member k computes exactly the
    trained model's forward pass under mask k."""
    if model.k != 1:
        raise ValueError(f"dropout_members takes a single-head model, got K = {model.k}")
    members = []
    for masks in dropout_masks(model, k, p, seed):
        m = copy.deepcopy(model).eval()
        with torch.no_grad():
            for layer, keep in zip(_mlp_outputs(m.encoder), masks, strict=True):
                layer.weight.mul_(keep[:, None].to(layer.weight.device, layer.weight.dtype))
        members.append(m)
    return EnsembleRewardModel(members)


def lora_members(
    cfg: RewardConfig,
    policy_dir: str | Path,
    pairs: EncodedPairs,
    base_seed: int,
    seed: int,
    pad_id: int,
    rank: int = 8,
    alpha: float = 16.0,
    targets: Sequence[str] = ("c_attn", "c_fc"),
    progress: bool = False,
    max_steps: int | None = None,
    placement: Placement = CPU,
) -> tuple[EnsembleRewardModel, pd.DataFrame]:
    """K = `cfg.k` members on one frozen encoder (the SFT backbone): each its own low-rank adapters
    (`peft` LoRA of rank `rank` on the `targets` projections) and its own head, trained with the
    Bradley–Terry loss for ``cfg.epochs('single')`` epochs from its own seed; then each member's
    adapters are merged into a copy of the encoder, so the members are standard single-head
    checkpoints. Returns the ensemble and the training history (with a `member` column)."""
    from peft import LoraConfig, get_peft_model

    members, histories = [], []
    train_cfg = dataclasses.replace(cfg, freeze_encoder=False)  # the adapters train
    for m in range(cfg.k):
        s = member_seed(base_seed, seed, m)
        model = build_reward_model(
            cfg.encoder, policy_dir, 1, s, cfg.head_init_std, pad_id, cfg.head_init
        )
        placement.put(model)  # peft puts the adapters beside the weights they adapt
        torch.manual_seed(s)  # the adapters' initial A matrices
        lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets),
                          fan_in_fan_out=True, lora_dropout=0.0)  # fmt: skip
        model.encoder = get_peft_model(model.encoder, lora)  # base weights frozen by peft
        hist = train_reward_model(
            model, pairs, train_cfg, cfg.epochs("single"), s, pad_id, progress, max_steps,
            placement,
        )  # fmt: skip
        model.encoder = model.encoder.merge_and_unload()
        histories.append(hist.assign(member=m))
        members.append(model.eval())
    return EnsembleRewardModel(members), pd.concat(histories, ignore_index=True)
