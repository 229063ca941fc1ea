"""Every lab: the solution scores full marks, the learner version scores zero with "not implemented",
realistic bugs lose exactly the points of the questions they break, and correct variants keep full marks.

Cost: a lab's solution runs once, from a fresh kernel, and stays open; each variant re-runs only the cells it
changes and those that depend on them (tests/variants.py). The learner copy runs in a fresh kernel of its own.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from conftest import LABS, load, mutate, solution_path
from variants import SolutionSession

from grader.registry import lab_ids, load_lab
from grader.runner import Limits, grade_notebook

# Safety nets far above a lab's time on a loaded 2-core machine: a slow machine must never fail a test.
LIMITS = Limits(cell_timeout_s=900, total_timeout_s=2400, grading_timeout_s=900)


def _load_tables() -> tuple[list[tuple], list[tuple]]:
    """Each lab's variants live in tests/bugs/labNN.py, so labs are added without touching this file.

    BUGS: (name, text in the solution, replacement, questions that must lose points[, options]); options:
      {"retrain": True}: rebuild the trained objects too (a bug in a function the trained model calls when evaluated)
      {"fresh": True}: grade a fresh kernel's run of the whole variant notebook
    CORRECT: (name, text in the solution, replacement): other valid answers, which must keep full marks.
    """
    bugs, correct = [], []
    for path in sorted((Path(__file__).parent / "bugs").glob("lab[0-9][0-9].py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        lab = path.stem[3:]
        bugs += [(lab, *bug) if len(bug) == 5 else (lab, *bug, {}) for bug in module.BUGS]
        correct += [(lab, *variant) for variant in getattr(module, "CORRECT", [])]
    return bugs, correct


BUGS, CORRECT = _load_tables()


class Sessions:
    """At most one open solution session per test process: a lab's tests run one after another (see conftest)."""

    def __init__(self) -> None:
        self.current: SolutionSession | None = None

    def get(self, lab: str) -> SolutionSession:
        if self.current is None or self.current.lab != lab:
            self.close()
            self.current = SolutionSession(load(solution_path(lab)), lab, LIMITS).__enter__()
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.__exit__(None, None, None)
            self.current = None


@pytest.fixture(scope="module")
def sessions():
    s = Sessions()
    yield s
    s.close()


def learner_path(lab: str) -> Path:
    (path,) = LABS.glob(f"{lab}_*.ipynb")
    return path


def _lost(result) -> dict:
    return {q.id: (q.status, q.feedback) for q in result.questions if q.status != "passed"}


def _assert_upstream_named(lab: str, result) -> None:
    """One root cause, one place to look: a failed question names the earliest failed question it builds on."""
    registry = load_lab(lab)
    failed = {q.id for q in result.questions if q.status in ("failed", "error", "not_implemented")}
    for q in result.questions:
        if q.status not in ("failed", "error") or q.feedback.startswith("Cell "):
            continue  # a crashed cell is a cause of its own: its message names it
        roots = [u for u in registry.upstream(q.id) if u in failed and not set(registry.upstream(u)) & failed]
        for root in roots:
            assert f"`{root}`" in q.feedback.split("\n")[0], (q.id, root, q.feedback)
        if not roots:
            assert "builds on" not in q.feedback, (q.id, q.feedback)


def _assert_no_hidden_value_shown(result) -> None:
    """Whoever wrote a hidden check, the expected values its failure carried never reach the learner."""
    for q in result.questions:
        for value in q.redacted:
            assert value not in q.feedback, f"{q.id}: hidden expected value {value!r} shown in {q.feedback!r}"


@pytest.mark.notebook
@pytest.mark.parametrize("lab", lab_ids())
def test_solution_scores_full_marks_and_runs_clean(lab, sessions, lab_timings):
    base = sessions.get(lab).base
    lab_timings(lab, base.duration_s)
    assert base.execution["errors"] == [], base.execution["errors"]
    assert base.score == base.max_score == _runnable_points(lab), _lost(base)


def _runnable_points(lab: str) -> float:
    """The lab's points without the questions this machine cannot run (GPU-only ones without a GPU, those whose
    library has no backend here): those report skipped, not zero."""
    return sum(q.points for q in load_lab(lab).questions.values() if not _skipped_here(q))


def _skipped_here(q) -> bool:
    import torch

    from grader.grading import missing_requirement

    return (q.device == "cuda" and not torch.cuda.is_available()) or missing_requirement(q) is not None


@pytest.mark.notebook
@pytest.mark.parametrize("lab", lab_ids())
def test_learner_notebook_runs_to_the_end_and_scores_zero(lab):
    result = grade_notebook(learner_path(lab), limits=LIMITS)
    assert result.execution["cells_run"] == result.execution["cells"]
    assert result.execution["kernel_died"] is None
    assert result.score == 0
    skipped = {qid for qid, q in load_lab(lab).questions.items() if _skipped_here(q)}
    for q in result.questions:
        if q.id in skipped and q.status == "skipped":
            continue  # no GPU or no backend here: skipped before the learner's code is looked at
        assert q.status == "not_implemented", (q.id, q.status, q.feedback)
        assert "Not implemented yet" in q.feedback


def test_every_lab_has_at_least_six_bugs():
    for lab in lab_ids():
        n = sum(1 for b in BUGS if b[0] == lab)
        assert n >= 6 if lab != "00" else n >= 3, f"lab {lab} has {n} buggy variants"


@pytest.mark.notebook
@pytest.mark.parametrize("lab,bug,old,new,broken,options", BUGS, ids=[f"{b[0]}-{b[1]}" for b in BUGS])
def test_buggy_variant_loses_exactly_its_points(lab, bug, old, new, broken, options, sessions, write_nb):
    if options.get("fresh"):
        result = grade_notebook(write_nb(mutate(load(solution_path(lab)), old, new), f"{lab}_bug.ipynb"), limits=LIMITS)
    else:
        result, _ = sessions.get(lab).grade_variant(old, new, broken, retrain=options.get("retrain", False))
    lost = {q.id for q in result.questions if q.score < q.max_score}
    assert lost == broken, _lost(result)
    for q in result.questions:
        if q.id in broken:  # failed; or an error when the bug made the cell defining its object raise
            crashed = q.status == "error" and re.match(r"Cell \d+ raised ", q.feedback)
            assert q.status == "failed" or crashed, (q.id, q.status, q.feedback)
            assert q.feedback.strip(), "a failure must say why"
    _assert_upstream_named(lab, result)
    _assert_no_hidden_value_shown(result)


@pytest.mark.notebook
@pytest.mark.parametrize("lab,name,old,new", CORRECT, ids=[f"{c[0]}-{c[1]}" for c in CORRECT])
def test_correct_variant_keeps_full_marks(lab, name, old, new, sessions):
    result, _ = sessions.get(lab).grade_variant(old, new)
    assert result.score == result.max_score, _lost(result)
