"""Reward-model families: one calling convention (K, B), save/load, vmap ensemble, training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from study.bt_train import encode_pairs, head_moved, resample_weights, train_reward_model
from study.config import load_params
from study.config.world import SFTConfig
from study.generation import left_pad
from study.modeling_reward import init_heads
from study.reward_models import (
    EnsembleRewardModel,
    MultiHeadRewardModel,
    RewardModelError,
    build_reward_model,
    load_reward_model,
    num_parameters,
    right_pad,
    score_ids,
)
from study.rm_train import save_reward_model, train_family
from study.world.grammar import sample_instructions, sample_response
from study.world.sft import build_policy
from tests.conftest import ROOT

TEMPLATE = "{prompt} <sep>"


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer):
    cfg = SFTConfig(n_layer=1, n_embd=32, n_head=2, max_length=96, steps=10, warmup_steps=1)
    model = build_policy(cfg, tokenizer, seed=0)
    path = tmp_path_factory.mktemp("policy")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_cfg():
    return dataclasses.replace(load_params(ROOT / "params.yaml", "smoke").reward, batch_size=16)


@pytest.fixture(scope="module")
def pairs_df(smoke_params):
    """Pairs whose 'chosen' side is on topic and 'rejected' drifts: learnable in a few steps."""
    rng = np.random.default_rng(0)
    ins = sample_instructions(smoke_params.world, 96, rng)
    rows = []
    for i, instr in enumerate(ins):
        good = sample_response(smoke_params.world, instr, 1.0, rng)
        bad = sample_response(smoke_params.world, instr, 0.0, rng)
        rows.append(
            {
                "pair_id": i,
                "prompt": instr.text,
                "chosen": good,
                "rejected": bad,
                "chosen_finished": True,
                "rejected_finished": True,
                "flipped": False,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def pairs(tokenizer, pairs_df, reward_cfg):
    return encode_pairs(tokenizer, pairs_df, TEMPLATE, reward_cfg.max_length)


def _batch(pairs, n=8):
    return right_pad(pairs.chosen[:n], 0)


def test_multihead_rewards_are_k_by_b_and_heads_cost_k_minus_1_times_hidden_plus_1(policy_dir):
    single = build_reward_model("policy", policy_dir, 1, seed=0)
    multi = build_reward_model("policy", policy_dir, 5, seed=0)
    ids = torch.randint(4, 50, (3, 12))
    mask = torch.ones_like(ids)
    assert multi.rewards(ids, mask).shape == (5, 3)
    hidden = multi.encoder.config.n_embd
    assert num_parameters(multi) - num_parameters(single) == 4 * (hidden + 1)
    assert isinstance(multi.score, torch.nn.Linear) and multi.score.bias is not None


def test_encoder_starts_from_the_policy_backbone_or_from_scratch(policy_dir):
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    from_policy = build_reward_model("policy", policy_dir, 2, seed=0)
    scratch = build_reward_model("scratch", policy_dir, 2, seed=1)
    wte = policy.transformer.wte.weight
    assert torch.equal(from_policy.encoder.wte.weight, wte)
    assert not torch.allclose(scratch.encoder.wte.weight, wte)
    with pytest.raises(RewardModelError, match=r"reward\.encoder"):
        build_reward_model(str(policy_dir / "nowhere"), policy_dir, 2, seed=0)


def test_padding_side_does_not_change_the_reward(policy_dir, pairs):
    model = build_reward_model("policy", policy_dir, 3, seed=0).eval()
    seqs = [pairs.chosen[0], pairs.chosen[1][:7], pairs.rejected[2]]
    with torch.no_grad():
        right = model.rewards(*right_pad(seqs, 0))
        left = model.rewards(*left_pad(seqs, 0))
        alone = torch.cat([model.rewards(*right_pad([s], 0)) for s in seqs], dim=1)
    torch.testing.assert_close(right, left, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=1e-5)


def test_vmapped_ensemble_equals_a_loop_over_members(policy_dir, pairs):
    members = [build_reward_model("policy", policy_dir, 1, seed=s).eval() for s in range(4)]
    ensemble = EnsembleRewardModel(members)
    ids, mask = _batch(pairs)
    with torch.no_grad():
        looped = torch.cat([m.rewards(ids, mask) for m in members], dim=0)  # (K, B)
        vmapped = ensemble.rewards(ids, mask)
        unvectorized = EnsembleRewardModel(members, vectorize=False).rewards(ids, mask)
    assert vmapped.shape == (4, 8)
    torch.testing.assert_close(vmapped, looped, atol=1e-5, rtol=1e-5)
    assert torch.equal(unvectorized, looped)
    assert num_parameters(ensemble) == 4 * num_parameters(members[0])


def test_ensemble_rejects_multi_head_members(policy_dir):
    with pytest.raises(RewardModelError, match="member 1 has 2 heads"):
        EnsembleRewardModel([build_reward_model("policy", policy_dir, k, seed=0) for k in (1, 2)])


def test_save_load_round_trips_give_identical_rewards(policy_dir, pairs, tokenizer, tmp_path):
    multi = build_reward_model("policy", policy_dir, 3, seed=0).eval()
    ensemble = EnsembleRewardModel(
        [build_reward_model("policy", policy_dir, 1, seed=s) for s in range(3)]
    )
    ids, mask = _batch(pairs)
    for name, model in (("multi", multi), ("ens", ensemble)):
        save_reward_model(model, tokenizer, tmp_path / name, {"family": name})
        loaded = load_reward_model(tmp_path / name, k=3)
        assert type(loaded) is type(model)
        with torch.no_grad():
            assert torch.equal(loaded.rewards(ids, mask), model.rewards(ids, mask))
    # an ordinary Hugging Face sequence-classification model with num_labels = K
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "multi")
    assert isinstance(hf, MultiHeadRewardModel) and hf.config.num_labels == 3
    assert (tmp_path / "multi" / "training.json").is_file()


def test_a_k_that_does_not_match_the_saved_model_is_named(policy_dir, tokenizer, tmp_path):
    save_reward_model(
        build_reward_model("policy", policy_dir, 3, seed=0), tokenizer, tmp_path / "m", {}
    )
    with pytest.raises(RewardModelError, match=r"K = 3.*K = 5"):
        load_reward_model(tmp_path / "m", k=5)
    with pytest.raises(RewardModelError, match="no reward model here"):
        load_reward_model(tmp_path / "empty")


def test_score_ids_restores_the_input_order(policy_dir, pairs):
    model = build_reward_model("policy", policy_dir, 2, seed=0).eval()
    seqs = pairs.chosen[:10]
    batched = score_ids(model, seqs, pad_id=0, batch_size=3)
    with torch.no_grad():
        one_by_one = torch.cat([model.rewards(*right_pad([s], 0)) for s in seqs], dim=1)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)


def test_resample_weights():
    g = torch.Generator().manual_seed(0)
    assert torch.equal(resample_weights(7, 2, "none", g), torch.ones(2, 7))
    boot = resample_weights(1000, 3, "bootstrap", g)
    assert boot.shape == (3, 1000) and (boot.sum(1) == 1000).all()
    assert not torch.equal(boot[0], boot[1])  # each head its own resample
    assert 0.55 < (boot[0] > 0).float().mean() < 0.71  # 1 - 1/e of pairs drawn at least once
    pois = resample_weights(20000, 2, "poisson", g)
    assert abs(pois.mean().item() - 1.0) < 0.03 and abs(pois.var().item() - 1.0) < 0.05
    with pytest.raises(ValueError, match="resample"):
        resample_weights(5, 1, "jackknife", g)


def test_short_training_lowers_the_loss_and_changes_the_weights(policy_dir, pairs, reward_cfg):
    model = build_reward_model("policy", policy_dir, 3, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = dataclasses.replace(reward_cfg, lr=3e-3)
    hist = train_reward_model(model, pairs, cfg, epochs=4, seed=0, pad_id=0, progress=False)
    assert len(hist) == 4 * int(np.ceil(len(pairs) / cfg.batch_size))
    first, last = hist["loss"].head(6).mean(), hist["loss"].tail(6).mean()
    assert first > 0.6 and last < first - 0.1, (first, last)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "score.weight" in changed and any(k.startswith("encoder.") for k in changed)


def test_frozen_encoder_trains_the_heads_only(policy_dir, pairs, reward_cfg):
    model = build_reward_model("policy", policy_dir, 2, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = dataclasses.replace(reward_cfg, freeze_encoder=True)
    train_reward_model(model, pairs, cfg, epochs=1, seed=0, pad_id=0, progress=False)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"score.weight", "score.bias"} or changed == {"score.weight"}


def test_multihead_with_k1_equals_the_single_model(policy_dir, pairs, reward_cfg):
    cfg = dataclasses.replace(reward_cfg, k=1, epochs_single=1, epochs_multihead=1)
    single, _ = train_family("single", cfg, policy_dir, pairs, 0, 0, pad_id=0, progress=False)
    multi, _ = train_family("multihead", cfg, policy_dir, pairs, 0, 0, pad_id=0, progress=False)
    ids, mask = _batch(pairs)
    with torch.no_grad():
        r = single.rewards(ids, mask)
        assert r.shape == (1, 8)
        torch.testing.assert_close(multi.rewards(ids, mask), r, atol=0, rtol=0)
    # the ensemble's members train for reward.epochs_ensemble epochs; with 1, K = 1, same seed: same
    cfg1 = dataclasses.replace(cfg, epochs_ensemble=1)
    ens, _ = train_family("ensemble", cfg1, policy_dir, pairs, 0, 0, pad_id=0, progress=False)
    with torch.no_grad():
        torch.testing.assert_close(ens.rewards(ids, mask), r, atol=1e-5, rtol=1e-5)


def test_ensemble_members_get_their_own_seeds(policy_dir, pairs, reward_cfg):
    cfg = dataclasses.replace(reward_cfg, k=2, epochs_ensemble=1)
    ens, hist = train_family("ensemble", cfg, policy_dir, pairs, 0, 0, pad_id=0, progress=False)
    assert ens.k == 2 and sorted(hist["member"].unique()) == [0, 1]
    ids, mask = _batch(pairs)
    with torch.no_grad():
        r = ens.rewards(ids, mask)
    assert not torch.allclose(r[0], r[1])


def test_linear_head_init_is_torch_nn_linear_own_default(policy_dir):
    d, k = 32, 5
    torch.manual_seed(7)
    reference = torch.nn.Linear(d, k)  # PyTorch draws its default initialisation here
    heads = torch.nn.Linear(d, k)
    torch.manual_seed(7)
    init_heads(heads, "linear")
    torch.testing.assert_close(heads.weight, reference.weight, atol=0, rtol=0)
    torch.testing.assert_close(heads.bias, reference.bias, atol=0, rtol=0)
    # and a model built with head_init='linear' has heads of that scale, not N(0, 0.02)
    model = build_reward_model("policy", policy_dir, k, seed=0, head_init="linear")
    w = model.score.weight
    assert w.abs().max() <= 1 / d**0.5 and 0.6 / (3 * d) ** 0.5 < w.std() < 1.4 / (3 * d) ** 0.5
    assert model.score.bias.abs().sum() > 0
    normal = build_reward_model("policy", policy_dir, k, seed=0, head_init_std=0.02)
    assert normal.score.bias.abs().sum() == 0 and normal.score.weight.std() < 0.03
    with pytest.raises(ValueError, match="head_init"):
        init_heads(heads, "xavier")


def test_head_lr_mult_scales_how_far_the_heads_move(policy_dir, pairs, reward_cfg):
    cfg = dataclasses.replace(reward_cfg, lr=3e-3)
    moved = {}
    for mult in (1.0, 0.01):
        model = build_reward_model("policy", policy_dir, 3, seed=0, head_init="linear")
        w0 = model.score.weight.detach().clone()
        c = dataclasses.replace(cfg, head_lr_mult=mult)
        train_reward_model(model, pairs, c, epochs=1, seed=0, pad_id=0, progress=False)
        moved[mult] = ((model.score.weight - w0).norm() / w0.norm()).item()
    # Adam's step is about lr per coordinate: a 100x smaller head lr moves the heads ~100x less
    assert moved[0.01] < moved[1.0] / 20, moved
    assert moved[0.01] > 0


def test_a_named_arm_trains_as_its_family_with_its_overrides(policy_dir, pairs, reward_cfg):
    family, cfg = reward_cfg.arm("multihead-authors")
    assert family == "multihead"
    assert (cfg.head_init, cfg.head_lr_mult, cfg.epochs_multihead) == ("linear", 0.01, 3)
    assert reward_cfg.arm("ensemble") == ("ensemble", dataclasses.replace(reward_cfg, arms={}))
    with pytest.raises(ValueError, match="unknown"):
        reward_cfg.arm("multihead-nope")
    bad = {"multihead-x": {"family": "multihead", "overrides": ["stepz=3"]}}
    with pytest.raises(ValueError, match="stepz"):
        dataclasses.replace(reward_cfg, arms=bad).arm("multihead-x")
    with pytest.raises(ValueError, match=r"reward\.arms\.ens_x"):
        dataclasses.replace(reward_cfg, arms={"ens_x": {"family": "ensemble", "overrides": []}})


def test_head_moved_is_the_relative_frobenius_distance():
    start = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # norm 5
    moved = start + torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    assert head_moved(moved, start) == pytest.approx(0.2)
    assert head_moved(start, start) == 0.0


FRESH_LOAD = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification
ids = torch.tensor(json.loads(sys.argv[2]))
out = {}
for name in sys.argv[1].split(","):
    model = AutoModelForSequenceClassification.from_pretrained(name, trust_remote_code=True).eval()
    with torch.no_grad():
        out[name] = model(ids).logits.tolist()  # no attention_mask: pad tokens are not attended
assert not any(m == "study" or m.startswith("study.") for m in sys.modules), "study was imported"
print(json.dumps(out))
"""


