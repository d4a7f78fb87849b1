"""The KV-cached GPT-2 sampler against Hugging Face: the same logits, filters and draws."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from study.config.world import SamplingConfig
from study.decode import filter_logits, gpt2_hidden_stream, gpt2_sample, supports
from study.generation import left_pad, sample

EOS, PAD = 1, 0


def _tiny(seed: int = 0, **kw) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=24, n_positions=40, n_embd=16, n_layer=2, n_head=2, pad_token_id=PAD,
        eos_token_id=EOS, bos_token_id=EOS, **kw,
    )  # fmt: skip
    return GPT2LMHeadModel(cfg).eval()


def test_the_stream_gives_the_hidden_states_and_logits_of_a_full_forward_under_left_padding():
    model = _tiny()
    q_ids, q_mask = left_pad([[3, 4, 5, 6], [7, 8], [9]], PAD)
    fed = torch.tensor([[10, 11, 12], [13, 14, 15], [16, 17, 18]])
    stream = gpt2_hidden_stream(model, q_ids, q_mask, n_new=3)
    got = [next(stream)] + [stream.send(fed[:, t]) for t in range(3)]
    ids = torch.cat([q_ids, fed], 1)
    mask = torch.cat([q_mask, torch.ones_like(fed)], 1)
    with torch.no_grad():
        full = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(1) - 1).clamp(min=0),
            output_hidden_states=True,
        )
    for t, hidden in enumerate(got):
        at = q_ids.shape[1] - 1 + t
        torch.testing.assert_close(hidden, full.hidden_states[-1][:, at], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.lm_head(hidden), full.logits[:, at], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 1.0), (0, 0.7), (4, 0.5), (1, 1.0)])
def test_filters_match_the_warpers_of_generate(top_k, top_p):
    torch.manual_seed(1)
    logits = torch.randn(6, 24) * 3
    expected = logits.clone()
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = filter_logits(logits, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    torch.testing.assert_close(got[~torch.isinf(got)], expected[~torch.isinf(expected)])


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(max_new_tokens=12, batch_size=8),
        SamplingConfig(temperature=0.7, top_k=6, top_p=0.9, max_new_tokens=12, batch_size=8),
    ],
)
def test_draws_equal_those_of_generate_with_the_same_seed(cfg):
    model = _tiny(2)
    queries = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12], [13, 14], [15, 16, 17], [18], [19, 20]]
    q_ids, q_mask = left_pad(queries, PAD)
    torch.manual_seed(7)
    ours, hidden = gpt2_sample(model, q_ids, q_mask, cfg, EOS, PAD)
    torch.manual_seed(7)
    with torch.no_grad():
        hf = model.generate(
            input_ids=q_ids, attention_mask=q_mask, do_sample=True, temperature=cfg.temperature,
            top_k=cfg.top_k, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
            pad_token_id=PAD, eos_token_id=EOS,
        )[:, q_ids.shape[1] :]  # fmt: skip
    width = hf.shape[1]  # generate stops once every row has ended, as ours does
    assert torch.equal(ours[:, :width], hf)
    assert (ours[:, width:] == PAD).all()
    # the hidden states that predicted each drawn token are the model's own, up to that token
    ids = torch.cat([q_ids, ours[:, :width]], 1)
    mask = torch.cat([q_mask, torch.ones_like(ours[:, :width])], 1)
    with torch.no_grad():
        full = model.transformer(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)
        ).last_hidden_state[:, q_ids.shape[1] - 1 : -1]
    torch.testing.assert_close(hidden[:, :width], full, atol=1e-5, rtol=1e-5)


def test_sample_uses_it_for_gpt2_only_and_names_a_bad_decoder(tokenizer):
    from study.config.world import SFTConfig
    from study.world.sft import build_policy

    policy = build_policy(SFTConfig(n_layer=1, n_embd=32, n_head=2, max_length=64), tokenizer, 0)
    assert supports(policy.eval()) and not supports(policy.train())
    assert not supports(_tiny(add_cross_attention=True))
    cfg = SamplingConfig(max_new_tokens=10, batch_size=3)
    queries = ["write a calm note about ocean . <sep>", "a short story <sep>"] * 2
    fast = sample(policy, tokenizer, queries, cfg, seed=3, decoder="auto")
    slow = sample(policy, tokenizer, queries, cfg, seed=3)
    assert fast.texts == slow.texts
    assert slow.hidden is None and fast.hidden.shape == (*fast.response_ids.shape, 32)
    assert torch.equal(fast.response_mask, slow.response_mask)
    with pytest.raises(ValueError, match="decoder 'fast'"):
        sample(policy, tokenizer, queries, cfg, seed=3, decoder="fast")
