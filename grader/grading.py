"""Run a lab's checks on a namespace of learner objects, and the typed results they produce.

Used in two places: the in-notebook `check()` (public checks, the learner's live namespace) and
the headless grader (all checks, inside the freshly executed kernel). Either way a check

- sees its own copies of the learner's models and tensors, so it cannot move, mutate or retrain them;
- runs with the learner's random generators saved and restored around it;
- fails with a structured `CheckFailed` that the framework renders, hiding expected values in hidden checks.
"""

from __future__ import annotations

import copy
import inspect
import platform
import random
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

from grader.asserts import HIDDEN, CheckFailed, CheckTimeout, hidden_mode
from grader.registry import Check, Lab, Question


class TextEnum(str, Enum):
    """An enum whose members are their text: they compare with, print and serialise as plain strings."""

    def __str__(self) -> str:
        return self.value


class Status(TextEnum):
    """How a question ended."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    NOT_IMPLEMENTED = "not_implemented"
    SKIPPED = "skipped"
    TIMEOUT = "timeout"


STATUSES = tuple(s.value for s in Status)


def score(q: Question, status: Status | str) -> tuple[float, float]:
    """(score, max_score) of a question ending in `status`: the one scoring rule, for kernel and runner alike."""
    status = Status(status)
    if status is Status.SKIPPED:
        return 0.0, 0.0
    return (q.points if status is Status.PASSED else 0.0), q.points


@dataclass
class QuestionResult:
    id: str
    score: float
    max_score: float
    status: Status
    feedback: str
    title: str = ""
    hidden: bool = False  # the failure came from a hidden check: its details wait until grades are published
    # The expected values a hidden check's failure carried, kept from the learner; only the suite's audit reads them.
    redacted: tuple[str, ...] = field(default=(), repr=False, compare=False)
    # Learner objects the question needed that were not defined: the runner looks for the cell that crashed first.
    missing: tuple[str, ...] = field(default=(), repr=False, compare=False)
    duration_s: float = 0.0  # time its checks took (fixtures included): which check is slow, for authors

    def __post_init__(self) -> None:
        self.status = Status(self.status)

    @classmethod
    def of(cls, q: Question, status: Status | str, feedback: str, hidden: bool = False) -> QuestionResult:
        got, out_of = score(q, status)
        return cls(q.id, got, out_of, Status(status), feedback, q.title, hidden)


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
        data = asdict(self)
        for q in data["questions"]:
            q["status"] = str(q["status"])
            del q["redacted"], q["missing"]
        return data

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
    """What a check may ask for besides learner objects and lab fixtures."""

    device: Any
    has_cuda: bool
    hidden: bool

    def generator(self, seed: int = 0):
        import torch

        return torch.Generator().manual_seed(seed)


class Fixtures:
    """Lab fixtures built once per grading run (a base model, a reference tokenizer) and shared by its checks."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self._built: dict[str, Any] = {}

    def get(self, name: str, ctx: Context) -> Any:
        if name not in self._built:
            fn = self.lab.fixtures[name]
            wants_ctx = "ctx" in inspect.signature(fn).parameters
            self._built[name] = fn(ctx) if wants_ctx else fn()
        return self._built[name]


_SESSION_FIXTURES: dict[str, Fixtures] = {}


def session_fixtures(lab: Lab) -> Fixtures:
    """In a notebook, fixtures live as long as the kernel: `check()` after `check()` reuses them."""
    if lab.id not in _SESSION_FIXTURES or _SESSION_FIXTURES[lab.id].lab is not lab:
        _SESSION_FIXTURES[lab.id] = Fixtures(lab)
    return _SESSION_FIXTURES[lab.id]


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


