"""Lab 02 - Tokenization: byte-pair encoding from scratch.

References come from the `tokenizers` library, trained here with the notebook's configuration (same
pre-tokenizer regex, special tokens and alphabet, hence the same ids), and from a plain reference BPE
for the tiny fixed corpus; the byte-level question is compared with tokenizers' ByteLevel pre-tokenizer
and decoder. Held-out text comes from a seed the notebook never uses.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from functools import cache
from itertools import pairwise

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from grader.asserts import CheckFailed, assert_type, check, reveals
from grader.registry import Lab
from labkit import world

LAB = Lab("02", "Tokenization: byte-pair encoding from scratch")
HELD_OUT_SEED = 9002  # the notebook trains on seed 0 and validates on seed 1
PATTERN = r" ?[a-z]+| ?[0-9]+| ?[^a-z0-9\s]+|\s"  # the notebook's pre-tokenizer
SPECIALS = ("<|endoftext|>", "<|pad|>")
BASE_VOCAB = list(SPECIALS) + list(world.CHARSET)
CHAR_ID = {c: i for i, c in enumerate(BASE_VOCAB) if c not in SPECIALS}
SPECIAL_RE = "(" + "|".join(re.escape(s) for s in SPECIALS) + ")"
TRAIN_CHARS = 200_000  # the notebook's training text: world.corpus(TRAIN_CHARS, seed=0)
TINY_CORPUS = "hello, banana bandana! ha ha haa.\n"
COMPRESSION_RTOL = 0.10
MIN_VOCAB = 256
# Strings a corpus-trained tokenizer only partly covers: unseen words, long numbers, repeated letters.
RARE = [" xylophone", " mississippi", " 4711", " 1000000", "aaaaaaa", " banana", " zzz", " velimora",
        "apples", "123", " capitalisation", "!?!", "''", " the", "\n"]
# In the alphabet but never in the notebook's training text (world.corpus(TRAIN_CHARS, seed=0)): still one id each.
NEVER_IN_TRAINING = ["q", " quiz", "-", " q", "/-/", "-/"]
# Characters outside the alphabet: they have no id, so encoding them must raise, not drop or replace them.
OUTSIDE_ALPHABET = ["Mia", " caf\u00e9", "<", " a\tb", "\U0001f642", "x\u00a0y"]


def _pretokenize(text: str) -> list[str]:
    return re.findall(PATTERN, text)


def _reference_merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _reference_train(text: str, n_merges: int) -> list[tuple[int, int]]:
    words = [[[CHAR_ID[c] for c in w], n] for w, n in Counter(_pretokenize(text)).items()]
    merges: list[tuple[int, int]] = []
    for _ in range(n_merges):
        counts: Counter = Counter()
        for ids, n in words:
            for pair in pairwise(ids):
                counts[pair] += n
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        for w in words:
            w[0] = _reference_merge(w[0], best, len(BASE_VOCAB) + len(merges))
        merges.append(best)
    return merges


@cache
def _library(text: str, vocab_size: int) -> Tokenizer:
    """tokenizers' BPE with the notebook's configuration (cached: several checks share one)."""
    lib = Tokenizer(models.BPE())
    lib.pre_tokenizer = pre_tokenizers.Split(Regex(PATTERN), behavior="isolated")
    lib.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=list(world.CHARSET), show_progress=False)
    lib.train_from_iterator(text.splitlines(keepends=True), trainer=trainer)
    return lib


def _library_merges(lib: Tokenizer) -> list[tuple[int, int]]:
    vocab = lib.get_vocab()
    return [(vocab[a], vocab[b]) for a, b in json.loads(lib.to_str())["model"]["merges"]]


def _strings(merges: list[tuple[int, int]]) -> list[tuple[str, str]]:
    vocab = list(BASE_VOCAB)
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return [(vocab[a], vocab[b]) for a, b in merges]


def _show(lib: Tokenizer, ids: list[int]) -> str:
    """Ids as token strings where they exist, so a learner sees *where* two tokenizations differ."""
    return repr([lib.id_to_token(i) if isinstance(i, int) and lib.id_to_token(i) is not None else i for i in ids])


def _first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _call(fn, *args, what: str, hint: str | None = None, **kwargs):
    """Call learner code; a crash becomes a failed check that says which input caused it."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise
    except CheckFailed:
        raise
    except Exception as exc:  # a learner's bug on one input: report it as a wrong answer, with the input
        raise CheckFailed(f"{what} raised {type(exc).__name__}: {exc}", hint) from exc


