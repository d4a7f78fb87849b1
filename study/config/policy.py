"""The optimisers' sections: PPO, best-of-n and TRL's RLOO."""

from __future__ import annotations

from study.config.base import _check, _f, section


@section
class PPOConfig:
    steps: int = _f(60, "PPO steps (one rollout batch and its updates each).")
    batch_size: int = _f(64, "Prompts per rollout (one response each).")
    ppo_epochs: int = _f(4, "Passes over each rollout batch.")
    minibatches: int = _f(2, "Minibatches per pass; batch_size must divide into them.")
    lr: float = _f(1e-4, "Peak Adam learning rate of the policy.")
    value_lr: float = _f(1e-4, "Peak Adam learning rate of the critic.")
    warmup_steps: int = _f(3, "Linear warm-up steps, then cosine decay to 10%.")
    kl_coef: float = _f(
        0.005,
        "beta: weight of the per-token KL penalty in the shaped reward (docs/methods.md, 'The KL budget').",
    )
    adaptive_kl: bool = _f(False, "Adapt beta towards kl_target (Ziegler et al.).")
    kl_target: float = _f(6.0, "Target KL (nats per response) of the adaptive controller.")
    kl_horizon: int = _f(10000, "Horizon of the adaptive controller, in samples.")
    gamma: float = _f(1.0, "Discount.")
    lam: float = _f(0.95, "GAE lambda.")
    cliprange: float = _f(0.2, "Policy ratio clip.")
    cliprange_value: float = _f(0.2, "Value clip around the rollout's values.")
    value_model: str = _f(
        "shared",
        "The critic: 'shared' (a scalar head on the policy's final hidden states, joint loss; half the update arithmetic) or 'separate' (its own copy of the SFT trunk, as TRL's PPOTrainer). See study.actor_critic.ActorCritic.",
    )
    vf_coef: float = _f(0.1, "Weight of the value loss (separate critic: scales its gradient).")
    ent_coef: float = _f(
        0.0, "Weight of the entropy bonus in the policy loss (0: none, as lm-human-preferences)."
    )
    grad_clip: float = _f(1.0, "Gradient-norm clip of policy and critic.")
    whiten_advantages: bool = _f(True, "Whiten advantages over each minibatch's response tokens.")
    normalise: str = _f(
        "sft_zscore",
        "Per-head normalisation of proxy rewards before aggregating: 'sft_zscore' (mean 0, std 1 on SFT samples of the RL prompts) or 'none'.",
    )
    n_norm_samples: int = _f(256, "SFT samples used to normalise the heads.")
    eval_every: int = _f(5, "Steps between evaluations on the held-out prompts.")
    checkpoint_every: int = _f(10, "Steps between checkpoints (resume restarts from the last).")

    def __post_init__(self) -> None:
        _check(
            self.steps >= 1 and self.batch_size >= 2, "ppo.steps", "steps >= 1 and batch_size >= 2"
        )
        _check(self.ppo_epochs >= 1, "ppo.ppo_epochs", "must be >= 1")
        _check(
            self.minibatches >= 1 and self.batch_size % self.minibatches == 0,
            "ppo.minibatches",
            f"must divide ppo.batch_size ({self.batch_size})",
        )
        _check(
            self.batch_size // self.minibatches >= 2,
            "ppo.minibatches",
            "minibatches of fewer than 2 sequences cannot be whitened",
        )
        _check(self.lr > 0 and self.value_lr > 0, "ppo.lr", "learning rates must be > 0")
        _check(0 <= self.warmup_steps < self.steps, "ppo.warmup_steps", "must be in [0, ppo.steps)")
        _check(self.kl_coef >= 0, "ppo.kl_coef", "must be >= 0")
        _check(
            self.kl_target > 0 and self.kl_horizon > 0,
            "ppo.kl_target",
            "target and horizon must be > 0",
        )
        _check(
            0 < self.gamma <= 1 and 0 <= self.lam <= 1,
            "ppo.gamma",
            "gamma in (0, 1], lam in [0, 1]",
        )
        _check(
            self.cliprange > 0 and self.cliprange_value > 0,
            "ppo.cliprange",
            "clip ranges must be > 0",
        )
        _check(
            self.vf_coef > 0 and self.grad_clip > 0,
            "ppo.vf_coef",
            "vf_coef and grad_clip must be > 0",
        )
        _check(self.ent_coef >= 0, "ppo.ent_coef", "must be >= 0")
        _check(
            self.value_model in ("shared", "separate"),
            "ppo.value_model",
            f"must be shared or separate, got {self.value_model!r}",
        )
        _check(
            self.normalise in ("sft_zscore", "none"),
            "ppo.normalise",
            f"must be sft_zscore or none, got {self.normalise!r}",
        )
        _check(self.n_norm_samples >= 2, "ppo.n_norm_samples", "must be >= 2")
        _check(
            self.eval_every >= 1 and self.checkpoint_every >= 1,
            "ppo.eval_every",
            "eval_every and checkpoint_every must be >= 1",
        )


