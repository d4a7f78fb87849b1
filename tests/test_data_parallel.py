"""Data parallelism (study.data_parallel): a reward-model or PPO stage on two processes under
`accelerate launch` gives the run of one process, up to floating-point rounding; what two
processes cannot run is refused before any starts."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from study.config import ConfigError, params_from_dict
from study.config.run import PlacementConfig
from tests.conftest import toy_params

pytestmark = pytest.mark.processes

RTOL = 1e-4  # measured: the largest relative difference of a loss is ~2e-7 (RM), ~2e-5 (PPO KL)


def _two(p):
    return dataclasses.replace(p, placement=PlacementConfig(processes=2))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from study.world.build import build_world

    root = tmp_path_factory.mktemp("dp")
    p = toy_params(steps=3, eval_every=3, checkpoint_every=3)
    p = dataclasses.replace(p, preferences=dataclasses.replace(p.preferences, n_pairs=64))
    build_world(p, root / "world", progress=False)
    return root, p


def _weights(model_dir):
    out = {}
    for f in sorted(model_dir.rglob("*.safetensors")):
        out.update({f"{f.parent.name}/{k}": v for k, v in load_file(str(f)).items()})
    return out


def _close_weights(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=atol, msg=k)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "resample"), [("multihead", "none"), ("ensemble", "poisson")])
def test_a_reward_model_on_two_processes_is_the_one_of_one_process(
    setup, tmp_path, family, resample
):
    from study.rm_train import run_reward_stage

    root, p = setup
    p = dataclasses.replace(p, reward=dataclasses.replace(p.reward, resample=resample))
    for name, params in (("one", p), ("two", _two(p))):
        run_reward_stage(params, family, 0, root / "world", tmp_path / name / "m",
                         tmp_path / name / "r", progress=False)  # fmt: skip
    h1, h2 = (pd.read_parquet(tmp_path / n / "r" / "history.parquet") for n in ("one", "two"))
    assert len(h1) == len(h2) > 3
    np.testing.assert_allclose(h2["loss"], h1["loss"], rtol=RTOL)
    np.testing.assert_allclose(h2["acc_noisy"], h1["acc_noisy"], rtol=RTOL)
    v1, v2 = (pd.read_parquet(tmp_path / n / "r" / "val_rewards.parquet") for n in ("one", "two"))
    margin = [v["r_chosen"] - v["r_rejected"] for v in (v1, v2)]
    np.testing.assert_allclose(margin[1], margin[0], rtol=RTOL, atol=1e-5)
    # a head's bias has no Bradley-Terry gradient: rounding alone moves it, by Adam steps of up
    # to the learning rate each, in either run; so rewards (not margins) agree within that
    drift = p.reward.lr * len(h1)
    np.testing.assert_allclose(v2["r_chosen"], v1["r_chosen"], rtol=RTOL, atol=drift)
    _close_weights(_weights(tmp_path / "one" / "m"), _weights(tmp_path / "two" / "m"), drift)


@pytest.mark.slow
def test_ppo_on_two_processes_is_the_run_of_one_process(setup, tmp_path):
    from study.ppo_train import run_ppo_stage
    from study.rm_train import run_reward_stage

    root, p = setup
    run_reward_stage(p, "multihead", 0, root / "world", tmp_path / "rm" / "multihead" / "seed0",
                     tmp_path / "rmres", progress=False)  # fmt: skip
    for name, params in (("one", p), ("two", _two(p))):
        run_ppo_stage(params, "multihead_min", 0, root / "world", tmp_path / "rm",
                      tmp_path / name / "res", tmp_path / name / "pol", tmp_path / name / "ck",
                      progress=False)  # fmt: skip
    l1, l2 = (pd.read_parquet(tmp_path / n / "res" / "log.parquet") for n in ("one", "two"))
    cols = ["kl", "proxy", "gold", "pg_loss", "vf_loss", "approx_kl", "pg_clipfrac", "entropy"]
    assert len(l1) == len(l2) == p.ppo.steps
    np.testing.assert_allclose(l2[cols].to_numpy(), l1[cols].to_numpy(), rtol=RTOL, atol=1e-6)
    e1, e2 = (pd.read_parquet(tmp_path / n / "res" / "evals.parquet") for n in ("one", "two"))
    np.testing.assert_allclose(e2[["kl", "gold"]], e1[["kl", "gold"]], rtol=RTOL, atol=1e-6)
    _close_weights(_weights(tmp_path / "one" / "pol"), _weights(tmp_path / "two" / "pol"),
                   atol=p.ppo.lr * p.ppo.steps * p.ppo.ppo_epochs * p.ppo.minibatches)  # fmt: skip
    assert not (tmp_path / "one" / "ck" / "checkpoint.pt").exists()
    assert not (tmp_path / "two" / "ck" / "checkpoint.pt").exists()  # the first process's, removed


def test_what_two_processes_cannot_run_is_refused_before_any_starts(setup, tmp_path):
    from study.ppo_train import run_ppo_stage
    from study.rm_train import run_reward_stage

    root, p = setup
    many = dataclasses.replace(p, placement=PlacementConfig(processes=p.reward.batch_size + 1))
    with pytest.raises(ConfigError, match=r"placement\.processes: \d+ processes, but a reward-"
                       r"model batch \(reward\.batch_size\) has only \d+ rows"):  # fmt: skip
        run_reward_stage(many, "multihead", 0, root / "world", tmp_path / "m", tmp_path / "r")
    rows = p.ppo.batch_size // p.ppo.minibatches
    many = dataclasses.replace(p, placement=PlacementConfig(processes=rows + 1))
    with pytest.raises(ConfigError, match=r"placement\.processes: .* a PPO minibatch"):
        run_ppo_stage(many, "multihead_min", 0, root / "world", tmp_path / "rm", tmp_path / "r",
                      tmp_path / "p", tmp_path / "c")  # fmt: skip
    pinned = dataclasses.replace(p, placement=PlacementConfig(device="cuda:1", processes=2))
    with pytest.raises(ConfigError, match=r"'cuda:1' names one GPU, but placement\.processes"):
        run_reward_stage(pinned, "multihead", 0, root / "world", tmp_path / "m", tmp_path / "r")
    with pytest.raises(ConfigError, match=r"placement\.processes: must be >= 1, got 0"):
        params_from_dict({"profile": "smoke", "smoke": {"placement": {"processes": 0}}})
    assert not (tmp_path / "m").exists() and not (tmp_path / "r").exists()
