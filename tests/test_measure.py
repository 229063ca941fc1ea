"""labkit.benchmark's settling logic, on a fake clock: a function whose duration the test decides."""

from __future__ import annotations

import math

import matplotlib
import pytest

import labkit
from labkit.measure import Benchmark, benchmark
from labkit.plots import bars

matplotlib.use("Agg")


class FakeWork:
    """A clock and a function to time: each call of the function moves the clock on by the next duration."""

    def __init__(self, warmup: list[float], timed, cycle: bool = False):
        self.now = 0.0
        self.durations = list(warmup)
        self.timed = list(timed)
        self.cycle = cycle
        self.calls = 0

    def clock(self) -> float:
        return self.now

    def __call__(self) -> None:
        i = self.calls
        self.calls += 1
        if i < len(self.durations):
            self.now += self.durations[i]
            return
        j = i - len(self.durations)
        self.now += self.timed[j % len(self.timed)] if self.cycle else self.timed[j]


def test_a_steady_function_stops_after_the_minimum_and_is_reliable():
    work = FakeWork([9.0, 9.0], [1.0] * 50)
    result = benchmark(work, warmup=2, repeat=5, clock=work.clock)
    assert isinstance(result, Benchmark)
    assert work.calls == 7  # two warm-up calls (their 9 s never counted), five timed ones
    assert (result.median, result.iqr, result.min, result.max, result.n) == (1.0, 0.0, 1.0, 1.0, 5)
    assert result.reliable and not result.busy and result.note == ""


def test_a_noisy_start_keeps_timing_until_the_spread_settles():
    # sorted after n calls: n=5 [1,1,1,2,2] IQR 1; n=6 0.75; n=7 0.5; n=8 0.25; n=9 [1]*7+[2,2]: IQR 0
    work = FakeWork([], [1.0, 2.0, 1.0, 2.0] + [1.0] * 50)
    result = benchmark(work, warmup=0, repeat=5, tolerance=0.1, max_seconds=1e9, clock=work.clock)
    assert result.n == 9 == work.calls and result.reliable
    assert (result.median, result.q1, result.q3, result.min, result.max) == (1.0, 1.0, 1.0, 1.0, 2.0)
    # a looser tolerance accepts the spread sooner: n=7 has IQR 0.5 = 50% of the median
    work = FakeWork([], [1.0, 2.0, 1.0, 2.0] + [1.0] * 50)
    assert benchmark(work, warmup=0, tolerance=0.5, max_seconds=1e9, clock=work.clock).n == 7


def test_a_spread_that_never_settles_stops_at_the_time_cap_and_says_the_machine_is_busy():
    work = FakeWork([], [1.0, 3.0], cycle=True)  # seconds spent: 1 4 5 8 9 12 13 16 17 20
    result = benchmark(work, warmup=0, repeat=5, max_seconds=20.0, clock=work.clock)
    assert result.n == 10 == work.calls
    assert not result.reliable and result.busy
    assert (result.median, result.q1, result.q3, result.min, result.max) == (2.0, 1.0, 3.0, 1.0, 3.0)
    assert result.iqr == 2.0 and result.relative_iqr == 1.0
    assert "busy" in result.note and "unreliable" in result.note
    assert "unreliable" in str(result)


def test_the_minimum_number_of_calls_is_kept_even_past_the_cap_and_max_repeat_also_stops_it():
    work = FakeWork([], [100.0, 300.0], cycle=True)
    assert benchmark(work, warmup=0, repeat=5, max_seconds=1.0, clock=work.clock).n == 5
    work = FakeWork([], [1.0, 3.0], cycle=True)
    result = benchmark(work, warmup=0, repeat=5, max_seconds=math.inf, max_repeat=7, clock=work.clock)
    assert result.n == 7 and result.busy


def test_rate_turns_seconds_into_throughput_and_keeps_the_verdict():
    timing = Benchmark.of([1.0, 2.0, 4.0], reliable=False, tolerance=0.1)
    rate = timing.rate(8.0, unit=" FLOP/s")
    assert (rate.median, rate.min, rate.max, rate.n) == (4.0, 2.0, 8.0, 3)  # the fastest call, the highest rate
    assert rate.busy and rate.unit == " FLOP/s"
    # the float benchmark used to return: arithmetic and float() use the median
    assert 8.0 / timing == 4.0 and timing * 3 == 6.0 and float(timing) == 2.0 and timing / 2 == 1.0


def test_bars_of_measurements_show_the_spread_and_a_busy_machine_in_the_title():
    steady = Benchmark.of([1.0, 1.0, 1.1, 1.0, 1.0], reliable=True, tolerance=0.1)
    noisy = Benchmark.of([1.0, 3.0, 1.0, 3.0, 2.0], reliable=False, tolerance=0.1)
    fig = bars({"a": steady, "b": 2.0}, "Throughput", "GFLOP/s")
    ax = fig.axes[0]
    assert len(ax.containers) == 3  # the bars, the min-max error bars, the IQR error bars
    assert "busy" not in ax.get_title()
    fig = bars({"a": steady, "b": noisy}, "Throughput", "GFLOP/s")
    title = fig.axes[0].get_title()
    assert "busy" in title and "unreliable" in title and "(b)" in title


def test_a_real_function_gets_a_median_inside_its_range():
    result = labkit.benchmark(lambda: sum(range(1000)), warmup=1, repeat=5, max_seconds=0.2)
    assert result.n >= 5 and result.min <= result.q1 <= result.median <= result.q3 <= result.max
    assert result.median > 0 and isinstance(result.reliable, bool)
    with pytest.raises(ValueError):
        Benchmark.of([], reliable=True, tolerance=0.1)
