"""The offline synthetic data world: a seeded, versioned generator for every lab.

Everything here is procedural so the course needs no downloads, and deterministic so that
the same seed gives byte-identical data on any machine and Python >= 3.10: only private
``random.Random`` instances are used (never the global, numpy or torch RNGs), and every
collection is iterated in a fixed order. If a change alters any output, bump DATA_VERSION.

Two kinds of data come out of it:

* ``corpus`` - simple English-like pretraining text (stories, facts, sums) about a fixed
  world, with a known entropy floor (``entropy_floor``) to compare a model's loss against.
* ``TASKS`` - the specialist tasks, each with seeded train/val/test splits that never share an item, a prompt and
  an exact-match answer parser: ``dates`` (normalise a date written in English to ISO 8601; ``task_examples`` is
  its sampler), ``extract`` (fields of a sentence into a fixed schema), ``units`` (unit conversion) and
  ``qa`` (questions about the world's facts, which the base model saw in pretraining).
"""

from __future__ import annotations

import datetime
import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

DATA_VERSION: str = "1"

# Every character the corpus and the task text can contain, sorted. "/" is for dd/mm/yyyy dates.
CHARSET: str = "\n !'+,-./0123456789:=?abcdefghijklmnopqrstuvwxyz"

T = TypeVar("T")

# --------------------------------------------------------------------------------------------
# The fixed world: built once from WORLD_SEED, so facts agree across documents and corpus seeds.
# --------------------------------------------------------------------------------------------

WORLD_SEED = 20240917

_FEMALE = ("mia", "ana", "eva", "lily", "rosa", "nina", "lea", "ivy", "zoe", "ella",
           "maya", "sara", "kira", "luna", "tess", "dora", "amy", "jade", "nora", "ruby")
_MALE = ("tom", "ben", "max", "sam", "leo", "finn", "owen", "hugo", "ivan", "jack",
         "omar", "paul", "raj", "theo", "luca", "noah", "eli", "kai", "dan", "otto")
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "pink",
           "grey", "orange", "purple", "gold")
# (singular, plural); both columns are distinct so a count plus a noun pins down the object.
OBJECTS = (("apple", "apples"), ("pear", "pears"), ("egg", "eggs"), ("book", "books"),
           ("cup", "cups"), ("stone", "stones"), ("coin", "coins"), ("shell", "shells"),
           ("box", "boxes"), ("hat", "hats"), ("ball", "balls"), ("key", "keys"),
           ("plum", "plums"), ("card", "cards"), ("kite", "kites"), ("bell", "bells"))
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
PEOPLE = _FEMALE + _MALE


@dataclass(frozen=True)
class World:
    """Fixed facts: countries with their cities (the first is the capital), and people."""

    countries: tuple[str, ...]
    cities: dict[str, tuple[str, ...]]  # country -> cities, capital first
    country_of: dict[str, str]  # city -> country
    home: dict[str, str]  # person -> home city
    favourite: dict[str, str]  # person -> colour


def _build_world(n_countries: int = 12, cities_per_country: int = 4) -> World:
    rng = random.Random(WORLD_SEED)
    taken = set(PEOPLE) | set(COLOURS) | {w for pair in OBJECTS for w in pair} | set(DAYS)

    def new_name() -> str:
        while True:  # two or three consonant-vowel syllables, sometimes a final consonant
            syl = [rng.choice("bdfgklmnprstvz") + rng.choice("aeiou") for _ in range(rng.randint(2, 3))]
            name = "".join(syl) + rng.choice(("", "", "n", "r", "l", "s"))
            if name not in taken:
                taken.add(name)
                return name

    countries = tuple(new_name() for _ in range(n_countries))
    cities = {c: tuple(new_name() for _ in range(cities_per_country)) for c in countries}
    country_of = {city: c for c in countries for city in cities[c]}
    all_cities = [city for c in countries for city in cities[c]]
    home = {p: rng.choice(all_cities) for p in PEOPLE}
    favourite = {p: rng.choice(COLOURS) for p in PEOPLE}
    return World(countries, cities, country_of, home, favourite)


WORLD = _build_world()
_ALL_CITIES = tuple(city for c in WORLD.countries for city in WORLD.cities[c])


