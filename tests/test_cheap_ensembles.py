"""Cheap uncertainty from one reward model: the Laplace posterior against autograd's Hessian and
Monte Carlo, the dropout members against the trained model run with the masks applied by hooks."""

from __future__ import annotations

import pytest
import torch

from study.cheap_ensembles import (
    dropout_masks,
    dropout_members,
    laplace_heads,
    laplace_posterior,
    laplace_predictive,
    lora_members,
    pooled_features,
)
from study.config.world import SFTConfig
from study.reward_models import EnsembleRewardModel, build_reward_model, right_pad
from study.world.sft import build_policy


@pytest.fixture(scope="module")
def single(tmp_path_factory, tokenizer):
    cfg = SFTConfig(n_layer=2, n_embd=32, n_head=2, max_length=64, steps=10, warmup_steps=1)
    path = tmp_path_factory.mktemp("policy")
    build_policy(cfg, tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    model = build_reward_model("policy", path, 1, seed=0, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():  # a head of a trained scale
        model.score.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        model.score.bias.fill_(0.25)
    return model.eval()


SEQS_A = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16], [5, 9, 13], [6, 7], [8, 9, 10]]
SEQS_B = [[5, 6, 7], [9, 11, 12, 13], [12, 14], [6, 9, 13, 14], [6, 8, 10], [10, 9]]


