"""Shared fixtures: the repository's params, small tokenizers and models built in seconds."""

from __future__ import annotations

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