@contextmanager
def preserved_rng() -> Iterator[None]:
    """The learner's Python, NumPy and torch generators are as they were after the checks, whatever they drew."""
    import numpy as np
    import torch

    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _own_copy(value: Any) -> Any:
    """A check gets its own copy of a learner's model or tensor: moving, training or editing it changes nothing."""
    import torch

    if isinstance(value, torch.nn.Module | torch.Tensor):
        try:
            return copy.deepcopy(value)
        except Exception:  # an object that cannot be copied is passed as is, as before
            return value
    return value


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


# The release's stub says this (grader.release.CODE_STUB): a learner object whose code still holds it is not written.
_STUB_TEXT = "Your code here"


def _code_objects(obj: Any, namespace: Mapping[str, Any]) -> Iterator[Any]:
    """The code of a learner function, or of the methods of a learner class (and of the learner classes it derives
    from), nested functions included."""
    if inspect.isclass(obj):
        classes = [c for c in obj.__mro__ if c is obj or any(v is c for v in namespace.values())]
        resolved = {name: m for c in reversed(classes) for name, m in vars(c).items()}  # what runs: overrides win
        members = list(resolved.values())
    else:
        members = [obj]
    stack = []
    for m in members:
        m = m.fget if isinstance(m, property) else getattr(m, "__func__", m)  # properties, static/class methods
        try:
            m = inspect.unwrap(m)  # @torch.no_grad(), functools.wraps
        except ValueError:
            pass
        if inspect.isfunction(m):
            stack.append(m.__code__)
    while stack:
        code = stack.pop()
        yield code
        stack.extend(c for c in code.co_consts if inspect.iscode(c))


def _is_stub(obj: Any, namespace: Mapping[str, Any]) -> bool:
    """A learner function or class whose code still raises the release's stub."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or hasattr(obj, "__wrapped__")):
        return False
    return any(
        "NotImplementedError" in code.co_names
        and any(isinstance(c, str) and c.startswith(_STUB_TEXT) for c in code.co_consts)
        for code in _code_objects(obj, namespace)
    )


def _raisers(exc: BaseException, namespace: Mapping[str, Any]) -> list[str]:
    """Learner functions and classes in whose code the NotImplementedError was raised (any exception in the chain)."""
    codes = set()
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, NotImplementedError) and exc.__traceback__ is not None:
            tb = exc.__traceback__
            while tb.tb_next is not None:
                tb = tb.tb_next
            codes.add(tb.tb_frame.f_code)
        exc = exc.__cause__ or exc.__context__
    if not codes:
        return []
    return [name for name, obj in namespace.items()
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
            and codes & set(_code_objects(obj, namespace))]


def _stub_causes(q: Question, namespace: Mapping[str, Any], exc: BaseException | None = None) -> list[str]:
    """The learner objects that still raise NotImplementedError behind question `q`, in the course's order: its own
    objects, the class of a value it uses, what the questions it builds on use, and whatever raised `exc`.
    Only feedback depends on it: any surprise in the learner's objects gives [] (the plain message), never an error."""
    try:
        return _find_stub_causes(q, namespace, exc)
    except Exception:
        return []


def _find_stub_causes(q: Question, namespace: Mapping[str, Any], exc: BaseException | None) -> list[str]:
    upstream = q.lab.upstream(q.id) if q.lab is not None else []
    candidates = list(q.uses)
    for name in q.uses:
        if name in namespace and not (inspect.isfunction(namespace[name]) or inspect.isclass(namespace[name])):
            cls = type(namespace[name])  # `model` is an MLPLM: is MLPLM written?
            candidates += [n for n, v in namespace.items() if v is cls]
    candidates += [n for u in upstream for n in q.lab.questions[u].uses]
    causes = [n for n in dict.fromkeys(candidates) if n in namespace and _is_stub(namespace[n], namespace)]
    if exc is not None:
        causes += [n for n in _raisers(exc, namespace) if n not in causes]
    return causes


def _names(names: list[str]) -> str:
    quoted = [f"`{n}`" for n in names] or ["this question's objects"]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _raise(names: list[str]) -> str:
    return "raises" if len(names) == 1 else "raise"