def _as_ids(value, name: str) -> list[int]:
    assert_type(value, list, name, hint="return a list of int token ids")
    check(all(isinstance(i, int) for i in value), f"{name} should hold Python ints, got {value[:5]!r}...")
    return value


def _random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(world.CHARSET) for _ in range(n))


# --- merge_pair ----------------------------------------------------------------------------------------------
q = LAB.question("bpe_merge", points=2, uses=("merge_pair",), title="Merge every occurrence of a pair")


@q.check
def _merge_cases(merge_pair):
    cases = [
        ([1, 2, 3, 1, 2], (1, 2), [9, 3, 9], "every occurrence is replaced"),
        ([5, 5, 5], (5, 5), [9, 5], "overlapping: the leftmost occurrence wins"),
        ([5, 5, 5, 5], (5, 5), [9, 9], "overlapping occurrences, scanning left to right"),
        ([1, 2, 1], (2, 1), [1, 9], "a pair at the end"),
        ([3, 4, 3], (1, 2), [3, 4, 3], "no occurrence: unchanged"),
        ([1], (1, 2), [1], "a single id"),
        ([], (1, 2), [], "an empty list"),
    ]
    for ids, pair, expected, why in cases:
        given = list(ids)
        got = merge_pair(given, pair, 9)
        check(list(got) == expected, f"merge_pair({ids}, {pair}, 9) is wrong ({why}).", received=got,
              expected=expected, hint="scan left to right; after a merge skip both ids (i += 2), otherwise copy one "
              "id (i += 1)")
        check(given == ids, f"merge_pair changed its input list {ids} into {given}.",
              hint="build and return a new list")


@q.check(hidden=True)
def _merge_random(merge_pair):
    rng = random.Random(HELD_OUT_SEED)
    for _ in range(200):
        ids = [rng.randint(0, 3) for _ in range(rng.randint(0, 30))]
        pair = (rng.randint(0, 3), rng.randint(0, 3))
        got = merge_pair(list(ids), pair, 7)
        check(list(got) == _reference_merge(ids, pair, 7),
              f"merge_pair is wrong on a random list of length {len(ids)}.")
    # Token ids of one, two and three digits, whose digits could be mistaken for one another, and a large new id.
    values = [1, 2, 3, 12, 23, 31, 123, 231]
    cases = [([12, 3], (2, 3)), ([1, 23], (1, 2)), ([123, 1, 23], (1, 23)), ([31, 2, 3, 12], (3, 12))]
    for _ in range(300):
        ids = [rng.choice(values) for _ in range(rng.randint(0, 12))]
        pair = (rng.choice(values), rng.choice(values)) if rng.random() < 0.5 or len(ids) < 2 else (
            tuple(ids[(k := rng.randrange(len(ids) - 1)):k + 2]))
        cases.append((ids, pair))
    for ids, pair in cases:
        got = _call(merge_pair, list(ids), pair, 512, what=f"merge_pair({ids}, {pair}, 512)")
        strangers = sorted({i for i in got if i not in ids and i != 512}) if isinstance(got, list | tuple) else []
        check(isinstance(got, list | tuple) and list(got) == _reference_merge(ids, pair, 512),
              f"merge_pair({ids}, {pair}, 512) is wrong.", received=got,
              hint=(f"the result holds {strangers}, neither one of the ids nor new_id: compare whole ids, a pair at a "
                    "time" if strangers else "replace every occurrence of pair, scanning left to right, by new_id"))


# --- train_bpe -----------------------------------------------------------------------------------------------
q = LAB.question("bpe_train", points=3, uses=("train_bpe",), title="Learn BPE merges, ties broken exactly",
                 builds_on=("bpe_merge",))

_TRAIN_HINT = ("count pairs over every position of every chunk, weighted by the chunk's count; pick the largest count, "
               "ties -> smallest (id_a, id_b), e.g. min(counts, key=lambda p: (-counts[p], p))")