def test_a_saved_reward_model_loads_in_a_fresh_python_without_the_study(policy_dir, tmp_path):
    import json
    import subprocess
    import sys

    multi = build_reward_model("policy", policy_dir, 3, seed=0)
    single = build_reward_model("policy", policy_dir, 1, seed=3)
    members = [build_reward_model("policy", policy_dir, 1, seed=s) for s in (1, 2)]
    ensemble = EnsembleRewardModel(members)
    multi.save_pretrained(tmp_path / "multihead")
    single.save_pretrained(tmp_path / "single")
    ensemble.save_pretrained(tmp_path / "ensemble")
    assert (tmp_path / "multihead" / "modeling_reward.py").is_file()
    assert json.loads((tmp_path / "multihead" / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "modeling_reward.RewardModelConfig",
        "AutoModelForSequenceClassification": "modeling_reward.MultiHeadRewardModel",
    }
    pad = multi.config.pad_token_id
    ids, mask = right_pad([[5, 6, 7, 8, 9], [5, 6], [7, 8, 9, 10]], pad)
    dirs = [str(tmp_path / "multihead"), str(tmp_path / "single")] + [
        str(tmp_path / "ensemble" / f"member_0{i}") for i in (0, 1)
    ]
    run = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, ",".join(dirs), json.dumps(ids.tolist())],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    with torch.no_grad():
        expected = [
            multi.rewards(ids, mask).T,
            single.rewards(ids, mask).T,
            *ensemble.rewards(ids, mask).T.split(1, dim=1),
        ]
    for d, e in zip(dirs, expected, strict=True):
        got = torch.tensor(loaded[d])
        assert got.shape == e.shape
        assert (got - e).abs().max() <= 1e-5, d


