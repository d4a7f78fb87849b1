"""Placement (study.device): the device and precision a stage's models run in. Spellings and
absent devices are refused naming the key; placement is not a result parameter; bfloat16 and
activation checkpointing run every model stage on the CPU; an ensemble moves with its weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from study.config import ConfigError, load_params, params_from_dict, write_resolved
from study.config.run import PlacementConfig
from study.device import CPU, Placement, checkpoint_activations, model_device, on, resolve
from study.io import provenance
from tests.conftest import ROOT, toy_params


def _with_placement(**placement):
    return params_from_dict({"profile": "smoke", "smoke": {"placement": placement}})


@pytest.mark.parametrize(
    ("placement", "message"),
    [
        ({"device": "gpu"}, "placement.device: must be one of cpu, cuda, mps, auto or cuda:N"),
        ({"device": "cuda:x"}, "placement.device"),
        ({"dtype": "bf16"}, "placement.dtype: must be one of float32, bfloat16"),
        ({"device": 0}, "placement.device: expected str"),
        ({"gradient_checkpointing": "yes"}, "placement.gradient_checkpointing: expected bool"),
        ({"devise": "cpu"}, "placement.devise: unknown key"),
    ],
)
def test_a_misspelt_placement_is_refused_naming_the_key(placement, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        _with_placement(**placement)


def test_a_device_written_in_the_run_section_points_to_placement():
    with pytest.raises(ConfigError, match=r"smoke\.run\.device: unknown key .*; where models run is "
                       r"its own section: placement\.device"):  # fmt: skip
        params_from_dict({"profile": "smoke", "smoke": {"run": {"device": "cuda"}}})


def test_the_default_placement_is_the_cpu_in_float32():
    p = load_params(ROOT / "params.yaml")
    assert p.placement == PlacementConfig()
    assert resolve(p.placement) == CPU == Placement(torch.device("cpu"), torch.float32, False)
    assert str(CPU) == "cpu in float32"


def test_a_device_this_machine_lacks_is_refused_naming_the_key(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ConfigError, match=rf"placement\.device: '{device}', but this machine "
                           r"has no CUDA device that torch .* \(CUDA build: "):  # fmt: skip
            resolve(PlacementConfig(device=device))
    with pytest.raises(ConfigError, match=r"placement\.device: 'mps', but torch .* no Apple MPS"):
        resolve(PlacementConfig(device="mps"))
    # auto falls back to the CPU; bfloat16 on the CPU is allowed (autocast supports it)
    assert resolve(PlacementConfig(device="auto")).device == torch.device("cpu")
    assert resolve(PlacementConfig(dtype="bfloat16")).dtype == torch.bfloat16


def test_a_gpu_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"'cuda:2', but this machine has 2 CUDA device\(s\) "
                       r"\(cuda:0 to cuda:1\)"):  # fmt: skip
        resolve(PlacementConfig(device="cuda:2"))


def test_placement_is_recorded_beside_results_but_is_not_a_result_parameter(tmp_path):
    """No stage declares `placement` (a CPU result stays up to date when the device changes), the
    run fingerprint and `to_dict` leave it out; provenance names it where it is not the default,
    and the resolved params file shows it."""
    p = load_params(ROOT / "params.yaml", "smoke")
    assert "placement" not in p.to_dict()
    assert "placement" not in provenance(p)
    bf16 = dataclasses.replace(p, placement=PlacementConfig(dtype="bfloat16"))
    assert bf16.to_dict() == p.to_dict()
    assert provenance(bf16)["placement"] == {
        "device": "cpu", "dtype": "bfloat16", "gradient_checkpointing": False, "processes": 1,
    }  # fmt: skip
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in dvc.items():
        declared = (stage.get("do", stage).get("params") or [{}])[0]
        keys = declared.get("params.resolved.yaml", []) if isinstance(declared, dict) else []
        assert "placement" not in keys, name
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["default"]["placement"] = {"dtype": "bfloat16"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    out = write_resolved(tmp_path / "params.yaml", tmp_path / "resolved.yaml")
    resolved = yaml.safe_load(out.read_text())
    assert resolved["placement"] == {
        "device": "cpu", "dtype": "bfloat16", "gradient_checkpointing": False, "processes": 1,
    }  # fmt: skip


def test_inputs_follow_the_model_and_autocast_is_nothing_in_float32():
    lin = torch.nn.Linear(3, 2).to("meta")
    x = torch.ones(4, 3)
    (moved,) = on(lin, x)
    assert moved.device.type == "meta" and model_device(lin).type == "meta"
    assert on(torch.nn.Linear(3, 2), x)[0] is x  # no copy where the tensor already is
    assert model_device(object()) == torch.device("cpu")  # a scorer that is not a module
    with CPU.autocast():
        assert not torch.is_autocast_enabled("cpu")
    with Placement(torch.device("cpu"), torch.bfloat16).autocast():
        assert torch.is_autocast_enabled("cpu")
        assert torch.nn.Linear(3, 2)(x).dtype == torch.bfloat16


def test_an_ensemble_moves_its_stacked_weights_and_buffers_with_it(tokenizer):
    """`EnsembleRewardModel` keeps its members' buffers in a plain dict for vmap; `.to(device)`
    must move them too, or scoring mixes devices. The meta device stands in for a GPU."""
    from transformers import GPT2Config, GPT2Model

    from study.reward_models import EnsembleRewardModel, build_reward_model

    enc = GPT2Model(GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1,
                               n_head=2, pad_token_id=tokenizer.pad_token_id))  # fmt: skip
    members, path = [], _save(enc, tokenizer)
    for seed in range(3):
        m = build_reward_model("scratch", path, 1, seed, pad_token_id=0)
        m.register_buffer("probe", torch.zeros(2))  # a buffer, whatever the encoder has
        members.append(m)
    ens = EnsembleRewardModel(members).to("meta")
    assert ens._buffers_stacked and all(
        b.device.type == "meta" for b in ens._buffers_stacked.values()
    )
    assert all(p.device.type == "meta" for p in ens.parameters())
    ids, mask = on(ens, torch.ones(5, 7, dtype=torch.long), torch.ones(5, 7, dtype=torch.long))
    out = ens.rewards(ids, mask)
    assert out.shape == (3, 5) and out.device.type == "meta"


def _save(model, tokenizer):
    import tempfile

    path = tempfile.mkdtemp(prefix="encoder")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_activation_checkpointing_is_switched_on_in_every_model_inside():
    from transformers import GPT2Config, GPT2LMHeadModel

    from study.actor_critic import ActorCritic

    policy = GPT2LMHeadModel(
        GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    )
    ac = ActorCritic(policy, "separate")
    assert checkpoint_activations(ac) >= 2  # the policy and the critic's trunk
    assert checkpoint_activations(ac) == 0  # already on
    on_flags = [
        getattr(m, "is_activation_checkpointing", None) for m in (policy, ac.critic.backbone)
    ]
    assert all(on_flags)


# ------------------------------------------------------------------ every stage, in bfloat16


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    """The toy world built in float32 and in bfloat16, and an untrained K = 3 reward model."""
    from study.hub import load_tokenizer
    from study.reward_models import build_reward_model
    from study.world.build import build_world

    root = tmp_path_factory.mktemp("device")
    base = toy_params(steps=3, eval_every=3, checkpoint_every=3)
    bf16 = dataclasses.replace(base, placement=PlacementConfig(dtype="bfloat16"))
    for name, p in (("f32", base), ("bf16", bf16)):
        build_world(p, root / name / "world", progress=False)
    world = root / "f32" / "world"
    tok = load_tokenizer(str(world / "policy"))
    rm = build_reward_model("policy", world / "policy", 3, 0, tok.pad_token_id)
    rm.save_pretrained(root / "rm" / "multihead" / "seed0")
    tok.save_pretrained(root / "rm" / "multihead" / "seed0")
    return root, base, bf16


@pytest.mark.slow
def test_bfloat16_trains_the_sft_policy_near_float32_and_keeps_float32_weights(worlds):
    root, _, _ = worlds
    f32 = pd.read_parquet(root / "f32" / "world" / "sft_history.parquet")
    bf16 = pd.read_parquet(root / "bf16" / "world" / "sft_history.parquet")
    a, b = f32["train_loss"].iloc[0], bf16["train_loss"].iloc[0]
    assert a != b and abs(a - b) / a < 0.02  # computed in bfloat16, and close
    assert np.isfinite(bf16[["train_loss", "grad_norm"]].to_numpy()).all()
    weights = load_file(str(root / "bf16" / "world" / "policy" / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["multihead", "ensemble", "multihead-laplace", "ensemble-lora"])
def test_bfloat16_trains_and_scores_every_reward_model_family(worlds, tmp_path, family):
    from study.rm_train import run_reward_stage

    root, _, bf16 = worlds
    info = run_reward_stage(bf16, family, 0, root / "f32" / "world", tmp_path / "m", tmp_path / "r",
                            progress=False)  # fmt: skip
    assert info["steps"] > 0
    hist = pd.read_parquet(tmp_path / "r" / "history.parquet")
    val = pd.read_parquet(tmp_path / "r" / "val_rewards.parquet")
    assert (
        np.isfinite(hist["loss"]).all() and np.isfinite(val[["r_chosen", "r_rejected"]]).all().all()
    )
    for f in tmp_path.joinpath("m").rglob("*.safetensors"):
        assert {w.dtype for w in load_file(str(f)).values()} == {torch.float32}, f


@pytest.mark.slow
def test_bfloat16_ppo_and_best_of_n_run_on_the_cpu(worlds, tmp_path):
    from study.bon_run import score_bon_samples
    from study.ppo_train import run_ppo_stage

    root, _, bf16 = worlds
    world = root / "f32" / "world"
    run_ppo_stage(bf16, "multihead_min", 0, world, root / "rm", tmp_path / "res", tmp_path / "pol",
                  tmp_path / "ck", progress=False)  # fmt: skip
    log = pd.read_parquet(tmp_path / "res" / "log.parquet")
    evals = pd.read_parquet(tmp_path / "res" / "evals.parquet")
    cols = ["kl", "proxy", "gold", "pg_loss", "vf_loss"]
    assert len(log) == 3 and np.isfinite(log[cols].to_numpy()).all()
    assert np.isfinite(evals[["kl", "proxy", "gold"]].to_numpy()).all()
    samples, scores, _ = score_bon_samples(bf16, world, root / "rm", ["multihead"], [0], False)
    assert len(scores) == len(samples) and np.isfinite(scores.filter(like="head").to_numpy()).all()


@pytest.mark.slow
def test_a_policy_in_reduced_precision_attends_eagerly(worlds, tmp_path):
    """bfloat16 PPO on CUDA had NaN gradients from fused attention over left padding: a policy in
    reduced precision is loaded with eager attention, one in float32 as transformers chooses."""
    from study.ppo_train import train_ppo

    assert Placement(torch.device("cpu"), torch.bfloat16).policy_kwargs() == {
        "attn_implementation": "eager"
    }
    assert CPU.policy_kwargs() == {}
    root, base, bf16 = worlds
    for p, expected in ((bf16, "eager"), (base, "sdpa")):
        result = train_ppo(p, "multihead_min", 0, root / "f32" / "world", root / "rm",
                           tmp_path / expected, progress=False, stop_after=1)  # fmt: skip
        assert result.policy.config._attn_implementation == expected


@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_ppo_run(worlds, tmp_path):
    from study.ppo_train import run_ppo_stage

    root, base, _ = worlds
    ckpt = dataclasses.replace(base, placement=PlacementConfig(gradient_checkpointing=True))
    logs = []
    for name, p in (("plain", base), ("ckpt", ckpt)):
        out = tmp_path / name
        run_ppo_stage(p, "multihead_min", 0, root / "f32" / "world", root / "rm", out / "res",
                      out / "pol", out / "ck", progress=False)  # fmt: skip
        logs.append(pd.read_parquet(out / "res" / "log.parquet"))
    cols = ["kl", "proxy", "gold", "pg_loss", "vf_loss", "entropy"]
    np.testing.assert_allclose(logs[0][cols].to_numpy(), logs[1][cols].to_numpy(), rtol=1e-5)
    from study.ppo_train import train_ppo

    for p, on_ in ((ckpt, True), (base, False)):  # and the switch reached the policy
        result = train_ppo(p, "multihead_min", 0, root / "f32" / "world", root / "rm",
                           tmp_path / f"flag{on_}", progress=False, stop_after=1)  # fmt: skip
        assert result.policy.is_gradient_checkpointing is on_
