"""The course's one offline evaluation harness: labs 06-10 and the grader all measure with it.

* ``generate``: batched greedy generation (left padding) that stops at <eos> or a stop string;
* ``exact_match`` / ``wilson_interval``: a task score with its 95 % interval, overall and per slice;
* ``evaluate_task``: all of it for a ``world.Task``, as a typed ``TaskEval`` that prints as a table;
* ``bits_per_char``: the loss on held-out world text per character, to measure forgetting.

Losses are per character, never per token, so models with different tokenizers compare fairly. Prompts are asked
through the tokenizer's chat template when it has one (the zoo model's and real chat models'), as plain text
otherwise, and the same prompt goes to every model being compared.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from labkit import world
from labkit.lm import document_stream, heldout_nats

__all__ = ["FORGETTING_SEED", "Score", "TaskEval", "bits_per_char", "chat_prompt", "evaluate_task", "exact_match",
           "generate", "wilson_interval"]

# The world text forgetting is measured on: a corpus seed no lab trains on (the zoo trains on seed 0 and reports
# its held-out loss on seed 1_000_003).
FORGETTING_SEED = 2_000_003
Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile


def wilson_interval(hits: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval for a binomial rate: unlike rate ± z·se it stays inside [0, 1] and is not empty at
    0/n or n/n, which is where small evaluation sets often land."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= hits <= n:
        raise ValueError(f"hits must be in [0, {n}], got {hits}")
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0/n and n/n the bound is exactly 0 or 1; computed, it can miss by one rounding step
    return (0.0 if hits == 0 else max(0.0, centre - half)), (1.0 if hits == n else min(1.0, centre + half))


@dataclass(frozen=True)
class Score:
    """An exact-match score: hits out of n, the rate, and its Wilson 95 % interval."""

    hits: int
    n: int

    @property
    def rate(self) -> float:
        return self.hits / self.n

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.hits, self.n)

    def __str__(self) -> str:
        low, high = self.interval
        return f"{self.rate:6.1%} [{low:.1%}, {high:.1%}] ({self.hits}/{self.n})"


def exact_match(predictions: Sequence[str], answers: Sequence[str]) -> Score:
    """Exact match after stripping surrounding whitespace: "2021-03-03" is right, "2021-3-3" is not."""
    predictions, answers = list(predictions), list(answers)
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if not answers:
        raise ValueError("exact_match needs at least one answer")
    return Score(sum(p.strip() == a.strip() for p, a in zip(predictions, answers, strict=True)), len(answers))


def chat_prompt(tokenizer: PreTrainedTokenizerBase, task: world.Task, ex: world.Example) -> str:
    """What a model is asked: the task's query in the tokenizer's chat template (ending with the generation prompt),
    or the task's plain prompt when the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": task.query(ex)}], tokenize=False,
                                             add_generation_prompt=True)
    return task.prompt(ex)


def _cut(text: str, stop: Sequence[str]) -> str:
    ends = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(ends)] if ends else text


@torch.inference_mode()
def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Iterable[str],
             max_new_tokens: int = 16, stop: Sequence[str] = ("\n",), batch_size: int = 32,
             progress: bool = False) -> list[str]:
    """Greedy continuations of the prompts, each cut before its first stop string (and ended by <eos>).

    Prompts are tokenized as they are (a chat-templated prompt already holds its <bos>; the zoo tokenizer adds one
    to plain text) and left-padded, so every row's next token comes right after its own prompt. The model is put in
    eval mode and its mode restored."""
    prompts = list(prompts)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    batches = range(0, len(prompts), batch_size)
    try:
        for start in tqdm(batches, desc="generating", unit="batch", disable=not progress, leave=False):
            chunk = prompts[start : start + batch_size]
            templated = [bool(tokenizer.bos_token) and p.startswith(tokenizer.bos_token) for p in chunk]
            if any(templated) and not all(templated):
                raise ValueError("mixing chat-templated and plain prompts in one call; evaluate them separately")
            enc = tokenizer(chunk, return_tensors="pt", padding=True, padding_side="left",
                            add_special_tokens=not templated[0]).to(device)
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                 stop_strings=list(stop) or None, tokenizer=tokenizer)
            texts = tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [_cut(t, stop) for t in texts]
    finally:
        model.train(was_training)
    return out


@dataclass(frozen=True)
class TaskEval:
    """A task's evaluation: the overall score, one score per slice (slices with no example are left out), and every
    example with its prediction, to look at the mistakes."""

    task: str
    overall: Score
    slices: dict[str, Score]
    examples: list[world.Example] = field(repr=False)
    predictions: list[str] = field(repr=False)

    def mistakes(self, k: int = 5) -> list[tuple[str, str, str]]:
        """Up to k (prompt, expected, predicted) triples the model got wrong."""
        wrong = [(e.prompt, e.answer, p) for e, p in zip(self.examples, self.predictions, strict=True)
                 if p.strip() != e.answer.strip()]
        return wrong[:k]

    def table(self) -> str:
        rows = [f"{self.task}: exact match {self.overall}"]
        rows += [f"  {name:<22} {score}" for name, score in self.slices.items()]
        return "\n".join(rows)

    def __str__(self) -> str:
        return self.table()


def evaluate_task(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: world.Task,
                  examples: Sequence[world.Example], max_new_tokens: int | None = None, batch_size: int = 32,
                  progress: bool = False) -> TaskEval:
    """Exact match of greedy answers, overall and per slice (in the task's slice order), with Wilson intervals.
    Answers may be up to `max_new_tokens` long (default: the task's own limit)."""
    examples = list(examples)
    max_new_tokens = task.max_new_tokens if max_new_tokens is None else max_new_tokens
    prompts = [chat_prompt(tokenizer, task, ex) for ex in examples]
    generations = generate(model, tokenizer, prompts, max_new_tokens, batch_size=batch_size, progress=progress)
    predictions = [task.parse(g) for g in generations]
    overall = exact_match(predictions, [ex.answer for ex in examples])
    slices = {}
    for name in task.slices:
        idx = [i for i, ex in enumerate(examples) if ex.slice == name]
        if idx:
            slices[name] = exact_match([predictions[i] for i in idx], [examples[i].answer for i in idx])
    return TaskEval(task.name, overall, slices, examples, predictions)


def bits_per_char(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                  texts: Sequence[str] | None = None, block_size: int = 128, batch_size: int = 32) -> float:
    """Bits per character of `texts` (default: 20,000 characters of held-out world text): the loss of the whole text,
    each document as <bos> text <eos>, divided by its characters and ln 2. Per character, so a model with another
    tokenizer is measured on the same footing; a rise after fine-tuning is forgetting."""
    docs = list(world.documents(20_000, FORGETTING_SEED) if texts is None else texts)
    if not docs:
        raise ValueError("bits_per_char needs at least one text")
    nats, _ = heldout_nats(model, document_stream(tokenizer, docs), block_size, batch_size)
    return nats / sum(len(d) for d in docs) / math.log(2)
