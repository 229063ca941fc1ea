"""A class-sized batch: 40 lab-00 submissions at two workers, every row right (a few minutes on 2 cores).

Lab 00, the cheapest notebook, without its environment report: what is tested is the batch (a row for each, right
statuses, the same notebook graded the same), not the lab, which tests/test_labs.py covers."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT, lean, solution_path

from grader.gradebook import read_gradebook
from grader.registry import load_lab

sys.path.insert(0, str(ROOT / "scripts"))
from batch_benchmark import grade_class, make_class  # noqa: E402


@pytest.mark.notebook
def test_forty_submissions_all_graded_correctly(tmp_path):
    kinds = make_class(tmp_path / "subs", "00", 40, solution=lean(solution_path("00")))
    records, wall = grade_class(tmp_path / "subs", "00", 2, tmp_path / "out" / "gradebook.csv")
    print(f"40 submissions in {wall:.1f} s: {60 * 40 / wall:.2f} per minute at 2 workers")

    lab = load_lab("00")
    rows = read_gradebook(tmp_path / "out" / "gradebook.csv")
    assert sorted(rows) == sorted(kinds) and len(records) == 40
    for record in records:
        kind, row = kinds[record.student], rows[record.student]
        statuses = {q["id"]: q["status"] for q in record.result["questions"]}
        if kind == "complete":
            assert (record.status, record.score) == ("graded", lab.max_score), record.reason
        elif kind == "starter":
            assert record.score == 0 and set(statuses.values()) == {"not_implemented"}, record.reason
        else:
            assert 0 < record.score < lab.max_score and record.status == "partial", record.reason
            assert "not_implemented" in statuses.values(), statuses
        assert row["total"] == f"{record.score:g}"

    complete = [r for r in records if kinds[r.student] == "complete"]
    feedback = {tuple((q["id"], q["status"], q["feedback"]) for q in r.result["questions"]) for r in complete}
    assert len(feedback) == 1, "the same notebook graded differently within one batch"
