"""Typed, validated parameters: the one reader of `params.yaml`.

Every parameter is declared once, here: its type, its default and its one line of help, in a
section (a frozen pydantic dataclass, so that a wrong type, an unknown key or a non-finite number
is refused by the library and reported with its dotted path). `params.yaml` holds a selector and
one block per profile, each only the values it changes::

    profile: default          # the profile `dvc repro` runs
    default: {reward: {...}}  # the study's choices, over the defaults declared here
    smoke:   {sft: {steps: 40}}       # overrides on top of `default`
    paper:   {sources: {...}}         # overrides on top of `default`

A profile resolves as these defaults, then `default`, then the profile's own block. Every
profile is checked whichever is selected (``params.yaml: smoke.sft.stepz: unknown key ...``);
``python -m study.config`` prints every field with its help, and ``python -m study.config
resolve`` writes the active profile, resolved, to `params.resolved.yaml`, the file every pipeline
stage declares its params from.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import pydantic.dataclasses
import yaml

EMBEDDED = "embedded"
PROFILE_NAMES = ("smoke", "default", "paper")


class ConfigError(ValueError):
    """A parameter file that cannot be used; the message names the file and the key."""


# a section: frozen, every field of its declared type (an int is no bool, a string no number; an
# int is taken for a float), no other key, no NaN or infinity
section = pydantic.dataclasses.dataclass(
    frozen=True,
    config=pydantic.ConfigDict(extra="forbid", strict=True, allow_inf_nan=False),
)


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its one line of documentation."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def field_default(f: dataclasses.Field) -> Any:
    """The default of a dataclass field, whether a value or a factory (lists)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


# --------------------------------------------------------------------------------------- sections


@section
class RunConfig:
    seed: int = _f(
        0, "Base seed of the world: corpus, SFT initialisation and data order, pairs, flips."
    )
    threads: int = _f(2, "torch intra-op threads; fixed so that CPU results repeat bit for bit.")

    def __post_init__(self) -> None:
        _check(
            self.seed >= 0, "run.seed", f"must be >= 0 (numpy seeds are unsigned), got {self.seed}"
        )
        _check(self.threads >= 1, "run.threads", "must be >= 1")


@section
class SourcesConfig:
    policy: str = _f(
        EMBEDDED,
        "'embedded' (train the SFT policy on the generated corpus) or a Hugging Face id / directory of a causal LM.",
    )
    tokenizer: str = _f(
        EMBEDDED,
        "'embedded' (train a word-level tokenizer), 'policy' (the policy's own) or a Hugging Face id / directory.",
    )
    prompts: str = _f(
        EMBEDDED,
        "'embedded' (generated instructions) or a dataset id / directory / parquet file with a 'prompt' column.",
    )
    preferences: str = _f(
        EMBEDDED,
        "'embedded' (pairs sampled from the policy, labelled by gold) or a dataset id / directory / parquet file with prompt, chosen, rejected columns.",
    )
    gold: str = _f(
        EMBEDDED,
        "'embedded' (the documented grammar-world gold reward) or a Hugging Face id / directory of a sequence-classification reward model.",
    )
    prompt_template: str = _f(
        "{prompt} <sep>",
        "How a prompt is shown to the policy and the reward models; must contain '{prompt}'.",
    )
    relabel_with_gold: bool = _f(
        True,
        "For a preference dataset: relabel each pair with the gold reward (Coste et al.) instead of keeping its labels.",
    )

    def __post_init__(self) -> None:
        _check(
            "{prompt}" in self.prompt_template, "sources.prompt_template", "must contain '{prompt}'"
        )
        for name in ("policy", "tokenizer", "prompts", "preferences", "gold"):
            _check(bool(getattr(self, name).strip()), f"sources.{name}", "must not be empty")
        if self.policy != EMBEDDED:
            _check(
                self.tokenizer != EMBEDDED,
                "sources.tokenizer",
                "a hub/directory policy cannot use the embedded word-level tokenizer; use 'policy' or an id",
            )
        if self.policy == EMBEDDED:
            _check(
                self.tokenizer == EMBEDDED,
                "sources.tokenizer",
                "the embedded policy is trained with the embedded tokenizer; set it to 'embedded'",
            )
        if self.gold == EMBEDDED:
            _check(
                self.prompts == EMBEDDED,
                "sources.gold",
                "the embedded gold reward reads topic, tone and length from embedded prompts; "
                "with external prompts name a gold reward model",
            )

    @property
    def embedded_policy(self) -> bool:
        return self.policy == EMBEDDED


