"""The course's byte-level BPE recipe, in one place: the base model's tokenizer (labkit.zoo) and Lab 02, which
trains the same tokenizer again to show what byte-level tokens look like, both build it here. Light on purpose:
it imports `tokenizers` only, not transformers."""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers


def byte_level_bpe(texts: Iterable[str], vocab_size: int, special_tokens: Iterable[str]) -> Tokenizer:
    """Byte-level BPE (any text encodes, losslessly) with every digit its own chunk, for numbers and dates;
    the special tokens take the first ids, then the 256 byte characters, then the merges."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return tok
