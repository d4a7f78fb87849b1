"""The reward models' section (families, arms, training) and their evaluation's."""

from __future__ import annotations

import dataclasses

from study.config.base import ConfigError, _check, _f, section, with_override

RESAMPLING = ("none", "bootstrap", "poisson")
HEAD_INITS = ("normal", "linear")
# cheap uncertainty from one trained model (study.cheap_ensembles), and the family it makes
# the label-noise sweep's flip rates beside the world's own (preferences.flip_rate, 0.25)
NOISE_RATES = (0.0, 0.1, 0.4)
UNCERTAINTY = {"none": None, "laplace": "multihead", "dropout": "ensemble", "lora": "ensemble"}


@section
class RewardConfig:
    k: int = _f(
        5, "Heads of the multi-head model and members of the full ensemble (a single model has 1)."
    )
    encoder: str = _f(
        "policy",
        "'policy' (the SFT policy's backbone, as Ahmed et al.), 'scratch' (its architecture, freshly initialised) or a Hugging Face id / directory of any encoder.",
    )
    max_length: int = _f(
        96, "Longest prompt + response (tokens) a reward model reads; longer ones are cut."
    )
    batch_size: int = _f(32, "Preference pairs per optimiser step.")
    lr: float = _f(3e-4, "Peak AdamW learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_fraction: float = _f(
        0.05, "Share of the steps spent in linear warm-up before the cosine decay."
    )
    grad_clip: float = _f(1.0, "Gradient-norm clip.")
    epochs_single: int = _f(1, "Epochs of the single reward model.")
    epochs_multihead: int = _f(
        1,
        "Epochs of the multi-head model (1 as the paper's text states; the authors' training script runs 3: arm multihead-3ep).",
    )
    epochs_ensemble: int = _f(
        3, "Epochs of each full-ensemble member (the paper's text, after Coste et al.: 3)."
    )
    resample: str = _f(
        "none",
        "Per-head (per-member) resampling of the training pairs: 'none' (heads differ by initialisation only, the paper's setting), 'bootstrap' (multinomial counts) or 'poisson' (Poisson(1) weights).",
    )
    head_init: str = _f(
        "normal",
        "How the heads start: 'normal' (N(0, head_init_std), zero bias) or 'linear' (torch.nn.Linear's own default, U(-1/sqrt(d), 1/sqrt(d)) for weights and bias, as the authors' code).",
    )
    head_init_std: float = _f(
        0.02, "Standard deviation of the heads' normal initialisation (head_init: normal)."
    )
    head_lr_mult: float = _f(
        1.0,
        "The heads' learning rate as a multiple of the encoder's (reward.lr); the authors' heads train at 3e-6 and stay near their initialisation.",
    )
    freeze_encoder: bool = _f(False, "Train the heads only, on the initial encoder's features.")
    uncertainty: str = _f(
        "none",
        "Cheap uncertainty instead of K trained heads or members (study.cheap_ensembles): 'none'; 'laplace' (one single-head model, its K heads drawn from the last-layer Laplace posterior; a multihead arm); 'dropout' (one single-head model, K fixed dropout masks on its MLP units; an ensemble arm); 'lora' (one frozen encoder, K trained low-rank adapters and heads; an ensemble arm).",
    )
    laplace_prior: float = _f(
        1.0, "Prior precision of the Laplace posterior (uncertainty: laplace)."
    )
    dropout_rate: float = _f(0.1, "Share of MLP units each member drops (uncertainty: dropout).")
    lora_rank: int = _f(8, "Rank of each member's adapters (uncertainty: lora).")
    label_noise: float | None = _f(
        None,
        "Share of the training labels flipped for this arm, drawn afresh from the clean labels (study.preferences.relabel: one draw per pair, so the pairs flipped at a lower rate are among those flipped at a higher one); None keeps the world's labels (preferences.flip_rate).",
    )
    uwo_lambda: float = _f(
        0.5, "Weight of the head variance in UWO (mean - lambda * population variance)."
    )
    eval_batch_size: int = _f(256, "Sequences per scoring call.")
    ensemble_scoring: str = _f(
        "auto",
        "How a full ensemble scores: 'vmap' (members batched over stacked weights), 'loop' (one after the other) or 'auto' (vmap on a GPU, loop on a CPU, where vmap was measured 2-3x slower).",
    )
    arms: dict = _f(
        {
            "multihead-3ep": {"family": "multihead", "overrides": ["epochs_multihead=3"]},
            "multihead-authors": {
                "family": "multihead",
                "overrides": ["head_init=linear", "head_lr_mult=0.01", "epochs_multihead=3"],
            },
            **{
                f"multihead-k{k}": {"family": "multihead", "overrides": [f"k={k}"]}
                for k in (2, 3, 8, 10)
            },
            **{f"ensemble-k{k}": {"family": "ensemble", "overrides": [f"k={k}"]} for k in (1, 3)},
            "multihead-bootstrap": {"family": "multihead", "overrides": ["resample=poisson"]},
            "multihead-laplace": {"family": "multihead", "overrides": ["uncertainty=laplace"]},
            "ensemble-dropout": {"family": "ensemble", "overrides": ["uncertainty=dropout"]},
            "ensemble-lora": {"family": "ensemble", "overrides": ["uncertainty=lora"]},
            **{
                f"{family}-noise{round(100 * rate)}": {
                    "family": family,
                    "overrides": [f"label_noise={rate}"],
                }
                for family in ("single", "multihead", "ensemble")
                for rate in NOISE_RATES
            },
        },
        "Named reward-model arms beyond the three families: name -> {family, overrides of this section ('key=value')}. A name is '<family>-<tag>'; it trains and is optimised like its family (rm@<name>-<seed>, variant <name>_min).",
    )

    def __post_init__(self) -> None:
        _check(self.k >= 1, "reward.k", "must be >= 1")
        _check(
            self.ensemble_scoring in ("auto", "vmap", "loop"),
            "reward.ensemble_scoring",
            f"must be auto, vmap or loop, got {self.ensemble_scoring!r}",
        )
        _check(self.max_length >= 8, "reward.max_length", "must be >= 8")
        _check(self.batch_size >= 1, "reward.batch_size", "must be >= 1")
        _check(self.lr > 0, "reward.lr", "must be > 0")
        _check(self.weight_decay >= 0, "reward.weight_decay", "must be >= 0")
        _check(0.0 <= self.warmup_fraction < 1.0, "reward.warmup_fraction", "must be in [0, 1)")
        _check(self.grad_clip > 0, "reward.grad_clip", "must be > 0")
        for name in ("epochs_single", "epochs_multihead", "epochs_ensemble"):
            _check(getattr(self, name) >= 1, f"reward.{name}", "must be >= 1")
        _check(
            self.resample in RESAMPLING,
            "reward.resample",
            f"must be one of {', '.join(RESAMPLING)}, got {self.resample!r}",
        )
        _check(self.head_init_std > 0, "reward.head_init_std", "must be > 0")
        _check(
            self.head_init in HEAD_INITS,
            "reward.head_init",
            f"must be one of {', '.join(HEAD_INITS)}, got {self.head_init!r}",
        )
        _check(self.head_lr_mult > 0, "reward.head_lr_mult", "must be > 0")
        _check(
            self.uncertainty in UNCERTAINTY,
            "reward.uncertainty",
            f"must be one of {', '.join(UNCERTAINTY)}, got {self.uncertainty!r}",
        )
        _check(self.laplace_prior > 0, "reward.laplace_prior", "must be > 0")
        _check(0.0 < self.dropout_rate < 1.0, "reward.dropout_rate", "must be in (0, 1)")
        _check(self.lora_rank >= 1, "reward.lora_rank", "must be >= 1")
        for name, arm in self.arms.items():
            where = f"reward.arms.{name}"
            _check(
                isinstance(arm, dict) and set(arm) == {"family", "overrides"},
                where,
                "must be a mapping with exactly the keys family and overrides",
            )
            _check(
                arm["family"] in ("single", "multihead", "ensemble")
                and str(name).startswith(f"{arm['family']}-")
                and not {"_", "."} & set(str(name)),
                where,
                "family must be single, multihead or ensemble, and the name '<family>-<tag>' "
                "without '_' or '.' (a stage declares its arm as the param arms.<name>)",
            )
            _check(
                isinstance(arm["overrides"], list)
                and all(isinstance(o, str) and not o.startswith("arms") for o in arm["overrides"]),
                f"{where}.overrides",
                "must be a list of 'key=value' strings of the reward section (not arms)",
            )
        _check(
            self.label_noise is None or 0.0 <= self.label_noise < 0.5,
            "reward.label_noise",
            f"must be None or in [0, 0.5), got {self.label_noise}",
        )
        _check(self.uwo_lambda >= 0, "reward.uwo_lambda", "must be >= 0")
        _check(self.eval_batch_size >= 1, "reward.eval_batch_size", "must be >= 1")

    def vectorize_ensemble(self, cuda: bool) -> bool:
        """Whether a full ensemble scores with vmap, on this device."""
        return self.ensemble_scoring == "vmap" or (self.ensemble_scoring == "auto" and cuda)

    def arm(self, name: str) -> tuple[str, RewardConfig]:
        """(family, this section with the arm's overrides) of a family or a named arm."""
        if name not in ("single", "multihead", "ensemble", *self.arms):
            known = ", ".join(["single", "multihead", "ensemble", *self.arms])
            raise ConfigError(f"reward arm {name!r}: unknown (known: {known})")
        # an arm is a leaf: its section holds no arms, so that a Params built on it (a stage
        # running the arm) neither applies the other arms' overrides on top of this one's nor
        # records them (a stage declares its own arm alone: params.resolved.yaml's arms.<name>)
        cfg = dataclasses.replace(self, arms={})
        if name in ("single", "multihead", "ensemble"):
            return name, cfg
        for option in self.arms[name]["overrides"]:
            cfg = with_override(cfg, option, f"reward.arms.{name}")
        family = self.arms[name]["family"]
        makes = UNCERTAINTY[cfg.uncertainty]
        _check(
            makes is None or makes == family,
            f"reward.arms.{name}",
            f"uncertainty {cfg.uncertainty} belongs to the family {makes}, not {family}",
        )
        return family, cfg

    def encoder_epochs(self, family: str) -> int:
        """Training compute in passes of the training pairs through a whole encoder (forward and
        backward): K members x epochs for an ensemble, epochs for one encoder with any number of
        heads, the one trained model's epochs for the Laplace and dropout arms, K adapters x
        epochs for LoRA (whose backward pass still runs through the frozen encoder)."""
        if self.uncertainty in ("laplace", "dropout"):
            return self.epochs("single")
        if self.uncertainty == "lora":
            return self.k * self.epochs("single")
        return (self.k if family == "ensemble" else 1) * self.epochs(family)

    def epochs(self, family: str) -> int:
        """Epochs for a family ('single', 'multihead' or 'ensemble')."""
        return {
            "single": self.epochs_single,
            "multihead": self.epochs_multihead,
            "ensemble": self.epochs_ensemble,
        }[family]


