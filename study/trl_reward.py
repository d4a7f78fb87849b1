"""A saved reward model's aggregated, normalised reward as a TRL reward function.

`reward_fn(dir)` (also `study.reward_fn`) loads a checkpoint of any family (`study.hf`) and returns
a `RewardFunction`: called as TRL's GRPO and RLOO trainers call a reward function (``prompts,
completions, completion_ids, **kwargs -> list[float]``), it scores each completion with every
head, normalises each head as the manifest says and aggregates them (min, mean or UWO).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from study.aggregate import METHODS, aggregate
from study.hf import MANIFEST, RewardBundle, RewardCheckpointError, load_bundle
from study.reward_models import (
    right_pad,
)


class RewardFunction:
    """The aggregated (and normalised) reward of a checkpoint, in TRL's reward-function signature:
    ``f(prompts, completions, completion_ids=None, **kwargs) -> list[float]``.

    Each prompt is tokenised as given (the policy's input, template included; plain text only); the
    sequence is cut to the length the reward model was trained on (``max_length``); the completion
    follows as `completion_ids` (TRL passes them, through the EOS where the completion ended) or,
    without them, as the tokenised completion text plus EOS (a finished response; pass
    ``finished=[...]`` to say otherwise). Completion ids are the policy's tokens: they are read as
    they are when the policy shares the reward model's vocabulary (`policy_tokenizer` None or the
    same vocabulary); otherwise the completion texts are re-tokenised by the reward model's
    tokenizer and an EOS added where the ids end in the policy's EOS. Scoring runs in
    length-sorted batches of `batch_size` on the model's device, as the study's `score_ids` does.
    """

    def __init__(
        self,
        bundle: RewardBundle,
        aggregate: str,
        normalise: bool,
        uwo_lambda: float | None = None,
        batch_size: int = 64,
        name: str = "reward",
        policy_tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        if aggregate not in METHODS:
            raise ValueError(
                f"reward_fn: aggregate={aggregate!r} is not an aggregation "
                f"(known: {', '.join(METHODS)})"
            )
        if normalise and bundle.normaliser is None:
            raise RewardCheckpointError(
                f"reward_fn: normalise=True, but the checkpoint's {MANIFEST} has no 'normaliser' "
                "(export one with `python -m study.export`, or pass normalise=False)"
            )
        if batch_size < 1:
            raise ValueError(f"reward_fn: batch_size must be at least 1, got {batch_size}")
        self.bundle, self.method, self.batch_size = bundle, aggregate, batch_size
        self.uwo_lambda = bundle.uwo_lambda if uwo_lambda is None else float(uwo_lambda)
        self.normaliser = bundle.normaliser if normalise else None
        tok = bundle.tokenizer
        if tok is None:
            raise ValueError("reward_fn: the bundle was loaded without its tokenizer")
        self.max_length = bundle.manifest.get("max_length")  # as the reward model was trained
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.shared_vocab = (
            policy_tokenizer is None or policy_tokenizer.get_vocab() == tok.get_vocab()
        )
        self.policy_eos = (policy_tokenizer or tok).eos_token_id
        self.on_call: Callable[[RewardCallInfo], None] | None = None  # sees every call
        self.__name__ = self.__qualname__ = name  # TRL logs rewards/<name>/mean

    @property
    def device(self) -> torch.device:
        return next(self.bundle.model.parameters()).device

    def heads(
        self,
        prompts: Sequence[str],
        completions: Sequence[str] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        finished: Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """Per-head rewards (K, B), normalised if the function normalises."""
        tok = self.bundle.tokenizer
        if not prompts:
            return torch.zeros(self.bundle.k, 0)
        if completion_ids is not None and not self.shared_vocab:  # re-tokenise the texts
            if completions is None:
                raise ValueError(
                    "reward_fn: the policy's vocabulary is not the reward model's, so its "
                    "completion_ids cannot be read: give the completion texts too"
                )
            if finished is None:
                finished = [len(c) > 0 and int(c[-1]) == self.policy_eos for c in completion_ids]
            completion_ids = None
        if completion_ids is None:
            if completions is None:
                raise ValueError("reward_fn: give completions or completion_ids")
            if len(completions) != len(prompts):
                raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
            ends = [True] * len(completions) if finished is None else list(finished)
            texts = [_text(c, "completion") for c in completions]
            body = tok(texts, add_special_tokens=False)["input_ids"]
            completion_ids = [
                [*b, tok.eos_token_id] if e else b for b, e in zip(body, ends, strict=True)
            ]
        elif len(completion_ids) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(completion_ids)} completion_ids")
        queries = tok([_text(p, "prompt") for p in prompts])
        cut = self.max_length  # as `study.reward_models.encode` cuts the training pairs
        seqs = [
            [*q, *(int(t) for t in c)][:cut]
            for q, c in zip(queries["input_ids"], completion_ids, strict=True)
        ]
        # length-sorted batches, right-padded (positions count from the first token, so this
        # gives the rewards of the rollout layout, left-padded prompt then completion)
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = []
        device = self.device
        for s in range(0, len(order), self.batch_size):
            ids, mask = right_pad([seqs[i] for i in order[s : s + self.batch_size]], self.pad_id)
            with torch.no_grad():
                out.append(self.bundle.model.rewards(ids.to(device), mask.to(device)).float().cpu())
        rewards = torch.cat(out, dim=1)[:, torch.argsort(torch.as_tensor(order))]  # (K, B)
        if self.normaliser is not None:
            mean, std = self.normaliser
            rewards = (rewards - mean[:, None]) / std[:, None]
        return rewards

    def __call__(
        self,
        prompts: Sequence[str],
        completions: Sequence[str] | None = None,
        completion_ids: Sequence[Sequence[int]] | None = None,
        finished: Sequence[bool] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        t0 = time.perf_counter()
        heads = self.heads(prompts, completions, completion_ids, finished)
        scores = aggregate(heads, self.method, self.uwo_lambda)
        if not torch.isfinite(scores).all():
            raise FloatingPointError(
                f"reward {self.__name__}: non-finite rewards {scores.tolist()}"
            )
        if self.on_call is not None:
            self.on_call(
                RewardCallInfo(
                    prompts, completions, completion_ids, heads, scores,
                    time.perf_counter() - t0, kwargs.get("trainer_state"),
                )
            )  # fmt: skip
        return scores.tolist()


@dataclass
class RewardCallInfo:
    """One call of a `RewardFunction`, as its `on_call` hook sees it."""

    prompts: Sequence[str]
    completions: Sequence[str] | None
    completion_ids: Sequence[Sequence[int]] | None
    heads: torch.Tensor  # (K, B), normalised if the function normalises
    scores: torch.Tensor  # (B,)
    seconds: float  # spent scoring
    trainer_state: Any  # TRL's TrainerState, when TRL called


def _text(value: Any, what: str) -> str:
    """A prompt or completion as text. Conversational input (a list of messages) is refused: the
    study's reward models read plain text, and no chat template made their training data."""
    if isinstance(value, str):
        return value
    raise TypeError(
        f"reward_fn: each {what} must be text, got {type(value).__name__} (conversational "
        "datasets are not supported: the reward models were trained on plain-text prompts)"
    )


def reward_fn(
    path: str | Path | RewardBundle,
    aggregate: str = "min",
    normalise: bool = True,
    uwo_lambda: float | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    policy_tokenizer: PreTrainedTokenizerBase | None = None,
) -> RewardFunction:
    """A TRL reward function (``prompts, completions, **kwargs -> list[float]``) over the
    checkpoint at `path`: the per-head rewards, z-scored by the saved normaliser (`normalise`), then
    aggregated over heads (`aggregate`: min, mean, max or uwo). Pass it as GRPO's or RLOO's single
    ``reward_funcs``; TRL *sums* several reward functions, so an ensemble is one function. Pass the
    policy's tokenizer as `policy_tokenizer` when it is not the reward model's."""
    bundle = path if isinstance(path, RewardBundle) else load_bundle(path)
    if device is not None:
        bundle.model.to(device)
    name = f"{bundle.manifest['family']}_{aggregate}"
    return RewardFunction(
        bundle, aggregate, normalise, uwo_lambda, batch_size, name, policy_tokenizer
    )


__all__ = ["RewardCallInfo", "RewardFunction", "reward_fn"]
