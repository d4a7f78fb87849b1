"""A word-level tokenizer for the embedded world, trained with `tokenizers`, saved as a HF tokenizer."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from study.world.grammar import vocabulary

PAD, EOS, UNK, SEP = "<pad>", "<eos>", "<unk>", "<sep>"
SPECIAL_TOKENS = [PAD, EOS, UNK, SEP]


def train_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train a whitespace word-level tokenizer on `texts` plus the world's whole vocabulary.

    Pad (id 0) is distinct from end-of-sequence (id 1), so padding never reads as an ending.
    """
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1)

    def corpus() -> Iterable[str]:
        yield " ".join(vocabulary())  # every word the grammar knows, however rare in `texts`
        for text in texts:  # a special token counted as a word would get a second id
            yield " ".join(w for w in text.split() if w not in SPECIAL_TOKENS)

    tok.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        unk_token=UNK,
        sep_token=SEP,
        bos_token=EOS,
        padding_side="right",
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    assert fast.pad_token_id != fast.eos_token_id
    return fast
