import numpy as np
import pytest

from study.config.world import WorldConfig
from study.world.grammar import (
    TOPICS,
    Instruction,
    is_grammatical,
    parse_instruction,
    sample_corpus,
    sample_instructions,
    sample_response,
    split_sentences,
    vocabulary,
)

CFG = WorldConfig()


def test_same_seed_same_corpus_other_seed_other_corpus():
    a = sample_corpus(CFG, 50, np.random.default_rng(1))
    b = sample_corpus(CFG, 50, np.random.default_rng(1))
    c = sample_corpus(CFG, 50, np.random.default_rng(2))
    assert a[1] == b[1] and a[0] == b[0]
    assert a[1] != c[1]


def test_instructions_round_trip_through_their_text():
    for ins in sample_instructions(CFG, 200, np.random.default_rng(0)):
        assert parse_instruction(ins.text) == ins
        assert parse_instruction(ins.text + " <sep>") == ins


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "hello world",
        "write a cheerful note about mars .",
        "write a huge calm note about ocean .",
    ],
)
def test_foreign_prompts_are_rejected_by_name(bad):
    with pytest.raises(ValueError, match="not an embedded-world prompt"):
        parse_instruction(bad)


def test_corpus_uses_only_the_vocabulary_and_ends_sentences():
    vocab = set(vocabulary())
    _, responses, _ = sample_corpus(CFG, 300, np.random.default_rng(0))
    for r in responses:
        assert set(r.split()) <= vocab
        assert r.endswith(" .")


@pytest.mark.parametrize(
    "sentence, ok",
    [
        ("the waves seems bright", True),
        ("the moon is truly bleak", True),
        ("i love the harbor", True),
        ("we watch the lonely whale", True),
        ("every day feels bright and i love the harbor", True),
        ("the waves bright seems", False),
        ("the the waves seems bright", False),
        ("waves shore tide fish", False),
        ("the waves seems bright and", False),
        ("the waves seems bright and i love the harbor and we see a boat", False),
        ("the waves seems zany", False),
    ],
)
def test_acceptor_on_hand_cases(sentence, ok):
    assert is_grammatical(sentence.split()) is ok


def test_split_sentences_keeps_the_unfinished_tail():
    sentences, tail = split_sentences("the moon is dark . i love the moon . the")
    assert sentences == [["the", "moon", "is", "dark"], ["i", "love", "the", "moon"]]
    assert tail == ["the"]


def _flaw_rates(quality, n=600):
    rng = np.random.default_rng(0)
    ins = Instruction("ocean", "calm", "", "note")
    broken = repeated = offtopic = 0
    total = 0
    for _ in range(n):
        sentences, _ = split_sentences(sample_response(CFG, ins, quality, rng))
        seen = set()
        for s in sentences:
            total += 1
            broken += not is_grammatical(s)
            repeated += tuple(s) in seen
            seen.add(tuple(s))
            offtopic += any(w in TOPICS[t] for t in TOPICS if t != "ocean" for w in s)
    return broken / total, repeated / total, offtopic / total


def test_flaws_are_frequent_at_low_quality_and_rare_at_high():
    low, high = _flaw_rates(0.0), _flaw_rates(1.0)
    for lo, hi in zip(low, high, strict=True):
        assert lo > 0.1
        assert hi < 0.02


def test_grammatical_share_counts_the_tail_as_a_sentence():
    from study.world.grammar import grammatical_share

    assert grammatical_share(*split_sentences("the moon is dark . love i the moon . the")) == 1 / 3
    assert grammatical_share(*split_sentences("")) == 0.0