def _compare_merges(got, expected: list[tuple[int, int]], what: str) -> None:
    assert_type(got, list, what, hint="return the list of merged pairs")
    try:
        got = [(int(a), int(b)) for a, b in got]
    except (TypeError, ValueError):
        raise CheckFailed(f"{what} should be a list of (id_a, id_b) pairs, got {got[:3]!r}...") from None
    for k, (g, e) in enumerate(zip(got, expected, strict=False)):
        if g != e:
            shown = f" = {_strings(got[:k + 1])[-1]}" if _valid(got[:k + 1]) else ""
            raise CheckFailed(f"{what}: the first {k} merges are right, but merge #{k} is not.", _TRAIN_HINT,
                              received=f"{g}{shown}", expected=f"{e} = {_strings(expected[:k + 1])[-1]}")
    check(len(got) == len(expected), f"{what} returned the wrong number of merges.", received=len(got),
          expected=len(expected), hint="stop early only when no pair is left (every chunk is a single token)")


def _valid(merges: list[tuple[int, int]]) -> bool:
    return all(0 <= a < len(BASE_VOCAB) + k and 0 <= b < len(BASE_VOCAB) + k for k, (a, b) in enumerate(merges))


@q.check
def _train_tiny(train_bpe):
    got = train_bpe(TINY_CORPUS, 12, progress=False)
    _compare_merges(got, _reference_train(TINY_CORPUS, 12), f"train_bpe({TINY_CORPUS!r}, 12)")
    got = train_bpe(TINY_CORPUS, 100, progress=False)
    _compare_merges(got, _reference_train(TINY_CORPUS, 100), f"train_bpe({TINY_CORPUS!r}, 100)")


@q.check(hidden=True)
def _train_vs_library(train_bpe):
    text = "aaaaa aaa abab ab\n" + world.corpus(20_000, seed=HELD_OUT_SEED)
    n = 150
    _compare_merges(train_bpe(text, n, progress=False), _library_merges(_library(text, len(BASE_VOCAB) + n)),
                    "train_bpe on held-out text, compared with the tokenizers library")


# --- BPETokenizer.encode_chunk -------------------------------------------------------------------------------
q = LAB.question("bpe_encode", points=3, uses=("BPETokenizer",), title="Encode a chunk by merge rank")


def _check_chunks(BPETokenizer, text: str, vocab_size: int, chunks: list[str]) -> None:
    lib = _library(text, vocab_size)
    tok = BPETokenizer(_library_merges(lib))
    for chunk in chunks:
        got = _as_ids(_call(tok.encode_chunk, chunk, what=f"encode_chunk({chunk!r})"), f"encode_chunk({chunk!r})")
        expected = lib.encode(chunk).ids
        if got != expected:
            raise CheckFailed(f"encode_chunk({chunk!r}) differs from the tokenizers library with the same merges.",
                              hint="merge the adjacent pair with the LOWEST rank (learned first) until none is a "
                                   "merge: min(pairwise(ids), key=lambda p: self.merges.get(p, math.inf))",
                              received=_show(lib, got), expected=_show(lib, expected))


@q.check
def _encode_public(BPETokenizer):
    text = world.corpus(50_000, seed=HELD_OUT_SEED)
    chunks = RARE + sorted(set(_pretokenize(world.corpus(3_000, seed=HELD_OUT_SEED + 1))))
    _check_chunks(BPETokenizer, text, 300, chunks)


@q.check(hidden=True)
def _encode_hidden(BPETokenizer):
    rng = random.Random(HELD_OUT_SEED)
    text = world.corpus(80_000, seed=HELD_OUT_SEED + 2)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [" " * rng.randint(0, 1) + "".join(rng.choice(letters) for _ in range(rng.randint(1, 12)))
             for _ in range(300)]
    numbers = [f" {rng.randint(0, 10 ** rng.randint(1, 7))}" for _ in range(100)]
    held = sorted(set(_pretokenize(world.corpus(20_000, seed=HELD_OUT_SEED + 3))))
    repeats = ["a" * n for n in range(1, 12)] + [" " + "ab" * n for n in range(1, 7)]  # overlapping pairs
    _check_chunks(BPETokenizer, text, 700, NEVER_IN_TRAINING + repeats + words + numbers + held)


