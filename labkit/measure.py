"""Measuring what matters on small hardware: wall time, throughput, peak memory, FLOPs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import psutil
import torch


def _sync(device: torch.device | str | None) -> None:
    # CUDA kernels run asynchronously: without a sync we would time the launch, not the work.
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Filled in when the `timer` block ends."""

    seconds: float = 0.0
    items: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else float("nan")


@contextmanager
def timer(items: int = 0, device: torch.device | str | None = None) -> Iterator[Timing]:
    """`with timer(items=n_tokens) as t: ...` then `t.seconds`, `t.per_second` (tokens/s)."""
    t = Timing(items=items)
    _sync(device)
    start = time.perf_counter()
    try:
        yield t
    finally:
        _sync(device)
        t.seconds = time.perf_counter() - start


def rss_mb() -> float:
    """Resident memory of this process in MiB (what the OS charges us for)."""
    return psutil.Process().memory_info().rss / 2**20


@dataclass
class PeakMemory:
    cpu_rss_mb: float = 0.0
    cuda_peak_mb: float | None = None


@contextmanager
def peak_memory(device: torch.device | str | None = None) -> Iterator[PeakMemory]:
    """Peak CUDA allocation inside the block (exact), and CPU RSS at its end.

    CPU peak inside a block cannot be read cheaply, so the CPU figure is RSS after
    the block - good enough to compare two ways of doing the same thing.
    """
    result = PeakMemory()
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        yield result
    finally:
        if cuda:
            _sync(device)
            result.cuda_peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
        result.cpu_rss_mb = rss_mb()


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def matmul_flops(m: int, k: int, n: int) -> int:
    """FLOPs of an (m x k) @ (k x n) matmul: one multiply and one add per term."""
    return 2 * m * k * n


def benchmark(fn, *, warmup: int = 2, repeat: int = 5, device: torch.device | str | None = None) -> float:
    """Median seconds per call of `fn()`, after warm-up calls (caches, lazy init, compilation)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        with timer(device=device) as t:
            fn()
        times.append(t.seconds)
    times.sort()
    return times[len(times) // 2]