# --------------------------------------------------------------------------------------------
# Corpus: templates whose every random choice is logged, so the entropy is known exactly.
# --------------------------------------------------------------------------------------------


class _Chooser:
    """A seeded RNG that adds log(#options) for each uniform choice it makes."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.nats = 0.0

    def pick(self, options: Sequence[T]) -> T:
        self.nats += math.log(len(options))
        return options[self.rng.randrange(len(options))]

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi], both ends included."""
        return self.pick(range(lo, hi + 1))


def _pron(person: str) -> str:
    return "she" if person in _FEMALE else "he"


def _noun(obj: tuple[str, str], n: int) -> str:
    return obj[0] if n == 1 else obj[1]


def _art(word: str) -> str:
    return "an " + word if word[0] in "aeiou" else "a " + word


def _other(c: _Chooser, person: str) -> str:
    return c.pick([p for p in PEOPLE if p != person])


def _t_give(c: _Chooser) -> str:
    a, n, col, obj = c.pick(PEOPLE), c.integer(2, 20), c.pick(COLOURS), c.pick(OBJECTS)
    verb, k, b = c.pick(("gives", "sends", "sells")), c.integer(1, n - 1), _other(c, a)
    return (f"{a} has {n} {col} {_noun(obj, n)}. {_pron(a)} {verb} {k} {_noun(obj, k)} to {b}. "
            f"now {a} has {n - k} {_noun(obj, n - k)}.")


def _t_find(c: _Chooser) -> str:
    a, n, obj, k = c.pick(PEOPLE), c.integer(1, 20), c.pick(OBJECTS), c.integer(1, 20)
    return f"{a} has {n} {_noun(obj, n)}. {_pron(a)} finds {k} more. now {_pron(a)} has {n + k}."


def _t_compare(c: _Chooser) -> str:
    a, obj, n = c.pick(PEOPLE), c.pick(OBJECTS), c.integer(1, 20)
    b, m = _other(c, a), c.pick([v for v in range(1, 21) if v != n])
    winner = a if n > m else b
    return f"{a} has {n} {_noun(obj, n)}. {b} has {m} {_noun(obj, m)}. so {winner} has more!"


def _t_capital(c: _Chooser) -> str:
    country, ask = c.pick(WORLD.countries), c.pick((False, True))
    capital = WORLD.cities[country][0]
    if ask:
        return f"what is the capital of {country}? it is {capital}."
    return f"the capital of {country} is {capital}."


def _t_lives(c: _Chooser) -> str:
    a = c.pick(PEOPLE)
    home = WORLD.home[a]
    country = WORLD.country_of[home]
    where = f"the capital of {country}" if WORLD.cities[country][0] == home else f"a city in {country}"
    return f"{a} lives in {home}, {where}. {a}'s favourite colour is {WORLD.favourite[a]}."


def _t_walk(c: _Chooser) -> str:
    day, a = c.pick(DAYS), c.pick(PEOPLE)
    home = WORLD.home[a]
    city = c.pick([x for x in _ALL_CITIES if x != home])
    n, col, obj = c.integer(1, 20), c.pick(COLOURS), c.pick(OBJECTS)
    return f"on {day}, {a} walks from {home} to {city} and sees {n} {col} {_noun(obj, n)}."


def _t_market(c: _Chooser) -> str:
    a, col1, obj1, col2, obj2 = (c.pick(PEOPLE), c.pick(COLOURS), c.pick(OBJECTS),
                                 c.pick(COLOURS), c.pick(OBJECTS))
    return f"in {WORLD.home[a]}, {a} buys {_art(col1)} {obj1[0]} and {_art(col2)} {obj2[0]}."


def _t_sum(c: _Chooser) -> str:
    x, y = c.integer(0, 99), c.integer(0, 99)
    return f"{x} + {y} = {x + y}."


def _t_count(c: _Chooser) -> str:
    a, start, length = c.pick(PEOPLE), c.integer(1, 99), c.integer(3, 6)
    return f"{a} counts: {', '.join(str(start + i) for i in range(length))}."


