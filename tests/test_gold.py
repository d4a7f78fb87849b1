import math

import numpy as np
import pytest

from study.config.world import GoldConfig
from study.world.gold import COMPONENTS, EmbeddedGold, gold_components

CFG = GoldConfig()
P = "write a cheerful note about ocean ."  # topic ocean, tone cheerful, 4 sentences
GOOD = "the tide looks bright . i love the sunny harbor . the coral is very lovely . we watch a happy whale ."


def comp(response, prompt=P, finished=True):
    return gold_components(prompt, response, finished, CFG)


def test_relevance_counts_distinct_on_topic_words_with_diminishing_returns():
    assert comp("every day feels bright .")["relevance"] == 0.0
    two = 1 - math.exp(-2 / CFG.relevance_scale)
    assert comp("the waves seems bright and i love the boat .")["relevance"] == pytest.approx(two)
    # repeating a word adds nothing
    assert comp("the waves seems bright and i love the waves .")["relevance"] == pytest.approx(
        1 - math.exp(-1 / CFG.relevance_scale)
    )
    # each other-topic noun costs offtopic_penalty
    c = comp("the waves seems bright and i love the rocket .")["relevance"]
    assert c == pytest.approx(1 - math.exp(-1 / CFG.relevance_scale) - CFG.offtopic_penalty)


def test_tone_counts_the_requested_tone_and_penalises_others():
    assert comp("the waves seems bright .")["tone"] == pytest.approx(
        1 - math.exp(-1 / CFG.tone_scale)
    )
    assert comp("the waves seems grim .")["tone"] == pytest.approx(-CFG.wrong_tone_penalty)
    assert comp("the waves seems grim .", prompt="write a gloomy note about ocean .")["tone"] > 0


def test_fluency_is_the_share_of_grammatical_sentences_tail_included():
    assert comp("the waves seems bright . i love the boat .")["fluency"] == 1.0
    assert comp("the waves seems bright . love i the boat .")["fluency"] == 0.5
    assert comp("the waves seems bright . i love")["fluency"] == 0.5
    assert comp("")["fluency"] == 0.0


def test_length_peaks_at_the_requested_number_of_sentences():
    s = "the waves seems bright . "
    assert comp(s * 4)["length"] == pytest.approx(1.0)
    assert comp(s * 2)["length"] == pytest.approx(math.exp(-0.5 * (2 / 2) ** 2))
    assert comp(s * 2, prompt="write a short cheerful note about ocean .")[
        "length"
    ] == pytest.approx(1.0)
    assert comp(s * 6, prompt="write a long cheerful note about ocean .")[
        "length"
    ] == pytest.approx(1.0)


def test_repetition_is_the_share_of_repeated_trigrams():
    # "a b c . a b c ." has 6 trigrams, of which (a b c), (b c .) repeat -> 2 / 6... by hand:
    r = "the waves seems bright . the waves seems bright ."
    words = r.split()
    tri = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    assert (
        comp(r)["repetition"]
        == pytest.approx(1 - len(set(tri)) / len(tri))
        == pytest.approx(1 - 5 / 8)
    )
    assert comp(GOOD)["repetition"] == 0.0


def test_the_good_answer_is_ideal_on_every_component_by_hand():
    c = comp(GOOD)
    assert c["fluency"] == 1.0 and c["length"] == 1.0 and c["repetition"] == 0.0 and c["eos"] == 0.0
    assert c["relevance"] == pytest.approx(
        1 - math.exp(-4 / CFG.relevance_scale)
    )  # tide harbor coral whale
    assert c["tone"] == pytest.approx(
        1 - math.exp(-4 / CFG.tone_scale)
    )  # bright sunny lovely happy


def test_eos_penalty_applies_only_to_unfinished_responses():
    g = EmbeddedGold(CFG)
    s = g.score([P, P], [GOOD, GOOD], [True, False])
    assert s.contributions["eos"].tolist() == [0.0, -CFG.w_eos]
    assert s.total[0] - s.total[1] == pytest.approx(CFG.w_eos)


def test_total_is_the_sum_of_the_weighted_components():
    g = EmbeddedGold(CFG)
    s = g.score([P], [GOOD])
    raw = comp(GOOD)
    by_hand = (
        CFG.w_relevance * raw["relevance"]
        + CFG.w_tone * raw["tone"]
        + CFG.w_fluency * raw["fluency"]
        + CFG.w_length * raw["length"]
        - CFG.w_repetition * raw["repetition"]
        - CFG.w_eos * raw["eos"]
    )
    assert s.total[0] == pytest.approx(by_hand)
    assert sum(s.contributions[k][0] for k in COMPONENTS) == pytest.approx(s.total[0])
    frame = s.to_frame()
    assert list(frame.columns) == ["gold", *(f"gold_{k}" for k in COMPONENTS)]


@pytest.mark.parametrize(
    "name, degenerate, finished",
    [
        (
            "keyword stuffing",
            "waves shore tide fish boat sand coral whale harbor reef happy bright lovely sunny joyful .",
            True,
        ),
        ("repetition", "the tide looks bright . " * 4, True),
        (
            "rambling",
            "the tide looks bright . i love the sunny harbor . the reef seems lovely . " * 4,
            True,
        ),
        (
            "wrong topic and tone",
            "the moon looks grim . i love the dark rocket . the comet seems bleak .",
            True,
        ),
        ("never ends", "the tide looks bright . i love the sunny harbor . the coral", False),
        (
            "broken grammar",
            "the tide bright looks . love i sunny the harbor . coral the is very lovely . whale we a happy watch .",
            True,
        ),
    ],
)
def test_a_good_answer_outranks_each_degenerate_one(name, degenerate, finished):
    g = EmbeddedGold(CFG)
    s = g.score([P, P], [GOOD, degenerate.strip()], [True, finished])
    assert s.total[0] > s.total[1] + 0.3, name


def test_gold_varies_over_corpus_responses(corpus):
    prompts, responses, quality = corpus
    s = EmbeddedGold(CFG).score(prompts, responses)
    assert s.total.std() > 0.3
    assert np.corrcoef(quality, s.total)[0, 1] > 0.3  # the latent quality shows in gold


def test_gold_is_deterministic_and_checks_lengths():
    g = EmbeddedGold(CFG)
    assert np.array_equal(g.score([P], [GOOD]).total, g.score([P], [GOOD]).total)
    with pytest.raises(ValueError, match="1 prompts but 2 responses"):
        g.score([P], [GOOD, GOOD])
