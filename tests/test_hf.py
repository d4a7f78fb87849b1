"""The reward models outside the study: exported checkpoints, `study.load_reward_model`,
`study.reward_fn` against a hand computation, bad checkpoints, and TRL's GRPOTrainer driven by it."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import study
from study.config.world import SFTConfig
from study.export import export_reward_model
from study.hf import MANIFEST, RewardCheckpointError, load_bundle, read_manifest
from study.reward_models import EnsembleRewardModel, build_reward_model
from study.rm_train import save_reward_model
from study.world.sft import build_policy

K = 3


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, tokenizer):
    cfg = SFTConfig(n_layer=1, n_embd=32, n_head=2, max_length=128, steps=10, warmup_steps=1)
    path = tmp_path_factory.mktemp("policy")
    build_policy(cfg, tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipeline_dirs(policy_dir, tokenizer, tmp_path_factory):
    """Reward-model directories as the pipeline's rm stage writes them, one per family."""
    root = tmp_path_factory.mktemp("rm")
    pad = tokenizer.pad_token_id
    models = {
        "single": build_reward_model("policy", policy_dir, 1, seed=0, pad_token_id=pad),
        "multihead": build_reward_model("policy", policy_dir, K, seed=1, pad_token_id=pad),
        "ensemble": EnsembleRewardModel(
            [
                build_reward_model("policy", policy_dir, 1, seed=s, pad_token_id=pad)
                for s in range(K)
            ]
        ),
    }
    for name, m in models.items():
        save_reward_model(m, tokenizer, root / name, {"family": name, "epochs": 1})
    return root, models


NORM = {"mean": [0.1, -0.2, 0.3], "std": [0.5, 2.0, 1.5], "fitted_on": "test numbers"}


@pytest.fixture(scope="module")
def exported(pipeline_dirs, tmp_path_factory):
    root, _ = pipeline_dirs
    out = tmp_path_factory.mktemp("exported")
    for name in ("single", "multihead", "ensemble"):
        norm = NORM if name != "single" else {"mean": [0.5], "std": [2.0], "fitted_on": "t"}
        export_reward_model(root / name, out / name, "min", 0.5, norm, {"arm": name, "seed": 0})
    return out


PROMPTS = ["write a list of two fruits", "name a colour", "say hi"]
COMPLETIONS = ["apple and pear", "red", ""]


def one_by_one(model, tokenizer, prompts, completions) -> torch.Tensor:
    """Rewards (K, B), each sequence scored alone, unpadded: prompt ids, completion ids, EOS."""
    cols = []
    for p, c in zip(prompts, completions, strict=True):
        ids = tokenizer(p)["input_ids"] + tokenizer(c, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([[*ids, tokenizer.eos_token_id]])
        with torch.no_grad():
            cols.append(model.rewards(ids, torch.ones_like(ids)))
    return torch.cat(cols, dim=1)


@pytest.mark.parametrize("family", ["single", "multihead", "ensemble"])
def test_exported_checkpoint_scores_as_the_study_model(pipeline_dirs, exported, tokenizer, family):
    _, models = pipeline_dirs
    loaded = study.load_reward_model(exported / family)
    assert loaded.k == models[family].k
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0]])
    mask = (ids != 0).long()
    with torch.no_grad():
        diff = (loaded.rewards(ids, mask) - models[family].rewards(ids, mask)).abs().max()
    assert diff <= 1e-5
    manifest = read_manifest(exported / family)
    assert manifest["family"] == family and manifest["k"] == models[family].k
    card = (exported / family / "README.md").read_text()
    assert f"| heads K | {models[family].k} |" in card and "library_name: transformers" in card
    if family == "ensemble":  # every member a standard checkpoint with its tokenizer
        for name in manifest["members"]:
            assert (exported / family / name / "tokenizer.json").is_file()
            assert (exported / family / name / "modeling_reward.py").is_file()


