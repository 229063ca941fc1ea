"""Hostile submissions in one batch: each gets a bounded, correct, explained row and nobody else suffers.

One batch of lab-00 notebooks (a normal control plus every hostile case) runs once for the module at
two workers; beside it, a one-submission batch with a short hard ceiling for the submission that freezes
its grader; a third, smaller batch runs under the bubblewrap sandbox when bwrap is installed.

No limit that an ordinary cell or submission could reach on a busy machine is short: a hung cell gets a short
limit of its own (add_cell's timeout_s), and only the frozen submission's batch has a short hard ceiling.
"""

from __future__ import annotations

import copy
import csv
import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import LABS, add_cell, lean, save, solution_path

import grader
from grader.batch import BatchOptions, default_hidden, run_batch
from grader.runner import Limits
from grader.sandbox import Sandbox, bwrap_available

pytestmark = pytest.mark.notebook

# Time budgets far above lab 00's needs on a loaded machine; the memory and output caps are what the cases test.
LIMITS = Limits(cell_timeout_s=300, total_timeout_s=900, memory_mb=1500, output_chars=100_000, grading_timeout_s=300)
LOOP_TIMEOUT_S = 10  # the limit of a cell that never ends, and of that cell only
HARD_TIMEOUT_S = 60  # the ceiling of the batch that holds only the frozen submission
OPTIONS = BatchOptions("00", workers=2, limits=LIMITS)  # its ceiling: the budgets plus slack, far off
FROZEN_OPTIONS = BatchOptions("00", workers=1, limits=LIMITS, hard_timeout_s=HARD_TIMEOUT_S)
QUESTIONS = ("move_batch", "reproducible_noise", "tensor_nbytes")

FULL_MARKS = """
from grader.registry import load_lab as _load
def _all_passed(lab_id, out_path=None, nonce=None, include_hidden=True):
    import json
    res = [dict(id=q.id, score=q.points, max_score=q.points, status="passed", feedback="", title=q.title)
           for q in _load(lab_id).questions.values()]
    if out_path:
        json.dump({"nonce": nonce, "results": res, "current": None}, open(out_path, "w"))
    return res
"""
MONKEYPATCH = FULL_MARKS + """
import grader.grading, grader.kernel
from grader.grading import QuestionResult
grader.grading.run_question = lambda lab, q, *a, **k: QuestionResult(q.id, q.points, q.points, "passed", "", q.title)
grader.kernel.run_question = grader.grading.run_question
grader.kernel.grade_in_kernel = _all_passed
import glob, os  # a fake results file wherever the grader might look
for d in glob.glob("/tmp/sl-results-*") + ["."]:
    for name in ("result.json", "results.json"):
        try:
            json.dump({"results": _all_passed("00")}, open(os.path.join(d, name), "w"))
        except OSError:
            pass
"""
SHADOW = f"""
import os, sys, importlib.abc, importlib.util
SRC = {FULL_MARKS!r}.replace("_all_passed", "grade_in_kernel")
os.makedirs("grader", exist_ok=True)  # a fake grader package in the working directory ...
open("grader/__init__.py", "w").write("")
open("grader/kernel.py", "w").write(SRC)
sys.path.insert(0, os.getcwd())
class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):  # ... and an import hook serving it
    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "grader.kernel" else None
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        exec(SRC, module.__dict__)
sys.meta_path.insert(0, Finder())
"""
HOOKS = (
    FULL_MARKS
    + """
import re
_seen = {}
def _pre(info):  # read the grading cell as it runs, nonce and all, then forge its result afterwards
    m = re.search(r"_sl_grade\\('(\\d+)', '([^']+)', '([0-9a-f]+)'", info.raw_cell or "")
    if m:
        _seen["args"] = m.groups()
def _post(result):
    if "args" in _seen:
        _all_passed(*_seen["args"])
get_ipython().events.register("pre_run_cell", _pre)
get_ipython().events.register("post_run_cell", _post)
"""
)


# Not stopped, only bounded: a thread left running races the grader for its result file (see the instructor
# guide). Run under the sandbox only: without it, such a thread could reach other submissions' files too.
THREAD_RACE = """
import glob, json, threading, time
def _race():
    while True:
        for name in glob.glob("/tmp/sl-results-*/*.json"):
            try:
                data = json.load(open(name))
                if data.get("current") is None and data.get("results"):
                    for r in data["results"]:
                        r.update(status="passed", score=999, max_score=999)
                    json.dump(data, open(name, "w"))
            except (OSError, ValueError):
                pass
        time.sleep(0.002)
threading.Thread(target=_race, daemon=True).start()
"""


