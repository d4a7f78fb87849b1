"""The per-rollout table of an RLOO run, and what TRL must be handed for it to be right.

`StepTable` (a TRL callback) writes a row per reward call (proxy, heads, gold on the same
completions), completed by the TRL log that follows it (KL, entropy, gradient norm);
`table_call` reads a call of the public reward function as a row's input. TRL scores left-padded
prompt + completion batches without ``position_ids``, so a model with absolute positions (GPT-2,
the policy) would number a padded row's positions from the padding, while ``generate`` sampled
it counting from the first real token: `count_positions_from_first_token` adds the position ids
``generate`` used to every call without them (policy and reference).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase, TrainerCallback

from study.proxy import Scored
from study.trl_reward import RewardCallInfo
from study.world.gold import GoldReward


@dataclass
class RewardCall:
    """One call of the reward callable: the batch, the normalised heads (K, B) and the rewards (B,)."""

    batch: Scored
    heads: torch.Tensor
    scores: torch.Tensor
    response_length: torch.Tensor  # (B,) completion tokens, EOS included
    step: int | None  # TRL's global step when the batch was scored (None outside a trainer)
    seconds: float  # spent in the reward function


def table_call(c: RewardCallInfo, tokenizer: PreTrainedTokenizerBase, template: str) -> RewardCall:
    """A call of `study.trl_reward.RewardFunction` as the step table reads it: the raw prompts, the
    completion texts and EOS flags, the normalised heads and the rewards."""
    ids = [list(x) for x in c.completion_ids or []]
    if len(ids) != len(c.prompts):
        raise ValueError("the RLOO table needs TRL's completion_ids with every reward call")
    batch = Scored(
        ids=torch.empty(0, dtype=torch.long),  # the table reads texts, not ids
        mask=torch.empty(0, dtype=torch.long),
        prompts=[untemplate(p, template) for p in c.prompts],
        texts=[tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids],
        finished=np.array([len(x) > 0 and x[-1] == tokenizer.eos_token_id for x in ids]),
    )
    step = getattr(c.trainer_state, "global_step", None)
    lengths = torch.tensor([len(x) for x in ids])
    return RewardCall(batch, c.heads, c.scores, lengths, step, c.seconds)


def untemplate(query: str, template: str) -> str:
    """The prompt inside a query made by `format_queries` ('{prompt} <sep>': 'a b <sep>' -> 'a b')."""
    prefix, _, suffix = template.partition("{prompt}")
    if not (query.startswith(prefix) and query.endswith(suffix)):
        raise ValueError(f"query {query!r} was not made by the template {template!r}")
    return query[len(prefix) : len(query) - len(suffix)]


def count_positions_from_first_token(model: nn.Module) -> torch.utils.hooks.RemovableHandle | None:
    """Make calls of `model` without ``position_ids`` count positions from each row's first
    attended token, (attention_mask.cumsum(-1) - 1).clamp(min=0), as ``generate`` does.

    Returns the hook's handle, or None for a model whose forward takes no ``position_ids``.
    """
    if "position_ids" not in inspect.signature(type(model).forward).parameters:
        return None

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        mask = kwargs.get("attention_mask")
        if mask is None or mask.dim() != 2 or kwargs.get("position_ids") is not None:
            return None
        kwargs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        return args, kwargs

    return model.register_forward_pre_hook(hook, with_kwargs=True)


# TRL log key -> table column; with num_iterations > 1 these are of the rollout's first update
_FROM_TRL_LOG = {"entropy": "entropy", "grad_norm": "grad_norm", "step_time": "step_seconds"}


class StepTable(TrainerCallback):
    """The per-rollout table: a row per reward call (proxy, heads, gold on the same completions),
    completed by the TRL log that follows it (KL, entropy, gradient norm)."""

    def __init__(
        self,
        variant: str,
        seed: int,
        gold: GoldReward,
        lr: Callable[[int], float],
        steps: int,
        progress: bool = True,
    ):
        self.variant, self.seed, self.gold, self.lr = variant, seed, gold, lr
        self.rows: list[dict[str, Any]] = []
        # our bar, not TRL's: its ProgressCallback writes every log dict under the bar
        self.bar = tqdm(
            total=steps, desc=f"rloo {variant} s{seed}", disable=not progress, mininterval=2.0
        )

    def on_batch(self, call: RewardCall) -> None:
        b, heads = call.batch, call.heads
        g = self.gold.score(b.prompts, b.texts, b.finished)
        row: dict[str, Any] = {
            "variant": self.variant,
            "seed": self.seed,
            "step": len(self.rows),
            "kl": math.nan,
            "kl_per_token": math.nan,
            "proxy": call.scores.mean().item(),
            "head_std": heads.std(0, unbiased=False).mean().item() if heads.shape[0] > 1 else 0.0,
            "gold": float(g.total.mean()),
        }
        row.update({f"gold_{k}": float(v.mean()) for k, v in g.contributions.items()})
        row.update({f"proxy_head{h}": heads[h].mean().item() for h in range(heads.shape[0])})
        row.update(
            response_length=call.response_length.float().mean().item(),
            finished=float(np.mean(b.finished)),
            entropy=math.nan,
            grad_norm=math.nan,
            lr=self.lr(call.step or 0),
            step_seconds=math.nan,
            score_seconds=call.seconds,
        )
        self.rows.append(row)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **_: Any):
        if not logs or "kl" not in logs:  # a log without a rollout (num_iterations > 1, the end)
            return
        if not self.rows or not math.isnan(self.rows[-1]["kl"]):
            raise RuntimeError("TRL logged a KL without a new reward call: the table is misaligned")
        row = self.rows[-1]
        if not math.isclose(logs["reward"], row["proxy"], rel_tol=1e-4, abs_tol=1e-5):
            raise RuntimeError(
                f"TRL logged reward {logs['reward']} for a batch whose proxy is {row['proxy']}"
            )
        row["kl_per_token"] = float(logs["kl"])
        row["kl"] = float(logs["kl"]) * row["response_length"]
        for key, name in _FROM_TRL_LOG.items():
            if logs.get(key) is not None:
                row[name] = float(logs[key])
        for name in ("kl", "proxy", "gold"):
            if not math.isfinite(row[name]):
                raise FloatingPointError(f"RLOO rollout {row['step']}: {name} is {row[name]}")
        self.bar.update(1)
        self.bar.set_postfix(
            kl=f"{row['kl']:.2f}",
            proxy=f"{row['proxy']:.2f}",
            gold=f"{row['gold']:.2f}",
            refresh=False,
        )

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any):
        self.bar.close()
