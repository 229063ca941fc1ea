"""Plots a learner would rather look at than read. Matplotlib only; works headless."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt


def loss_curve(
    train: Sequence[float],
    val: dict[int, float] | None = None,
    floor: float | None = None,
    title: str = "Training loss",
    ylabel: str = "cross-entropy (nats)",
):
    """Training loss per step, optional validation points {step: loss} and a dashed floor line."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(len(train)), list(train), label="train", linewidth=1)
    if val:
        steps = sorted(val)
        ax.plot(steps, [val[s] for s in steps], "o-", label="validation")
    if floor is not None:
        ax.axhline(floor, linestyle="--", color="grey", label=f"floor {floor:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def bars(values: dict[str, float], title: str, ylabel: str):
    """A labelled bar chart: memory per configuration, time per method, ..."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(values)
    ax.bar(names, [values[n] for n in names])
    for i, n in enumerate(names):
        ax.annotate(f"{values[n]:.3g}", (i, values[n]), ha="center", va="bottom")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def heatmap(matrix, title: str, xlabels: Sequence[str] | None = None, ylabels: Sequence[str] | None = None):
    """A matrix as an image: attention maps, bigram tables."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(matrix, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax)
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), labels=list(xlabels), fontsize=7)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), labels=list(ylabels), fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig
