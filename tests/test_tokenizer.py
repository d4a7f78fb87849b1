from transformers import AutoTokenizer

from study.world.grammar import vocabulary
from study.world.tokenizer import EOS, PAD, SEP, UNK


def test_round_trip_of_prompts_and_responses(tokenizer, corpus):
    prompts, responses, _ = corpus
    for text in [*prompts[:50], *responses[:50]]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_special_tokens_are_distinct_and_single_ids(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in (PAD, EOS, UNK, SEP)]
    assert len(set(ids)) == 4
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert (
        tokenizer("a <sep> the", add_special_tokens=False)["input_ids"][1] == tokenizer.sep_token_id
    )


def test_every_grammar_word_has_its_own_id(tokenizer):
    ids = tokenizer(" ".join(vocabulary()), add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(vocabulary()) and tokenizer.unk_token_id not in ids
    assert tokenizer("zebra", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_saved_tokenizer_loads_with_autotokenizer(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "write a calm note about ocean . <sep> the waves seems calm ."
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (loaded.pad_token, loaded.eos_token) == (PAD, EOS)
