"""Grade bug variants of a solution in seconds: one kernel per lab, and only the cells a variant changes re-run.

A `SolutionSession` runs a lab's solution once, from a fresh kernel, recording each cell's time and the random
state before it. A variant then replaces the text of one cell and re-runs that cell and every later cell that
depends on it (it reads a name the re-run cells bind, also from inside a function body, since a function looks
its globals up when called), each from the random state it had in the fresh run, and grades. Expensive cells
(training) re-run only when a question the variant is expected to break needs what they build. Cells a variant
left changed are re-run, as the solution wrote them, before the next variant, so every variant starts from the
solution's state (an expensive cell from a copy of what it bound in the fresh run, not by training again). A
variant that needs more than that is graded from a fresh kernel (`{"fresh": True}`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import nbformat

from grader.cells import cell_names
from grader.grading import LabResult
from grader.registry import load_lab
from grader.runner import Execution, KernelSession, Limits

EXPENSIVE_SHARE = 0.1  # a cell over 10 % of the solution's run time is "expensive" (in practice: it trains)


def dependents(nb: nbformat.NotebookNode, changed: set[int], skip: frozenset[int] = frozenset()) -> list[int]:
    """`changed` and every later code cell that reads a name one of the re-run cells binds, in notebook order;
    cells in `skip` are never re-run (unless changed), so what they bind stays as the solution left it."""
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    names = {i: cell_names(nb.cells[i].source) for i in code}
    rerun, dirty = [], set()
    for i in code:
        if i in changed or (names[i].reads & dirty and i not in skip):
            rerun.append(i)
            dirty |= names[i].binds
    return rerun


def needed_expensive(nb: nbformat.NotebookNode, changed: int, expensive: set[int], targets: set[str]) -> set[int]:
    """The expensive cells (training) a variant must really re-run: those that build what a broken question uses.

    A bug in a function that a training cell also calls costs no retraining unless the variant says the trained
    object's question breaks: `targets` are the names the broken questions use. Walking back from them finds the
    expensive cells that bind them or feed a cell that does.
    """
    needed, keep = set(targets), set()
    for i in reversed(dependents(nb, {changed})):
        names = cell_names(nb.cells[i].source)
        if names.binds & needed:
            needed |= names.reads
            keep.add(i)
    return keep & expensive


def _tainted(nb: nbformat.NotebookNode, ran: list[int], changed: int, restored: set[int] = frozenset()) -> set[int]:
    """The cells of a run that now hold the variant's state: the changed cell and those that read what it (or one
    of them) bound. The others were restored to the solution's state and need not run again."""
    tainted, dirty = set(), set()
    for i in ran:
        if i in restored:
            continue
        names = cell_names(nb.cells[i].source)
        if i == changed or names.reads & dirty:
            tainted.add(i)
            dirty |= names.binds
    return tainted


_SAVE_RNG = """\
import random as _sl_r, numpy as _sl_np, torch as _sl_t
_sl_rng = globals().setdefault("_sl_rng", {{}})
_sl_rng[{index}] = (_sl_r.getstate(), _sl_np.random.get_state(), _sl_t.get_rng_state())
del _sl_r, _sl_np, _sl_t
"""
_UNBIND = """\
for _sl_n in {names!r}:
    globals().pop(_sl_n, None)
del _sl_n
"""
_LOAD_RNG = """\
import random as _sl_r, numpy as _sl_np, torch as _sl_t
_sl_r.setstate(_sl_rng[{index}][0])
_sl_np.random.set_state(_sl_rng[{index}][1])
_sl_t.set_rng_state(_sl_rng[{index}][2])
del _sl_r, _sl_np, _sl_t
"""


# After the fresh run: copies of what the expensive cells bound, so that putting the solution's state back after a
# variant is an assignment, not a second training run.
_SNAPSHOT = """\
import copy as _sl_copy, json as _sl_json
_sl_snap = {{}}
for _sl_n in {names!r}:
    try:
        _sl_snap[_sl_n] = _sl_copy.deepcopy(globals()[_sl_n])
    except Exception:
        pass
with open({path!r}, "w") as _sl_f:
    _sl_json.dump(sorted(_sl_snap), _sl_f)
del _sl_n, _sl_f
"""
_RESTORE = """\
for _sl_n in {names!r}:
    globals()[_sl_n] = _sl_copy.deepcopy(_sl_snap[_sl_n])
del _sl_n
"""


@dataclass(frozen=True)
class VariantCost:
    """Where a variant's seconds went: re-running cells, then grading every question."""

    lab: str
    cell: int
    cells: list[int]
    run_s: float
    grade_s: float


COSTS: list[VariantCost] = []  # this test process's variants, for the summary at the end of the run