@q.check(hidden=True)
def _encode_outside_alphabet(BPETokenizer):
    lib = _library(world.corpus(50_000, seed=HELD_OUT_SEED), 300)
    tok = BPETokenizer(_library_merges(lib))
    for chunk in OUTSIDE_ALPHABET:
        try:
            got = tok.encode_chunk(chunk)
        except NotImplementedError:
            raise
        except Exception:  # any error is right: the character has no id
            continue
        unknown = sorted({c for c in chunk if c not in CHAR_ID})
        raise CheckFailed(f"encode_chunk({chunk!r}) returned ids, but {unknown} is outside the alphabet: it has no id.",
                          "raise an error for a character outside the alphabet (CHAR_ID[c] raises a KeyError); "
                          "dropping or replacing it changes the text without anyone noticing",
                          received=_show(lib, got) if isinstance(got, list) else repr(got))


# --- decode and the round trip -------------------------------------------------------------------------------
q = LAB.question("bpe_roundtrip", points=2, uses=("BPETokenizer",), title="decode(encode(text)) == text",
                 builds_on=("bpe_encode",))


def _roundtrip(tok, lib: Tokenizer, texts: list[str]) -> None:
    for text in texts:
        ids = _as_ids(_call(tok.encode, text, what=f"encode({text!r})"), f"encode({text!r})")
        back = _call(tok.decode, ids, what=f"decode(encode(text)) for a text of {len(text)} characters")
        shown = f"decode(encode({text!r})) gave {back!r}." if reveals() else (
            f"decode(encode(text)) differs from text (a text of {len(text)} characters; you got {len(back)}, "
            f"first difference at position {_first_difference(back, text)}).")
        check(back == text, shown,
              hint="encode must keep every character (pre-tokenize, then encode each chunk); "
                   "decode concatenates the token strings with nothing in between")
    ids = lib.encode(texts[0]).ids
    got = _call(tok.decode, ids, what="decode(ids)")
    check(got == lib.decode(ids), f"decode({ids[:8]}...) is wrong.", received=f"{got[:60]!r}...",
          expected=repr(lib.decode(ids)), hint="decode is the concatenation of self.vocab[i] for each id")


@q.check
def _roundtrip_public(BPETokenizer):
    lib = _library(world.corpus(50_000, seed=HELD_OUT_SEED), 300)
    tok = BPETokenizer(_library_merges(lib))
    _roundtrip(tok, lib, ["mia has 12 red apples. 3 + 45 = 48.\n", "  two  spaces\n\nand zzzz 00042 ?!", "x", ""])


@q.check(hidden=True)
def _roundtrip_hidden(BPETokenizer):
    rng = random.Random(HELD_OUT_SEED + 4)
    lib = _library(world.corpus(80_000, seed=HELD_OUT_SEED + 2), 700)
    tok = BPETokenizer(_library_merges(lib))
    texts = [world.corpus(5_000, seed=HELD_OUT_SEED + 5)] + [_random_text(rng, rng.randint(1, 80)) for _ in range(100)]
    texts += [" ", "\n", "   \n\n \n", "q", "a" * 257, " " + "ab" * 40, "-/-/ q"]
    _roundtrip(tok, lib, texts)
    ids = lib.encode(texts[0]).ids
    want = lib.decode(ids)
    for kind, make in (("a tuple", tuple), ("an iterator", iter), ("a generator", lambda x: (i for i in x))):
        got = _call(tok.decode, make(ids), what=f"decode(ids given as {kind})")
        at = _first_difference(got, want) if isinstance(got, str) else 0
        check(got == want, f"decode(ids given as {kind}) differs from the text of the same ids as a list, from "
              f"position {at} on.", received=f"{len(got)} characters, {_window(got, at)}" if isinstance(got, str)
              else repr(got), expected=f"{len(want)} characters, {_window(want, at)}",
              hint="decode takes any iterable of ids and may read it only once: go through it in a single pass")


# --- special tokens ------------------------------------------------------------------------------------------
q = LAB.question("bpe_special_tokens", points=2, uses=("BPETokenizer",), title="Special tokens are one token each",
                 builds_on=("bpe_encode",))

_SPECIAL_HINT = ("split the text around special tokens first (re.split with a capturing group of re.escape'd "
                 "specials), emit their ids, and run BPE only on the text in between")


