"""TRL's RLOO beside our PPO: the reward callable against a direct computation, the position fix,
and a toy-size run that logs KL, proxy and gold and moves the policy."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM

from study.aggregate import aggregate
from study.config.policy import RLOOConfig
from study.generation import format_queries, left_pad
from study.hub import load_tokenizer
from study.proxy import HeadNormaliser, proxy_reward_fn
from study.reward_models import build_reward_model, load_reward_model, right_pad
from study.rloo import make_reward_callable, train_rloo
from study.rloo_table import count_positions_from_first_token, untemplate
from study.world.build import build_world
from study.world.gold import COMPONENTS
from tests.conftest import toy_params

K = 3


@pytest.fixture(scope="module")
def params():
    """Smoke params cut further: a world in seconds, responses of at most 12 tokens."""
    return toy_params()


@pytest.fixture(scope="module")
def world(params, tmp_path_factory):
    """A world (policy + tokenizer, prompts) and an untrained K-head reward model beside it."""
    root = tmp_path_factory.mktemp("rloo")
    build_world(params, root / "world", progress=False)
    tok = load_tokenizer(str(root / "world" / "policy"))
    rm = build_reward_model(
        "policy", root / "world" / "policy", K, seed=0, pad_token_id=tok.pad_token_id
    )
    rm_dir = root / "rm" / "multihead" / "seed0"
    rm.save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    return root, tok


def test_untemplate_inverts_format_queries():
    template = "Human: {prompt}\n\nAssistant:"
    assert untemplate(format_queries(["a b ."], template)[0], template) == "a b ."
    with pytest.raises(ValueError, match="template"):
        untemplate("a b .", template)


def test_config_rejects_what_trl_cannot_use():
    # built in code, a section's refusal is pydantic's ValueError naming the key (from a params
    # file, the ConfigError of tests/test_config.py)
    with pytest.raises(ValueError, match=r"rloo\.num_generations"):
        RLOOConfig(num_generations=1)
    with pytest.raises(ValueError, match=r"rloo\.beta"):
        RLOOConfig(beta=0.0)
    assert RLOOConfig(prompts_per_step=3, num_generations=4).batch_size == 12


@pytest.mark.slow
@pytest.mark.parametrize("method", ["min", "mean"])
def test_reward_callable_matches_direct_scoring(world, method):
    root, tok = world
    rm = load_reward_model(root / "rm" / "multihead" / "seed0", k=K).requires_grad_(False)
    template = "{prompt} <sep>"
    raw = ["write a short angry review about forest .", "write a calm note about space ."] * 2
    responses = ["the forest is angry .", "space is calm . space is calm", "", "forest ."]
    finished = [True, False, True, True]
    completion_ids = [
        tok(r, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if f else [])
        for r, f in zip(responses, finished, strict=True)
    ]
    queries = format_queries(raw, template)
    normaliser = HeadNormaliser(torch.tensor([0.1, -0.2, 0.05]), torch.tensor([0.5, 2.0, 1.5]))
    calls = []
    reward = make_reward_callable(
        proxy_reward_fn(rm, tok, tok, 96), normaliser, method, 0.5, tok, template,
        on_batch=calls.append, name="multihead_" + method,
    )  # fmt: skip

    out = reward(prompts=queries, completions=responses, completion_ids=completion_ids)

    assert reward.__name__ == "multihead_" + method
    assert len(out) == len(raw) and all(type(x) is float and math.isfinite(x) for x in out)
    # direct: query + response ids right-padded in one block (another layout than the callable's)
    seqs = [q + c for q, c in zip(tok(queries)["input_ids"], completion_ids, strict=True)]
    ids, mask = right_pad(seqs, tok.pad_token_id)
    with torch.no_grad():
        heads = (rm.rewards(ids, mask) - normaliser.mean[:, None]) / normaliser.std[:, None]
    expected = aggregate(heads, method)  # (B,)
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5, rtol=0)
    # what the gold logger sees: the raw prompts, the texts, the EOS flags, the lengths
    (call,) = calls
    assert call.batch.prompts == raw and call.heads.shape == (K, len(raw))
    assert call.batch.texts == [r.strip() for r in responses]
    assert call.batch.finished.tolist() == finished
    assert call.response_length.tolist() == [len(c) for c in completion_ids]


@pytest.mark.slow
def test_positions_count_from_the_first_token(world):
    """TRL scores left-padded batches without position ids; the hook makes them as generate's."""
    root, tok = world
    model = AutoModelForCausalLM.from_pretrained(root / "world" / "policy").eval()
    seqs = [tok("write a calm note about space . <sep> space")["input_ids"], [5, 6]]
    ids, mask = left_pad(seqs, tok.pad_token_id)  # row 1 is padded on the left
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([seqs[1]])).logits[0]  # (2, V)
        shifted = model(input_ids=ids, attention_mask=mask).logits[1, -2:]
        handle = count_positions_from_first_token(model)
        fixed = model(input_ids=ids, attention_mask=mask).logits[1, -2:]
    handle.remove()
    assert not torch.allclose(shifted, alone, atol=1e-4)  # TRL's call, unhooked: other positions
    torch.testing.assert_close(fixed, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "k"), [("multihead_min", K), ("gold", 1)])
def test_toy_rloo_run_logs_kl_proxy_gold_and_moves_the_policy(world, params, tmp_path, variant, k):
    root, _ = world
    cfg = RLOOConfig(steps=2, prompts_per_step=2, num_generations=2, lr=1e-3, warmup_steps=0)
    table = train_rloo(
        params, variant, 0, root / "world", root / "rm", tmp_path, progress=False, cfg=cfg
    )

    required = ["variant", "seed", "step", "kl", "proxy", "gold"]
    assert set(required + [f"gold_{c}" for c in COMPONENTS]) <= set(table.columns)
    assert {f"proxy_head{h}" for h in range(k)} <= set(table.columns)
    assert f"proxy_head{k}" not in table.columns
    assert table["step"].tolist() == [0, 1] and set(table["variant"]) == {variant}
    numeric = table.drop(columns=["variant"])
    assert np.isfinite(numeric.to_numpy(dtype=float)).all(), table.T
    # KL per response is TRL's per-token KL times the mean completion length of the same batch
    pd.testing.assert_series_equal(
        table["kl"], table["kl_per_token"] * table["response_length"], check_names=False
    )
    assert table.loc[0, "kl"] == pytest.approx(0.0, abs=1e-5)  # the first batch: policy = SFT
    gold_parts = table[[f"gold_{c}" for c in COMPONENTS]].sum(axis=1)
    np.testing.assert_allclose(gold_parts, table["gold"], atol=1e-9)

    before = AutoModelForCausalLM.from_pretrained(root / "world" / "policy").state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "policy").state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "RLOO did not change any weight of the policy"