def test_a_max_length_that_cuts_every_pair_to_its_prompt_is_an_error(tokenizer, pairs_df):
    prompt_len = min(
        len(tokenizer(TEMPLATE.format(prompt=p))["input_ids"]) for p in pairs_df["prompt"]
    )
    with pytest.raises(
        ValueError, match=r"reward.max_length = \d+: \d+ of \d+ pairs read the same"
    ):
        encode_pairs(tokenizer, pairs_df, TEMPLATE, prompt_len)
    enc = encode_pairs(tokenizer, pairs_df, TEMPLATE, 512)  # long enough: the pairs differ
    assert all(c != r for c, r in zip(enc.chosen, enc.rejected, strict=True))


def test_a_truncated_checkpoint_is_named_with_what_to_do(policy_dir, tokenizer, tmp_path):
    ensemble = EnsembleRewardModel(
        [build_reward_model("policy", policy_dir, 1, seed=s) for s in range(2)]
    )
    save_reward_model(ensemble, tokenizer, tmp_path / "ens", {})
    weights = sorted((tmp_path / "ens").rglob("*.safetensors"))[-1]
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(RewardModelError, match=r"truncated or corrupt checkpoint.*dvc repro"):
        load_reward_model(tmp_path / "ens")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{not json", r"ensemble\.json: unreadable"),
        ('{"heads": ["member_00"]}', r"ensemble\.json: unreadable \('members'\)"),
        (
            '{"members": ["member_00", "member_09"]}',
            r"member_09: cannot read the reward model's files",
        ),
    ],
    ids=["not-json", "no-members", "missing-member"],
)
def test_a_malformed_ensemble_manifest_is_named(policy_dir, tokenizer, tmp_path, manifest, message):
    ensemble = EnsembleRewardModel(
        [build_reward_model("policy", policy_dir, 1, seed=s) for s in range(2)]
    )
    save_reward_model(ensemble, tokenizer, tmp_path / "ens", {})
    (tmp_path / "ens" / "ensemble.json").write_text(manifest)
    with pytest.raises(RewardModelError, match=message):
        load_reward_model(tmp_path / "ens")
