"""The headless runner under hostile and broken notebooks: limits hold, later questions are still graded."""

from __future__ import annotations

import json

import pytest
from conftest import add_cell, load, mutate, solution_path

from grader.cli import main as cli_main
from grader.report import table
from grader.runner import Limits, grade_notebook

LAB00 = solution_path("00")
# Far above what lab 00 needs even on a loaded machine; a hostile cell gets its own short limit (see add_cell).
SAFE = Limits(cell_timeout_s=300, total_timeout_s=900, memory_mb=3000, grading_timeout_s=300)


def by_id(result):
    return {q.id: q for q in result.questions}


@pytest.mark.notebook
def test_failing_cell_does_not_stop_later_questions(write_nb):
    nb = add_cell(load(LAB00), "raise ValueError('boom')", index=3)
    result = grade_notebook(write_nb(nb), limits=SAFE)
    assert result.score == result.max_score
    assert any(e["ename"] == "ValueError" for e in result.execution["errors"])
    assert "! cell 3 raised ValueError: boom" in table(result), "full marks, but the learner must hear of the crash"


@pytest.mark.notebook
def test_a_crash_that_left_a_name_undefined_is_reported_as_a_crash(write_nb):
    """Not "not implemented": the learner wrote move_batch, but its cell raised before defining it."""
    nb = mutate(load(LAB00), "def move_batch(batch: dict, device: torch.device) -> dict:",
                "first = [][0]\n\n\ndef move_batch(batch: dict, device: torch.device) -> dict:")
    r = by_id(grade_notebook(write_nb(nb), limits=SAFE))["move_batch"]
    assert r.status == "error" and r.score == 0
    assert "raised IndexError: list index out of range" in r.feedback and "`move_batch` was never defined" in r.feedback


@pytest.mark.notebook
def test_stderr_warnings_and_progress_bars_cost_nothing(write_nb):
    noisy = (
        "import sys, warnings\nfrom tqdm.auto import tqdm\n"
        "warnings.warn('deprecated thing')\nprint('to stderr', file=sys.stderr)\n"
        "for _ in tqdm(range(100)): pass\n"
    )
    result = grade_notebook(write_nb(add_cell(load(LAB00), noisy, index=2)), limits=SAFE)
    assert result.score == result.max_score
    assert result.execution["errors"] == []


@pytest.mark.notebook
def test_infinite_loop_cell_times_out_and_grading_goes_on(write_nb):
    nb = add_cell(load(LAB00), "while True:\n    pass", index=6, timeout_s=5)
    result = grade_notebook(write_nb(nb), limits=SAFE)
    assert 6 in result.execution["timed_out_cells"]
    assert result.score == result.max_score, "the loop was interrupted, the other cells ran"


@pytest.mark.notebook
def test_cells_after_a_timeout_still_run_as_written(write_nb):
    """Regression: the post-timeout probe once overwrote the notebook's last cell, which then never ran."""
    nb = add_cell(load(LAB00), "while True:\n    pass", index=2, timeout_s=5)
    nb = add_cell(nb, "def tensor_nbytes(t):\n    return t.numel() * t.element_size()")
    nb = mutate(nb, "return t.numel() * t.element_size()\n    ### END", "return -1\n    ### END")
    result = grade_notebook(write_nb(nb), limits=SAFE)
    assert by_id(result)["tensor_nbytes"].status == "passed", "the fixed definition in the last cell must run"


@pytest.mark.notebook
def test_loop_that_swallows_interrupts_is_stopped(write_nb):
    stubborn = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    result = grade_notebook(write_nb(add_cell(load(LAB00), stubborn, timeout_s=5)), limits=SAFE)
    died = result.execution["kernel_died"]
    assert died["kind"] == "unresponsive" and "stopped responding" in died["message"]
    assert {q.status for q in result.questions} == {"error"}
    assert all("stopped responding" in q.feedback for q in result.questions)