@section
class WorldConfig:
    n_topics: int = _f(6, "Topics in the world (at most 6), each with its own nouns.")
    n_tones: int = _f(4, "Requested tones (at most 4), each with its own adjectives.")
    corpus_size: int = _f(30000, "Instruction-response examples generated for SFT.")
    corpus_val_fraction: float = _f(
        0.05, "Share of the corpus held out to measure SFT validation loss."
    )
    quality_alpha: float = _f(
        1.5,
        "Beta(alpha, beta) law of a corpus response's latent quality; flaws get rarer as quality rises.",
    )
    quality_beta: float = _f(1.5, "See quality_alpha.")
    p_drift: float = _f(
        0.35,
        "At quality 0: chance that a sentence drifts to another topic (scaled by 1 - quality).",
    )
    p_wrong_tone: float = _f(
        0.35, "At quality 0: chance that a sentence takes another tone's words."
    )
    p_broken: float = _f(
        0.4,
        "At quality 0: chance that a sentence's grammar is broken (swap, drop, duplicate or stray word).",
    )
    p_repeat: float = _f(0.35, "At quality 0: chance that a sentence repeats an earlier one.")
    p_filler: float = _f(
        0.25, "Chance that a sentence is generic (no topic noun), at every quality."
    )
    length_sd: float = _f(
        1.5,
        "Spread (sentences) of a response's length around the requested length, at quality 0; halves at quality 1.",
    )
    max_sentences: int = _f(8, "Longest response in the corpus, in sentences.")
    n_rl_prompts: int = _f(2048, "Prompts drawn for policy optimisation (train split).")
    n_eval_prompts: int = _f(128, "Held-out prompts for evaluating policies.")

    def __post_init__(self) -> None:
        _check(2 <= self.n_topics <= 6, "world.n_topics", "must be in [2, 6]")
        _check(2 <= self.n_tones <= 4, "world.n_tones", "must be in [2, 4]")
        _check(self.corpus_size >= 10, "world.corpus_size", "must be >= 10")
        _check(
            0.0 < self.corpus_val_fraction < 0.5, "world.corpus_val_fraction", "must be in (0, 0.5)"
        )
        _check(
            self.quality_alpha > 0 and self.quality_beta > 0,
            "world.quality_alpha",
            "Beta parameters must be > 0",
        )
        for name in ("p_drift", "p_wrong_tone", "p_broken", "p_repeat", "p_filler"):
            _check(
                0.0 <= getattr(self, name) <= 1.0,
                f"world.{name}",
                "must be a probability in [0, 1]",
            )
        _check(self.length_sd >= 0, "world.length_sd", "must be >= 0")
        _check(
            self.max_sentences >= 6,
            "world.max_sentences",
            "must be >= 6 (the longest requested length)",
        )
        _check(self.n_rl_prompts >= 1, "world.n_rl_prompts", "must be >= 1")
        _check(self.n_eval_prompts >= 1, "world.n_eval_prompts", "must be >= 1")


@section
class GoldConfig:
    relevance_scale: float = _f(
        2.5,
        "Distinct on-topic nouns for relevance to reach 1 - 1/e: relevance = 1 - exp(-distinct / scale).",
    )
    offtopic_penalty: float = _f(0.2, "Relevance lost per distinct noun of another topic.")
    tone_scale: float = _f(2.0, "Distinct tone words for the tone term to reach 1 - 1/e.")
    wrong_tone_penalty: float = _f(0.2, "Tone term lost per distinct adjective of another tone.")
    w_relevance: float = _f(1.0, "Weight of relevance in the gold total.")
    w_tone: float = _f(1.0, "Weight of tone match.")
    w_fluency: float = _f(1.0, "Weight of fluency (share of grammatical sentences).")
    w_length: float = _f(
        0.5, "Weight of the length term (a bump at the requested number of sentences)."
    )
    w_repetition: float = _f(
        1.5, "Weight of the repetition penalty (share of repeated word trigrams)."
    )
    w_eos: float = _f(1.0, "Penalty for a response that never ends (no end-of-sequence).")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check(getattr(self, f.name) >= 0, f"gold.{f.name}", "must be >= 0")
        _check(
            self.relevance_scale > 0 and self.tone_scale > 0,
            "gold.relevance_scale",
            "scales must be > 0",
        )


