"""Next-token plumbing shared by the labs, the grader and the zoo: windows, batches, the loss, the schedule, the
held-out evaluation. One definition of each, so a lab's number and the grader's number are the same number."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def windows(ids: torch.Tensor, context: int, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs ids[s : s+context] and the next id ids[s+context] for every start s, in one indexing op."""
    x = ids[starts[:, None] + torch.arange(context, device=ids.device)]
    y = ids[starts + context]
    return x, y


def random_batch(
    ids: torch.Tensor, context: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of random windows for a fixed-context model (Lab 01's MLP): one next id per window."""
    starts = torch.randint(0, len(ids) - context, (batch_size,), generator=generator)
    return windows(ids, context, starts.to(ids.device))


def sequence_batch(
    ids: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of block_size + 1 ids for a sequence model: x, and y = x shifted by one, so there is a target
    at every position. Every start from 0 to len(ids) - block_size - 1 is possible (Lab 04's `get_batch`)."""
    starts = torch.randint(0, len(ids) - block_size, (batch_size,), generator=generator)
    window = ids[starts.to(ids.device)[:, None] + torch.arange(block_size + 1, device=ids.device)]
    return window[:, :-1], window[:, 1:]


def document_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """All documents as one 1-D tensor of ids, each as <bos> doc <eos> as in pretraining (a special token the
    tokenizer lacks, like GPT-2's <bos> or Qwen2's, is left out)."""
    bos, eos = getattr(tokenizer, "bos_token_id", None), getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for doc in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += [*([bos] if bos is not None else []), *doc, *([eos] if eos is not None else [])]
    return torch.tensor(ids, dtype=torch.long)


def logits_of(output) -> torch.Tensor:
    """The logits of a model's output: a transformers model returns an object, a from-scratch one the tensor."""
    return getattr(output, "logits", output)


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Next-token cross-entropy at every position: (batch, T, vocab) logits against (batch, T) targets that are
    already shifted. Computed in float32 (a bf16 log-softmax keeps about 3 significant digits); -100 is ignored."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction=reduction)


def cosine_lr(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to max_lr over warmup_steps (step 0 already gets max_lr / warmup_steps), then cosine decay
    that reaches min_lr at the last step, total_steps - 1, and stays there (Lab 04's `lr_at`)."""
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def heldout_nats(model: torch.nn.Module, ids: torch.Tensor, block_size: int, batch_size: int = 64) -> tuple[float, int]:
    """(summed nats, predicted tokens) of a sequence model on `ids`, in eval mode (dropout off), train mode restored.

    `ids` is cut into consecutive windows of block_size inputs that overlap their neighbours by one id (the last
    window is shorter), so every id but the first is predicted exactly once: the sum is the loss of the whole text,
    and dividing it by the text's characters gives nats/char, comparable across tokenizers."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_full = (len(ids) - 1) // block_size
    x = ids[: n_full * block_size].view(n_full, block_size)
    y = ids[1 : n_full * block_size + 1].view(n_full, block_size)
    # no empty batch when the text is shorter than one window: some kernels (bitsandbytes 4-bit on CPU) crash on one
    batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True)) if n_full else []
    if (len(ids) - 1) % block_size:
        batches.append((ids[n_full * block_size : -1][None], ids[n_full * block_size + 1 :][None]))
    nats, tokens = 0.0, 0
    try:
        for xb, yb in batches:
            logits = logits_of(model(xb.to(device)))
            nats += sequence_loss(logits, yb.to(device), reduction="sum").item()
            tokens += yb.numel()
    finally:
        model.train(was_training)
    return nats, tokens


def heldout_loss(model: torch.nn.Module, ids: torch.Tensor, block_size: int, batch_size: int = 64) -> float:
    """Mean next-token loss (nats per token) of a sequence model on `ids`: heldout_nats, divided."""
    nats, tokens = heldout_nats(model, ids, block_size, batch_size)
    return nats / tokens


@torch.no_grad()
def mean_loss(model: torch.nn.Module, ids: torch.Tensor, context: int, batch_size: int = 4096) -> float:
    """Mean next-token cross-entropy (nats) of a fixed-context model (Lab 01's MLP: one prediction per window) over
    every window of `ids`. Sequence models, which predict at every position, use heldout_loss."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    starts = torch.arange(0, len(ids) - context, device=ids.device)
    for chunk in starts.split(batch_size):
        x, y = windows(ids, context, chunk)
        logits = model(x)
        total += F.cross_entropy(logits.float(), y, reduction="sum").item()
        count += len(chunk)
    model.train(was_training)
    return total / count