def _check_specials(tok, lib: Tokenizer, texts: list[str]) -> None:
    """Special tokens become their ids; the text between them is encoded as it would be on its own.

    The text between special tokens is compared with the learner's own encode_chunk, so that a bug there
    (graded by bpe_encode) does not cost these points as well.
    """
    for text in texts:
        got = _as_ids(_call(tok.encode, text, what=f"encode({text!r})", hint=_SPECIAL_HINT), f"encode({text!r})")
        expected = []
        for part in re.split(SPECIAL_RE, text):
            if part in SPECIALS:
                expected.append(SPECIALS.index(part))
            for chunk in [] if part in SPECIALS else _pretokenize(part):
                expected += _call(tok.encode_chunk, chunk, what=f"encode_chunk({chunk!r})")
        if got != expected:
            raise CheckFailed(f"encode({text!r}) is wrong.", _SPECIAL_HINT, received=_show(lib, got),
                              expected=_show(lib, expected))
        for skip in (False, True):
            back = _call(tok.decode, expected, skip_special_tokens=skip,
                         what=f"decode(ids, skip_special_tokens={skip})")
            want = re.sub(SPECIAL_RE, "", text) if skip else text
            check(back == want, f"decode(encode({text!r}), skip_special_tokens={skip}) is wrong.",
                  received=repr(back), expected=repr(want),
                  hint="special tokens decode to their own string unless skip_special_tokens=True")


@q.check
def _specials_public(BPETokenizer):
    lib = _library(world.corpus(50_000, seed=HELD_OUT_SEED), 300)
    tok = BPETokenizer(_library_merges(lib))
    _check_specials(tok, lib, [
        "<|endoftext|>tom has 3 cups.<|endoftext|>",
        "the pad is red.<|pad|><|pad|>",
        "a padded endoftext, not special",
        "mi<|endoftext|>a",
    ])


@q.check(hidden=True)
def _specials_hidden(BPETokenizer):
    rng = random.Random(HELD_OUT_SEED + 6)
    lib = _library(world.corpus(80_000, seed=HELD_OUT_SEED + 2), 700)
    tok = BPETokenizer(_library_merges(lib))
    text = world.corpus(4_000, seed=HELD_OUT_SEED + 7)
    texts = []
    for _ in range(30):
        pieces = [text[i:i + rng.randint(0, 60)] for i in sorted(rng.sample(range(len(text) - 60), 4))]
        texts.append("".join(p + rng.choice(SPECIALS) * rng.randint(0, 2) for p in pieces))
    texts += ["<|pad|>", "<|endoftext|><|endoftext|>", "<|pad|>pad<|pad|> endoftext"]
    _check_specials(tok, lib, texts)


# --- compression of the trained tokenizer --------------------------------------------------------------------
q = LAB.question("bpe_compression", points=2, uses=("tok",), title="Your tokenizer compresses like the library's",
                 builds_on=("bpe_train", "bpe_encode"))


@q.check
def _compression(tok):
    check(hasattr(tok, "encode") and hasattr(tok, "vocab_size"),
          "`tok` should be your trained BPETokenizer (it has no .encode or .vocab_size).")
    size = tok.vocab_size
    check(isinstance(size, int) and size >= MIN_VOCAB,
          f"tok.vocab_size is {size}; train at least {MIN_VOCAB - len(BASE_VOCAB)} merges.",
          hint="tok = BPETokenizer(train_bpe(train_text, N_MERGES))")
    held = world.corpus(30_000, seed=HELD_OUT_SEED)
    ids = _as_ids(_call(tok.encode, held, what="tok.encode(held-out text)"), "tok.encode(held-out text)")
    check(len(ids) > 0, "tok.encode(held-out text) returned no ids.")
    ours = len(held) / len(ids)
    lib = _library(world.corpus(TRAIN_CHARS, seed=0), size)
    theirs = len(held) / len(lib.encode(held).ids)
    check(abs(ours / theirs - 1) <= COMPRESSION_RTOL,
          f"Your tokenizer gives {ours:.3f} characters per token on held-out text; the tokenizers library trained on "
          f"the same text with the same vocabulary size ({size}) gives {theirs:.3f} (tolerance "
          f"{COMPRESSION_RTOL:.0%}).",
          hint="train on train_text; encode must apply merges by rank, the way training formed them")


# --- byte-level BPE: GPT-2's byte -> character table -----------------------------------------------------------
q = LAB.question("byte_level", points=3, uses=("bytes_to_unicode", "byte_level", "byte_level_decode"),
                 title="Byte-level text, as tokenizers' ByteLevel writes and reads it")