@dataclass
class SolutionSession:
    """A lab's solution, run once in a fresh kernel and kept open so that variants re-run only what they change."""

    nb: nbformat.NotebookNode
    lab: str
    limits: Limits
    original: dict[int, str] = field(default_factory=dict)
    seconds: dict[int, float] = field(default_factory=dict)  # each cell's time in the fresh run
    stale: set[int] = field(default_factory=set)  # cells whose kernel state is a variant's, not the solution's
    restorable: dict[int, list[str]] = field(default_factory=dict)  # expensive cell -> the names a copy restores
    base: LabResult | None = None

    def __enter__(self) -> SolutionSession:
        self.original = {i: c.source for i, c in enumerate(self.nb.cells) if c.cell_type == "code"}
        self.session = KernelSession(self.nb, self.lab, self.limits, audit=True).__enter__()
        execution = self._run(sorted(self.original), record=True)
        self.base = self.session.result(execution, self.session.grade(execution))
        self._snapshot()
        return self

    def _snapshot(self) -> None:
        binds = {i: sorted(cell_names(self.original[i]).binds) for i in self.expensive}
        path = self.session.workdir / ".sl-snapshot.json"
        names = sorted({n for ns in binds.values() for n in ns})
        if self.session.run_private(_SNAPSHOT.format(names=names, path=str(path)), timeout_s=300) is None:
            copied = set(json.loads(path.read_text()))
            graded = {name for q in load_lab(self.lab).questions.values() for name in q.uses}
            # A cell is restored from copies when every name it binds that a question grades was copied (a progress
            # bar or a figure need not be); otherwise it is restored by running it again.
            self.restorable = {
                i: [n for n in ns if n in copied] for i, ns in binds.items() if set(ns) & graded <= copied
            }

    def __exit__(self, *exc_info) -> None:
        self.session.__exit__(*exc_info)

    @property
    def expensive(self) -> set[int]:
        """Cells that take a large share of the run (training): re-run only when a broken question needs them.
        A share, not seconds, so that a busy machine changes nothing."""
        total = sum(self.seconds.values()) or 1.0
        return {i for i, s in self.seconds.items() if s > EXPENSIVE_SHARE * total}

    def _only_bound_by(self, i: int) -> list[str]:
        """Names cell i binds that no earlier cell binds: before cell i runs in a fresh kernel, they do not exist."""
        earlier = {n for j in self.original if j < i for n in cell_names(self.nb.cells[j].source).binds}
        return sorted(cell_names(self.nb.cells[i].source).binds - earlier)

    def _run(self, cells: list[int], record: bool = False, restore: set[int] = frozenset()) -> Execution:
        """Execute cells one by one, each from the random state it had in the fresh run; one Execution for all.
        Cells in `restore` get the solution's objects back from the snapshot instead of running."""
        total = Execution(cells=len(self.original))
        for i in cells:
            if i in restore:
                self.session.run_private(_RESTORE.format(names=self.restorable[i]), timeout_s=300)
                continue
            if not record:  # as in a fresh run, a cell that raises leaves what only it binds undefined
                self.session.run_private(_UNBIND.format(names=self._only_bound_by(i)))
            self.session.run_private((_SAVE_RNG if record else _LOAD_RNG).format(index=i))
            start = time.monotonic()
            one = self.session.execute([i])
            if record:
                self.seconds[i] = time.monotonic() - start
            total.cells_run += one.cells_run
            total.errors += one.errors
            total.timed_out_cells += one.timed_out_cells
            total.timed_out_sources += one.timed_out_sources
            total.kernel_died = one.kernel_died
            total.budget_exhausted |= one.budget_exhausted
            if one.kernel_died or one.budget_exhausted:
                break
        return total

    def grade_variant(
        self, old: str, new: str, broken: set[str] = frozenset(), retrain: bool = False
    ) -> tuple[LabResult, list[int]]:
        """Grade the solution with `old` replaced by `new` in exactly one cell, re-running what that changes.

        `broken` are the questions the variant is expected to break: their objects are rebuilt even when that
        means retraining. `retrain` rebuilds every expensive dependent: for a bug in a function that a trained
        model also calls when it is evaluated (a model trained with the bug learns around it; one trained without
        it and evaluated with it does not). Returns the result and the cells that ran.
        """
        hits = [i for i, src in self.original.items() if old in src]
        assert len(hits) == 1, f"expected exactly one cell containing {old!r}, found {len(hits)}"
        (index,) = hits
        assert self.original[index].count(old) == 1, f"{old!r} occurs more than once in its cell"
        variant = self.original[index].replace(old, new)
        for i, src in self.original.items():
            self.nb.cells[i].source = variant if i == index else src
        targets = {name for qid in broken for name in load_lab(self.lab).questions[qid].uses}
        keep = needed_expensive(self.nb, index, self.expensive, targets)
        if retrain:
            keep = self.expensive & set(dependents(self.nb, {index}))
        cells = dependents(self.nb, {index} | self.stale, skip=frozenset(self.expensive - keep))
        # an expensive cell that runs only to undo an earlier variant gets its objects back from the snapshot
        restore = {i for i in cells if i in self.restorable and i not in keep and i != index}
        start = time.monotonic()
        execution = self._run(cells, restore=restore)
        ran = time.monotonic()
        result = self.session.result(execution, self.session.grade(execution))
        COSTS.append(VariantCost(self.lab, index, cells, round(ran - start, 2), round(time.monotonic() - ran, 2)))
        self.stale = _tainted(self.nb, cells, index, restore)
        return result, cells