def _cell_index(nb, text: str) -> int:
    (index,) = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source]
    return index


def _prepend_to(nb, text: str, code: str, timeout_s: float):
    nb = copy.deepcopy(nb)
    cell = nb.cells[_cell_index(nb, text)]
    cell.source = code + "\n" + cell.source
    cell.metadata["specialist_labs"] = {"timeout_s": timeout_s}  # as add_cell's timeout_s: this cell only
    return nb


def _without_cell(nb, text: str):
    nb = copy.deepcopy(nb)
    del nb.cells[_cell_index(nb, text)]
    return nb


def _moved_to_end(nb, text: str):
    nb = copy.deepcopy(nb)
    nb.cells.append(nb.cells.pop(_cell_index(nb, text)))
    return nb


def _renamed(nb, old: str, new: str):
    nb = copy.deepcopy(nb)
    cell = nb.cells[_cell_index(nb, f"def {old}(")]
    cell.source = re.sub(rf"\b{old}\b", new, cell.source)
    return nb


SOLUTION, STARTER = lean(solution_path("00")), lean(LABS / "00_setup.ipynb")


def hostile_notebooks() -> dict[str, object]:
    """student -> notebook (or raw text for files that are not notebooks)."""
    after_move_batch = _cell_index(SOLUTION, "def move_batch(") + 1
    return {
        "normal": SOLUTION,
        "infinite_loop": _prepend_to(SOLUTION, "def tensor_nbytes(", "while True:\n    pass", LOOP_TIMEOUT_S),
        "loop_then_last_cell": add_cell(
            _moved_to_end(SOLUTION, "def tensor_nbytes("), "while True:\n    pass", 2, timeout_s=LOOP_TIMEOUT_S
        ),
        "memory_bomb": add_cell(SOLUTION, "blocks = []\nwhile True:\n    blocks.append(bytearray(200 * 2**20))", 2),
        "enormous_output": add_cell(SOLUTION, "for i in range(200_000):\n    print('spam' * 20)", 2),
        "sys_exit": add_cell(SOLUTION, "import sys\nsys.exit(1)", after_move_batch),
        "os_exit": add_cell(SOLUTION, "import os\nos._exit(3)", after_move_batch),
        "segfault": add_cell(SOLUTION, "import ctypes\nctypes.string_at(0)", after_move_batch),
        "deleted_cell": _without_cell(SOLUTION, "def tensor_nbytes("),
        "renamed_function": _renamed(SOLUTION, "move_batch", "move_the_batch"),
        "not_json": "{ this is not a notebook",
        "nbformat3": json.dumps({"nbformat": 3, "nbformat_minor": 0, "metadata": {}, "worksheets": [], "cells": []}),
        "fake_pass": add_cell(STARTER, "print('All checks passed.\\nTOTAL 6/6  all tests passed')"),
        "monkeypatch": add_cell(STARTER, MONKEYPATCH),
        "shadow_grader": add_cell(STARTER, SHADOW),
        "event_hooks": add_cell(STARTER, HOOKS),
        "kills_grader": add_cell(SOLUTION, "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", 2),
    }


def frozen_notebooks() -> dict[str, object]:
    """Graded in a batch of its own: only there is the hard ceiling short."""
    return {"freezes_grader": add_cell(SOLUTION, "import os, signal\nos.kill(os.getppid(), signal.SIGSTOP)", 2)}


def write_submissions(folder, notebooks: dict) -> None:
    folder.mkdir()
    for student, nb in notebooks.items():
        path = folder / f"{student}.ipynb"
        if isinstance(nb, str):
            path.write_text(nb)
        else:
            save(nb, path)


def grade(root: Path, notebooks: dict, opts: BatchOptions):
    """(records by student, gradebook rows by student, the batch log) of one batch over `notebooks`."""
    root.mkdir()
    write_submissions(root / "subs", notebooks)
    gradebook = root / "out" / "gradebook.csv"
    log = root / "log.txt"
    with open(log, "w") as f:
        records = run_batch(root / "subs", opts, gradebook, log=f)
    with open(gradebook, newline="") as f:
        rows = {row["student"]: row for row in csv.DictReader(f)}
    return {r.student: r for r in records}, rows, log.read_text()


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    """The hostile batch, and beside it the frozen submission's batch (whose worker, stopped, only waits)."""
    root = tmp_path_factory.mktemp("hostile")
    with ThreadPoolExecutor(1) as side:
        frozen = side.submit(grade, root / "frozen", frozen_notebooks(), FROZEN_OPTIONS)
        hostile = grade(root / "main", hostile_notebooks(), OPTIONS)
        return hostile, frozen.result()