@section
class BoNConfig:
    n_prompts: int = _f(
        64, "Held-out ('eval') prompts of the best-of-n curves (the first n_prompts)."
    )
    n_samples: int = _f(
        256,
        "N: SFT samples per prompt; curves run over n = 1, 2, 4, ... <= N with the unbiased estimator, so N bounds the KL reached (log N - (N-1)/N).",
    )

    def __post_init__(self) -> None:
        _check(self.n_prompts >= 2, "bon.n_prompts", "must be >= 2 (standard errors over prompts)")
        _check(self.n_samples >= 2, "bon.n_samples", "must be >= 2")


@section
class RLOOConfig:
    """The `rloo` section: TRL's group-relative optimiser (RLOOTrainer) against a variant's reward.

    Sampling (temperature, top-k, top-p, max_new_tokens) is `sampling`'s and the per-head
    normalisation is the PPO stage's (`ppo.normalise`, `ppo.n_norm_samples`, same seed), so the
    two optimisers of a variant sample alike and optimise the same reward.
    """

    steps: int = _f(60, "Rollouts: generation batches, each followed by num_iterations updates.")
    prompts_per_step: int = _f(16, "Distinct RL prompts per rollout.")
    num_generations: int = _f(
        4,
        "Completions per prompt (the RLOO group, >= 2): each one's baseline is the mean reward of the others.",
    )
    num_iterations: int = _f(
        1, "Optimiser steps per rollout (mu); above 1 the sequence ratios are clipped at epsilon."
    )
    lr: float = _f(3e-4, "Peak Adam learning rate (warm-up, then cosine decay to 10%, as PPO).")
    warmup_steps: int = _f(3, "Linear warm-up, in optimiser steps.")
    beta: float = _f(
        0.02,
        "KL coefficient: beta * (summed k1 KL to the SFT policy) is subtracted from each reward, as ppo.kl_coef.",
    )
    epsilon: float = _f(0.2, "Clip range of the sequence-level probability ratio.")
    grad_clip: float = _f(1.0, "Gradient-norm clip.")
    normalize_advantages: bool = _f(
        False, "Whiten the advantages over each rollout (TRL's normalize_advantages)."
    )

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "rloo.steps", "must be >= 1")
        _check(self.prompts_per_step >= 1, "rloo.prompts_per_step", "must be >= 1")
        _check(
            self.num_generations >= 2,
            "rloo.num_generations",
            "must be >= 2: the leave-one-out baseline needs another completion of the prompt",
        )
        _check(self.num_iterations >= 1, "rloo.num_iterations", "must be >= 1")
        _check(self.lr > 0, "rloo.lr", "must be > 0")
        _check(
            0 <= self.warmup_steps < self.steps * self.num_iterations,
            "rloo.warmup_steps",
            "must be in [0, steps * num_iterations)",
        )
        _check(
            self.beta > 0,
            "rloo.beta",
            "must be > 0: with beta = 0 TRL keeps no reference model and logs no KL",
        )
        _check(self.epsilon > 0, "rloo.epsilon", "must be > 0")
        _check(self.grad_clip > 0, "rloo.grad_clip", "must be > 0")

    @property
    def batch_size(self) -> int:
        """Completions per rollout (TRL's per-device train batch)."""
        return self.prompts_per_step * self.num_generations
