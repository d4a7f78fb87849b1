"""Reward-model overoptimisation and its mitigation by scalable ensembles: a reproducible study.

The two names a user of the study's reward models needs are here (imported on first use, so that
``import study`` stays light):

- ``study.load_reward_model(dir)``: a saved reward model of any family (single, multi-head,
  ensemble); ``.rewards(input_ids, attention_mask)`` is (K, B);
- ``study.reward_fn(dir, aggregate="min", normalise=True)``: its aggregated reward as a TRL reward
  function (``prompts, completions, **kwargs -> list[float]``).

They come from `study.hf` and `study.trl_reward`; importing either registers the reward-model class
with transformers' Auto classes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_reward_model", "reward_fn"]


def __getattr__(name: str) -> Any:
    if name == "load_reward_model":
        from study.hf import load_reward_model

        return load_reward_model
    if name == "reward_fn":
        from study.trl_reward import reward_fn

        return reward_fn
    raise AttributeError(f"module 'study' has no attribute {name!r}")
