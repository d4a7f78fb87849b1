"""Shared fixtures: the repository's params, small tokenizers and models built in seconds."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from study.config import load_params
from study.world.grammar import sample_corpus
from study.world.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)


def toy_params(**ppo):
    """Smoke params cut further: a world in seconds, responses of at most 12 tokens; `ppo`
    overrides fields of the PPO section."""
    p = load_params(ROOT / "params.yaml", "smoke")
    r = dataclasses.replace
    return r(
        p,
        world=r(p.world, corpus_size=300, n_rl_prompts=32, n_eval_prompts=4),
        sft=r(p.sft, steps=10, warmup_steps=2, eval_every=5),
        sampling=r(p.sampling, max_new_tokens=12),
        preferences=r(p.preferences, n_pairs=8, n_samples_report=8),
        bon=r(p.bon, n_prompts=4),  # no more than the held-out prompts
        ppo=r(p.ppo, **{"n_norm_samples": 8, **ppo}),
    )


@pytest.fixture(scope="session")
def smoke_params():
    return load_params(ROOT / "params.yaml", "smoke")


@pytest.fixture(scope="session")
def corpus(smoke_params):
    ins, responses, quality = sample_corpus(smoke_params.world, 400, np.random.default_rng(0))
    return [i.text for i in ins], responses, quality


@pytest.fixture(scope="session")
def tokenizer(corpus):
    prompts, responses, _ = corpus
    return train_tokenizer([*prompts, *responses])