def _them(names: list[str]) -> str:
    return "it" if len(names) == 1 else "them"


def not_implemented_message(q: Question, namespace: Mapping[str, Any], exc: BaseException | None = None) -> str:
    """What to write first when a question's check met a NotImplementedError.

    Names the functions and classes that still raise it, not only the objects the question checks: a trained
    `model` is not where the stub is; the `MLPLM` and `train_step` it was built with are.
    """
    causes = _stub_causes(q, namespace, exc)
    own = [n for n in causes if n in q.uses] or (list(q.uses) if not causes else [])
    if own:
        return (f"Not implemented yet: {_names(own)} still {_raise(own)} NotImplementedError. "
                "Replace the `raise NotImplementedError(...)` line with your code.")
    return (f"Not implemented yet: {_names(list(q.uses))} {'depends' if len(q.uses) == 1 else 'depend'} on "
            f"{_names(causes)}, which still {_raise(causes)} NotImplementedError. Write {_them(causes)} first "
            "(replace the `raise NotImplementedError(...)` line), then run the cells from there on again.")


def redact(failure: CheckFailed, secrets: list[str]) -> str:
    """A hidden check's failure as the learner sees it: expected values hidden, also where free text names them."""
    text = failure.render(reveal=False)
    for secret in sorted(set(secrets), key=len, reverse=True):
        text = re.sub(rf"(?<![\w.]){re.escape(secret)}(?!\w|\.\d)", HIDDEN, text)
    return text


def _arguments(check: Check, namespace: Mapping[str, Any], ctx: Context, fixtures: Fixtures) -> dict[str, Any]:
    kwargs = {}
    for name in inspect.signature(check.fn).parameters:
        if name == "ctx":
            kwargs[name] = ctx
        elif name in fixtures.lab.fixtures:
            kwargs[name] = fixtures.get(name, ctx)
        else:
            kwargs[name] = _own_copy(namespace[name])
    return kwargs


def run_question(
    q: Question,
    namespace: Mapping[str, Any],
    include_hidden: bool,
    fixtures: Fixtures,
    ctx: Context | None = None,
) -> QuestionResult:
    """Run one question's checks, stopping at the first that does not pass."""
    import torch

    from labkit.device import has_cuda

    cuda = has_cuda()
    ctx = ctx or Context(device=torch.device("cuda" if cuda else "cpu"), has_cuda=cuda, hidden=include_hidden)
    if q.device == "cuda" and not cuda:
        return QuestionResult.of(q, Status.SKIPPED, "Needs a CUDA GPU; skipped on this machine, not counted.")
    unmet = missing_requirement(q)
    if unmet is not None:
        return QuestionResult.of(q, Status.SKIPPED, f"Needs {unmet}; skipped on this machine, not counted.")
    missing = [n for n in q.uses if n not in namespace]
    if missing:
        names = ", ".join(f"`{n}`" for n in missing)
        causes = _stub_causes(q, namespace)
        if causes:  # a value the notebook builds from exercises that are not written yet
            msg = (f"Not implemented yet: {names} is not defined: it is built with {_names(causes)}, which still "
                   f"{_raise(causes)} NotImplementedError. Write {_them(causes)} first (replace the "
                   "`raise NotImplementedError(...)` line), then run the cells from there on again.")
        else:
            msg = (f"Not implemented yet: {names} is not defined. Write it in the cell marked "
                   "'YOUR CODE HERE' for this question and run that cell.")
        result = QuestionResult.of(q, Status.NOT_IMPLEMENTED, msg)
        result.missing = tuple(missing)
        return result
    checks = q.checks if include_hidden else q.public_checks
    with preserved_rng():
        for check in checks:
            outcome = _run_check(q, check, namespace, ctx, fixtures)
            if outcome is not None:
                return outcome
    return QuestionResult.of(q, Status.PASSED, "All checks passed." if include_hidden or not q.hidden else "")


