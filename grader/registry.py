"""The question registry: one checks module per lab declares its questions.

    LAB = Lab("01", "From tensors to a small language model")
    q = LAB.question("softmax", points=2, uses=("softmax",), title="A stable softmax")

    @q.check
    def _(softmax): ...            # public: runs in the notebook's check("softmax")

    @q.check(hidden=True)
    def _(softmax, ctx): ...       # hidden: only at grading time, expected values redacted

A check receives the learner objects it names (by parameter name) and, if it asks
for it, a `ctx` with the grading device and a seeded random generator.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

DEVICES = ("any", "cuda")


@dataclass
class Check:
    fn: Callable
    hidden: bool = False
    timeout_s: float = 120.0


@dataclass
class Question:
    id: str
    points: float
    title: str
    uses: tuple[str, ...]
    device: str = "any"
    checks: list[Check] = field(default_factory=list)

    def check(self, fn: Callable | None = None, *, hidden: bool = False, timeout_s: float = 120.0):
        """Decorator that adds a public (default) or hidden check to this question."""

        def register(f: Callable) -> Callable:
            self.checks.append(Check(f, hidden=hidden, timeout_s=timeout_s))
            return f

        return register(fn) if fn is not None else register

    @property
    def hidden(self) -> bool:
        """A question is hidden when none of its checks can be run by the learner."""
        return all(c.hidden for c in self.checks)

    @property
    def public_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.hidden]


@dataclass
class Lab:
    id: str
    title: str
    questions: dict[str, Question] = field(default_factory=dict)

    def question(
        self, id: str, points: float, uses: tuple[str, ...], title: str, device: str = "any"
    ) -> Question:
        if id in self.questions:
            raise ValueError(f"lab {self.id}: question '{id}' declared twice")
        if device not in DEVICES:
            raise ValueError(f"lab {self.id}: question '{id}' has unknown device '{device}'")
        q = Question(id=id, points=points, title=title, uses=tuple(uses), device=device)
        self.questions[id] = q
        return q

    @property
    def max_score(self) -> float:
        return sum(q.points for q in self.questions.values())


class UnknownLab(KeyError):
    pass


def lab_ids() -> list[str]:
    """Every lab with a checks module, e.g. ['00', '01']."""
    import grader.labs as pkg

    names = [m.name for m in pkgutil.iter_modules(pkg.__path__)]
    return sorted(n[3:] for n in names if n.startswith("lab") and n[3:].isdigit())


def load_lab(lab_id: str) -> Lab:
    lab_id = str(lab_id).zfill(2)
    if lab_id not in lab_ids():
        raise UnknownLab(f"unknown lab '{lab_id}' (known: {', '.join(lab_ids())})")
    module = importlib.import_module(f"grader.labs.lab{lab_id}")
    return module.LAB


def all_labs() -> list[Lab]:
    return [load_lab(i) for i in lab_ids()]


def find_question(question_id: str) -> tuple[Lab, Question]:
    """Question ids are unique across the course, so `check("softmax")` needs no lab name."""
    for lab in all_labs():
        if question_id in lab.questions:
            return lab, lab.questions[question_id]
    raise KeyError(f"no question called '{question_id}'")


def find_questions_using(name: str) -> list[tuple[Lab, Question]]:
    return [(lab, q) for lab in all_labs() for q in lab.questions.values() if name in q.uses]