@section
class SFTConfig:
    n_layer: int = _f(2, "Transformer blocks of the GPT-2 style policy.")
    n_embd: int = _f(128, "Width of the policy.")
    n_head: int = _f(4, "Attention heads; must divide n_embd.")
    max_length: int = _f(96, "Longest sequence (prompt + response tokens) the policy sees.")
    steps: int = _f(2400, "SFT optimiser steps.")
    batch_size: int = _f(64, "SFT batch size (sequences).")
    lr: float = _f(2e-3, "Peak AdamW learning rate.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_steps: int = _f(50, "Linear warm-up steps before the cosine decay.")
    grad_clip: float = _f(1.0, "Gradient-norm clip.")
    dropout: float = _f(0.0, "Dropout in the policy (0 keeps PPO's log-probabilities exact).")
    eval_every: int = _f(200, "Steps between validation-loss measurements.")

    def __post_init__(self) -> None:
        _check(self.n_layer >= 1, "sft.n_layer", "must be >= 1")
        _check(
            self.n_embd % self.n_head == 0, "sft.n_head", f"must divide sft.n_embd ({self.n_embd})"
        )
        _check(self.max_length >= 32, "sft.max_length", "must be >= 32")
        _check(
            self.steps >= 1 and self.batch_size >= 1,
            "sft.steps",
            "steps and batch_size must be >= 1",
        )
        _check(self.lr > 0, "sft.lr", "must be > 0")
        _check(0 <= self.warmup_steps < self.steps, "sft.warmup_steps", "must be in [0, sft.steps)")
        _check(self.grad_clip > 0, "sft.grad_clip", "must be > 0")
        _check(0.0 <= self.dropout < 1.0, "sft.dropout", "must be in [0, 1)")
        _check(self.eval_every >= 1, "sft.eval_every", "must be >= 1")


@section
class SamplingConfig:
    temperature: float = _f(1.0, "Sampling temperature of the policy.")
    top_k: int = _f(0, "Top-k filter (0 = off).")
    top_p: float = _f(1.0, "Nucleus filter (1.0 = off).")
    max_new_tokens: int = _f(
        64, "Longest response in tokens; a response cut here has no end-of-sequence."
    )
    batch_size: int = _f(256, "Prompts per generate() call.")

    def __post_init__(self) -> None:
        _check(self.temperature > 0, "sampling.temperature", "must be > 0")
        _check(self.top_k >= 0, "sampling.top_k", "must be >= 0")
        _check(0.0 < self.top_p <= 1.0, "sampling.top_p", "must be in (0, 1]")
        _check(self.max_new_tokens >= 1, "sampling.max_new_tokens", "must be >= 1")
        _check(self.batch_size >= 1, "sampling.batch_size", "must be >= 1")


@section
class PreferencesConfig:
    n_pairs: int = _f(6000, "Preference pairs (two policy samples of one prompt each).")
    val_fraction: float = _f(0.15, "Share of pairs in the validation split.")
    flip_rate: float = _f(0.25, "Share of labels flipped at random (Coste et al. use 0.25).")
    n_samples_report: int = _f(
        1000, "SFT samples scored by gold for the world report (component figure, metrics)."
    )

    def __post_init__(self) -> None:
        _check(self.n_pairs >= 4, "preferences.n_pairs", "must be >= 4")
        _check(0.0 < self.val_fraction < 1.0, "preferences.val_fraction", "must be in (0, 1)")
        _check(
            0.0 <= self.flip_rate < 0.5,
            "preferences.flip_rate",
            "must be in [0, 0.5): at 0.5 labels carry no signal",
        )
        _check(self.n_samples_report >= 1, "preferences.n_samples_report", "must be >= 1")


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
                and "_" not in str(name),
                where,
                "family must be single, multihead or ensemble, and the name '<family>-<tag>' "
                "without '_'",
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
        if name in ("single", "multihead", "ensemble"):
            return name, self
        if name not in self.arms:
            known = ", ".join(["single", "multihead", "ensemble", *self.arms])
            raise ConfigError(f"reward arm {name!r}: unknown (known: {known})")
        # an arm is a leaf: its section holds no arms, so that a Params built on it (a stage
        # running the arm) does not apply the other arms' overrides on top of this one's
        cfg = dataclasses.replace(self, arms={})
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


@section
class ReportConfig:
    kl_levels: list[float] = _f(
        [2.0, 5.0, 10.0, 15.0],
        "KL levels (nats) at which variants' gold is compared on the gold-vs-KL frontier (matched KL); a run that never reaches a level has no value there.",
    )
    min_gain_lost: float = _f(
        0.25,
        "Overoptimisation, as counted in the report: after its peak, gold loses at least this share of its gain while the proxy ends above its value at the peak.",
    )

    claims_kl: float = _f(
        10.0,
        "The matched-KL level (one of kl_levels) at which the claims table compares variants' gold.",
    )
    equivalence_margin: float = _f(
        0.2,
        "Claims of parity ('as good as'): supported when the 95% interval of the difference in gold lies within ± this margin (0.2 is about a third of the SFT policy's per-response gold standard deviation), not supported when it lies wholly outside.",
    )

    def __post_init__(self) -> None:
        _check(
            len(self.kl_levels) >= 1 and all(k > 0 for k in self.kl_levels),
            "report.kl_levels",
            "must list KL levels > 0",
        )
        _check(0 < self.min_gain_lost <= 1, "report.min_gain_lost", "must be in (0, 1]")
        _check(
            self.claims_kl in self.kl_levels,
            "report.claims_kl",
            f"must be one of report.kl_levels {list(self.kl_levels)}",
        )
        _check(self.equivalence_margin > 0, "report.equivalence_margin", "must be > 0")


DEVICES = ("cpu", "cuda", "mps", "auto")
DTYPES = ("float32", "bfloat16")


@section
class PlacementConfig:
    """Where the models run and in what precision: how a result is computed, not what it is, so
    no stage declares it (switching device leaves results up to date; `dvc repro --force` remakes
    them there). A result records its placement where it is not the CPU in float32."""

    device: str = _f(
        "cpu",
        "Where every stage's models run: 'cpu', 'cuda', 'cuda:N' (one GPU), 'mps', or 'auto' "
        "(CUDA if torch sees one, else MPS, else the CPU).",
    )
    dtype: str = _f(
        "float32",
        "Precision of forward passes: 'float32', or 'bfloat16' (autocast; weights, optimiser "
        "states, rewards and the gold reward stay float32).",
    )
    gradient_checkpointing: bool = _f(
        False, "Recompute the policy's activations in PPO's backward pass instead of keeping them."
    )
    processes: int = _f(
        1,
        "Data-parallel processes of each reward-model and PPO stage (study.data_parallel: one "
        "per GPU on CUDA); the same result as one process up to rounding.",
    )

    def __post_init__(self) -> None:
        base, colon, index = self.device.partition(":")
        _check(
            (base in DEVICES and not colon) or (base == "cuda" and index.isdigit()),
            "placement.device",
            f"must be one of {', '.join(DEVICES)} or cuda:N, got {self.device!r}",
        )
        _check(
            self.dtype in DTYPES,
            "placement.dtype",
            f"must be one of {', '.join(DTYPES)}, got {self.dtype!r}",
        )
        _check(self.processes >= 1, "placement.processes", f"must be >= 1, got {self.processes}")

    @property
    def is_default(self) -> bool:
        return self == PlacementConfig()


@dataclass(frozen=True)
class Params:
    """One resolved profile: every section of `params.yaml`."""

    profile: str
    run: RunConfig
    sources: SourcesConfig
    world: WorldConfig
    gold: GoldConfig
    sft: SFTConfig
    sampling: SamplingConfig
    preferences: PreferencesConfig
    reward: RewardConfig
    reward_eval: RewardEvalConfig
    ppo: PPOConfig
    bon: BoNConfig
    rloo: RLOOConfig
    report: ReportConfig
    placement: PlacementConfig = field(default_factory=PlacementConfig)

    def __post_init__(self) -> None:
        _check(
            self.bon.n_prompts <= self.world.n_eval_prompts,
            "bon.n_prompts",
            f"must be <= world.n_eval_prompts ({self.world.n_eval_prompts}): best-of-n draws its "
            f"prompts from the held-out ones, got {self.bon.n_prompts}",
        )
        _check(
            self.sampling.max_new_tokens < self.sft.max_length,
            "sampling.max_new_tokens",
            f"must be < sft.max_length ({self.sft.max_length}) to leave room for the prompt",
        )
        for name in ("diversity_sweep", "diversity_common"):
            for opt in getattr(self.reward_eval, name):
                with_override(self.reward, opt, f"reward_eval.{name}")
        for name in self.reward.arms:  # every arm's overrides are valid keys and values
            self.reward.arm(name)

    def to_dict(self) -> dict[str, Any]:
        """Every section that decides what a result is: all but `placement` (where it runs)."""
        out = dataclasses.asdict(self)
        del out["placement"]
        return out


SECTIONS: dict[str, type] = {
    name: hint for name, hint in typing.get_type_hints(Params).items() if name != "profile"
}


def with_override(cfg: Any, option: str, where: str = "option") -> Any:
    """`cfg` (a section) with one 'key=value' override applied and checked."""
    key, sep, text = option.partition("=")
    if not sep:
        raise ConfigError(f"{where}: {option!r} is not 'key=value'")
    return _section(type(cfg), {key.strip(): yaml.safe_load(text)}, f"{where} {option!r}", cfg)


def with_overrides(params: Params, options: Sequence[str], where: str = "overrides") -> Params:
    """`params` with 'section.key=value' overrides applied in order, each checked like params.yaml
    (`reward.k=8`, `reward.epochs_multihead=3`)."""
    for option in options:
        section, dot, rest = option.partition(".")
        if not dot or section not in SECTIONS:
            raise ConfigError(
                f"{where}: {option!r} is not 'section.key=value' with a section of params.yaml "
                f"({', '.join(SECTIONS)})"
            )
        cfg = with_override(getattr(params, section), rest, f"{where} ({section})")
        params = dataclasses.replace(params, **{section: cfg})
    return params


# ------------------------------------------------------------------------------------- validation


def _yaml_value(value: Any, hint: Any) -> Any:
    """What YAML writes for a declared type: 1e-3 (no dot) is a string to PyYAML, a tuple is a
    list."""
    if hint is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    if typing.get_origin(hint) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def _section(cls: type, body: Any, where: str, base: Any = None) -> Any:
    """A section `cls` from a (possibly partial) mapping `body` over `base` (default: the declared
    defaults); a refusal names the key under `where`."""
    if not isinstance(body, dict):
        raise ConfigError(
            f"{where}: must be a mapping of {cls.__name__} fields, got {type(body).__name__}"
        )
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in body if k not in known]
    if unknown:
        hint = ""
        if cls is RunConfig and unknown[0] in {f.name for f in dataclasses.fields(PlacementConfig)}:
            hint = f"; where models run is its own section: placement.{unknown[0]}"
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(known)}){hint}")
    hints = typing.get_type_hints(cls)
    values = {k: _yaml_value(v, hints[k]) for k, v in body.items()}
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        if err["type"] == "value_error":  # a check of __post_init__: its message names the key
            msg = str(err.get("ctx", {}).get("error", err["msg"]))
            # an override ('key=value' of an arm or a sweep) also says where it was written
            raise ConfigError(f"{where}: {msg}" if "'" in where else msg) from None
        key = ".".join(str(x) for x in err["loc"])
        got = body.get(err["loc"][0], err.get("input")) if err["loc"] else err.get("input")
        if err["type"] == "finite_number":
            raise ConfigError(f"{where}.{key}: must be a finite number, got {got}") from None
        hint = hints.get(err["loc"][0]) if len(err["loc"]) == 1 else None
        expected = getattr(hint, "__name__", None) if hint is not None else None
        what = f"expected {expected}" if expected else err["msg"].lower()
        raise ConfigError(f"{where}.{key}: {what}, got {type(got).__name__} ({got!r})") from None


