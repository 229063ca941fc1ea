"""Next-token data plumbing shared by the labs and the grader: windows, random batches, held-out loss."""

from __future__ import annotations

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
    """A batch of random windows: cheap, and unbiased over the whole corpus."""
    starts = torch.randint(0, len(ids) - context, (batch_size,), generator=generator)
    return windows(ids, context, starts.to(ids.device))


@torch.no_grad()
def mean_loss(model: torch.nn.Module, ids: torch.Tensor, context: int, batch_size: int = 4096) -> float:
    """Mean next-token cross-entropy (nats) over every window of `ids`: the held-out metric of the labs."""
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
