"""PPO's pure functions against reference loops and hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from study.ppo import (
    AdaptiveKLController,
    entropy_from_logits,
    gae,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    ppo_policy_loss,
    shaped_rewards,
    value_loss,
    whiten,
)


def gae_reference(rewards, values, lengths, gamma, lam):
    """Plain per-sequence loop over the unpadded slice (value 0 after the last token)."""
    adv = torch.zeros_like(rewards)
    for b, n in enumerate(lengths):
        last = 0.0
        for t in reversed(range(n)):
            nv = values[b, t + 1].item() if t + 1 < n else 0.0
            delta = rewards[b, t].item() + gamma * nv - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv


def test_gae_matches_a_reference_loop_with_padding():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    lengths = [7, 3, 1, 5]
    mask = torch.zeros(4, 7)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    adv, ret = gae(rewards, values, mask, gamma=0.99, lam=0.95)
    ref = gae_reference(rewards, values, lengths, 0.99, 0.95)
    torch.testing.assert_close(adv, ref)
    torch.testing.assert_close(ret, (ref + values) * mask)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()
    # padding content does not leak in
    noisy = rewards + (1 - mask) * 100.0
    torch.testing.assert_close(gae(noisy, values + (1 - mask) * 50, mask, 0.99, 0.95)[0], adv)


def test_gae_with_gamma_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 0.0]])
    values = torch.tensor([[0.5, 0.25, 1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[6.0, 5.0, 3.0, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[5.5, 4.75, 2.0, 0.0]]))


def test_masked_statistics_and_whiten_match_the_unmasked_slice():
    x = torch.tensor([[1.0, 2.0, 3.0, 50.0], [4.0, 5.0, -7.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    kept = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert masked_mean(x, mask).item() == pytest.approx(kept.mean().item())
    assert masked_var(x, mask).item() == pytest.approx(kept.var().item())
    w = whiten(x, mask)
    torch.testing.assert_close(
        w[mask.bool()], (kept - kept.mean()) / kept.std(), atol=1e-4, rtol=1e-4
    )
    assert (w[~mask.bool()] == 0).all()
    assert masked_mean(w, mask).abs().item() < 1e-6


def test_policy_loss_by_hand():
    logp_old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    mask = torch.tensor([[1, 1, 1]])
    loss, clipfrac = ppo_policy_loss(logp, logp_old, adv, mask, cliprange=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5;
    # token 2: max(2.2, 2.2) = 2.2 (ratio inside the range)
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)


def test_value_loss_by_hand():
    v_old = torch.tensor([[0.0, 0.0]])
    v = torch.tensor([[1.0, -0.1]])
    ret = torch.tensor([[2.0, 1.0]])
    loss, clipfrac = value_loss(v, v_old, ret, torch.ones(1, 2), cliprange_value=0.2)
    # token 0: max((1-2)^2, (0.2-2)^2) = 3.24 (clipped); token 1: max(1.21, 1.21) = 1.21
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.21) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_shaped_rewards_put_the_score_on_the_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    r = shaped_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.01, -0.02, 2.0 - 0.03], [-1.05, 0.0, 0.0]]))


def test_logprobs_entropy_and_k3():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    assert logprobs_from_logits(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits).item() == pytest.approx(h)
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_k3(lp, ref).item() == pytest.approx(0.5 - 1 - math.log(0.5))
    assert kl_k3(lp, lp).item() == 0.0


def test_adaptive_kl_controller_by_hand():
    c = AdaptiveKLController(0.1, target=6.0, horizon=100.0)
    assert c.update(12.0, n_steps=10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # error clipped
    c2 = AdaptiveKLController(0.1, target=6.0, horizon=100.0)
    assert c2.update(5.4, n_steps=10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    with pytest.raises(FloatingPointError):
        c2.update(float("nan"), 1)