def _check_profile(raw: Any, where: str) -> None:
    """Sections, keys and types of one profile block (partial), over the declared defaults."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: a profile must be a mapping of sections, got {type(raw).__name__}"
        )
    for name, body in raw.items():
        if name not in SECTIONS:
            raise ConfigError(f"{where}.{name}: unknown section (known: {', '.join(SECTIONS)})")
        try:
            _section(SECTIONS[name], {} if body is None else body, f"{where}.{name}")
        except ConfigError as e:
            if str(e).startswith(f"{where}."):
                raise
            # a check across fields of the section: it holds on the resolved profile, not here


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def params_from_dict(
    raw: dict[str, Any],
    profile: str | None = None,
    where: str = "params",
    all_profiles: bool = True,
) -> Params:
    """Validate a parsed `params.yaml` mapping and resolve one profile (default: its `profile`
    key): the declared defaults, then the `default` block, then the profile's own."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(raw).__name__}")
    for key, value in raw.items():
        if key == "profile":
            if not isinstance(value, str):
                raise ConfigError(f"{where}: profile: expected str, got {type(value).__name__}")
            continue
        if key not in PROFILE_NAMES:
            raise ConfigError(
                f"{where}: {key}: unknown top-level key (known: profile, {', '.join(PROFILE_NAMES)})"
            )
        _check_profile(value, f"{where}: {key}")
    name = profile if profile is not None else raw.get("profile", "default")
    if name not in PROFILE_NAMES:
        raise ConfigError(
            f"{where}: profile: unknown profile {name!r} (known: {', '.join(PROFILE_NAMES)})"
        )
    if all_profiles:  # a broken profile is found now, not when it is first selected
        for other in PROFILE_NAMES:
            if other != name and (other == "default" or other in raw):
                params_from_dict(raw, profile=other, where=where, all_profiles=False)
    if name != "default" and name not in raw:
        raise ConfigError(f"{where}: profile {name!r} is selected but has no block in the file")
    resolved = _merge(raw.get("default") or {}, raw.get(name) or {} if name != "default" else {})
    sections = {}
    for sec, cls in SECTIONS.items():
        try:
            sections[sec] = _section(cls, resolved.get(sec) or {}, sec)
        except ConfigError as e:
            raise ConfigError(f"{where} (profile {name}): {e}") from None
    try:
        return Params(profile=name, **sections)
    except ConfigError as e:
        raise ConfigError(f"{where} (profile {name}): {e}") from None