def test_laplace_hessian_is_autograds_hessian_of_the_negative_log_posterior():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(5, generator=gen, dtype=torch.float64)
    lam = 0.7

    def neg_log_post(v: torch.Tensor) -> torch.Tensor:
        return -torch.nn.functional.logsigmoid(x @ v).sum() + 0.5 * lam * (v @ v)

    expected = torch.autograd.functional.hessian(neg_log_post, w)
    h, cov = laplace_posterior(x, w, lam)
    torch.testing.assert_close(h, expected, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(cov @ h, torch.eye(5, dtype=torch.float64), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="prior_precision"):
        laplace_posterior(x, w, 0.0)


def test_laplace_heads_are_draws_from_the_posterior(single, tokenizer):
    pad = tokenizer.pad_token_id
    multi, cov = laplace_heads(single, SEQS_A, SEQS_B, pad, k=4000, prior_precision=5.0, seed=3)
    assert multi.k == 4000
    w = single.score.weight[0].double()
    draws = multi.score.weight.double()
    # the draws' mean and covariance are the posterior's (Monte Carlo, 4000 draws)
    assert (draws.mean(0) - w).abs().max() < 4 * cov.diag().max().sqrt() / 4000**0.5
    emp = torch.cov(draws.T)
    assert (emp - cov).abs().max() < 0.1 * cov.diag().max()
    # the encoder is the trained one; every head shares the trained bias
    ids, mask = right_pad(SEQS_A, pad)
    feats = pooled_features(single, SEQS_A, pad)
    with torch.no_grad():
        rewards = multi.rewards(ids, mask).double()  # (K, B)
    torch.testing.assert_close(rewards, draws @ feats.T + 0.25, atol=1e-4, rtol=1e-4)
    # the closed-form predictive std is the spread of the sampled heads' rewards
    mean, std = laplace_predictive(feats, w, 0.25, cov)
    torch.testing.assert_close(rewards.mean(0), mean, atol=4 * float(std.max()) / 60, rtol=0)
    assert ((rewards.std(0) / std) - 1).abs().max() < 0.08
    # a sharp prior pins every head to the trained one
    sharp, _ = laplace_heads(single, SEQS_A, SEQS_B, pad, k=3, prior_precision=1e9, seed=0)
    assert (sharp.score.weight.double() - w).abs().max() < 1e-3
    with pytest.raises(ValueError, match="single-head"):
        laplace_heads(multi, SEQS_A, SEQS_B, pad, 2, 1.0, 0)


def test_dropout_members_are_the_model_run_under_each_mask(single, tokenizer):
    pad = tokenizer.pad_token_id
    k, p = 4, 0.3
    ens = dropout_members(single, k, p, seed=11)
    assert isinstance(ens, EnsembleRewardModel) and ens.k == k
    ids, mask = right_pad(SEQS_A, pad)
    with torch.no_grad():
        got = ens.rewards(ids, mask)  # (K, B)
    blocks = [b.mlp.c_proj for b in single.encoder.h]
    for j, masks in enumerate(dropout_masks(single, k, p, seed=11)):
        assert all(((m == 0) | torch.isclose(m, torch.tensor(1 / (1 - p)))).all() for m in masks)
        hooks = [
            layer.register_forward_pre_hook(lambda _m, a, keep=keep: (a[0] * keep,))
            for layer, keep in zip(blocks, masks, strict=True)
        ]
        try:
            with torch.no_grad():
                expected = single.rewards(ids, mask)[0]
        finally:
            for h in hooks:
                h.remove()
        torch.testing.assert_close(got[j], expected, atol=1e-5, rtol=1e-5)
    assert got.std(0).min() > 0  # the members disagree
    with torch.no_grad():  # and the trained model itself is untouched
        assert not torch.equal(single.rewards(ids, mask)[0], got[0])
    with pytest.raises(ValueError, match="dropout rate"):
        dropout_members(single, 2, 1.0, 0)


def test_lora_members_train_low_rank_updates_of_the_target_projections_only(tmp_path, tokenizer):
    import dataclasses

    import numpy as np

    from study.bt_train import EncodedPairs
    from study.config import load_params
    from tests.conftest import ROOT

    cfg = SFTConfig(n_layer=2, n_embd=32, n_head=2, max_length=64, steps=10, warmup_steps=1)
    build_policy(cfg, tokenizer, seed=0).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reward = dataclasses.replace(
        load_params(ROOT / "params.yaml", "smoke").reward, k=2, batch_size=3, lr=1e-2
    )
    pairs = EncodedPairs(SEQS_A, SEQS_B, np.zeros(len(SEQS_A), dtype=bool))
    pad = tokenizer.pad_token_id
    ens, hist = lora_members(reward, tmp_path, pairs, 0, 0, pad, rank=2, max_steps=3)
    assert ens.k == 2 and set(hist["member"]) == {0, 1} and len(hist) == 4  # 2 steps each
    base = build_reward_model("policy", tmp_path, 1, seed=0, pad_token_id=pad).encoder.state_dict()
    for j in range(2):
        member = ens.member(j)
        state = member.encoder.state_dict()
        assert state.keys() == base.keys()  # adapters merged away: a standard checkpoint
        for name, w in state.items():
            delta = (w - base[name]).double()
            if name.endswith(("attn.c_attn.weight", "mlp.c_fc.weight")):
                assert delta.abs().max() > 0, name  # trained, with a rank-2 update
                assert torch.linalg.matrix_rank(delta, atol=1e-6) <= 2, name
            else:
                assert delta.abs().max() == 0, name  # frozen
    with torch.no_grad():
        ids, mask = right_pad(SEQS_A, pad)
        r = ens.rewards(ids, mask)
    assert not torch.allclose(r[0], r[1])  # the members differ


def test_laplace_head_counts_are_nested(single, tokenizer):
    """The heads of K = 3 are the first three of K = 5 (same seed): a sweep over K adds heads."""
    pad = tokenizer.pad_token_id
    three, _ = laplace_heads(single, SEQS_A, SEQS_B, pad, k=3, prior_precision=2.0, seed=4)
    five, _ = laplace_heads(single, SEQS_A, SEQS_B, pad, k=5, prior_precision=2.0, seed=4)
    torch.testing.assert_close(five.score.weight[:3], three.score.weight, atol=0, rtol=0)


@pytest.mark.parametrize(
    "arm, kind, k",
    [("multihead-laplace", "MultiHeadRewardModel", 3), ("ensemble-dropout", "EnsembleRewardModel", 3),
     ("ensemble-lora", "EnsembleRewardModel", 3), ("multihead-bootstrap", "MultiHeadRewardModel", 3)],
)  # fmt: skip
def test_each_cheap_arm_trains_through_train_family_into_a_model_the_pipeline_reads(
    arm, kind, k, tmp_path, tokenizer
):
    """The arms of params.yaml: one trained model (or adapters) turned into K reward functions,
    saved and loaded back like any family, with the K rewards that differ."""
    import dataclasses

    import numpy as np

    from study.bt_train import EncodedPairs
    from study.config import load_params
    from study.reward_models import load_reward_model
    from study.rm_train import save_reward_model, train_family
    from tests.conftest import ROOT

    cfg = SFTConfig(n_layer=2, n_embd=32, n_head=2, max_length=64, steps=10, warmup_steps=1)
    build_policy(cfg, tokenizer, seed=0).save_pretrained(tmp_path / "policy")
    tokenizer.save_pretrained(tmp_path / "policy")
    params = load_params(ROOT / "params.yaml", "smoke")
    family, reward = params.reward.arm(arm)
    reward = dataclasses.replace(reward, k=k, batch_size=3, lr=1e-2)
    pairs = EncodedPairs(SEQS_A, SEQS_B, np.zeros(len(SEQS_A), dtype=bool))
    pad = tokenizer.pad_token_id
    model, hist = train_family(family, reward, tmp_path / "policy", pairs, 0, 0, pad,
                               progress=False, max_steps=3)  # fmt: skip
    assert type(model).__name__ == kind and model.k == k and len(hist) > 0
    save_reward_model(model, tokenizer, tmp_path / "rm", {"arm": arm})
    loaded = load_reward_model(tmp_path / "rm", k=k)
    with torch.no_grad():
        ids, mask = right_pad(SEQS_A, pad)
        r, r_loaded = model.rewards(ids, mask), loaded.rewards(ids, mask)
    assert torch.allclose(r, r_loaded, atol=1e-5)
    assert not torch.allclose(r[0], r[1])  # K different reward functions


def test_an_uncertainty_that_makes_another_family_is_refused():
    import dataclasses

    from study.config import ConfigError, load_params
    from tests.conftest import ROOT

    reward = load_params(ROOT / "params.yaml", "smoke").reward
    bad = dataclasses.replace(
        reward, arms={"multihead-x": {"family": "multihead", "overrides": ["uncertainty=dropout"]}}
    )
    with pytest.raises(
        ConfigError, match="uncertainty dropout belongs to the family ensemble, not multihead"
    ):
        bad.arm("multihead-x")


def test_training_compute_in_encoder_epochs_by_hand():
    import dataclasses

    from study.config import load_params
    from tests.conftest import ROOT

    reward = dataclasses.replace(load_params(ROOT / "params.yaml", "default").reward, k=5)
    expect = {"single": 1, "multihead": 1, "ensemble": 15, "multihead-3ep": 3,
              "multihead-laplace": 1, "ensemble-dropout": 1, "ensemble-lora": 5,
              "multihead-bootstrap": 1}  # fmt: skip
    for arm, n in expect.items():
        family, cfg = reward.arm(arm)
        assert cfg.encoder_epochs(family) == n, arm