# Each template has a distinct fixed skeleton (first words, colour-vs-object slots), every
# slot is a whole word from disjoint vocabularies, and a document is one line, so a text
# decodes to exactly one sequence of choices. That injectivity makes the logged nats exact.
_TEMPLATES: tuple[Callable[[_Chooser], str], ...] = (
    _t_give, _t_find, _t_compare, _t_capital,
    _t_lives, _t_walk, _t_market, _t_sum, _t_count,
)


def _generate(n_chars: int, seed: int) -> tuple[str, float]:
    """Whole documents until at least n_chars; returns (text, total nats of all choices)."""
    c = _Chooser(seed)
    docs: list[str] = []
    total = 0
    while total < n_chars:
        doc = c.pick(_TEMPLATES)(c) + "\n"
        docs.append(doc)
        total += len(doc)
    return "".join(docs), c.nats


def corpus(n_chars: int, seed: int = 0) -> str:
    """A pretraining corpus of exactly n_chars characters (the last document is cut)."""
    if n_chars < 0:
        raise ValueError(f"n_chars must be >= 0, got {n_chars}")
    return _generate(n_chars, seed)[0][:n_chars]


def documents(n_chars: int, seed: int = 0) -> list[str]:
    """The whole documents (each ends with "\\n") in corpus(n_chars, seed); the one cut at n_chars is dropped."""
    docs = corpus(n_chars, seed).splitlines(keepends=True)
    return docs if not docs or docs[-1].endswith("\n") else docs[:-1]


def entropy_floor(seed: int = 0, n_chars: int = 200_000) -> float:
    """The corpus' true entropy in nats per character: the best loss any model can reach.

    While generating, every uniform random choice adds log(number of options). The templates
    map choices to text injectively (different choices never give the same string), so this
    sum is the exact information content of the generated text; dividing by the number of
    characters generated (whole documents, before the cut) gives nats/char. A model only gets
    this low if it has also memorised the fixed world facts (capitals, homes, colours).
    """
    if n_chars <= 0:
        raise ValueError(f"n_chars must be > 0, got {n_chars}")
    text, nats = _generate(n_chars, seed)
    return nats / len(text)


def unigram_entropy(text: str) -> float:
    """Entropy in nats/char of the text's character frequencies (a context-free model's loss)."""
    if not text:
        raise ValueError("unigram_entropy needs a non-empty text")
    n = len(text)
    return -sum(k / n * math.log(k / n) for k in Counter(text).values())


def fingerprint(text: str) -> str:
    """sha256 hex digest of the utf-8 text: equal fingerprints mean byte-identical data."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# The specialist task: English dates -> ISO 8601. Numeric forms are DAY/MONTH/YEAR.
# --------------------------------------------------------------------------------------------

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
_UNITS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")
_TEENS = ("tenth", "eleventh", "twelfth", "thirteenth", "fourteenth", "fifteenth",
          "sixteenth", "seventeenth", "eighteenth", "nineteenth")
ORDINAL_WORDS = (_UNITS + _TEENS + ("twentieth",) + tuple("twenty-" + u for u in _UNITS)
                 + ("thirtieth", "thirty-first"))  # ORDINAL_WORDS[d - 1] spells day d
FIRST_YEAR, LAST_YEAR = 1950, 2049
SPLITS = ("train", "val", "test")
TASK_PROMPT_TEMPLATE = "date: {prompt}\niso: "


def _ordinal(d: int) -> str:
    suffix = "th" if 10 <= d % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(d % 10, "th")
    return f"{d}{suffix}"


# Surface forms; numeric ones are day/month/year, as written in most of the world. The name is the form's slice.
_FORMS: tuple[tuple[str, Callable[[datetime.date], str]], ...] = (
    ("3rd of march", lambda t: f"{_ordinal(t.day)} of {MONTHS[t.month - 1]} {t.year}"),  # 3rd of march 2021
    ("march 3,", lambda t: f"{MONTHS[t.month - 1]} {t.day}, {t.year}"),  # march 3, 2021
    ("03/03/yyyy", lambda t: f"{t.day:02d}/{t.month:02d}/{t.year}"),  # 03/03/2021
    ("the third of march", lambda t: f"the {ORDINAL_WORDS[t.day - 1]} of {MONTHS[t.month - 1]}, {t.year}"),
    ("3 mar", lambda t: f"{t.day} {MONTHS[t.month - 1][:3]} {t.year}"),  # 3 mar 2021
    ("03.03.yyyy", lambda t: f"{t.day:02d}.{t.month:02d}.{t.year}"),  # 03.03.2021
    ("march the 3rd", lambda t: f"{MONTHS[t.month - 1]} the {_ordinal(t.day)}, {t.year}"),  # march the 3rd, 2021
    ("3-mar", lambda t: f"{t.day}-{MONTHS[t.month - 1][:3]}-{t.year}"),  # 3-mar-2021
)


@dataclass(frozen=True)
class Example:
    """One task item: the question (prompt), its one right answer, and the slice it is reported under."""

    prompt: str
    answer: str
    slice: str = ""


def _bucket(key: str) -> int:
    """A stable bucket 0..99 from a sha256 of the key (not hash(), which is salted per process)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100


