"""Faults: a PPO run killed with SIGKILL in its own process, at a random point after its first
checkpoint, resumes in a new process to the tables and the policy weights of a run never killed,
bit for bit."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, toy_params

VARIANT, SEED = "multihead_min", 0


def fault_params():
    """Toy params with eight PPO steps and a checkpoint every two."""
    return toy_params(steps=8, checkpoint_every=2, eval_every=2)


RUN = """
import sys
from pathlib import Path
from study.ppo_train import run_ppo_stage
from tests.test_faults import fault_params, VARIANT, SEED
root, out = Path(sys.argv[1]), Path(sys.argv[2])
run_ppo_stage(fault_params(), VARIANT, SEED, root / "world", root / "rm", out / "results",
              out / "policy", out / "checkpoint", progress=False)
"""


def _start(root: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN, str(root), str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from study.hub import load_tokenizer
    from study.reward_models import build_reward_model
    from study.world.build import build_world

    root = tmp_path_factory.mktemp("faults")
    build_world(fault_params(), root / "world", progress=False)
    tok = load_tokenizer(str(root / "world" / "policy"))
    rm = build_reward_model("policy", root / "world" / "policy", 3, 0, tok.pad_token_id)
    rm.save_pretrained(root / "rm" / "multihead" / f"seed{SEED}")
    tok.save_pretrained(root / "rm" / "multihead" / f"seed{SEED}")
    return root


@pytest.mark.slow
def test_ppo_killed_at_a_random_point_resumes_bit_for_bit_in_a_new_process(world, tmp_path):
    whole = _start(world, tmp_path / "whole")
    out, _ = whole.communicate(timeout=900)
    assert whole.returncode == 0, out[-3000:]

    ckpt = tmp_path / "killed" / "checkpoint" / "checkpoint.pt"
    # killed at a random point after its first checkpoint; if that point fell after the run had
    # finished its work (it is fast on an idle machine), again, right at the first checkpoint
    for delay in (random.Random(os.getpid()).uniform(0.0, 1.0), 0.0):
        shutil.rmtree(tmp_path / "killed", ignore_errors=True)
        killed = _start(world, tmp_path / "killed")
        deadline = time.time() + 600
        while not ckpt.exists() and killed.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert ckpt.exists() and killed.poll() is None, "the run ended before its first checkpoint"
        time.sleep(delay)
        killed.send_signal(signal.SIGKILL)
        killed.communicate()
        if ckpt.exists():  # killed mid-run: the checkpoint is there to resume from
            break
    assert ckpt.exists(), "every kill came after the run had finished"
    resumed = _start(world, tmp_path / "killed")
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out[-3000:]

    a, b = tmp_path / "whole" / "results", tmp_path / "killed" / "results"
    log_a, log_b = pd.read_parquet(a / "log.parquet"), pd.read_parquet(b / "log.parquet")
    timing = [c for c in log_a.columns if c.endswith("seconds")]
    pd.testing.assert_frame_equal(log_b.drop(columns=timing), log_a.drop(columns=timing))
    for table in ("evals.parquet", "eval_samples.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(b / table), pd.read_parquet(a / table))
    wa = load_file(tmp_path / "whole" / "policy" / "model.safetensors")
    wb = load_file(tmp_path / "killed" / "policy" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa), "the resumed policy's weights differ"
    assert not (tmp_path / "killed" / "checkpoint" / "checkpoint.pt").exists()  # cleaned up


def _train(world: Path, run_dir: Path, stop_after: int | None = None, params=None):
    from study.ppo_train import train_ppo

    return train_ppo(params or fault_params(), VARIANT, SEED, world / "world", world / "rm",
                     run_dir, progress=False, stop_after=stop_after)  # fmt: skip


@pytest.mark.slow
def test_a_malformed_prompts_table_stops_ppo_and_best_of_n_before_they_sample(world, tmp_path):
    from study.bon_run import run_bon_stage
    from study.io import ArtifactError, write_table

    broken = tmp_path / "broken"
    shutil.copytree(world, broken)
    prompts = pd.read_parquet(broken / "world" / "prompts.parquet")
    write_table(broken / "world" / "prompts.parquet", prompts.assign(split="rl"))  # no eval split
    with pytest.raises(ArtifactError, match=r"prompts\.parquet: no prompt in split 'eval'"):
        _train(broken, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before it made its directory
    with pytest.raises(ArtifactError, match=r"prompts\.parquet: no prompt in split 'eval'"):
        run_bon_stage(fault_params(), broken / "world", broken / "rm", tmp_path / "bon",
                      ["multihead"], [SEED], progress=False)  # fmt: skip
    assert not (tmp_path / "bon").exists()


@pytest.mark.slow
def test_a_nan_in_the_held_out_evaluation_stops_the_run(world, tmp_path, monkeypatch):
    import study.ppo_train as pt

    real = pt.evaluate_policy
    calls = []

    def nan_at_second(*args, **kwargs):
        row, per_sample = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            row = {**row, "gold": float("nan")}
        return row, per_sample

    monkeypatch.setattr(pt, "evaluate_policy", nan_at_second)
    with pytest.raises(FloatingPointError, match=r"held-out evaluation at step 2: gold = nan"):
        _train(world, tmp_path)


@pytest.mark.slow
def test_a_nan_gradient_stops_ppo_before_any_weight_moves(world, tmp_path, monkeypatch):
    """Clipping a NaN gradient norm writes NaN into every weight (bfloat16 attention on CUDA did
    so): the step stops before the optimiser moves a weight, and the last good checkpoint stays."""
    import study.ppo_train as pt

    real, models = torch.nn.utils.clip_grad_norm_, []

    class Recorded(pt.ActorCritic):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            models.append(self)

    def nan_once_a_checkpoint_is_saved(params, max_norm):
        if not (tmp_path / "checkpoint.pt").exists():
            return real(params, max_norm)
        params = list(params)
        for p in params:  # what a NaN gradient does: clipping spreads it to every weight
            if p.grad is not None:
                p.grad.fill_(float("nan"))
        return real(params, max_norm)

    monkeypatch.setattr(pt, "ActorCritic", Recorded)
    monkeypatch.setattr(pt.torch.nn.utils, "clip_grad_norm_", nan_once_a_checkpoint_is_saved)
    with pytest.raises(FloatingPointError, match=r"PPO step \d: PPO: the gradient norm is nan"):
        _train(world, tmp_path)
    assert all(torch.isfinite(p).all() for p in models[0].parameters())  # no step was taken
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["actor_critic"].values())


def test_a_nan_gradient_stops_reward_model_training_before_the_step(monkeypatch, tokenizer):
    from transformers import GPT2Config

    import study.bt_train as rt
    from study.modeling_reward import MultiHeadRewardModel, RewardModelConfig

    enc = GPT2Config(vocab_size=len(tokenizer), n_positions=32, n_embd=16, n_layer=1, n_head=2)
    model = MultiHeadRewardModel(
        RewardModelConfig(encoder=enc.to_dict(), num_labels=2, pad_token_id=0)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = rt.EncodedPairs(chosen=[[1, 2, 3]], rejected=[[1, 2]], flipped=np.zeros(1, bool))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    monkeypatch.setattr(rt.torch.nn.utils, "clip_grad_norm_", lambda *a: torch.tensor(float("inf")))
    with pytest.raises(
        FloatingPointError, match="reward-model training: the gradient norm is inf at step 7"
    ):
        rt.bt_step(model, opt, list(model.parameters()), pairs, [0], 0, 1.0, step=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.slow
def test_a_checkpoint_of_another_reward_model_is_not_resumed(world, tmp_path, capsys):
    import shutil

    from study.checkpoint import load_checkpoint

    _train(world, tmp_path / "run", stop_after=2)  # checkpoint at step 1
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    # the same world and parameters, the reward model's weights retrained (here: perturbed)
    other = tmp_path / "other"
    shutil.copytree(world, other)
    rm_file = next((other / "rm" / "multihead" / f"seed{SEED}").glob("*.safetensors"))
    weights = load_file(rm_file)
    key = next(k for k in weights if k.startswith("score"))
    weights[key] = weights[key] + 0.01
    from safetensors.torch import save_file

    save_file(weights, rm_file, metadata={"format": "pt"})
    from study.checkpoint import run_fingerprint

    p = fault_params()
    same = run_fingerprint(
        p, VARIANT, SEED, [world / "world" / "policy", world / "rm" / "multihead" / f"seed{SEED}"]
    )
    moved = run_fingerprint(p, VARIANT, SEED, [other / "world" / "policy", rm_file.parent])
    assert same != moved
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt", moved) is None
    assert "other parameters, code or reward model" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt", same) is not None


def test_a_corrupt_or_foreign_checkpoint_is_moved_aside_and_the_run_starts_fresh(tmp_path, capsys):
    from study.checkpoint import load_checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    assert load_checkpoint(ckpt, "abc") is None
    assert not ckpt.exists() and (tmp_path / "checkpoint.pt.corrupt").exists()
    assert "unreadable checkpoint" in capsys.readouterr().out

    class Payload:  # a pickled object: weights_only refuses it instead of running its code
        def __reduce__(self):
            return (print, ("code ran",))

    torch.save({"fingerprint": "abc", "x": Payload()}, ckpt)
    assert load_checkpoint(ckpt, "abc") is None
    out = capsys.readouterr().out
    assert "code ran" not in out and "unreadable checkpoint" in out
    torch.save({"fingerprint": "abc", "step": 3}, ckpt)
    assert load_checkpoint(ckpt, "abc") == {"fingerprint": "abc", "step": 3}
