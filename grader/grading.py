"""Run a lab's checks on a namespace of learner objects and turn outcomes into results.

Used in two places: the in-notebook `check()` (public checks, the learner's live
namespace) and the headless grader (all checks, inside the freshly executed kernel).
"""

from __future__ import annotations

import inspect
import platform
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from grader.asserts import CheckFailed, hidden_mode
from grader.registry import Check, Lab, Question

STATUSES = ("passed", "failed", "error", "not_implemented", "skipped", "timeout")


@dataclass
class QuestionResult:
    id: str
    score: float
    max_score: float
    status: str
    feedback: str
    title: str = ""


@dataclass
class LabResult:
    lab: str
    score: float
    max_score: float
    duration_s: float
    questions: list[QuestionResult]
    environment: dict = field(default_factory=dict)
    execution: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_questions(cls, lab: str, questions: list[QuestionResult], **kw: Any) -> LabResult:
        return cls(
            lab=lab,
            score=round(sum(q.score for q in questions), 4),
            max_score=round(sum(q.max_score for q in questions), 4),
            questions=questions,
            **kw,
        )


@dataclass
class Context:
    """What a check may ask for besides learner objects."""

    device: Any
    has_cuda: bool
    hidden: bool

    def generator(self, seed: int = 0):
        import torch

        return torch.Generator().manual_seed(seed)


class CheckTimeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """SIGALRM-based limit; a no-op off the main thread or on Windows (the runner still has its own)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def on_alarm(signum, frame):
        raise CheckTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def environment() -> dict:
    import torch

    from labkit.device import has_cuda

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": "cuda" if has_cuda() else "cpu",
        "cuda_device": torch.cuda.get_device_name(0) if has_cuda() else None,
    }


def _learner_location(exc: BaseException) -> str:
    """The last traceback line that sits in notebook code, so the learner knows where to look."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        fname = frame.filename
        if fname.startswith("<ipython-input") or "ipykernel_" in fname or fname.startswith("<cell"):
            return f" (in your code: `{(frame.line or '').strip()}`)"
    return ""


def _raised_not_implemented(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, NotImplementedError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _call(check: Check, namespace: Mapping[str, Any], ctx: Context) -> None:
    params = inspect.signature(check.fn).parameters
    kwargs = {name: (ctx if name == "ctx" else namespace[name]) for name in params}
    check.fn(**kwargs)


def run_question(
    lab: Lab, q: Question, namespace: Mapping[str, Any], include_hidden: bool, ctx: Context | None = None
) -> QuestionResult:
    """Run one question's checks, stopping at the first that does not pass."""
    import torch

    from labkit.device import has_cuda, seed_everything

    cuda = has_cuda()
    ctx = ctx or Context(device=torch.device("cuda" if cuda else "cpu"), has_cuda=cuda, hidden=include_hidden)

    def result(status: str, feedback: str, score: float = 0.0, max_score: float = q.points) -> QuestionResult:
        return QuestionResult(q.id, score, max_score, status, feedback, q.title)

    if q.device == "cuda" and not cuda:
        return result("skipped", "Needs a CUDA GPU; skipped on this machine and not counted in the total.", 0, 0)
    missing = [n for n in q.uses if n not in namespace]
    if missing:
        names = ", ".join(f"`{n}`" for n in missing)
        return result(
            "not_implemented",
            f"Not implemented yet: {names} is not defined. Write it in the cell marked "
            "'YOUR CODE HERE' for this question and run that cell.",
        )
    checks = q.checks if include_hidden else q.public_checks
    for check in checks:
        seed_everything(1234)
        label = "hidden check" if check.hidden else "check"
        try:
            with _time_limit(check.timeout_s):
                if check.hidden:
                    with hidden_mode():
                        _call(check, namespace, ctx)
                else:
                    _call(check, namespace, ctx)
        except CheckTimeout:
            return result("timeout", f"A {label} took longer than {check.timeout_s:g} s; is there an endless loop?")
        except CheckFailed as exc:
            return result("failed", f"{'[hidden check] ' if check.hidden else ''}{exc}")
        except AssertionError as exc:
            return result("failed", f"{'[hidden check] ' if check.hidden else ''}{exc or 'assertion failed'}")
        except Exception as exc:
            if _raised_not_implemented(exc):
                names = ", ".join(f"`{n}`" for n in q.uses)
                return result(
                    "not_implemented",
                    f"Not implemented yet: {names} still raises NotImplementedError. "
                    "Replace the `raise NotImplementedError(...)` line with your code.",
                )
            return result("error", f"Your code raised {type(exc).__name__}: {exc}{_learner_location(exc)}")
    return result("passed", "All checks passed." if include_hidden or not q.hidden else "", q.points)


def grade_namespace(lab: Lab, namespace: Mapping[str, Any], include_hidden: bool = True) -> list[QuestionResult]:
    return [run_question(lab, q, namespace, include_hidden) for q in lab.questions.values()]


def caller_namespace(depth: int = 2) -> dict:
    """Globals of the notebook (or script) that called `check`."""
    return sys._getframe(depth).f_globals
