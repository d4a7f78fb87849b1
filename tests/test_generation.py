import numpy as np
import pytest
import torch

from study.config.world import SamplingConfig, SFTConfig
from study.generation import first_true_indices, format_queries, left_pad, sample, truncate_at_eos
from study.world.sft import build_policy

EOS, PAD = 1, 0


def test_first_true_indices_by_hand():
    b = torch.tensor([[0, 0, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert first_true_indices(b).tolist() == [2, 0, 4]


def test_truncate_at_eos_keeps_through_the_first_eos():
    r = torch.tensor([[5, 6, EOS, 7, EOS], [5, 6, 7, 8, 9], [EOS, 5, 5, 5, 5]])
    ids, mask, finished = truncate_at_eos(r, EOS, PAD)
    assert ids.tolist() == [[5, 6, EOS, PAD, PAD], [5, 6, 7, 8, 9], [EOS, PAD, PAD, PAD, PAD]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert finished.tolist() == [True, False, True]


def test_left_pad_by_hand():
    ids, mask = left_pad([[3, 4, 5], [6]], PAD)
    assert ids.tolist() == [[3, 4, 5], [PAD, PAD, 6]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_format_queries():
    assert format_queries(["a", "b"], "{prompt} <sep>") == ["a <sep>", "b <sep>"]


@pytest.fixture(scope="module")
def tiny_policy(tokenizer):
    cfg = SFTConfig(n_layer=1, n_embd=32, n_head=2, steps=2, warmup_steps=0)
    return build_policy(cfg, tokenizer, seed=0).eval()


def test_left_padding_does_not_change_the_next_token_distribution(tiny_policy, tokenizer):
    q = tokenizer(["write a calm note about ocean . <sep>"], add_special_tokens=False)["input_ids"][
        0
    ]
    ids, mask = left_pad([q, [*q, *q]], tokenizer.pad_token_id)  # row 0 gets len(q) pads
    alone = tiny_policy(input_ids=torch.tensor([q])).logits[0, -1]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    padded = tiny_policy(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0, -1]
    torch.testing.assert_close(alone, padded, rtol=1e-4, atol=1e-5)


def test_sample_is_seeded_and_well_formed(tiny_policy, tokenizer):
    cfg = SamplingConfig(max_new_tokens=12, batch_size=3)
    queries = format_queries(
        ["write a calm note about ocean .", "write a long angry story about city ."] * 4,
        "{prompt} <sep>",
    )
    a = sample(tiny_policy, tokenizer, queries, cfg, seed=7)
    b = sample(tiny_policy, tokenizer, queries, cfg, seed=7)
    c = sample(tiny_policy, tokenizer, queries, cfg, seed=8)
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert not torch.equal(a.response_ids, c.response_ids)
    assert a.response_ids.shape == (8, 12) and a.query_ids.shape[0] == 8
    lengths = a.response_mask.sum(1)
    for i in range(8):  # finished rows end with EOS, and nothing but pad follows
        n = int(lengths[i])
        assert bool(a.finished[i]) == (a.response_ids[i, n - 1].item() == tokenizer.eos_token_id)
        assert (a.response_ids[i, n:] == tokenizer.pad_token_id).all()
    assert isinstance(a.finished, np.ndarray) and a.finished.dtype == bool


def test_generate_with_left_padding_matches_unpadded_greedy(tiny_policy, tokenizer):
    short, long = (
        "write a calm note about ocean . <sep>",
        "write a long angry story about city . <sep>",
    )
    both = tokenizer([short, long], add_special_tokens=False)["input_ids"]
    ids, mask = left_pad(both, tokenizer.pad_token_id)
    kw = dict(
        do_sample=False,
        max_new_tokens=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    batched = tiny_policy.generate(input_ids=ids, attention_mask=mask, **kw)[:, ids.shape[1] :]
    alone = tiny_policy.generate(
        input_ids=torch.tensor([both[0]]),
        attention_mask=torch.ones(1, len(both[0]), dtype=torch.long),
        **kw,
    )[:, len(both[0]) :]
    n = alone.shape[1]
    assert batched[0, :n].tolist() == alone[0].tolist()