_BYTE_LEVEL = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
_BYTE_DECODER = decoders.ByteLevel()
_ALPHABET = frozenset(pre_tokenizers.ByteLevel.alphabet())
# ASCII, accents (2 bytes), CJK (3 bytes), an emoji (4 bytes), nothing at all, only whitespace, control characters
_BYTE_LEVEL_TEXTS = ["mia has 3 red apples.\n", "café crème brûlée", "日本語の文", "hi 🙂!", "", "  \n\n \n",
                     "tab\tand\r\nreturn", "\u00ff\u00a0\u00ad\u007f\u0000"]


def _lib_byte_level(text: str) -> str:
    return "".join(piece for piece, _ in _BYTE_LEVEL.pre_tokenize_str(text))


def _lib_byte_decode(chars: str) -> str:
    return _BYTE_DECODER.decode([chars]) if chars else ""


@cache
def _lib_byte_table() -> dict[int, str]:
    """Byte -> character as ByteLevel writes it, read off a text whose UTF-8 holds every byte UTF-8 can hold; the
    13 bytes that never occur in UTF-8 (0xC0, 0xC1, 0xF5-0xFF) are printable, hence themselves by GPT-2's rule."""
    text = "".join(chr(cp) for cp in [*range(0x100), *range(0x100, 0x110000, 0x40)] if not 0xD800 <= cp < 0xE000)
    table = dict(zip(text.encode("utf-8"), _lib_byte_level(text), strict=True))
    return {b: table.get(b, chr(b)) for b in range(256)}