@pytest.mark.notebook
def test_memory_bomb_is_killed_and_explained(write_nb):
    bomb = "blocks = []\nwhile True:\n    blocks.append(bytearray(200 * 2**20))"
    result = grade_notebook(write_nb(add_cell(load(LAB00), bomb)), limits=Limits(memory_mb=1500, cell_timeout_s=300))
    died = result.execution["kernel_died"]
    assert died["kind"] == "memory" and died["memory_mb"] > 1500 and "memory limit exceeded" in died["message"]
    assert result.score == 0 and all("memory limit" in q.feedback for q in result.questions)


@pytest.mark.notebook
def test_os_exit_yields_a_result_that_says_the_kernel_died(write_nb):
    result = grade_notebook(write_nb(add_cell(load(LAB00), "import os\nos._exit(3)")), limits=SAFE)
    died = result.execution["kernel_died"]
    assert died["kind"] == "crash" and "kernel died" in died["message"]
    assert [q.status for q in result.questions] == ["error"] * 3


@pytest.mark.notebook
def test_enormous_output_is_capped(write_nb):
    flood = "for i in range(200_000):\n    print('spam' * 20)"
    limits = Limits(cell_timeout_s=300, output_chars=100_000)
    result = grade_notebook(write_nb(add_cell(load(LAB00), flood, index=2)), limits=limits)
    assert result.execution["output_truncated"] is True
    assert result.score == result.max_score


@pytest.mark.notebook
def test_whole_notebook_budget(write_nb):
    nb = add_cell(load(LAB00), "import time\ntime.sleep(60)", index=2)
    result = grade_notebook(write_nb(nb), limits=Limits(cell_timeout_s=300, total_timeout_s=12))
    assert result.execution["budget_exhausted"] or result.execution["timed_out_cells"]
    statuses = {q.status for q in result.questions}
    assert statuses == {"timeout"}, statuses


@pytest.mark.notebook
def test_json_result_schema_and_exit_codes(tmp_path, write_nb):
    out = tmp_path / "r.json"
    buggy = mutate(load(LAB00), "return t.numel() * t.element_size()", "return t.numel() * 4")
    code = cli_main(["grade", str(write_nb(buggy)), "--json", str(out), "--timeout", "900"])
    assert code == 1
    data = json.loads(out.read_text())
    assert set(data) >= {"lab", "score", "max_score", "duration_s", "questions", "environment"}
    assert data["lab"] == "00" and data["max_score"] == 6 and data["score"] == 4
    for q in data["questions"]:
        assert set(q) >= {"id", "score", "max_score", "status", "feedback"}
        assert q["status"] in {"passed", "failed", "error", "not_implemented", "skipped", "timeout"}
    failed = [q for q in data["questions"] if q["status"] == "failed"]
    assert [q["id"] for q in failed] == ["tensor_nbytes"]
    assert "expected: " in failed[0]["feedback"] and "Hint" in failed[0]["feedback"]


@pytest.mark.notebook
def test_full_marks_exit_zero():
    assert cli_main(["grade", str(LAB00), "--timeout", "900"]) == 0


def test_unusable_inputs_exit_two(tmp_path, capsys):
    not_json = tmp_path / "00_broken.ipynb"
    not_json.write_text("{this is not json")
    assert cli_main(["grade", str(not_json)]) == 2
    assert "not a notebook" in capsys.readouterr().err
    old = tmp_path / "00_old.ipynb"
    old.write_text(json.dumps({"nbformat": 3, "nbformat_minor": 0, "worksheets": [], "cells": []}))
    assert cli_main(["grade", str(old)]) == 2
    assert "nbformat version 3" in capsys.readouterr().err
    assert cli_main(["grade", str(LAB00), "--lab", "42"]) == 2
    assert "unknown lab '42'" in capsys.readouterr().err
    assert cli_main(["grade", str(tmp_path / "missing.ipynb")]) == 2
