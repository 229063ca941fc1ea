"""Every lab: the solution scores full marks, the learner version scores zero with "not implemented",
and realistic bugs lose exactly the points of the questions they break."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import LABS, load, mutate, solution_path

from grader.registry import lab_ids, load_lab
from grader.runner import Limits, grade_notebook

LIMITS = Limits(cell_timeout_s=240, total_timeout_s=600, grading_timeout_s=240)

def _load_bugs() -> list[tuple]:
    """Each lab's bugs live in tests/bugs/labNN.py, so labs can be added without touching this file."""
    bugs = []
    for path in sorted((Path(__file__).parent / "bugs").glob("lab[0-9][0-9].py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        bugs += [(path.stem[3:], *bug) for bug in module.BUGS]
    return bugs


BUGS = _load_bugs()


def learner_path(lab: str):
    (path,) = LABS.glob(f"{lab}_*.ipynb")
    return path


@pytest.mark.notebook
@pytest.mark.parametrize("lab", lab_ids())
def test_solution_scores_full_marks_and_runs_clean(lab):
    result = grade_notebook(solution_path(lab), limits=LIMITS)
    assert result.execution["errors"] == [], result.execution["errors"]
    assert result.score == result.max_score == load_lab(lab).max_score, [
        (q.id, q.status, q.feedback) for q in result.questions if q.status != "passed"
    ]
    assert result.duration_s < 180, f"lab {lab} solution took {result.duration_s} s (budget 180 s on a 2-core CPU)"


@pytest.mark.notebook
@pytest.mark.parametrize("lab", lab_ids())
def test_learner_notebook_runs_to_the_end_and_scores_zero(lab):
    result = grade_notebook(learner_path(lab), limits=LIMITS)
    assert result.execution["cells_run"] == result.execution["cells"]
    assert result.execution["kernel_died"] is None
    assert result.score == 0
    for q in result.questions:
        assert q.status == "not_implemented", (q.id, q.status, q.feedback)
        assert "Not implemented yet" in q.feedback


def test_every_lab_has_at_least_three_bugs():
    for lab in lab_ids():
        assert sum(1 for b in BUGS if b[0] == lab) >= 3, f"lab {lab} needs at least three buggy variants"


@pytest.mark.notebook
@pytest.mark.parametrize("lab,bug,old,new,broken", BUGS, ids=[f"{b[0]}-{b[1]}" for b in BUGS])
def test_buggy_variant_loses_exactly_its_points(lab, bug, old, new, broken, write_nb):
    nb = mutate(load(solution_path(lab)), old, new)
    result = grade_notebook(write_nb(nb, f"{lab}_buggy.ipynb"), limits=LIMITS)
    lost = {q.id for q in result.questions if q.score < q.max_score}
    assert lost == broken, {q.id: (q.status, q.feedback) for q in result.questions if q.status != "passed"}
    for q in result.questions:
        if q.id in broken:
            assert q.status == "failed", (q.id, q.status, q.feedback)
            assert q.feedback.strip(), "a failure must say why"
