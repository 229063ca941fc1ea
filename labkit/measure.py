"""Measuring what matters on small hardware: wall time, throughput, peak memory, FLOPs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
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


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (NumPy's default): with 5 values, Q1 is the 2nd and Q3 the 4th."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass(frozen=True)
class Benchmark:
    """What `benchmark` measured: the median and its spread, over `n` timed calls (or their rates, see `rate`).

    `iqr` is the interquartile range, the width of the middle half of the samples (`q3 - q1`): one slow call
    barely moves it, a machine whose speed keeps changing widens it. `reliable` is False when that spread stayed
    above `tolerance` of the median until the time cap: the machine was busy and the numbers are noise.
    In arithmetic and `float()` it stands for its median, as the float `benchmark` used to return.
    """

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int
    reliable: bool
    tolerance: float
    samples: tuple[float, ...] = field(default=(), repr=False)
    unit: str = "s"

    @classmethod
    def of(cls, samples: Sequence[float], reliable: bool, tolerance: float, unit: str = "s") -> Benchmark:
        ordered = sorted(samples)
        if not ordered:
            raise ValueError("no samples")
        return cls(median=_quantile(ordered, 0.5), q1=_quantile(ordered, 0.25), q3=_quantile(ordered, 0.75),
                   min=ordered[0], max=ordered[-1], n=len(ordered), reliable=reliable, tolerance=tolerance,
                   samples=tuple(samples), unit=unit)

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    @property
    def relative_iqr(self) -> float:
        """The spread as a fraction of the median (0.05: the middle half of the calls lie within 5%)."""
        return self.iqr / abs(self.median) if self.median else float("inf")

    @property
    def busy(self) -> bool:
        """The spread never settled: another program was using the machine. Do not read much into these numbers."""
        return not self.reliable

    def rate(self, work: float, unit: str = "/s") -> Benchmark:
        """The same calls as a rate, `work` per call divided by each call's seconds (FLOP/s, tokens/s).

        The median, quartiles and extremes are those of the rates: the fastest call gives the highest rate.
        """
        return Benchmark.of([work / t if t > 0 else float("inf") for t in self.samples], self.reliable,
                            self.tolerance, unit)

    @property
    def note(self) -> str:
        """"" when the spread settled, else a sentence for the learner: the machine is busy, these numbers are noise."""
        if self.reliable:
            return ""
        return (f"Machine busy: the spread of {self.n} timed calls stayed at {self.relative_iqr:.0%} of the median "
                f"(more than {self.tolerance:.0%}), so these numbers are unreliable. Close other programs and run "
                "the cell again.")

    def __str__(self) -> str:
        def fmt(x: float) -> str:
            return f"{x * 1e3:.3g} ms" if self.unit == "s" else f"{x:.3g}{self.unit}"

        text = (f"median {fmt(self.median)} (IQR {fmt(self.iqr)}, min {fmt(self.min)}, max {fmt(self.max)}, "
                f"n={self.n})")
        return text if self.reliable else f"{text}  [unreliable: machine busy]"

    # The float it used to be: `flops / benchmark(fn)` still works, and means the median.
    def __float__(self) -> float:
        return float(self.median)

    def __truediv__(self, other: float) -> float:
        return self.median / other

    def __rtruediv__(self, other: float) -> float:
        return other / self.median

    def __mul__(self, other: float) -> float:
        return self.median * other

    __rmul__ = __mul__


def benchmark(
    fn: Callable[[], object],
    *,
    warmup: int = 2,
    repeat: int = 5,
    device: torch.device | str | None = None,
    tolerance: float = 0.1,
    max_seconds: float = 1.0,
    max_repeat: int = 1000,
    clock: Callable[[], float] = time.perf_counter,
) -> Benchmark:
    """Seconds per call of `fn()`: its median and spread, after warm-up calls (caches, lazy init, compilation).

    Times at least `repeat` calls, then keeps timing until the spread settles (the IQR is at most `tolerance`
    of the median) or the calls have taken `max_seconds` (or `max_repeat` calls). A spread that never settles
    is reported, not hidden: the result's `reliable` is False and its `note` says the machine was busy.
    `clock` is for tests: a function that returns the time in seconds.
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while True:
        _sync(device)
        start = clock()
        fn()
        _sync(device)
        times.append(clock() - start)
        spent += times[-1]
        if len(times) < repeat:
            continue
        result = Benchmark.of(times, reliable=True, tolerance=tolerance)
        if result.relative_iqr <= tolerance:
            return result
        if spent >= max_seconds or len(times) >= max_repeat:
            return Benchmark.of(times, reliable=False, tolerance=tolerance)
