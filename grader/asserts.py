"""ML-aware assertions: tensors with tolerances, metric thresholds, saved artifacts.

Every failure raises `CheckFailed` carrying its parts - what was checked, what was received,
what was expected and a hint - rather than finished prose. The framework renders them, and
inside a *hidden* check it shows "(hidden)" in place of every expected value, whoever wrote the
check: each expected value an assertion sees there is also recorded, so the framework can
scrub it from free text too (see `grader.grading`).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

HIDDEN = "(hidden)"
# Expected values seen by assertions inside the running hidden check; None outside one.
_SECRETS: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("hidden_expected", default=None)


class CheckFailed(AssertionError):
    """A check found a wrong answer: what, received, expected and a hint, rendered by the framework."""

    def __init__(self, what: str, hint: str | None = None, *, expected: Any = None, received: Any = None):
        self.what, self.hint = what, hint
        self.expected = None if expected is None else str(expected)
        self.received = None if received is None else str(received)
        _remember(self.expected)
        super().__init__(self.render())

    def render(self, reveal: bool = True) -> str:
        lines = [self.what]
        if self.received is not None:
            lines.append(f"  received: {self.received}")
        if self.expected is not None:
            lines.append(f"  expected: {self.expected if reveal else HIDDEN}")
        if self.hint:
            lines.append(f"Hint: {self.hint}")
        return "\n".join(lines)


@contextmanager
def hidden_mode() -> Iterator[list[str]]:
    """Run a hidden check: yields the expected values its failing assertions carried, to scrub from free text."""
    secrets: list[str] = []
    token = _SECRETS.set(secrets)
    try:
        yield secrets
    finally:
        _SECRETS.reset(token)


def reveals() -> bool:
    """False inside a hidden check: a check that writes its own text must not show expected values there."""
    return _SECRETS.get() is None


def _remember(*values: str | None) -> None:
    secrets = _SECRETS.get()
    if secrets is not None:
        secrets.extend(v for v in values if v)


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    return repr(x)


def _preview(t: torch.Tensor, n: int = 4) -> str:
    flat = t.detach().flatten()[:n].tolist()
    return "[" + ", ".join(_fmt(float(v)) for v in flat) + (", ...]" if t.numel() > n else "]")


def check(
    condition: bool, message: str, hint: str | None = None, *, expected: Any = None, received: Any = None
) -> None:
    """Plain boolean check. Put the expected value in `expected=`, never in `message`: it is hidden there."""
    if not condition:
        raise CheckFailed(message, hint, expected=expected, received=received)


def assert_type(value: Any, types: type | tuple[type, ...], name: str, hint: str | None = None) -> None:
    if not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise CheckFailed(f"{name} should be a {names}, got {type(value).__name__}.", hint)


def assert_shape(t: Any, shape: Sequence[int], name: str, hint: str | None = None) -> None:
    assert_type(t, torch.Tensor, name, hint)
    if tuple(t.shape) != tuple(shape):
        raise CheckFailed(f"{name} has the wrong shape.", hint, received=tuple(t.shape), expected=tuple(shape))


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
            f"{name} has the wrong shape.", hint, received=tuple(actual.shape), expected=tuple(expected.shape)
        )
    if check_dtype and actual.dtype != expected.dtype:
        raise CheckFailed(f"{name} has the wrong dtype.", hint, received=actual.dtype, expected=expected.dtype)
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
        _remember(_fmt(float(e[idx])), _preview(e))
        raise CheckFailed(
            f"{name}: {n_bad} of {n} values differ (max abs error {max_err:.3g}, rtol={rtol:g}, atol={atol:g}); "
            f"first mismatch at index {idx}.",
            hint,
            received=f"{_fmt(float(a[idx]))} at {idx}; starts {_preview(a)}",
            expected=f"{_fmt(float(e[idx]))} at {idx}; starts {_preview(e)}",
        )


def assert_number_close(
    actual: Any, expected: float, name: str, rtol: float = 1e-4, atol: float = 1e-6, hint: str | None = None
) -> None:
    if isinstance(actual, torch.Tensor) and actual.numel() == 1:
        actual = actual.item()
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        raise CheckFailed(f"{name} should be a number, got {type(actual).__name__}.", hint)
    if not math.isclose(float(actual), float(expected), rel_tol=rtol, abs_tol=atol):
        raise CheckFailed(f"{name} is wrong.", hint, received=_fmt(float(actual)), expected=_fmt(float(expected)))


def assert_equal(actual: Any, expected: Any, name: str, hint: str | None = None) -> None:
    if actual != expected:
        raise CheckFailed(f"{name} is wrong.", hint, received=_fmt(actual), expected=_fmt(expected))


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


class CheckTimeout(Exception):
    """A check ran past its time limit (raised by the grader's alarm, inside whatever code was running)."""


def call_learner(fn: Callable, what: str, *args, hint: str | None = None, **kwargs):
    """Call learner code on a check's own input; a crash there fails the check and says which input caused it.
    "Not implemented", another check's failure and a timeout pass through as they are."""
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, CheckFailed, CheckTimeout):
        raise
    except Exception as exc:
        raise CheckFailed(f"{what} raised {type(exc).__name__}.", hint, received=str(exc)[:300]) from None


def learner_raises(fn: Callable, what: str, error: type[Exception], *args, hint: str | None = None,
                   if_silent: str | None = None, **kwargs) -> Exception | None:
    """Call learner code whose contract is to raise `error` on this input; returns the `error` it raised, for the
    check to read its message. Another exception fails the check, naming both types. Returning normally fails it
    with the hint `if_silent` (why it must raise); with `if_silent=None` the contract also allows returning (another
    valid answer), and the result is None. "Not implemented", another check's failure and a timeout pass through."""
    try:
        fn(*args, **kwargs)
    except (NotImplementedError, CheckFailed, CheckTimeout):
        raise
    except error as exc:
        return exc
    except Exception as exc:
        raise CheckFailed(f"{what} raised {type(exc).__name__}, not {error.__name__}.", hint,
                          received=(str(exc).splitlines() or [""])[0][:300]) from None
    if if_silent is not None:
        raise CheckFailed(f"{what} returned without raising {error.__name__}.", if_silent)
    return None
