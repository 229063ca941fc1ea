"""The question registry: one checks module per lab declares its questions.

    LAB = Lab("01", "From tensors to a small language model")
    q = LAB.question("softmax", points=2, uses=("softmax",), title="A stable softmax")

    @q.check
    def _(softmax): ...            # public: runs in the notebook's check("softmax")

    @q.check(hidden=True)
    def _(softmax, ctx): ...       # hidden: only at grading time, expected values redacted

A check receives the learner objects it names (by parameter name; each must be in the
question's `uses`), lab fixtures it names (built once per grading run), and, if it asks
for it, a `ctx` with the grading device and a seeded random generator:

    @LAB.fixture
    def base_model(ctx): ...       # expensive shared object; checks must not change it

Mistakes in these declarations fail when the lab module is imported, not when a learner runs it.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    # Earlier questions whose objects this one calls (a block calls attention): when both fail, the feedback of this
    # one names the earlier one to fix first, since one root cause fails everything built on it.
    builds_on: tuple[str, ...] = ()
    # What the machine needs beyond `device` (a library with a backend for this platform): a function that says why
    # it is missing, or None. Where it is missing the question is skipped, not counted, like a GPU question on a CPU.
    requires: Callable[[], str | None] | None = field(default=None, compare=False)
    checks: list[Check] = field(default_factory=list)
    lab: Lab | None = field(default=None, repr=False, compare=False)

    def check(self, fn: Callable | None = None, *, hidden: bool = False, timeout_s: float = 120.0):
        """Decorator that adds a public (default) or hidden check to this question."""

        def register(f: Callable) -> Callable:
            self._validate(f)
            self.checks.append(Check(f, hidden=hidden, timeout_s=timeout_s))
            return f

        return register(fn) if fn is not None else register

    def _validate(self, f: Callable) -> None:
        """Every parameter is `ctx`, a declared fixture or a learner object this question `uses`."""
        fixtures = self.lab.fixtures if self.lab is not None else {}
        for name, param in inspect.signature(f).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                raise TypeError(f"question '{self.id}': check {f.__name__} takes *args/**kwargs; name what it needs")
            if name != "ctx" and name not in fixtures and name not in self.uses:
                raise TypeError(
                    f"question '{self.id}': check {f.__name__} asks for `{name}`, which is neither in its "
                    f"uses {self.uses}, a fixture of the lab, nor `ctx`"
                )

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
    fixtures: dict[str, Callable] = field(default_factory=dict)

    def fixture(self, fn: Callable) -> Callable:
        """Decorator: an expensive object checks share, built once per grading run (see grading.Fixtures)."""
        extra = set(inspect.signature(fn).parameters) - {"ctx"}
        if extra:
            raise TypeError(f"lab {self.id}: fixture {fn.__name__} may only take `ctx`, not {sorted(extra)}")
        if fn.__name__ in self.fixtures:
            raise ValueError(f"lab {self.id}: fixture '{fn.__name__}' declared twice")
        self.fixtures[fn.__name__] = fn
        return fn

    def question(
        self,
        id: str,
        points: float,
        uses: tuple[str, ...],
        title: str,
        device: str = "any",
        builds_on: tuple[str, ...] = (),
        requires: Callable[[], str | None] | None = None,
    ) -> Question:
        if id in self.questions:
            raise ValueError(f"lab {self.id}: question '{id}' declared twice")
        if device not in DEVICES:
            raise ValueError(f"lab {self.id}: question '{id}' has unknown device '{device}'")
        unknown = [b for b in builds_on if b not in self.questions]
        if unknown:
            raise ValueError(f"lab {self.id}: question '{id}' builds on {unknown}, not declared before it")
        q = Question(id=id, points=points, title=title, uses=tuple(uses), device=device, builds_on=tuple(builds_on),
                     requires=requires, lab=self)
        self.questions[id] = q
        return q

    def validate(self) -> None:
        """Each question has a check, and each learner object it `uses` is given to at least one of them."""
        for q in self.questions.values():
            if not q.checks:
                raise TypeError(f"lab {self.id}: question '{q.id}' has no check")
            asked = {name for c in q.checks for name in inspect.signature(c.fn).parameters}
            unused = [name for name in q.uses if name not in asked]
            if unused:
                raise TypeError(f"lab {self.id}: question '{q.id}' uses {unused}, but no check asks for them")

    def upstream(self, question_id: str) -> list[str]:
        """Every question `question_id` builds on, directly or through others, in declaration order."""
        seen: set[str] = set()
        stack = list(self.questions[question_id].builds_on)
        while stack:
            qid = stack.pop()
            if qid not in seen:
                seen.add(qid)
                stack.extend(self.questions[qid].builds_on)
        return [qid for qid in self.questions if qid in seen]

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
    if not getattr(module.LAB, "_validated", False):
        module.LAB.validate()
        module.LAB._validated = True
    return module.LAB


def all_labs() -> list[Lab]:
    return [load_lab(i) for i in lab_ids()]


@dataclass(frozen=True)
class Declared:
    """A question as its lab module declares it, read without importing the module."""

    lab: str
    id: str
    uses: tuple[str, ...]


@functools.lru_cache(maxsize=1)
def declared_questions() -> tuple[Declared, ...]:
    """Every `LAB.question("id", ..., uses=(...))` in the check modules, parsed, not imported.

    `check("softmax")` must import only the lab that holds the question: another lab's heavy
    imports (transformers) or a broken module must not slow or break this one.
    """
    import grader.labs as pkg

    found = []
    for lab_id in lab_ids():
        path = Path(pkg.__path__[0]) / f"lab{lab_id}.py"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            is_call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if not (is_call and node.func.attr == "question"):
                continue
            args = {kw.arg: kw.value for kw in node.keywords}
            qid = node.args[0] if node.args else args.get("id")
            uses = node.args[2] if len(node.args) > 2 else args.get("uses")
            try:
                found.append(Declared(lab_id, ast.literal_eval(qid), tuple(ast.literal_eval(uses))))
            except (ValueError, TypeError, SyntaxError):
                continue
    return tuple(found)


def find_question(question_id: str) -> tuple[Lab, Question]:
    """Question ids are unique across the course, so `check("softmax")` needs no lab name."""
    for d in declared_questions():
        if d.id == question_id:
            lab = load_lab(d.lab)
            return lab, lab.questions[question_id]
    raise KeyError(f"no question called '{question_id}'")


def find_questions_using(name: str, lab_id: str | None = None) -> list[tuple[Lab, Question]]:
    """Questions that use a learner object called `name`: in `lab_id` when given, else in the first lab that has one."""
    labs = [d.lab for d in declared_questions() if name in d.uses and (lab_id is None or d.lab == str(lab_id).zfill(2))]
    if not labs:
        return []
    lab = load_lab(labs[0])
    return [(lab, q) for q in lab.questions.values() if name in q.uses]