@pytest.fixture(scope="module")
def batch(batches):
    return batches[0]


def statuses(record) -> dict[str, str]:
    return {q["id"]: q["status"] for q in record.result["questions"]}


def test_every_submission_has_a_row_and_a_bounded_time(batch):
    records, rows, log = batch
    assert sorted(rows) == sorted(hostile_notebooks())
    assert all(r.wall_s < OPTIONS.ceiling_s + 60 for r in records.values()), "the ceiling, plus starting a worker"
    assert f"[{len(rows)}/{len(rows)}]" in log and f"{len(rows)} submissions:" in log


def test_the_normal_submission_is_untouched_by_its_neighbours(batch):
    records, rows, _ = batch
    assert rows["normal"]["status"] == "graded" and rows["normal"]["total"] == "6"
    assert rows["normal"]["reason"] == ""


def test_infinite_loop_costs_only_its_question(batch):
    record = batch[0]["infinite_loop"]
    assert record.status == "timeout" and record.score == 4
    assert statuses(record)["tensor_nbytes"] == "timeout"
    assert "timed out" in record.reason


def test_after_a_timeout_the_remaining_cells_still_run_as_written(batch):
    record = batch[0]["loop_then_last_cell"]
    assert record.score == 6 and record.status == "graded", "the last cell defines tensor_nbytes"
    assert 2 in record.result["execution"]["timed_out_cells"]


def test_memory_bomb_is_killed_and_explained(batch):
    record = batch[0]["memory_bomb"]
    assert record.status == "memory" and record.score == 0
    assert "memory limit exceeded" in record.reason


def test_enormous_output_is_capped_and_still_graded(batch):
    record = batch[0]["enormous_output"]
    assert record.status == "graded" and record.score == 6, (record.status, record.reason)
    assert record.result["execution"]["output_truncated"] and "output truncated" in record.reason


def test_sys_exit_is_just_an_error_in_its_cell(batch):
    record = batch[0]["sys_exit"]
    assert record.status == "graded" and record.score == 6, "IPython turns SystemExit into a cell error"
    assert "SystemExit" in record.reason


@pytest.mark.parametrize("student", ["os_exit", "segfault"])
def test_a_dying_kernel_is_a_crashed_row(batch, student):
    record = batch[0][student]
    assert record.status == "crashed" and record.score == 0
    assert "kernel died" in record.reason


def test_deleted_exercise_cell_loses_that_question_only(batch):
    record = batch[0]["deleted_cell"]
    assert record.status == "partial" and record.score == 4
    assert statuses(record)["tensor_nbytes"] == "not_implemented"
    assert "not_implemented: tensor_nbytes" in record.reason


def test_renamed_function_is_not_implemented(batch):
    record = batch[0]["renamed_function"]
    assert record.score == 4 and statuses(record)["move_batch"] == "not_implemented"
    feedback = {q["id"]: q["feedback"] for q in record.result["questions"]}["move_batch"]
    assert "`move_batch` is not defined" in feedback


@pytest.mark.parametrize(("student", "why"), [("not_json", "not a notebook"), ("nbformat3", "nbformat version 3")])
def test_unusable_files_get_an_unusable_row(batch, student, why):
    records, rows, _ = batch
    assert rows[student]["status"] == "unusable" and why in rows[student]["reason"]
    assert rows[student]["total"] == "0" and rows[student]["move_batch"] == ""
    assert records[student].result is None


@pytest.mark.parametrize("student", ["fake_pass", "monkeypatch", "shadow_grader", "event_hooks"])
def test_tricks_on_the_grader_do_not_raise_the_score(batch, student):
    record = batch[0][student]
    assert record.score == 0, record.reason
    assert set(statuses(record).values()) == {"not_implemented"}, "graded normally, as the unfinished starter"


@pytest.mark.parametrize("student", ["monkeypatch", "shadow_grader", "event_hooks"])
def test_tricks_on_the_grader_are_flagged_for_review(batch, student):
    _, rows, _ = batch
    assert rows[student]["reason"].startswith("REVIEW:")
    assert not rows["normal"]["reason"] and "REVIEW" not in rows["deleted_cell"]["reason"]


