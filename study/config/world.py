"""The sections that build the world: where its models and data come from, its grammar, its
gold reward, the SFT policy, sampling and the preference pairs."""

from __future__ import annotations

import dataclasses

from study.config.base import EMBEDDED, _check, _f, section


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
