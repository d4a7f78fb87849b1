"""PPO's forward helpers: log-probabilities of sampled tokens under padding, values per token."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model

from study.actor_critic import ActorCritic, ValueModel, policy_forward, response_values
from study.generation import left_pad


def _tiny(seed: int = 0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=20, n_positions=32, n_embd=16, n_layer=1, n_head=2, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval(), GPT2Model(cfg)


def test_policy_logprobs_match_an_unpadded_forward():
    model, _ = _tiny()
    queries = [[3, 4, 5], [6, 7]]
    responses = [[8, 9, 1], [10, 1, 0]]  # the second response ends after 2 tokens
    r_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    q_ids, q_mask = left_pad(queries, 0)
    with torch.no_grad():
        out = policy_forward(
            model, q_ids, q_mask, torch.tensor(responses), r_mask, with_entropy=True
        )
        for b, (q, r) in enumerate(zip(queries, responses, strict=True)):
            n = int(r_mask[b].sum())
            ids = torch.tensor([q + r[:n]])
            logp = model(input_ids=ids).logits[0, len(q) - 1 : -1].log_softmax(-1)
            expected = logp.gather(1, torch.tensor(r[:n]).unsqueeze(1)).squeeze(1)
            torch.testing.assert_close(out.logprobs[b, :n], expected, atol=1e-5, rtol=1e-5)
    assert out.entropy.shape == (2, 3) and (out.entropy > 0).all()


def test_temperature_scales_the_logits():
    model, _ = _tiny()
    q_ids, q_mask = left_pad([[3, 4]], 0)
    r = torch.tensor([[5, 6]])
    m = torch.ones_like(r)
    with torch.no_grad():
        hot = policy_forward(model, q_ids, q_mask, r, m, temperature=2.0).logprobs
        logits = model(input_ids=torch.tensor([[3, 4, 5, 6]])).logits[0, 1:3] / 2.0
    torch.testing.assert_close(hot[0], logits.log_softmax(-1).gather(1, r.T).squeeze(1))


def test_value_model_starts_at_zero_and_reads_every_response_position():
    _, backbone = _tiny()
    critic = ValueModel(backbone)
    q_ids, q_mask = left_pad([[3, 4, 5], [6]], 0)
    r = torch.tensor([[7, 8], [9, 1]])
    v = response_values(critic, q_ids, q_mask, r, torch.ones_like(r))
    assert v.shape == (2, 2) and torch.equal(v, torch.zeros(2, 2))


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_the_actor_critic_reads_the_policy_and_starts_its_values_at_zero(value_model):
    model, _ = _tiny()
    ac = ActorCritic(model, value_model).eval()
    q_ids, q_mask = left_pad([[3, 4, 5], [6]], 0)
    r = torch.tensor([[7, 8, 1], [9, 1, 0]])
    r_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    with torch.no_grad():
        out = ac(q_ids, q_mask, r, r_mask, temperature=1.5, with_entropy=True)
        alone = policy_forward(model, q_ids, q_mask, r, r_mask, 1.5, with_entropy=True)
    torch.testing.assert_close(out.logprobs, alone.logprobs)
    torch.testing.assert_close(out.entropy, alone.entropy)
    assert out.values.shape == (2, 3) and torch.equal(out.values, torch.zeros(2, 3))
    # the value function's own parameters: a head on the trunk, or a whole copy of it
    n_value = sum(p.numel() for p in ac.value_parameters())
    n_trunk = sum(p.numel() for p in model.transformer.parameters())
    assert n_value == (16 + 1 if value_model == "shared" else n_trunk + 16 + 1)
    groups = ac.clip_groups()
    assert len(groups) == (1 if value_model == "shared" else 2)
    assert sum(p.numel() for g in groups for p in g) == sum(p.numel() for p in ac.parameters())


def test_the_shared_value_loss_reaches_the_trunk_and_the_separate_one_does_not():
    torch.manual_seed(0)
    q_ids, q_mask = left_pad([[3, 4, 5], [6]], 0)
    r, r_mask = torch.tensor([[7, 8], [9, 1]]), torch.ones(2, 2, dtype=torch.long)
    for value_model, reaches in (("shared", True), ("separate", False)):
        model, _ = _tiny()
        ac = ActorCritic(model, value_model)
        torch.nn.init.normal_(ac.value_parameters()[0])  # a non-zero head passes gradient back
        ac(q_ids, q_mask, r, r_mask).values.sum().backward()
        trunk_grad = model.transformer.h[0].attn.c_attn.weight.grad
        assert (trunk_grad is not None and trunk_grad.abs().sum() > 0) == reaches, value_model


def test_a_bad_value_model_is_named():
    model, _ = _tiny()
    with pytest.raises(ValueError, match="value_model 'tied'"):
        ActorCritic(model, "tied")


@pytest.mark.parametrize("value_model", ["shared", "separate"])
def test_a_toy_ppo_run_keeps_losses_finite_and_changes_the_weights(tokenizer, value_model):
    import copy

    from study.config.world import SamplingConfig, SFTConfig
    from study.generation import format_queries, sample
    from study.ppo_step import make_optimizer, make_rollout, ppo_update
    from study.proxy import HeadNormaliser
    from study.world.sft import build_policy

    policy = build_policy(SFTConfig(n_layer=1, n_embd=32, n_head=2, max_length=64), tokenizer, 0)
    ref = copy.deepcopy(policy).eval()
    ac = ActorCritic(policy, value_model)
    target = tokenizer.convert_tokens_to_ids("the")

    def reward_fn(b):  # three "heads": counts of one token, scaled differently
        count = ((b.ids == target) & b.mask.bool()).sum(1).float()
        return torch.stack([count, 0.5 * count, count - 1.0])

    optimizer = make_optimizer(ac, 1e-3, 1e-3)
    before = {k: v.clone() for k, v in ac.state_dict().items()}
    ref_before = {k: v.clone() for k, v in ref.state_dict().items()}
    queries = format_queries(["write a calm note about ocean ."] * 16, "{prompt} <sep>")
    gen = torch.Generator().manual_seed(0)
    for step in range(3):
        s = sample(
            policy, tokenizer, queries, SamplingConfig(max_new_tokens=12, batch_size=16), seed=step
        )
        ro = make_rollout(
            ac, ref, reward_fn, HeadNormaliser.identity(3), s, [""] * 16, "min", 0.5,
            kl_coef=0.05, gamma=1.0, lam=0.95, temperature=1.0,
        )  # fmt: skip
        assert ro.head_rewards.shape == (3, 16) and ro.advantages.shape == ro.response_mask.shape
        stats = ppo_update(
            ac, optimizer, ro, 2, 2, 0.2, 0.2, 0.1, 1.0, True, 1.0, gen, ent_coef=0.01 * step,
        )  # fmt: skip
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
        # the entropy term enters only when asked for, as minus the mean token entropy
        assert (stats["entropy_loss"] == 0.0) == (step == 0)
        assert step == 0 or -stats["entropy_loss"] > 0
    after = ac.state_dict()
    changed = {k for k, v in after.items() if not torch.equal(v, before[k])}
    assert any(k.startswith("policy.") for k in changed)
    assert any(
        k.startswith("value_head." if value_model == "shared" else "critic.") for k in changed
    )
    assert all(torch.equal(v, ref_before[k]) for k, v in ref.state_dict().items())
