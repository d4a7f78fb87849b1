"""The hub path (`sources` naming ids or directories), exercised with local directories."""

import copy
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2ForSequenceClassification

from study.config import params_from_dict
from study.config.world import SFTConfig
from study.hub import HubGold, load_policy, load_table, load_tokenizer
from study.io import MissingArtifactError
from study.preferences import load_preferences
from study.world.build import build_world
from study.world.sft import build_policy
from tests.test_config import RAW


@pytest.fixture(scope="module")
def local_sources(tmp_path_factory, tokenizer, corpus):
    root = tmp_path_factory.mktemp("hub")
    policy = build_policy(
        SFTConfig(n_layer=1, n_embd=32, n_head=2, steps=2, warmup_steps=0), tokenizer, seed=0
    )
    policy.save_pretrained(root / "policy")
    tokenizer.save_pretrained(root / "policy")
    torch.manual_seed(0)
    rm = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=128,
            n_embd=16,
            n_layer=1,
            n_head=2,
            num_labels=1,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    rm.save_pretrained(root / "gold")
    tokenizer.save_pretrained(root / "gold")
    prompts, responses, _ = corpus
    pd.DataFrame({"prompt": prompts[:100]}).to_parquet(root / "prompts.parquet")
    pairs = datasets.Dataset.from_dict(
        {"prompt": prompts[:120], "chosen": responses[:120], "rejected": responses[120:240]}
    )
    pairs.save_to_disk(str(root / "pairs"))
    pd.DataFrame(
        {"prompt": prompts[:5], "chosen": responses[:5], "rejected": responses[5:10]}
    ).to_json(root / "pairs.jsonl", orient="records", lines=True)
    return root


def test_policy_and_tokenizer_load_from_a_directory(local_sources):
    tok = load_tokenizer(str(local_sources / "policy"))
    model = load_policy(str(local_sources / "policy"))
    ids = tok(["write a calm note about ocean . <sep>"], return_tensors="pt")["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(local_sources / "policy")
    torch.testing.assert_close(model(ids).logits, ref(ids).logits)


def test_tables_load_from_files_and_dataset_directories(local_sources):
    assert (
        len(load_table(str(local_sources / "prompts.parquet"), "sources.prompts", ["prompt"]))
        == 100
    )
    assert (
        len(
            load_table(
                str(local_sources / "pairs"),
                "sources.preferences",
                ["prompt", "chosen", "rejected"],
            )
        )
        == 120
    )
    assert (
        len(load_table(str(local_sources / "pairs.jsonl"), "sources.preferences", ["chosen"])) == 5
    )


def test_bad_sources_name_the_key(local_sources, tmp_path):
    with pytest.raises(
        MissingArtifactError, match=r"sources\.policy: './no/such/model' does not exist"
    ):
        load_policy("./no/such/model")
    with pytest.raises(ValueError, match=r"sources\.prompts: .* lacks column\(s\) question"):
        load_table(str(local_sources / "prompts.parquet"), "sources.prompts", ["question"])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(RuntimeError, match=r"sources\.prompts: .*unsupported file type"):
        load_table(str(tmp_path / "x.txt"), "sources.prompts", ["prompt"])


def test_hub_gold_scores_with_a_local_reward_model(local_sources):
    gold = HubGold(str(local_sources / "gold"), "{prompt} <sep>")
    s = gold.score(
        ["write a calm note about ocean ."] * 2, ["the waves seems calm .", "waves waves"]
    )
    assert s.total.shape == (2,) and np.isfinite(s.total).all() and s.total[0] != s.total[1]
    assert set(s.to_frame().columns) == {"gold", "gold_model"}


def _local_world_raw(local_sources: Path, prompts: Path) -> dict:
    """The repository's params with the smoke profile's sources in local directories."""
    raw = copy.deepcopy(RAW)
    raw["smoke"]["sources"] = {
        "policy": str(local_sources / "policy"),
        "tokenizer": "policy",
        "prompts": str(prompts),
        "preferences": str(local_sources / "pairs"),
        "gold": str(local_sources / "gold"),
    }
    return raw


def test_world_stage_runs_on_local_directories(local_sources, tmp_path):
    raw = _local_world_raw(local_sources, local_sources / "prompts.parquet")
    raw["smoke"]["preferences"] = {"n_pairs": 100, "n_samples_report": 8}
    params = params_from_dict(raw, "smoke")
    summary = build_world(params, tmp_path / "world", progress=False)
    assert summary["n_pairs"] <= 100 and "sft" not in summary
    train = load_preferences(tmp_path / "world", "train")  # validates: flips agree with gold
    pairs = datasets.load_from_disk(str(local_sources / "pairs")).to_pandas()
    assert set(train["prompt"]) <= set(pairs["prompt"])
    assert set(train["chosen"]) | set(train["rejected"]) <= set(pairs["chosen"]) | set(
        pairs["rejected"]
    )
    prompts = pd.read_parquet(tmp_path / "world" / "prompts.parquet")
    assert set(prompts["prompt"]) <= set(
        pd.read_parquet(local_sources / "prompts.parquet")["prompt"]
    )
    reloaded = load_policy(str(tmp_path / "world" / "policy"))
    assert sum(p.numel() for p in reloaded.parameters()) == sum(
        p.numel() for p in load_policy(str(local_sources / "policy")).parameters()
    )


def test_an_outside_prompt_table_with_a_blank_prompt_is_refused_before_the_world_is_built(
    local_sources, tmp_path
):
    from study.io import ArtifactError

    bad = pd.read_parquet(local_sources / "prompts.parquet")
    bad.loc[7, "prompt"] = "   "
    bad.to_parquet(tmp_path / "prompts.parquet")
    params = params_from_dict(
        _local_world_raw(local_sources, tmp_path / "prompts.parquet"), "smoke"
    )
    with pytest.raises(ArtifactError, match=r"sources\.prompts \(.*prompts\.parquet\): row 7: "):
        build_world(params, tmp_path / "world", progress=False)
    assert not (tmp_path / "world").exists()


def test_the_embedded_gold_refuses_external_prompts_before_anything_runs():
    raw = copy.deepcopy(RAW)
    raw["smoke"]["sources"] = {"prompts": "some/dataset"}
    with pytest.raises(ValueError, match=r"sources\.gold"):
        params_from_dict(raw, "smoke")