def split_of(iso: str) -> str:
    """The split a date belongs to: a stable sha256 bucket of its ISO string (~80/10/10)."""
    bucket = _bucket(iso)
    return "train" if bucket < 80 else "val" if bucket < 90 else "test"


@cache
def _split_dates(split: str) -> tuple[datetime.date, ...]:
    first, last = datetime.date(FIRST_YEAR, 1, 1), datetime.date(LAST_YEAR, 12, 31)
    days = (first + datetime.timedelta(i) for i in range((last - first).days + 1))
    return tuple(d for d in days if split_of(d.isoformat()) == split)


def _derive_seed(*parts: object) -> int:
    """A platform-independent integer seed from several parts (hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "big")


def _sample_indices(population: int, n: int, rng: random.Random) -> list[int]:
    """n distinct indices in [0, population), in O(n): a sparse Fisher-Yates shuffle cut short."""
    swapped: dict[int, int] = {}
    out = []
    for i in range(n):
        j = rng.randrange(i, population)
        out.append(swapped.get(j, j))
        swapped[j] = swapped.get(i, i)
    return out


def _check_request(split: str, n: int, population: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not 0 <= n <= population:
        raise ValueError(f"n must be in [0, {population}] for split {split!r}, got {n}")


def task_examples(split: str, n: int, seed: int = 0) -> list[Example]:
    """n distinct (date, surface form) examples from a split; splits never share a date."""
    dates = _split_dates(split) if split in SPLITS else ()
    _check_request(split, n, len(dates) * len(_FORMS))
    rng = random.Random(_derive_seed("task", DATA_VERSION, split, seed))
    out = []
    for idx in _sample_indices(len(dates) * len(_FORMS), n, rng):
        date, (form_name, form) = dates[idx // len(_FORMS)], _FORMS[idx % len(_FORMS)]
        out.append(Example(prompt=form(date), answer=date.isoformat(), slice=form_name))
    return out


def task_prompt(prompt: str) -> str:
    """What a model is asked to continue: the answer follows "iso: "."""
    return TASK_PROMPT_TEMPLATE.format(prompt=prompt)


def format_example(ex: Example) -> str:
    """The training text for one example: prompt, answer and a closing newline."""
    return task_prompt(ex.prompt) + ex.answer + "\n"


def score_answers(predictions: list[str], examples: list[Example]) -> float:
    """Exact-match accuracy after stripping whitespace."""
    if len(predictions) != len(examples):
        raise ValueError(f"{len(predictions)} predictions for {len(examples)} examples")
    if not examples:
        raise ValueError("score_answers needs at least one example")
    hits = sum(p.strip() == ex.answer.strip() for p, ex in zip(predictions, examples, strict=True))
    return hits / len(examples)


# --------------------------------------------------------------------------------------------
# More specialists: one Task interface over the date task and two tasks of other kinds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """A specialist task: seeded, non-overlapping splits, how to ask, and how to read the answer.

    `query` is what a user asks (the chat template's user message); `prompt` adds the cue a plain language model
    continues after (``"iso: "``), so the same examples serve prompting, chat fine-tuning and evaluation.
    """

    name: str
    description: str
    query_template: str  # "{prompt}" is the example's prompt
    answer_cue: str  # what a plain prompt ends with; the answer follows it
    sampler: Callable[[str, int, int], list[Example]]
    slices: tuple[str, ...]
    max_new_tokens: int = 16  # enough for any answer and its <eos> with the zoo tokenizer (digits are one token each)

    def examples(self, split: str, n: int, seed: int = 0) -> list[Example]:
        """n distinct examples of a split; an item's split is fixed by a hash of the item, so splits never overlap."""
        return self.sampler(split, n, seed)

    def query(self, ex: Example) -> str:
        return self.query_template.format(prompt=ex.prompt)

    def prompt(self, ex: Example) -> str:
        """The plain (no chat template) prompt: the query, a newline and the answer cue."""
        return f"{self.query(ex)}\n{self.answer_cue}"

    def text(self, ex: Example) -> str:
        """A plain training text: prompt, answer and a closing newline."""
        return self.prompt(ex) + ex.answer + "\n"

    @staticmethod
    def parse(generation: str) -> str:
        """The answer in a model's continuation: its first line, stripped (exact match compares this)."""
        return generation.split("\n", 1)[0].strip()


def _fact_questions() -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(fact key, answer, phrasings) for every fact the pretraining corpus states: capitals (_t_capital), and each
    person's home city, its country and their favourite colour (_t_lives)."""
    facts = []
    for country in WORLD.countries:
        facts.append((f"capital/{country}", WORLD.cities[country][0],
                      (f"what is the capital of {country}?", f"which city is the capital of {country}?",
                       f"name the capital of {country}.")))
    for p in PEOPLE:
        home = WORLD.home[p]
        facts.append((f"home/{p}", home, (f"where does {p} live?", f"which city does {p} live in?",
                                         f"what is {p}'s home city?")))
        facts.append((f"country/{p}", WORLD.country_of[home],
                      (f"which country does {p} live in?", f"in which country is {p}'s home?",
                       f"what country is {p} from?")))
        facts.append((f"colour/{p}", WORLD.favourite[p],
                      (f"what is {p}'s favourite colour?", f"which colour does {p} like best?",
                       f"name {p}'s favourite colour.")))
    return tuple(facts)


_QA_SPLIT = (60, 80)  # buckets below 60 train, below 80 val, the rest test: few facts, so larger held-out splits


@cache
def _qa_population(split: str) -> tuple[Example, ...]:
    out = []
    for key, answer, phrasings in _fact_questions():
        b = _bucket(f"qa/{key}")
        if ("train" if b < _QA_SPLIT[0] else "val" if b < _QA_SPLIT[1] else "test") == split:
            out += [Example(prompt=q, answer=answer, slice=key.split("/")[0]) for q in phrasings]
    return tuple(out)


def _qa_examples(split: str, n: int, seed: int) -> list[Example]:
    population = _qa_population(split) if split in SPLITS else ()
    _check_request(split, n, len(population))
    rng = random.Random(_derive_seed("qa", DATA_VERSION, split, seed))
    return [population[i] for i in _sample_indices(len(population), n, rng)]


# (big unit, small unit, small units per big one, the small unit's word)
UNITS = (("km", "m", 1000, "metres"), ("kg", "g", 1000, "grams"), ("l", "ml", 1000, "millilitres"),
         ("m", "cm", 100, "centimetres"))
_UNIT_FORMS: tuple[tuple[str, Callable[[int, int, tuple], str]], ...] = (
    ("3 km 50 m", lambda a, b, u: f"{a} {u[0]} {b} {u[1]} in {u[3]}"),  # 3 km 50 m in metres
    ("3 km and 50 m", lambda a, b, u: f"{a} {u[0]} and {b} {u[1]} in {u[3]}"),
    ("3.050 km", lambda a, b, u: f"{a}.{b:0{len(str(u[2])) - 1}d} {u[0]} in {u[3]}"),  # 3.050 km in metres
)
_UNIT_MAX = 20  # the big quantity runs from 1 to 20


@cache
def _unit_items(split: str) -> tuple[tuple[int, int, int], ...]:
    """(unit index, big, small) quantities of a split, decided by a hash of the quantity (~80/10/10)."""
    out = []
    for u, unit in enumerate(UNITS):
        for a in range(1, _UNIT_MAX + 1):
            for b in range(unit[2]):
                bucket = _bucket(f"units/{unit[0]}/{a}/{b}")
                if ("train" if bucket < 80 else "val" if bucket < 90 else "test") == split:
                    out.append((u, a, b))
    return tuple(out)


def _unit_examples(split: str, n: int, seed: int) -> list[Example]:
    items = _unit_items(split) if split in SPLITS else ()
    _check_request(split, n, len(items) * len(_UNIT_FORMS))
    rng = random.Random(_derive_seed("units", DATA_VERSION, split, seed))
    out = []
    for idx in _sample_indices(len(items) * len(_UNIT_FORMS), n, rng):
        (u, a, b), (form_name, form) = items[idx // len(_UNIT_FORMS)], _UNIT_FORMS[idx % len(_UNIT_FORMS)]
        out.append(Example(prompt=form(a, b, UNITS[u]), answer=str(a * UNITS[u][2] + b), slice=form_name))
    return out


# Extraction into a fixed schema: who, day, count and object (singular) from a sentence in one of three shapes.
_EXTRACT_FORMS: tuple[tuple[str, Callable[[str, str, str, int, str, str], str]], ...] = (
    ("on day, who walks", lambda a, day, city, n, col, obj: f"on {day}, {a} walks to {city} and sees {n} {col} {obj}."),
    ("who sees ... on day", lambda a, day, city, n, col, obj: f"{a} sees {n} {col} {obj} in {city} on {day}."),
    ("in city, on day", lambda a, day, city, n, col, obj: f"in {city}, on {day}, {a} counts {n} {col} {obj}."),
)


@cache
def _extract_examples_cached(split: str, n: int, seed: int) -> tuple[Example, ...]:
    rng = random.Random(_derive_seed("extract", DATA_VERSION, split, seed))
    seen: set[str] = set()
    out = []
    while len(out) < n:  # rejection sampling: the item space (~10^8) is far larger than any request
        a, day, city, count = rng.choice(PEOPLE), rng.choice(DAYS), rng.choice(_ALL_CITIES), rng.randint(2, 20)
        col, obj, (form_name, form) = rng.choice(COLOURS), rng.choice(OBJECTS), rng.choice(_EXTRACT_FORMS)
        item = f"extract/{a}/{day}/{city}/{count}/{col}/{obj[0]}"  # the split goes by the facts, not the sentence shape
        key = f"{item}/{form_name}"
        b = _bucket(item)
        if ("train" if b < 80 else "val" if b < 90 else "test") != split or key in seen:
            continue
        seen.add(key)
        out.append(Example(prompt=form(a, day, city, count, col, obj[1]),
                           answer=f"who={a} day={day} count={count} object={obj[0]}", slice=form_name))
    return tuple(out)


def _extract_examples(split: str, n: int, seed: int) -> list[Example]:
    _check_request(split, n, 10**6)
    return list(_extract_examples_cached(split, n, seed))


TASKS: dict[str, Task] = {
    "dates": Task("dates", "normalise a date written in English to ISO 8601 (yyyy-mm-dd)", "date: {prompt}",
                  "iso: ", task_examples, tuple(name for name, _ in _FORMS)),
    "qa": Task("qa", "answer a question about the world's facts (seen in pretraining stories) with one word",
               "question: {prompt}", "answer: ", _qa_examples, ("capital", "home", "country", "colour")),
    "extract": Task("extract", "extract who, which day, how many and what (singular) into a fixed schema",
                    "extract: {prompt}", "fields: ", _extract_examples, tuple(name for name, _ in _EXTRACT_FORMS), 40),
    "units": Task("units", "convert a quantity in two units to the smaller unit (digits only)", "convert: {prompt}",
                  "answer: ", _unit_examples, tuple(name for name, _ in _UNIT_FORMS)),
}


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


class CharTokenizer:
    """One id per CHARSET character; refuses anything else rather than silently mapping it."""

    def __init__(self, charset: str = CHARSET) -> None:
        self.chars = charset
        self.stoi = {ch: i for i, ch in enumerate(charset)}
        self.vocab_size = len(charset)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as err:
            pos = next(i for i, ch in enumerate(text) if ch not in self.stoi)
            raise ValueError(f"character {text[pos]!r} at position {pos} is not in CHARSET") from err

    def decode(self, ids: Sequence[int]) -> str:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (size {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)
