"""The embedded world's gold reward: the stand-in for human judgement.

Deterministic, a pure function of (prompt, response, finished). The prompt says what was asked
(topic, tone, length); the response is scored by named components, each on a fixed scale, and the
gold total is their weighted sum (weights in `params.yaml: gold`):

=============  ==========================================================================  ========
component      definition                                                                  range
=============  ==========================================================================  ========
relevance      1 - exp(-distinct on-topic nouns / relevance_scale)                         [-1, 1]
               - offtopic_penalty * distinct nouns of other topics
tone           1 - exp(-distinct words of the requested tone / tone_scale)                 [-1, 1]
               - wrong_tone_penalty * distinct adjectives of other tones
fluency        share of sentences the grammar accepts (an unfinished tail counts as one)   [0, 1]
length         exp(-((sentences - requested) / sigma)^2 / 2), sigma = max(1, requested/2)  [0, 1]
repetition     share of word trigrams that already occurred earlier in the response        [0, 1)
eos            1 if the response never ended (no end-of-sequence), else 0                  {0, 1}
=============  ==========================================================================  ========

gold = w_relevance*relevance + w_tone*tone + w_fluency*fluency + w_length*length
       - w_repetition*repetition - w_eos*eos

Relevance and tone count *distinct* words with diminishing returns, so a good answer gets most
of their value from a few well-chosen words; repeating or piling up keywords (what a proxy that
learned "more topic words is better" pushes a policy towards) earns almost nothing more and costs
fluency, repetition and length. That is the gap overoptimisation opens: on SFT samples, keyword
counts, length and tone words are correlated with gold; under optimisation they come apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from study.config.world import GoldConfig
from study.world.grammar import (
    STOP,
    TONE_OF,
    TOPIC_OF,
    grammatical_share,
    parse_instruction,
    split_sentences,
)

COMPONENTS: tuple[str, ...] = ("relevance", "tone", "fluency", "length", "repetition", "eos")


@dataclass(frozen=True)
class GoldScores:
    """Gold of a batch: the total (B,) and each component's signed contribution (B,) to it."""

    total: np.ndarray
    contributions: dict[str, np.ndarray]

    def to_frame(self, prefix: str = "gold") -> pd.DataFrame:
        """Columns `{prefix}` and `{prefix}_{component}`; the components sum to the total."""
        cols = {prefix: self.total}
        cols.update({f"{prefix}_{k}": v for k, v in self.contributions.items()})
        return pd.DataFrame(cols)


class GoldReward(Protocol):
    """What every gold reward offers: the embedded one here, a reward model in `study.hub`."""

    components: tuple[str, ...]

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        finished: Sequence[bool] | None = None,
    ) -> GoldScores: ...


def _saturating(distinct: int, scale: float) -> float:
    return 1.0 - math.exp(-distinct / scale)


def gold_components(
    prompt: str, response: str, finished: bool, cfg: GoldConfig
) -> dict[str, float]:
    """The raw (unweighted) component values of one response, as in the module table."""
    ins = parse_instruction(prompt)
    words = response.split()
    content = [w for w in words if w != STOP]
    topics = {w: TOPIC_OF[w] for w in set(content) if w in TOPIC_OF}
    tones = {w: TONE_OF[w] for w in set(content) if w in TONE_OF}
    on_topic = sum(t == ins.topic for t in topics.values())
    off_topic = len(topics) - on_topic
    on_tone = sum(t == ins.tone for t in tones.values())
    off_tone = len(tones) - on_tone
    relevance = _saturating(on_topic, cfg.relevance_scale) - cfg.offtopic_penalty * off_topic
    tone = _saturating(on_tone, cfg.tone_scale) - cfg.wrong_tone_penalty * off_tone

    sentences, tail = split_sentences(response)
    fluency = grammatical_share(sentences, tail)

    target = ins.target_sentences
    sigma = max(1.0, target / 2)
    length = math.exp(-0.5 * ((len(sentences) - target) / sigma) ** 2)

    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    repetition = 1.0 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0

    return {
        "relevance": float(np.clip(relevance, -1.0, 1.0)),
        "tone": float(np.clip(tone, -1.0, 1.0)),
        "fluency": fluency,
        "length": length,
        "repetition": repetition,
        "eos": 0.0 if finished else 1.0,
    }


class EmbeddedGold:
    """The gold reward of the embedded world (see the module docstring for its definition)."""

    components = COMPONENTS

    def __init__(self, cfg: GoldConfig):
        self.cfg = cfg
        self.weights = {
            "relevance": cfg.w_relevance,
            "tone": cfg.w_tone,
            "fluency": cfg.w_fluency,
            "length": cfg.w_length,
            "repetition": -cfg.w_repetition,
            "eos": -cfg.w_eos,
        }

    def score(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        finished: Sequence[bool] | None = None,
    ) -> GoldScores:
        """Gold of B (prompt, response) pairs; `finished[i]` is False for a response cut before EOS."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if finished is None:
            finished = [True] * len(responses)
        raw = [
            gold_components(p, r, bool(f), self.cfg)
            for p, r, f in zip(prompts, responses, finished, strict=True)
        ]
        contributions = {
            k: np.array([x[k] for x in raw], dtype=np.float64) * w for k, w in self.weights.items()
        }
        total = np.sum(np.stack(list(contributions.values())), axis=0)
        return GoldScores(total=total, contributions=contributions)
