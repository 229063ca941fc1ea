"""What the lab notebooks import: device and seeding, the offline data world, tiny models, measurement, plots."""

from labkit.device import device, has_cuda, seed_everything
from labkit.measure import Benchmark, benchmark, count_parameters, matmul_flops, peak_memory, rss_mb, timer

__all__ = [
    "Benchmark",
    "benchmark",
    "count_parameters",
    "device",
    "has_cuda",
    "matmul_flops",
    "peak_memory",
    "rss_mb",
    "seed_everything",
    "timer",
]