@pytest.mark.parametrize("method", ["min", "mean", "uwo"])
def test_reward_fn_is_the_normalised_aggregate_of_each_sequence_scored_alone(
    pipeline_dirs, exported, tokenizer, method
):
    _, models = pipeline_dirs
    f = study.reward_fn(exported / "multihead", aggregate=method, batch_size=2)
    got = torch.tensor(f(prompts=PROMPTS, completions=COMPLETIONS))
    raw = one_by_one(models["multihead"], tokenizer, PROMPTS, COMPLETIONS)  # (K, B)
    z = (raw - torch.tensor(NORM["mean"])[:, None]) / torch.tensor(NORM["std"])[:, None]
    expected = {
        "min": z.min(0).values,
        "mean": z.mean(0),
        "uwo": z.mean(0) - 0.5 * ((z - z.mean(0)) ** 2).mean(0),
    }[method]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # TRL's call: completion ids through the EOS give the same rewards as the texts
    ids = [
        tokenizer(c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        for c in COMPLETIONS
    ]
    again = f(prompts=PROMPTS, completions=COMPLETIONS, completion_ids=ids, trainer_state=None)
    torch.testing.assert_close(torch.tensor(again), got, atol=1e-6, rtol=0)
    raw_f = study.reward_fn(exported / "multihead", aggregate="max", normalise=False)
    torch.testing.assert_close(
        torch.tensor(raw_f(PROMPTS, COMPLETIONS)), raw.max(0).values, atol=1e-5, rtol=0
    )


def test_a_pipeline_directory_loads_without_a_manifest(pipeline_dirs):
    root, _models = pipeline_dirs
    bundle = load_bundle(root / "ensemble")
    assert bundle.k == K and bundle.aggregation == "min" and bundle.normaliser is None
    with pytest.raises(RewardCheckpointError, match="no 'normaliser'"):
        study.reward_fn(root / "ensemble")
    assert len(study.reward_fn(root / "ensemble", normalise=False)(PROMPTS, COMPLETIONS)) == 3


def _broken(exported, tmp_path, family="ensemble"):
    d = tmp_path / family
    shutil.copytree(exported / family, d)
    return d, json.loads((d / MANIFEST).read_text())


def test_bad_checkpoints_name_the_file_and_the_field(exported, tmp_path):
    with pytest.raises(RewardCheckpointError, match="not a reward checkpoint"):
        load_bundle(tmp_path)
    with pytest.raises(RewardCheckpointError, match="no such directory"):
        load_bundle(tmp_path / "nowhere")

    d, m = _broken(exported, tmp_path)
    shutil.rmtree(d / m["members"][1])
    with pytest.raises(
        RewardCheckpointError, match=r"reward\.json: field 'members' names 'member_01'"
    ):
        load_bundle(d)

    d, m = _broken(exported, tmp_path / "agg")
    (d / MANIFEST).write_text(json.dumps({**m, "aggregation": "median"}))
    with pytest.raises(
        RewardCheckpointError, match=r"reward\.json: field 'aggregation' is 'median'"
    ):
        load_bundle(d)

    d, m = _broken(exported, tmp_path / "k", "multihead")
    (d / MANIFEST).write_text(json.dumps({**m, "k": 5, "normaliser": None}))
    with pytest.raises(
        RewardCheckpointError, match=r"field 'k' is 5, but the weights have 3 heads"
    ):
        load_bundle(d)

    d, m = _broken(exported, tmp_path / "norm", "multihead")
    (d / MANIFEST).write_text(json.dumps({**m, "normaliser": {"mean": [0.0], "std": [1.0]}}))
    with pytest.raises(RewardCheckpointError, match=r"'normaliser\.mean' must be a list of k = 3"):
        load_bundle(d)

    d, _ = _broken(exported, tmp_path / "json", "multihead")
    (d / MANIFEST).write_text("{not json")
    with pytest.raises(RewardCheckpointError, match=r"reward\.json: not valid JSON"):
        load_bundle(d)

    with pytest.raises(ValueError, match="aggregate='median' is not an aggregation"):
        study.reward_fn(exported / "multihead", aggregate="median")


def test_grpo_trains_a_few_steps_on_the_min_over_heads(exported, policy_dir, tokenizer, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    reward = study.reward_fn(exported / "multihead", aggregate="min")
    calls = []

    def counted(prompts, completions, **kwargs):
        out = reward(prompts, completions, **kwargs)
        calls.append(len(out))
        return out

    counted.__name__ = reward.__name__
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        report_to=[],
        use_cpu=True,
        max_steps=2,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        activation_checkpointing=False,
        seed=0,
    )
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    before = [p.detach().clone() for p in policy.parameters()]
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=counted,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
        processing_class=tokenizer,
    )
    trainer.train()
    assert calls and all(n == 4 for n in calls)
    logged = [r for r in trainer.state.log_history if f"rewards/{reward.__name__}/mean" in r]
    assert logged and all(torch.isfinite(torch.tensor(r["reward"])) for r in logged)
    moved = sum(
        float((p.detach() - b).abs().sum())
        for p, b in zip(trainer.model.parameters(), before, strict=True)
    )
    assert moved > 0


def test_the_readme_snippets_run(exported, policy_dir, tmp_path, monkeypatch, capsys):
    """The code blocks of docs/huggingface.md (the README's pointer for using the reward models
    elsewhere), run on a toy checkpoint and policy (the paths swapped for them, GRPO cut to one
    step)."""
    import re

    from tests.conftest import ROOT

    section = (ROOT / "docs" / "huggingface.md").read_text()
    assert "docs/huggingface.md" in (ROOT / "README.md").read_text()  # the README points to it
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    code = "\n".join(blocks)
    for old, new in [
        ("exported/multihead-s0", str(exported / "multihead")),
        ("artifacts/world/policy", str(policy_dir)),
        ('output_dir="grpo"', f'output_dir="{tmp_path / "grpo"}"'),
        ("max_steps=10", "max_steps=1"),
    ]:
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "docs/huggingface.md", "exec"), scope)
    printed = capsys.readouterr().out
    assert re.search(r"\[-?\d+\.\d+\]", printed), printed
    assert scope["trainer"].state.global_step == 1