def _window(s: str, at: int, width: int = 24) -> str:
    """A short piece of s around position `at`, so that a long text's difference stays readable."""
    start = max(0, at - width // 2)
    return ("..." if start else "") + repr(s[start:start + width]) + ("..." if start + width < len(s) else "")


def _byte_table_hint(table: dict[int, str]) -> str:
    """A hint chosen from what the learner's table does: which bytes it keeps, which code points it shifts to."""
    if table[0x20] == " ":
        return "the space (byte 0x20) does not keep its character: it is a shifted byte and becomes 'Ġ' (U+0120)"
    shifted = sorted(ord(c) for c in table.values() if ord(c) >= 256)
    if shifted != list(range(256, 256 + len(shifted))):
        return ("the n-th shifted byte, counting the shifted bytes only (n = 0, 1, ..., 67), becomes chr(256 + n); "
                "n is not the byte's own value")
    return (f"your table shifts {len(shifted)} bytes: keep exactly the printable ranges '!'..'~', '¡'..'¬' and "
            "'®'..'ÿ' (both ends included) and shift the others")


@q.check
def _byte_table(bytes_to_unicode):
    table = _call(bytes_to_unicode, what="bytes_to_unicode()")
    assert_type(table, dict, "bytes_to_unicode()", hint="return a dict {byte value: character}")
    check(len(table) == 256 and set(table) == set(range(256)),
          "bytes_to_unicode() should have exactly the keys 0, 1, ..., 255, one per byte value.",
          received=f"{len(table)} keys, starting {list(table)[:4]!r}", hint="the keys are the ints 0 to 255")
    bad = [(b, c) for b, c in table.items() if not (isinstance(c, str) and len(c) == 1)]
    check(not bad, "Each byte should map to a single character (a str of length 1).", received=repr(bad[:4]))
    chars = set(table.values())
    check(len(chars) == 256, "Two bytes map to the same character, so decoding could not tell them apart.",
          received=f"{len(chars)} distinct characters for 256 bytes")
    extra, missing = sorted(chars - _ALPHABET), sorted(_ALPHABET - chars)
    check(not extra, "bytes_to_unicode() uses characters that are not in tokenizers' ByteLevel alphabet.",
          received=", ".join(f"byte 0x{b:02X} -> {c!r} (U+{ord(c):04X})" for b, c in table.items() if c in extra[:4]),
          expected="characters such as " + ", ".join(f"{c!r} (U+{ord(c):04X})" for c in missing[:4]),
          hint=_byte_table_hint(table))
    lib = _lib_byte_table()
    for b in range(256):
        if table[b] != lib[b]:
            raise CheckFailed(f"bytes_to_unicode()[0x{b:02X}] differs from tokenizers' ByteLevel.",
                              "bytes that keep their own character do so; the others, in increasing byte order, "
                              "take chr(256), chr(257), ...", received=f"{table[b]!r} (U+{ord(table[b]):04X})",
                              expected=f"{lib[b]!r} (U+{ord(lib[b]):04X})")


def _check_byte_level(byte_level, byte_level_decode, texts: list[str]) -> None:
    """byte_level(text) as ByteLevel writes it, and byte_level_decode of ByteLevel's string gives the text back."""
    for text in texts:
        what = f"byte_level({text!r})" if reveals() or len(text) <= 40 else f"byte_level on a text of {len(text)} " \
            "characters"
        got = _call(byte_level, text, what=what)
        assert_type(got, str, what, hint="return a str: one character per byte")
        want = _lib_byte_level(text)
        if got != want:
            at = _first_difference(got, want)
            per_char = len(got) == len(text) != len(want)
            raise CheckFailed(f"{what} differs from tokenizers' ByteLevel pre-tokenizer from position {at} on.",
                              "one character per UTF-8 *byte*, not per character: text.encode('utf-8'), then each "
                              "byte through bytes_to_unicode()" if per_char else
                              "encode the text as UTF-8, then replace each byte by bytes_to_unicode()[byte]",
                              received=f"{len(got)} characters, {_window(got, at)}",
                              expected=f"{len(want)} characters, {_window(want, at)}")
        what = f"byte_level_decode({want!r})" if reveals() else "byte_level_decode(ByteLevel's string for the text)"
        back = _call(byte_level_decode, want, what=what)
        if back != text:
            at = _first_difference(back, text) if isinstance(back, str) else 0
            raise CheckFailed(f"{what} should give the text back; it differs from position {at} on.",
                              "map each character back to its byte, then decode all the bytes together as UTF-8",
                              received=_window(back, at) if isinstance(back, str) else type(back).__name__,
                              expected=_window(text, at))


def _check_partial(byte_level_decode, pieces: list[str]) -> None:
    """Byte-level strings that need not be whole UTF-8 characters, as a single token's often are not."""
    for chars in pieces:
        what = f"byte_level_decode({chars!r})" if reveals() else "byte_level_decode on random bytes"
        try:
            got = byte_level_decode(chars)
        except NotImplementedError:
            raise
        except UnicodeDecodeError as exc:
            raise CheckFailed(f"{what} raised UnicodeDecodeError: {exc}",
                              'decode with errors="replace": each invalid sequence becomes U+FFFD, as in '
                              "tokenizers' ByteLevel decoder") from exc
        except Exception as exc:  # a learner's bug on one input: a wrong answer, with the input
            raise CheckFailed(f"{what} raised {type(exc).__name__}: {exc}") from exc
        want = _lib_byte_decode(chars)
        check(got == want, f"{what} differs from tokenizers' ByteLevel decoder.", received=repr(got),
              expected=repr(want), hint="decode all the bytes together; each sequence that is not valid UTF-8 "
                                        "becomes one U+FFFD, the replacement character")


@q.check
def _byte_level_public(byte_level, byte_level_decode):
    _check_byte_level(byte_level, byte_level_decode, _BYTE_LEVEL_TEXTS)
    _check_partial(byte_level_decode, [_lib_byte_level("日"), _lib_byte_level("日")[:2], _lib_byte_level("café")[:4],
                                       _lib_byte_level("🙂 ok")[1:]])


def _random_unicode(rng: random.Random, n: int) -> str:
    """Characters of 1 to 4 UTF-8 bytes: ASCII and controls, Latin-1, Greek/Cyrillic, CJK, Hangul, emoji, planes."""
    blocks = [(0x00, 0x7F), (0x20, 0x7E), (0x80, 0xFF), (0x370, 0x4FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3),
              (0xE000, 0xFFFD), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(blocks))) for _ in range(n))


@q.check(hidden=True)
def _byte_level_hidden(byte_level, byte_level_decode):
    rng = random.Random(HELD_OUT_SEED + 8)
    texts = [_random_unicode(rng, rng.randint(1, 40)) for _ in range(150)]
    texts += [" " * 7, "\n" * 3, " \n\t\r\x0b\x0c", world.corpus(2_000, seed=HELD_OUT_SEED + 9)]
    _check_byte_level(byte_level, byte_level_decode, texts)
    table = _lib_byte_table()
    _check_partial(byte_level_decode, ["".join(table[rng.randrange(256)] for _ in range(rng.randint(1, 10)))
                                       for _ in range(300)])
