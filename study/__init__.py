"""Reward-model overoptimisation and its mitigation by scalable ensembles: a reproducible study.

The two names a user of the study's reward models needs are here (imported on first use, so that
``import study`` stays light):

- ``study.load_reward_model(dir)``: a saved reward model of any family (single, multi-head,
  ensemble); ``.rewards(input_ids, attention_mask)`` is (K, B);
- ``study.reward_fn(dir, aggregate="min", normalise=True)``: its aggregated reward as a TRL reward
  function (``prompts, completions, **kwargs -> list[float]``).

Both come from `study.hf`; importing it registers the reward-model class with transformers' Auto
classes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_reward_model", "reward_fn"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from study import hf

        return getattr(hf, name)
    raise AttributeError(f"module 'study' has no attribute {name!r}")
