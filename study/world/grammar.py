"""The embedded world's language: vocabulary, instructions, a response grammar and its acceptor.

Every word belongs to exactly one class, so a sentence is grammatical exactly when its sequence of
classes is one of the clause patterns below (optionally two clauses joined by a conjunction),
followed by a full stop. The generator writes responses from that grammar and adds the flaws a
real SFT policy shows (drift to another topic or tone, repetition, broken grammar, wrong length),
more of them the lower a response's latent quality. Everything is seeded through the
`numpy.random.Generator` passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from study.config.world import WorldConfig

TOPICS: dict[str, tuple[str, ...]] = {
    "ocean": (
        "ocean",
        "waves",
        "shore",
        "tide",
        "fish",
        "boat",
        "sand",
        "coral",
        "whale",
        "harbor",
        "reef",
        "gull",
    ),
    "space": (
        "space",
        "stars",
        "planet",
        "rocket",
        "moon",
        "orbit",
        "comet",
        "galaxy",
        "astronaut",
        "telescope",
        "nebula",
        "crater",
    ),
    "cooking": (
        "cooking",
        "kitchen",
        "recipe",
        "oven",
        "soup",
        "bread",
        "spice",
        "pan",
        "flavor",
        "dough",
        "garlic",
        "sauce",
    ),
    "music": (
        "music",
        "song",
        "melody",
        "guitar",
        "drum",
        "rhythm",
        "singer",
        "chord",
        "piano",
        "concert",
        "band",
        "lyrics",
    ),
    "forest": (
        "forest",
        "trees",
        "leaves",
        "moss",
        "deer",
        "trail",
        "branches",
        "owl",
        "pine",
        "roots",
        "fern",
        "creek",
    ),
    "city": (
        "city",
        "streets",
        "traffic",
        "tower",
        "subway",
        "market",
        "crowd",
        "bridge",
        "lights",
        "cafe",
        "avenue",
        "neon",
    ),
}
TONES: dict[str, tuple[str, ...]] = {
    "cheerful": (
        "cheerful",
        "happy",
        "bright",
        "lovely",
        "wonderful",
        "joyful",
        "sunny",
        "delightful",
        "glad",
        "warm",
    ),
    "gloomy": ("gloomy", "sad", "dark", "grim", "lonely", "dull", "bleak", "cold", "weary", "grey"),
    "angry": (
        "angry",
        "furious",
        "awful",
        "terrible",
        "harsh",
        "bitter",
        "rude",
        "nasty",
        "annoying",
        "hateful",
    ),
    "calm": (
        "calm",
        "quiet",
        "gentle",
        "peaceful",
        "soft",
        "still",
        "mild",
        "serene",
        "tranquil",
        "slow",
    ),
}
# Requested length word in the instruction -> target number of sentences.
LENGTHS: dict[str, int] = {"short": 2, "": 4, "long": 6}
FORMS: tuple[str, ...] = ("note", "story", "review", "message")

WORD_CLASSES: dict[str, tuple[str, ...]] = {
    "DET": ("the", "a", "this", "that", "every", "our", "my"),
    "PRON": ("i", "we", "you", "they"),
    "COP": ("is", "seems", "feels", "looks", "stays"),
    "TV": ("love", "watch", "remember", "find", "see", "hear", "visit", "like", "miss", "know"),
    "ADV": ("very", "truly", "quite", "always", "often", "really", "rather"),
    "CONJ": ("and", "but", "because", "while"),
    "GEN": ("day", "place", "thing", "moment", "time", "world", "view", "feeling"),
}
# Clause patterns; a sentence is CLAUSE "." or CLAUSE CONJ CLAUSE ".".
CLAUSES: tuple[tuple[str, ...], ...] = (
    ("DET", "TN", "COP", "ADJ"),  # the waves seem bright
    ("DET", "TN", "COP", "ADV", "ADJ"),  # the moon is truly bleak
    ("PRON", "TV", "DET", "TN"),  # i love the harbor
    ("PRON", "TV", "DET", "ADJ", "TN"),  # we watch the lonely whale
    ("DET", "ADJ", "TN", "COP", "ADJ"),  # the calm tide feels gentle
    ("PRON", "ADV", "TV", "DET", "TN"),  # they often visit the market
    ("DET", "GEN", "COP", "ADJ"),  # every day feels bright        (no topic noun)
    ("PRON", "TV", "DET", "ADJ", "GEN"),  # i remember a lovely moment (no topic noun)
)
TOPIC_CLAUSES = tuple(c for c in CLAUSES if "TN" in c)
FILLER_CLAUSES = tuple(c for c in CLAUSES if "TN" not in c)
_CLAUSE_SET = frozenset(CLAUSES)
STOP = "."
PROMPT_WORDS = ("write", "about", *FORMS, *(w for w in LENGTHS if w))


def word_class(word: str) -> str | None:
    """The grammatical class of a word, or None if the grammar does not know it."""
    return _CLASS_OF.get(word)


_CLASS_OF: dict[str, str] = {}
for _cls, _words in WORD_CLASSES.items():
    _CLASS_OF.update({w: _cls for w in _words})
for _words in TOPICS.values():
    _CLASS_OF.update({w: "TN" for w in _words})
for _words in TONES.values():
    _CLASS_OF.update({w: "ADJ" for w in _words})
TOPIC_OF: dict[str, str] = {w: t for t, ws in TOPICS.items() for w in ws}
TONE_OF: dict[str, str] = {w: t for t, ws in TONES.items() for w in ws}


def vocabulary() -> list[str]:
    """Every word the world can write, prompts included, in a fixed order."""
    words = [*PROMPT_WORDS]
    for ws in (*WORD_CLASSES.values(), *TOPICS.values(), *TONES.values()):
        words.extend(ws)
    words.append(STOP)
    return list(dict.fromkeys(words))


# ------------------------------------------------------------------------------------ instructions


@dataclass(frozen=True)
class Instruction:
    """What a prompt asks for: the gold reward reads these back from the prompt text."""

    topic: str
    tone: str
    length: str  # "short", "" or "long"
    form: str

    @property
    def target_sentences(self) -> int:
        return LENGTHS[self.length]

    @property
    def text(self) -> str:
        words = ["write", "a", self.length, self.tone, self.form, "about", self.topic, STOP]
        return " ".join(w for w in words if w)


def parse_instruction(prompt: str) -> Instruction:
    """Read topic, tone, length and form back from an embedded prompt; raises on anything else."""
    words = prompt.split()
    if "<sep>" in words:
        words = words[: words.index("<sep>")]
    try:
        if words[:2] != ["write", "a"] or words[-1] != STOP or words[-3] != "about":
            raise ValueError
        topic = words[-2]
        head = words[2:-3]  # [length] tone form
        length = head[0] if len(head) == 3 else ""
        tone, form = head[-2], head[-1]
        if topic not in TOPICS or tone not in TONES or form not in FORMS or length not in LENGTHS:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(
            f"not an embedded-world prompt: {prompt!r} "
            "(expected 'write a [short|long] <tone> <form> about <topic> .')"
        ) from None
    return Instruction(topic=topic, tone=tone, length=length, form=form)


def topics_for(cfg: WorldConfig) -> list[str]:
    return list(TOPICS)[: cfg.n_topics]


def tones_for(cfg: WorldConfig) -> list[str]:
    return list(TONES)[: cfg.n_tones]


def sample_instructions(cfg: WorldConfig, n: int, rng: np.random.Generator) -> list[Instruction]:
    """n instructions drawn uniformly over topic x tone x length x form."""
    topics, tones, lengths = topics_for(cfg), tones_for(cfg), list(LENGTHS)
    t = rng.integers(len(topics), size=n)
    o = rng.integers(len(tones), size=n)
    ln = rng.integers(len(lengths), size=n)
    f = rng.integers(len(FORMS), size=n)
    return [
        Instruction(topics[a], tones[b], lengths[c], FORMS[d])
        for a, b, c, d in zip(t, o, ln, f, strict=True)
    ]


# --------------------------------------------------------------------------------------- responses


def _pick(rng: np.random.Generator, words: Sequence[str]) -> str:
    return words[int(rng.integers(len(words)))]


def _other(rng: np.random.Generator, keys: Sequence[str], own: str) -> str:
    return _pick(rng, [k for k in keys if k != own])


def _clause(rng: np.random.Generator, pattern: tuple[str, ...], topic: str, tone: str) -> list[str]:
    out: list[str] = []
    for cls in pattern:
        if cls == "TN":
            out.append(_pick(rng, TOPICS[topic]))
        elif cls == "ADJ":
            out.append(_pick(rng, TONES[tone]))
        else:
            out.append(_pick(rng, WORD_CLASSES[cls]))
    return out


def _break(rng: np.random.Generator, words: list[str]) -> list[str]:
    """One grammatical corruption: swap two neighbours, drop, duplicate, or insert a stray word."""
    words = list(words)
    kind = int(rng.integers(4))
    if kind == 0 and len(words) > 1:
        i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    elif kind == 1 and len(words) > 2:
        del words[int(rng.integers(len(words)))]
    elif kind == 2:
        i = int(rng.integers(len(words)))
        words.insert(i, words[i])
    else:
        stray = WORD_CLASSES[_pick(rng, ["DET", "COP", "CONJ", "PRON"])]
        words.insert(int(rng.integers(len(words) + 1)), _pick(rng, stray))
    return words


def sample_response(
    cfg: WorldConfig, ins: Instruction, quality: float, rng: np.random.Generator
) -> str:
    """One corpus response to `ins`; flaws occur with probability p_flaw * (1 - quality)."""
    bad = 1.0 - quality
    topics, tones = topics_for(cfg), tones_for(cfg)
    sd = cfg.length_sd * (1.0 - 0.5 * quality)
    n = int(np.clip(round(ins.target_sentences + rng.normal(0.0, sd)), 1, cfg.max_sentences))
    sentences: list[list[str]] = []
    for _ in range(n):
        if sentences and rng.random() < cfg.p_repeat * bad:
            sentences.append(list(sentences[int(rng.integers(len(sentences)))]))
            continue
        topic = _other(rng, topics, ins.topic) if rng.random() < cfg.p_drift * bad else ins.topic
        tone = _other(rng, tones, ins.tone) if rng.random() < cfg.p_wrong_tone * bad else ins.tone
        pool = FILLER_CLAUSES if rng.random() < cfg.p_filler else TOPIC_CLAUSES
        words = _clause(rng, pool[int(rng.integers(len(pool)))], topic, tone)
        if rng.random() < 0.2:  # a compound sentence
            pool2 = TOPIC_CLAUSES if rng.random() > cfg.p_filler else FILLER_CLAUSES
            words += [_pick(rng, WORD_CLASSES["CONJ"])]
            words += _clause(rng, pool2[int(rng.integers(len(pool2)))], topic, tone)
        if rng.random() < cfg.p_broken * bad:
            words = _break(rng, words)
        sentences.append([*words, STOP])
    return " ".join(w for s in sentences for w in s)


def sample_corpus(
    cfg: WorldConfig, n: int, rng: np.random.Generator
) -> tuple[list[Instruction], list[str], np.ndarray]:
    """n (instruction, response) examples and each response's latent quality, shape (n,)."""
    instructions = sample_instructions(cfg, n, rng)
    quality = rng.beta(cfg.quality_alpha, cfg.quality_beta, size=n)
    responses = [
        sample_response(cfg, ins, float(q), rng)
        for ins, q in zip(instructions, quality, strict=True)
    ]
    return instructions, responses, quality


# ---------------------------------------------------------------------------------------- acceptor


def split_sentences(response: str) -> tuple[list[list[str]], list[str]]:
    """Complete sentences (each without its full stop) and the unfinished tail after the last one."""
    sentences, current = [], []
    for w in response.split():
        if w == STOP:
            sentences.append(current)
            current = []
        else:
            current.append(w)
    return sentences, current


def is_grammatical(sentence: Sequence[str]) -> bool:
    """Whether a sentence (words without the full stop) is one clause, or two joined by a conjunction."""
    classes = tuple(word_class(w) for w in sentence)
    if None in classes:
        return False
    if classes in _CLAUSE_SET:
        return True
    if classes.count("CONJ") == 1:
        i = classes.index("CONJ")
        return classes[:i] in _CLAUSE_SET and classes[i + 1 :] in _CLAUSE_SET
    return False


def grammatical_share(sentences: Sequence[Sequence[str]], tail: Sequence[str]) -> float:
    """Share of sentences the grammar accepts, an unfinished tail counting as one more (0 if none).

    Takes the output of `split_sentences`; this is the gold reward's fluency component.
    """
    n = len(sentences) + (1 if tail else 0)
    return sum(is_grammatical(s) for s in sentences) / n if n else 0.0