def test_a_killed_grading_process_is_a_crashed_row(batch):
    record = batch[0]["kills_grader"]
    assert record.status == "crashed" and "grading process died" in record.reason


def test_a_frozen_grading_process_is_killed_at_the_hard_limit(batches):
    record = batches[1][0]["freezes_grader"]
    assert record.status == "timeout" and "hard limit" in record.reason
    # Killed at its ceiling, not at the default one (22 minutes); the margin: starting a worker on a busy machine.
    assert HARD_TIMEOUT_S <= record.wall_s < 2 * HARD_TIMEOUT_S


# --- with the sandbox --------------------------------------------------------------------------------------------

needs_bwrap = pytest.mark.skipif(not bwrap_available(), reason="bubblewrap (bwrap) is not installed or cannot run here")


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory):
    root = tmp_path_factory.mktemp("sandboxed")
    target = Path(grader.__file__).parent / "escaped_by_a_submission.txt"  # the grader itself: worth corrupting
    notebooks = {
        "normal": SOLUTION,
        "writes_outside": add_cell(SOLUTION, f"open({str(target)!r}, 'w').write('escaped')", 2),
        "network": add_cell(SOLUTION, "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=5)", 2),
        "reads_solutions": add_cell(SOLUTION, f"print(open({str(solution_path('00'))!r}).read()[:100])", 2),
        "thread_race": add_cell(STARTER, THREAD_RACE),
    }
    write_submissions(root / "subs", notebooks)
    gradebook = root / "out" / "gradebook.csv"
    sandbox = Sandbox(hide=default_hidden(root / "subs", gradebook))
    opts = BatchOptions("00", workers=2, limits=LIMITS, sandbox=sandbox)
    try:
        with open(root / "log.txt", "w") as f:
            records = run_batch(root / "subs", opts, gradebook, log=f)
        escaped = target.exists()
    finally:
        target.unlink(missing_ok=True)
    return {r.student: r for r in records}, escaped, (root / "log.txt").read_text()


def _cell_errors(record) -> list[str]:
    return [f"{e['ename']}: {e['evalue']}" for e in record.result["execution"]["errors"]]


@needs_bwrap
def test_sandboxed_normal_submission_is_graded(sandboxed):
    records, _, log = sandboxed
    assert records["normal"].status == "graded" and records["normal"].score == 6
    assert "bubblewrap sandbox" in log


@needs_bwrap
def test_sandbox_blocks_writes_outside_the_working_directory(sandboxed):
    records, escaped, _ = sandboxed
    assert not escaped
    assert any("Read-only file system" in e for e in _cell_errors(records["writes_outside"]))
    assert records["writes_outside"].score == 6, "the blocked write costs nothing else"


@needs_bwrap
def test_sandbox_blocks_the_network(sandboxed):
    errors = _cell_errors(sandboxed[0]["network"])
    assert any(e.startswith("OSError") and "Network is unreachable" in e for e in errors), errors
    assert sandboxed[0]["network"].score == 6


@needs_bwrap
def test_sandbox_hides_the_solutions(sandboxed):
    errors = _cell_errors(sandboxed[0]["reads_solutions"])
    assert any(e.startswith("FileNotFoundError") for e in errors), errors


@needs_bwrap
def test_a_thread_racing_the_result_file_is_bounded_and_flagged(sandboxed):
    record = sandboxed[0]["thread_race"]
    assert record.score <= record.max_score == 6, "points come from the registry, never from the kernel"
    assert "leaves code running after its cell" in record.review
    assert sandboxed[0]["normal"].score == 6, "and its neighbours are untouched"


def test_a_forged_result_is_worth_at_most_full_marks():
    from grader.registry import load_lab
    from grader.runner import _trusted_results

    lab = load_lab("00")
    forged = {"results": [{"id": "move_batch", "score": 999, "max_score": 999, "status": "passed", "feedback": ""}]}
    assert _trusted_results(lab, forged)["move_batch"].score == 2
    for bad in (
        {"results": [{"id": "move_batch", "status": "passed"}] * 2},
        {"results": [{"id": "not_a_question", "status": "passed"}]},
        {"results": [{"id": "move_batch", "status": "skipped"}]},
        {"results": [{"id": "move_batch", "status": "excellent"}]},
        {"results": "everything passed"},
    ):
        assert _trusted_results(lab, bad) is None, bad
