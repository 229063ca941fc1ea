"""ML-aware assertions: tensors with tolerances, metric thresholds, saved artifacts.

Every failure raises `CheckFailed` with a message written for a learner: what was
checked, expected vs received (shape, dtype, first mismatching index and values) and
a hint. Inside a *hidden* check the expected values are redacted automatically, so
a failure message can never leak a hidden reference answer.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

_REVEAL = contextvars.ContextVar("reveal_expected", default=True)


class CheckFailed(AssertionError):
    """A check found a wrong answer. The message is shown to the learner as is."""

    def __init__(self, message: str, hint: str | None = None):
        self.hint = hint
        super().__init__(message + (f"\nHint: {hint}" if hint else ""))


@contextmanager
def hidden_mode() -> Iterator[None]:
    """Within this block, assertion messages never include expected values."""
    token = _REVEAL.set(False)
    try:
        yield
    finally:
        _REVEAL.reset(token)


def reveals() -> bool:
    return _REVEAL.get()


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    return repr(x)


def _expected(text: str) -> str:
    return text if reveals() else "(hidden)"


def _preview(t: torch.Tensor, n: int = 4) -> str:
    flat = t.detach().flatten()[:n].tolist()
    return "[" + ", ".join(_fmt(float(v)) for v in flat) + (", ...]" if t.numel() > n else "]")


def check(condition: bool, message: str, hint: str | None = None) -> None:
    """Plain boolean check with a learner-facing message."""
    if not condition:
        raise CheckFailed(message, hint)


def assert_type(value: Any, types: type | tuple[type, ...], name: str, hint: str | None = None) -> None:
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise CheckFailed(f"{name} should be a {names}, got {type(value).__name__}.", hint)


def assert_shape(t: Any, shape: Sequence[int], name: str, hint: str | None = None) -> None:
    assert_type(t, torch.Tensor, name, hint)
    if tuple(t.shape) != tuple(shape):
        raise CheckFailed(f"{name} has shape {tuple(t.shape)}, expected {_expected(str(tuple(shape)))}.", hint)


def assert_close(
    actual: Any,
    expected: Any,
    name: str,
    rtol: float = 1e-4,
    atol: float = 1e-5,
    hint: str | None = None,
    check_dtype: bool = True,
) -> None:
    """Compare tensors (or numbers) with tolerances; device is ignored, shape and dtype are not."""
    if not isinstance(expected, torch.Tensor):
        assert_number_close(actual, expected, name, rtol=rtol, atol=atol, hint=hint)
        return
    assert_type(actual, torch.Tensor, name, hint)
    if tuple(actual.shape) != tuple(expected.shape):
        raise CheckFailed(
            f"{name} has shape {tuple(actual.shape)}, expected {_expected(str(tuple(expected.shape)))}.", hint
        )
    if check_dtype and actual.dtype != expected.dtype:
        raise CheckFailed(f"{name} has dtype {actual.dtype}, expected {expected.dtype}.", hint)
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if torch.isnan(a).any() and not torch.isnan(e).any():
        idx = tuple(int(i) for i in torch.nonzero(torch.isnan(a))[0])
        raise CheckFailed(f"{name} contains NaN (first at index {idx}).", hint or "look for log(0), 0/0 or overflow.")
    bad = ~torch.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        n_bad, n = int(bad.sum()), bad.numel()
        max_err = float((a - e).abs().nan_to_num(nan=math.inf).max())
        msg = (
            f"{name}: {n_bad} of {n} values differ (max abs error {max_err:.3g}, rtol={rtol:g}, atol={atol:g}).\n"
            f"  first mismatch at index {idx}: received {_fmt(float(a[idx]))}, "
            f"expected {_expected(_fmt(float(e[idx])))}\n"
            f"  received starts {_preview(a)}"
        )
        if reveals():
            msg += f"\n  expected starts {_preview(e)}"
        raise CheckFailed(msg, hint)


def assert_number_close(
    actual: Any, expected: float, name: str, rtol: float = 1e-4, atol: float = 1e-6, hint: str | None = None
) -> None:
    if isinstance(actual, torch.Tensor) and actual.numel() == 1:
        actual = actual.item()
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        raise CheckFailed(f"{name} should be a number, got {type(actual).__name__}.", hint)
    if not math.isclose(float(actual), float(expected), rel_tol=rtol, abs_tol=atol):
        raise CheckFailed(f"{name} is {_fmt(float(actual))}, expected {_expected(_fmt(float(expected)))}.", hint)


def assert_equal(actual: Any, expected: Any, name: str, hint: str | None = None) -> None:
    if actual != expected:
        raise CheckFailed(f"{name} is {_fmt(actual)}, expected {_expected(_fmt(expected))}.", hint)


def assert_below(value: float, threshold: float, name: str, hint: str | None = None) -> None:
    """Metric threshold, e.g. held-out loss below a bar. Thresholds are public: they are the goal."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if not isinstance(value, int | float) or math.isnan(value) or value >= threshold:
        raise CheckFailed(f"{name} is {_fmt(value)}; it needs to be below {threshold:g}.", hint)


def assert_above(value: float, threshold: float, name: str, hint: str | None = None) -> None:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if not isinstance(value, int | float) or math.isnan(value) or value <= threshold:
        raise CheckFailed(f"{name} is {_fmt(value)}; it needs to be above {threshold:g}.", hint)


def assert_artifact(
    path: str | Path,
    name: str,
    keys: dict[str, Sequence[int]] | None = None,
    max_mb: float | None = None,
    hint: str | None = None,
) -> dict[str, torch.Tensor]:
    """A saved checkpoint exists, loads, has these tensor names/shapes and a sane size. Returns it."""
    path = Path(path)
    check(path.exists(), f"{name}: no file at {path}.", hint or "did the cell that saves it run?")
    size_mb = path.stat().st_size / 2**20
    if max_mb is not None:
        check(size_mb <= max_mb, f"{name}: file is {size_mb:.1f} MiB, expected at most {max_mb:g} MiB.", hint)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a learner's corrupt file: say so instead of crashing
        raise CheckFailed(f"{name}: {path.name} does not load ({type(exc).__name__}: {exc}).", hint) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict) and keys:
        state = state["model"]
    for key, shape in (keys or {}).items():
        check(key in state, f"{name}: missing tensor '{key}' (has {sorted(state)[:6]}...).", hint)
        assert_shape(state[key], shape, f"{name}['{key}']", hint)
    return state