def test_completion_ids_of_another_vocabulary_are_re_tokenised(exported, tokenizer):
    """A policy with its own tokenizer: its completion ids are not read as the reward model's."""
    from study.world.tokenizer import train_tokenizer

    other = train_tokenizer(["zebra quartz " * 3, *PROMPTS, *COMPLETIONS])
    assert other.get_vocab() != tokenizer.get_vocab()
    ids = [
        other(c, add_special_tokens=False)["input_ids"] + [other.eos_token_id] for c in COMPLETIONS
    ]
    ids[1] = ids[1][:-1]  # the second completion did not finish
    f = study.reward_fn(exported / "multihead", policy_tokenizer=other)
    got = f(PROMPTS, COMPLETIONS, completion_ids=ids)
    plain = study.reward_fn(exported / "multihead")
    assert got == pytest.approx(plain(PROMPTS, COMPLETIONS, finished=[True, False, True]), abs=1e-6)
    assert got != pytest.approx(plain(PROMPTS, COMPLETIONS), abs=1e-6)


def test_what_reward_fn_refuses_or_cuts(pipeline_dirs, exported, tokenizer, tmp_path):
    _, models = pipeline_dirs
    f = study.reward_fn(exported / "multihead")
    assert f([], []) == []
    with pytest.raises(TypeError, match="conversational datasets are not supported"):
        f([[{"role": "user", "content": "hi"}]], ["red"])
    with pytest.raises(ValueError, match="give completions or completion_ids"):
        f(PROMPTS)
    # a manifest's max_length cuts each sequence as the training pairs were cut
    d, m = _broken(exported, tmp_path, "multihead")
    (d / MANIFEST).write_text(json.dumps({**m, "max_length": 4}))
    cut = study.reward_fn(d, normalise=False, aggregate="mean")
    ids = [
        tokenizer(p)["input_ids"]
        + tokenizer(c, add_special_tokens=False)["input_ids"]
        + [tokenizer.eos_token_id]
        for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
    ]
    with torch.no_grad():
        expected = torch.stack(
            [
                models["multihead"].rewards(
                    torch.tensor([s[:4]]), torch.ones(1, min(4, len(s)), dtype=torch.long)
                )[:, 0]
                for s in ids
            ],
            1,
        )
    torch.testing.assert_close(
        torch.tensor(cut(PROMPTS, COMPLETIONS)), expected.mean(0), atol=1e-5, rtol=0
    )


def test_a_model_directory_without_a_tokenizer_loads_as_a_model(pipeline_dirs, tmp_path):
    _, models = pipeline_dirs
    models["multihead"].save_pretrained(tmp_path / "bare")  # weights and config only
    assert study.load_reward_model(tmp_path / "bare").k == K


def test_the_export_command_reads_the_pipeline_and_its_ppo_normaliser(
    pipeline_dirs, tmp_path, monkeypatch, capsys
):
    import pandas as pd

    from study.export import main

    root, _ = pipeline_dirs
    rm = tmp_path / "artifacts" / "rm" / "multihead" / "seed2"
    shutil.copytree(root / "multihead", rm)
    (rm / "training.json").write_text(
        json.dumps(
            {
                "epochs": 1,
                "train_pairs": 10,
                "params": {"reward": {"max_length": 32}, "preferences": {"flip_rate": 0.25}},
            }
        )
    )
    val = tmp_path / "results" / "rm" / "multihead" / "seed2"
    val.mkdir(parents=True)
    pd.DataFrame(
        {
            "pair_id": [0, 0, 0, 1, 1, 1],
            "head": [0, 1, 2] * 2,
            "r_chosen": [1.0, 0.0, 2.0, 0.0, 0.0, 3.0],
            "r_rejected": [0.0, 1.0, 1.0, 1.0, 1.0, 2.0],
        }
    ).to_parquet(val / "val_rewards.parquet")
    ppo = tmp_path / "results" / "ppo" / "multihead_mean" / "seed2"
    ppo.mkdir(parents=True)
    (ppo / "train.json").write_text(
        json.dumps({"norm_mean": [0.0, 1.0, 2.0], "norm_std": [1.0, 2.0, 3.0]})
    )
    main(["multihead", "2", str(tmp_path / "out"), "--root", str(tmp_path)])
    assert "from " + str(ppo / "train.json") in capsys.readouterr().out  # min's run absent: mean's
    bundle = load_bundle(tmp_path / "out")
    assert bundle.k == K and bundle.manifest["max_length"] == 32
    torch.testing.assert_close(bundle.normaliser[1], torch.tensor([1.0, 2.0, 3.0]))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| held-out accuracy vs labels (per head) | [0.5, 0.0, 1.0] |" in card
    assert "flip rate) 0.25" in card
    with pytest.raises(SystemExit):
        main(["multihead", "7", str(tmp_path / "x"), "--root", str(tmp_path)])
    assert "no reward model" in capsys.readouterr().err


def test_study_hf_as_a_command_points_to_the_export_command():
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-m", "study.hf", "export", "multihead", "0", "out"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "python -m study.export ARM SEED OUT" in done.stderr
