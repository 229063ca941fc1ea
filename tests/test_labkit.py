"""labkit basics: device choice and override, seeding, measurement, plots, held-out loss."""

from __future__ import annotations

import random
import time

import matplotlib
import numpy as np
import pytest
import torch

import labkit
from labkit.lm import (
    cosine_lr,
    heldout_loss,
    heldout_nats,
    mean_loss,
    random_batch,
    sequence_batch,
    sequence_loss,
    windows,
)
from labkit.plots import bars, heatmap, loss_curve

matplotlib.use("Agg")


def test_device_auto_and_override(monkeypatch, capsys):
    monkeypatch.delenv("LABKIT_DEVICE", raising=False)
    dev = labkit.device()
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert dev.type == expected
    assert f"Using device: {expected}" in capsys.readouterr().out
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    assert labkit.device(verbose=False).type == "cpu" and not labkit.has_cuda()
    if not torch.cuda.is_available():
        monkeypatch.setenv("LABKIT_DEVICE", "cuda")
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            labkit.device()


def test_seed_everything_makes_all_generators_repeat():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    labkit.seed_everything(5)
    first = draw()
    labkit.seed_everything(5)
    assert draw() == first
    labkit.seed_everything(6)
    assert draw() != first


def test_timer_benchmark_and_flops():
    """Load-proof: a sleep lasts at least its time, and nothing inside a block outlasts the block around it."""
    outer = time.perf_counter()
    with labkit.timer(items=1000) as t:
        time.sleep(0.05)
    outer = time.perf_counter() - outer
    assert 0.045 < t.seconds <= outer  # measures the sleep, in seconds (not ms, not the time since import)
    assert t.per_second == pytest.approx(1000 / t.seconds)
    assert labkit.matmul_flops(2, 3, 4) == 48

    naps = []

    def nap():
        start = time.perf_counter()
        time.sleep(0.01)
        naps.append(time.perf_counter() - start)

    outer = time.perf_counter()
    result = labkit.benchmark(nap, warmup=1, repeat=3, max_seconds=0.0)
    outer = time.perf_counter() - outer
    assert len(naps) == 4 == result.n + 1  # one warm-up call, three timed ones (a cap of 0 s stops at the minimum)
    assert 0.009 < result.min and sorted(naps[1:])[1] <= result.median  # the median of the timed calls, each whole
    assert result.median <= outer / 2  # per call, not the total: median + slowest <= all three timed calls <= outer
    assert result.min <= result.q1 <= result.median <= result.q3 <= result.max <= outer


def test_peak_memory_and_parameter_count():
    with labkit.peak_memory() as mem:
        x = torch.ones(1024, 1024)
    assert mem.cpu_rss_mb > 10 and mem.cuda_peak_mb is None and x.sum() > 0
    model = torch.nn.Linear(64, 32)
    model.bias.requires_grad_(False)
    assert labkit.count_parameters(model) == 64 * 32 + 32
    assert labkit.count_parameters(model, trainable_only=True) == 64 * 32


def test_windows_batches_and_mean_loss():
    ids = torch.arange(20)
    x, y = windows(ids, 4, torch.tensor([0, 10]))
    assert x.tolist() == [[0, 1, 2, 3], [10, 11, 12, 13]] and y.tolist() == [4, 14]
    xb, yb = random_batch(ids, 4, 8, torch.Generator().manual_seed(0))
    assert xb.shape == (8, 4) and torch.equal(yb, xb[:, -1] + 1)

    class Uniform(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 20)

    assert abs(mean_loss(Uniform(), ids, 4) - np.log(20)) < 1e-6


class _Echo(torch.nn.Module):
    """A sequence model that puts all its probability on "the next id is this id + 1", with dropout on its logits
    so that a forward pass in training mode is visibly different."""

    def __init__(self, vocab: int = 50):
        super().__init__()
        self.vocab, self.scale = vocab, torch.nn.Parameter(torch.tensor(30.0))
        self.drop = torch.nn.Dropout(0.5)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return self.drop(self.scale * torch.nn.functional.one_hot((x + 1) % self.vocab, self.vocab).float())


def test_sequence_batch_loss_and_schedule():
    ids = torch.arange(100, 150)
    x, y = sequence_batch(ids, 8, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8) and torch.equal(y, x + 1)
    starts = {int(sequence_batch(torch.arange(10), 8, 1, torch.Generator().manual_seed(s))[0][0, 0]) for s in range(40)}
    assert starts == {0, 1}  # every valid start, and none past the end
    logits, targets = torch.randn(2, 3, 5, dtype=torch.bfloat16), torch.tensor([[1, 2, -100], [0, 4, 3]])
    got = sequence_loss(logits, targets)
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.nn.functional.cross_entropy(logits.float().view(6, 5), targets.view(6)))
    lrs = [cosine_lr(s, 1.0, 0.1, 10, 110) for s in range(120)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0 and abs(lrs[109] - 0.1) < 1e-12 and lrs[115] == 0.1
    assert all(a >= b for a, b in zip(lrs[9:-1], lrs[10:], strict=True))  # never rises after the warm-up


def test_heldout_loss_predicts_every_id_but_the_first_once_in_eval_mode():
    model = _Echo().train()
    ids = torch.arange(45) % 50
    nats, tokens = heldout_nats(model, ids, block_size=8, batch_size=2)
    assert tokens == 44 and nats < 1e-6  # dropout off: a perfect model; the 4 left after 5 windows counted too
    assert model.seen == [(2, 8), (2, 8), (1, 8), (1, 4)] and model.training  # batches, tail, mode restored
    assert heldout_loss(model.eval(), ids, 8) < 1e-6 and not model.training
    model.seen.clear()
    nats, tokens = heldout_nats(model, ids[:6], block_size=8)
    assert tokens == 5 and nats < 1e-6
    assert model.seen == [(1, 5)]  # a text shorter than a window: its tail only, never an empty batch


def test_plots_return_figures():
    assert loss_curve([3, 2, 1], {2: 1.5}, floor=0.5).axes
    assert bars({"a": 1.0, "b": 2.0}, "t", "y").axes
    assert heatmap(torch.rand(3, 3), "h", xlabels=list("abc"), ylabels=list("abc")).axes


def test_backends_say_why_bitsandbytes_cannot_be_used(monkeypatch):
    import builtins

    from labkit import backends

    bnb, problem = backends.import_bitsandbytes()
    assert (bnb is None) != (problem is None)
    if bnb is not None:  # the 4-bit probe's answer agrees with what the library does
        w = torch.randn(128, 64)
        try:
            packed, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
            works = (bnb.functional.dequantize_4bit(packed, state) - w).abs().max().item() < 0.5 * w.abs().max().item()
        except Exception:
            works = False
        assert (backends.bitsandbytes_4bit_problem() is None) == works
    real_import = builtins.__import__

    def no_bitsandbytes(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise RuntimeError("no backend for this platform")
        return real_import(name, *args, **kwargs)

    backends._import.cache_clear()
    backends.bitsandbytes_4bit_problem.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_bitsandbytes)
    try:
        assert backends.import_bitsandbytes() == (None, "RuntimeError: no backend for this platform")
        assert backends.bitsandbytes_4bit_problem() == "RuntimeError: no backend for this platform"
    finally:
        monkeypatch.undo()
        backends._import.cache_clear()
        backends.bitsandbytes_4bit_problem.cache_clear()
