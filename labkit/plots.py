"""Plots a learner would rather look at than read. Matplotlib only; works headless."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from labkit.measure import Benchmark


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


def bars(values: Mapping[str, float | Benchmark], title: str, ylabel: str):
    """A labelled bar chart: memory per configuration, time per method, ...

    A value may be a measurement (`labkit.benchmark(...)`, or its `.rate(work)`): its bar is the median, with
    the interquartile range as a thick error bar and min-max as a thin one, so the spread is there to see.
    When a measurement is unreliable (the machine was busy), the title says so in red.
    """
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(values)
    heights = [_median(values[n]) for n in names]
    ax.bar(names, heights, alpha=0.75 if any(_is_measurement(v) for v in values.values()) else 1.0)
    measured = [i for i, n in enumerate(names) if _is_measurement(values[n])]
    if measured:
        ms = [values[names[i]] for i in measured]
        mid = [m.median for m in ms]
        ax.errorbar(measured, mid, yerr=[[m.median - m.min for m in ms], [m.max - m.median for m in ms]],
                    fmt="none", ecolor="0.45", elinewidth=1, capsize=3, label="min-max")
        ax.errorbar(measured, mid, yerr=[[m.median - m.q1 for m in ms], [m.q3 - m.median for m in ms]],
                    fmt="none", ecolor="black", elinewidth=3, capsize=6, label="interquartile range")
        ax.legend(loc="best", fontsize=8, title="bar: median", title_fontsize=8)
    for i, n in enumerate(names):
        top = values[n].max if _is_measurement(values[n]) else heights[i]
        ax.annotate(f"{heights[i]:.3g}", (i, top), xytext=(0, 2), textcoords="offset points", ha="center",
                    va="bottom")
    busy = [n for n in names if _is_measurement(values[n]) and not values[n].reliable]
    if busy:
        ax.set_title(f"{title}\nMachine busy: spread too wide, numbers unreliable ({', '.join(busy)})",
                     color="#b00020")
    else:
        ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    return fig


def _is_measurement(value) -> bool:
    return all(hasattr(value, a) for a in ("median", "q1", "q3", "min", "max", "reliable"))


def _median(value) -> float:
    return float(value.median) if _is_measurement(value) else float(value)


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