def load_params(path: str | Path = "params.yaml", profile: str | None = None) -> Params:
    """Read, validate and resolve `params.yaml`; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return params_from_dict(raw, profile=profile, where=str(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key written twice in one mapping (YAML itself keeps the
    last silently, so a duplicated parameter would change a run without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {key!r} appears twice in one mapping (lines {seen[key] + 1} and "
                    f"{key_node.start_mark.line + 1})",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def describe() -> str:
    """Every field of every section with its help, for `python -m study.config`."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"{section}:")
        for f in dataclasses.fields(cls):
            lines.append(f"  {f.name} (default {field_default(f)!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


RESOLVED = "params.resolved.yaml"


def write_resolved(params_path: str | Path = "params.yaml", out: str | Path = RESOLVED) -> Path:
    """The active profile of `params_path`, validated (every profile is) and resolved, written as
    one mapping of sections: what the pipeline's stages declare as their params, so that a stage
    depends on the values it runs with, and an edit to a profile that is not active changes
    nothing it reads."""
    p = load_params(params_path)
    resolved = {**p.to_dict(), "placement": dataclasses.asdict(p.placement)}
    body = yaml.safe_dump(resolved, sort_keys=False)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(f"# written by `python -m study.config resolve` from {Path(params_path).name}: "
                   f"do not edit\n{body}")  # fmt: skip
    tmp.replace(out)
    return out


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "resolve":
        print(write_resolved(*sys.argv[2:4]))
    elif len(sys.argv) > 1:
        p = load_params(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
        print(yaml.safe_dump({**p.to_dict(), "placement": dataclasses.asdict(p.placement)},
                             sort_keys=False))  # fmt: skip
    else:
        print(describe())
