import numpy as np
import pytest
import torch

from study.config.world import SFTConfig
from study.generation import format_queries
from study.world.sft import (
    IGNORE,
    build_policy,
    encode_sft,
    length_grouped_batches,
    lr_at,
    train_sft,
)


def test_labels_cover_the_response_and_eos_only(tokenizer):
    q = format_queries(["write a calm note about ocean ."], "{prompt} <sep>")
    ids, mask, labels, kept = encode_sft(tokenizer, q, ["the waves seems calm ."], max_length=64)
    n_q = len(tokenizer(q[0])["input_ids"])
    n_r = len("the waves seems calm .".split())
    assert kept.tolist() == [True]
    assert (labels[0, :n_q] == IGNORE).all()
    assert labels[0, n_q : n_q + n_r + 1].tolist() == ids[0, n_q : n_q + n_r + 1].tolist()
    assert labels[0, n_q + n_r].item() == tokenizer.eos_token_id
    assert int(mask.sum()) == n_q + n_r + 1


def test_too_long_examples_are_dropped_not_cut(tokenizer):
    q = format_queries(["write a calm note about ocean ."] * 2, "{prompt} <sep>")
    _, _, _, kept = encode_sft(
        tokenizer, q, ["the waves seems calm .", "the waves seems calm . " * 20], max_length=40
    )
    assert kept.tolist() == [True, False]


def test_length_grouped_batches_cover_rows_once():
    lengths = np.random.default_rng(0).integers(5, 60, size=1000)
    batches = length_grouped_batches(lengths, 32, np.random.default_rng(1), group=4)
    flat = np.concatenate(batches)
    assert len(set(flat.tolist())) == len(flat) and all(len(b) == 32 for b in batches)
    assert len(flat) >= 1000 - 32 * 4  # at most one short remainder per group is skipped
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < np.ptp(lengths) / 2  # batches are far more uniform than the data


def test_schedule_warms_up_then_decays():
    cfg = SFTConfig(steps=100, warmup_steps=10, lr=1.0)
    assert lr_at(0, cfg) == 0.1 and lr_at(9, cfg) == 1.0
    assert lr_at(10, cfg) == 1.0 and abs(lr_at(100, cfg) - 0.1) < 1e-9


@pytest.mark.slow
def test_short_training_lowers_loss_and_changes_weights(tokenizer, corpus):
    prompts, responses, _ = corpus
    cfg = SFTConfig(
        n_layer=1,
        n_embd=32,
        n_head=2,
        steps=80,
        batch_size=32,
        warmup_steps=2,
        eval_every=40,
        lr=1e-2,
    )
    ids, mask, labels, _ = encode_sft(
        tokenizer, format_queries(prompts, "{prompt} <sep>"), responses, cfg.max_length
    )
    model = build_policy(cfg, tokenizer, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = train_sft(
        model,
        (ids[50:], mask[50:], labels[50:]),
        (ids[:50], mask[:50], labels[:50]),
        cfg,
        seed=0,
        progress=False,
    )
    val = history["val_loss"].dropna()
    assert val.iloc[-1] < np.log(len(tokenizer)) - 1.0  # well below a uniform guess
    assert history["train_loss"].tail(5).mean() < history["train_loss"].head(5).mean() - 0.5
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "transformer.wte.weight" in changed and len(changed) > len(before) // 2