def missing_requirement(q: Question) -> str | None:
    """Why this machine lacks what `q.requires` names, or None (also when the requirement itself crashes: then the
    question runs and its checks say what is wrong)."""
    if q.requires is None:
        return None
    try:
        return q.requires()
    except Exception:
        return None


def _run_check(q: Question, check: Check, namespace, ctx: Context, fixtures: Fixtures) -> QuestionResult | None:
    """None when the check passes, else the question's result."""
    from labkit.device import seed_everything

    label = "hidden check" if check.hidden else "check"
    secrets: list[str] = []
    try:
        seed_everything(1234)
        with _time_limit(check.timeout_s), hidden_mode() if check.hidden else _no_secrets() as secrets:
            check.fn(**_arguments(check, namespace, ctx, fixtures))
    except CheckTimeout:
        msg = f"A {label} took longer than {check.timeout_s:g} s; is there an endless loop?"
        return QuestionResult.of(q, Status.TIMEOUT, msg, check.hidden)
    except CheckFailed as exc:
        if not check.hidden:
            return QuestionResult.of(q, Status.FAILED, exc.render())
        result = QuestionResult.of(q, Status.FAILED, f"[hidden check] {redact(exc, secrets)}", hidden=True)
        result.redacted = tuple(secrets)
        return result
    except AssertionError as exc:
        # A bare assert or a library's assertion carries free text the framework cannot redact: hidden ones say less.
        text = "A hidden check failed." if check.hidden else str(exc) or "assertion failed"
        return QuestionResult.of(q, Status.FAILED, f"[hidden check] {text}" if check.hidden else text, check.hidden)
    except Exception as exc:
        if _raised_not_implemented(exc):
            return QuestionResult.of(q, Status.NOT_IMPLEMENTED, not_implemented_message(q, namespace, exc))
        msg = f"Your code raised {type(exc).__name__}: {exc}{_learner_location(exc)}"
        return QuestionResult.of(q, Status.ERROR, msg, check.hidden)
    return None


@contextmanager
def _no_secrets() -> Iterator[list[str]]:
    yield []


def upstream_note(q: Question, failing: Iterable[str]) -> str:
    """A sentence naming the earliest failing questions `q` builds on, or "". The earliest: a failing question that
    itself builds on another failing one is left out, so the learner is sent to the root cause."""
    if q.lab is None:
        return ""
    bad = [u for u in q.lab.upstream(q.id) if u in set(failing)]
    roots = [u for u in bad if not set(q.lab.upstream(u)) & set(bad)]
    if not roots:
        return ""
    names = " and ".join(f"`{r}`" for r in roots)
    return (f"This builds on {names}, which did not pass: fix {'that' if len(roots) == 1 else 'those'} first; "
            "this question may pass once it does.\n")


_DOWNSTREAM = (Status.FAILED, Status.ERROR)  # a question whose own checks ran and did not pass
_UPSTREAM = (Status.FAILED, Status.ERROR, Status.NOT_IMPLEMENTED)


def with_upstream(result: QuestionResult, q: Question, failing: Iterable[str]) -> QuestionResult:
    """The result, its feedback led by upstream_note when the question failed."""
    if result.status in _DOWNSTREAM:
        result.feedback = upstream_note(q, failing) + result.feedback
    return result


def grade_lab(lab: Lab, namespace: Mapping[str, Any], include_hidden: bool = True) -> Iterator[QuestionResult]:
    """Every question of a lab in order, sharing one set of fixtures (built once for the whole run)."""
    fixtures = Fixtures(lab)
    failing: list[str] = []
    for q in lab.questions.values():
        start = time.monotonic()
        result = with_upstream(run_question(q, namespace, include_hidden, fixtures), q, failing)
        result.duration_s = round(time.monotonic() - start, 3)
        if result.status in _UPSTREAM:
            failing.append(q.id)
        yield result


def caller_namespace(depth: int = 2) -> dict:
    """Globals of the notebook (or script) that called `check`."""
    return sys._getframe(depth).f_globals