@section
class RewardEvalConfig:
    calibration_bins: int = _f(10, "Equal-width bins of the reliability diagrams (and ECE).")
    diversity_sweep: list[str] = _f(
        [
            "resample=none",
            "resample=poisson",
            "head_init_std=0.5",
            "freeze_encoder=true",
        ],
        "Options whose head diversity is measured, each one 'key=value' override of the reward section (multi-head and full ensemble, first seed).",
    )
    diversity_common: list[str] = _f(
        ["epochs_ensemble=1"],
        "Overrides applied to every option of the diversity sweep (default: ensemble members train 1 epoch like the multi-head model, so options compare at one encoder-epoch per head and the sweep stays affordable).",
    )
    cost_ks: list[int] = _f(
        [1, 2, 3, 5, 8], "Numbers of heads / members at which cost is measured."
    )
    cost_steps: int = _f(
        12,
        "Timed training steps per cost point (after 3 warm-up steps); time per epoch is their median times the steps in an epoch.",
    )
    cost_score_batches: int = _f(
        5, "Timed scoring batches (of reward.eval_batch_size sequences) per cost point."
    )

    def __post_init__(self) -> None:
        _check(self.calibration_bins >= 2, "reward_eval.calibration_bins", "must be >= 2")
        for name, opts in (("diversity_sweep", self.diversity_sweep),
                            ("diversity_common", self.diversity_common)):  # fmt: skip
            for opt in opts:
                key, sep, _ = opt.partition("=")
                _check(
                    bool(sep) and key in {f.name for f in dataclasses.fields(RewardConfig)},
                    f"reward_eval.{name}",
                    f"{opt!r} is not 'key=value' with a key of the reward section",
                )
        _check(
            len(self.cost_ks) >= 1 and all(k >= 1 for k in self.cost_ks),
            "reward_eval.cost_ks",
            "must list Ks >= 1",
        )
        _check(self.cost_steps >= 1, "reward_eval.cost_steps", "must be >= 1")
        _check(self.cost_score_batches >= 1, "reward_eval.cost_score_batches", "must be >= 1")
