"""`grader batch`: finding submissions, the gradebook, regrading one student, determinism, the sandbox fallback."""

from __future__ import annotations

import copy
import io
import json
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import LABS, add_cell, lean, mutate, save, solution_path

import grader.sandbox
from grader.batch import BatchOptions, run_batch
from grader.cli import _limits as cli_limits
from grader.cli import build_parser
from grader.cli import main as cli_main
from grader.exports import gradescope_results
from grader.gradebook import gradebook_columns, gradebook_row, read_gradebook, write_gradebook
from grader.records import Record, RowStatus, classify
from grader.runner import Death, DeathKind, Limits
from grader.sandbox import Sandbox, bwrap_available
from grader.submissions import discover, review_flags

# Nothing here tests a time limit: the runner's own budgets are far-off safety nets, so a slow machine fails no test.
# The memory cap stays low, since the suite shares its machine.
LIMITS = Limits(memory_mb=3000)
LIMIT_ARGS = ["--memory-mb", "3000"]


SOLUTION = lean(solution_path("00"))
UINT8_BUG = "return t.numel() * (2 if t.dtype == torch.uint8 else t.element_size())"
BUGGY = mutate(SOLUTION, "return t.numel() * t.element_size()", UINT8_BUG)  # public checks pass, a hidden one fails
QUESTIONS = ["move_batch", "reproducible_noise", "tensor_nbytes"]


# --- finding submissions -----------------------------------------------------------------------------------------


def touch(path, text="{}"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_students_come_from_file_and_folder_names(tmp_path):
    touch(tmp_path / "zoe.ipynb")
    touch(tmp_path / "alice" / "work" / "anything.ipynb")
    touch(tmp_path / "bob" / "00_setup.ipynb")
    touch(tmp_path / "bob" / "scratch.ipynb")
    touch(tmp_path / "bob" / ".ipynb_checkpoints" / "00_setup-checkpoint.ipynb")
    touch(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    subs = {s.student: s for s in discover(tmp_path, "00")}
    assert list(subs) == ["alice", "bob", "empty", "zoe"]
    assert subs["alice"].notebook.name == "anything.ipynb"
    assert subs["bob"].notebook.name == "00_setup.ipynb", "the lab's notebook wins over scratch work"
    assert subs["empty"].notebook is None and "no notebook" in subs["empty"].problem
    assert subs["zoe"].notebook == tmp_path / "zoe.ipynb"


def test_ambiguous_folder_is_explained_not_guessed(tmp_path):
    touch(tmp_path / "carol" / "a.ipynb")
    touch(tmp_path / "carol" / "b.ipynb")
    (sub,) = discover(tmp_path, "00")
    assert sub.notebook is None and "several notebooks (a.ipynb, b.ipynb)" in sub.problem


def test_one_student_folder_or_file(tmp_path):
    nb = touch(tmp_path / "sub" / "00_setup.ipynb")
    touch(tmp_path / "sub" / "01_tensors.ipynb")
    (one,) = discover(tmp_path / "sub", "00", student="submission")
    assert one.student == "submission" and one.notebook == nb
    (single,) = discover(nb, "00")
    assert single.student == "00_setup" and single.notebook == nb


def test_review_flags_catch_tricks_but_not_lab_work(tmp_path):
    plain = save(SOLUTION, tmp_path / "plain.ipynb")
    tricky = save(add_cell(SOLUTION, "import sys\ndel sys.modules['grader.kernel']"), tmp_path / "tricky.ipynb")
    hooks = save(add_cell(SOLUTION, "get_ipython().events.register('post_run_cell', print)"), tmp_path / "h.ipynb")
    assert review_flags(plain) == []
    assert review_flags(tricky) == ["changes grader internals"]
    assert review_flags(hooks) == ["hooks cell execution"]
    assert review_flags(touch(tmp_path / "junk.ipynb", "not json")) == []


# --- rows --------------------------------------------------------------------------------------------------------


def result(statuses: dict[str, str], **execution) -> dict:
    questions = [
        {"id": q, "score": 2 if s == "passed" else 0, "max_score": 2, "status": s, "feedback": ""}
        for q, s in statuses.items()
    ]
    return {"lab": "00", "score": sum(q["score"] for q in questions), "max_score": 6, "questions": questions,
            "execution": {"errors": [], **execution}}


@pytest.mark.parametrize(
    ("statuses", "execution", "status", "reason"),
    [
        (["passed"] * 3, {}, "graded", ""),
        (["passed", "failed", "not_implemented"], {}, "partial", "failed: reproducible_noise; not_implemented:"),
        (["passed", "passed", "timeout"], {"timed_out_cells": [13]}, "timeout", "cell(s) 13 timed out"),
        (["error"] * 3, {"kernel_died": Death("memory", 3, 3100.0).to_dict()}, "memory", "memory limit exceeded"),
        (["error"] * 3, {"kernel_died": Death("crash", 3).to_dict()}, "crashed", "kernel died"),
        (["passed"] * 3, {"output_truncated": True}, "graded", "output truncated"),
    ],
)
def test_classify(statuses, execution, status, reason):
    got = classify(result(dict(zip(QUESTIONS, statuses, strict=True)), **execution))
    assert got[0] == status and (reason in got[1] if reason else got[1] == "")


@pytest.mark.parametrize(
    ("kind", "status"),
    [(DeathKind.MEMORY, RowStatus.MEMORY), (DeathKind.UNRESPONSIVE, RowStatus.TIMEOUT), (DeathKind.CRASH, "crashed")],
)
def test_classify_reads_the_typed_cause_of_death_not_its_wording(kind, status):
    died = {"kind": str(kind), "cell": 4, "memory_mb": None, "message": "Speicher voll, Zelle 4"}
    assert classify(result(dict.fromkeys(QUESTIONS, "error"), kernel_died=died)) == (status, "Speicher voll, Zelle 4")
    worded = {**died, "kind": "crash", "message": "memory limit exceeded; the kernel stopped responding"}
    assert classify(result(dict.fromkeys(QUESTIONS, "error"), kernel_died=worded))[0] == RowStatus.CRASHED
    with pytest.raises(ValueError, match="older grader"):
        classify(result(dict.fromkeys(QUESTIONS, "error"), kernel_died="memory limit exceeded (3100 MB used)"))


def test_grade_batch_and_batch_options_share_one_set_of_limit_defaults():
    parser = build_parser()
    for argv in (["grade", "x.ipynb"], ["batch", "subs", "--lab", "00"]):
        assert cli_limits(parser.parse_args(argv)) == Limits(), argv
    assert BatchOptions("00").limits == Limits()


def record(student: str, res: dict | None, status: str = "partial", reason: str = "", review=()) -> Record:
    return Record(student, "00", None, status, reason, res["score"] if res else 0, 6, 1.0, list(review), res)


def test_a_record_keeps_the_json_shape_of_results_files():
    res = result(dict.fromkeys(QUESTIONS, "passed"))
    rec = record("amy", res, "graded", review=["hooks cell execution"])
    data = json.loads(json.dumps(rec.to_dict()))
    keys = ["student", "lab", "notebook", "status", "reason", "score", "max_score", "wall_s", "review", "result"]
    assert list(data) == keys and data["status"] == "graded" and data["result"] == res
    assert Record.from_dict(data) == rec and Record.from_dict(data).status is RowStatus.GRADED
    with pytest.raises(ValueError, match="not a batch record"):
        Record.from_dict({"student": "amy"})


def test_gradebook_rows_sorted_blank_when_not_graded_and_safe_in_spreadsheets(tmp_path):
    path = tmp_path / "gb.csv"
    rows = {
        "zed": gradebook_row(record("zed", None, "unusable", "=HYPERLINK(evil)")),
        "amy": gradebook_row(record("amy", result({"move_batch": "passed", "reproducible_noise": "failed",
                                                   "tensor_nbytes": "passed"}), review=["hooks cell execution"])),
    }
    write_gradebook(path, "00", rows)
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == gradebook_columns("00")
    assert lines[0] == "student,lab,move_batch,reproducible_noise,tensor_nbytes,total,max_score,status,reason"
    back = read_gradebook(path)
    assert list(back) == ["amy", "zed"]
    assert back["amy"]["move_batch"] == "2" and back["amy"]["reproducible_noise"] == "0" and back["amy"]["total"] == "4"
    assert back["amy"]["reason"] == "REVIEW: hooks cell execution"
    assert back["zed"]["move_batch"] == "" and back["zed"]["total"] == "0"
    assert back["zed"]["reason"] == "'=HYPERLINK(evil)", "a formula from a student must stay text"


# --- a real batch ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """alice (folder) and alice_twin (same notebook), bob (the unfinished starter), carol (a hidden-check bug)."""
    root = tmp_path_factory.mktemp("batch")
    subs = root / "subs"
    (subs / "alice").mkdir(parents=True)
    (subs / "carol").mkdir()
    save(SOLUTION, subs / "alice" / "00_setup.ipynb")
    save(SOLUTION, subs / "alice_twin.ipynb")
    save(lean(LABS / "00_setup.ipynb"), subs / "bob.ipynb")
    save(BUGGY, subs / "carol" / "00_setup.ipynb")
    gradebook = root / "out" / "gradebook.csv"
    log = io.StringIO()
    records = run_batch(subs, BatchOptions("00", workers=2, limits=LIMITS), gradebook, log=log)
    return root, gradebook, {r.student: r for r in records}, log.getvalue()


@pytest.mark.notebook
def test_gradebook_has_a_row_per_student_with_scores(graded):
    _, gradebook, _, _ = graded
    rows = read_gradebook(gradebook)
    assert list(rows) == ["alice", "alice_twin", "bob", "carol"]
    assert [rows[s]["total"] for s in rows] == ["6", "6", "0", "4"]
    assert [rows[s]["status"] for s in rows] == ["graded", "graded", "partial", "partial"]
    assert rows["carol"]["tensor_nbytes"] == "0" and rows["carol"]["reason"].startswith("failed: tensor_nbytes")
    assert "not_implemented: move_batch, reproducible_noise, tensor_nbytes" in rows["bob"]["reason"]


@pytest.mark.notebook
def test_grading_the_same_notebook_twice_gives_identical_results(graded):
    _, gradebook, records, _ = graded
    rows = read_gradebook(gradebook)
    assert {**rows["alice"], "student": ""} == {**rows["alice_twin"], "student": ""}
    def strip(r):
        return [(q["id"], q["score"], q["status"], q["feedback"]) for q in r.result["questions"]]

    assert strip(records["alice"]) == strip(records["alice_twin"])


@pytest.mark.notebook
def test_progress_and_summary(graded):
    _, _, _, log = graded
    lines = log.splitlines()
    assert sum(line.startswith("[") for line in lines) == 4 and any(line.startswith("[4/4] ") for line in lines)
    assert "[1/4]" in log and "carol: 4/6 (partial)" in log
    assert "4 submissions: graded 2, partial 2" in log and "submissions/min with 2 worker(s)" in log
    assert "mean score 66.7%" in log


@pytest.mark.notebook
def test_per_student_json_results(graded):
    _, gradebook, _, _ = graded
    data = json.loads((gradebook.parent / "results" / "carol.json").read_text())
    assert data["student"] == "carol" and data["status"] == "partial" and data["score"] == 4
    assert data["notebook"].endswith("carol/00_setup.ipynb") and data["result"]["lab"] == "00"


@pytest.mark.notebook
def test_hidden_check_feedback_never_reveals_the_expected_value(graded):
    _, _, records, _ = graded
    carol = {q["id"]: q for q in records["carol"].result["questions"]}["tensor_nbytes"]
    feedback = carol["feedback"]
    assert feedback.startswith("[hidden check]") and "received: 50\n  expected: (hidden)" in feedback
    assert carol["hidden"] is True, "exports know a hidden failure by this flag, not by the feedback's wording"
    assert "25" not in feedback
    tests = {t["name"]: t for t in gradescope_results(records["carol"])["tests"]}
    assert tests["tensor_nbytes: hidden checks"]["visibility"] == "after_published"
    assert "expected: (hidden)" in tests["tensor_nbytes: hidden checks"]["output"]


@pytest.mark.notebook
def test_regrade_one_student_updates_only_their_row(graded, capsys):
    root, gradebook, _, _ = graded
    before = read_gradebook(gradebook)
    save(SOLUTION, root / "subs" / "carol" / "00_setup.ipynb")  # carol fixes her bug
    argv = ["batch", str(root / "subs"), "--lab", "00", "--only", "carol", "--out", str(gradebook), *LIMIT_ARGS]
    assert cli_main(argv) == 0
    assert "[1/1] carol: 6/6 (graded)" in capsys.readouterr().err
    after = read_gradebook(gradebook)
    assert after["carol"]["total"] == "6" and after["carol"]["status"] == "graded"
    assert {s: r for s, r in after.items() if s != "carol"} == {s: r for s, r in before.items() if s != "carol"}
    assert json.loads((gradebook.parent / "results" / "carol.json").read_text())["score"] == 6


@pytest.mark.notebook
def test_batch_cli_refuses_what_it_cannot_grade(graded, tmp_path, capsys):
    root, gradebook, _, _ = graded
    assert cli_main(["batch", str(root / "subs"), "--lab", "00", "--only", "nobody", "--out", str(gradebook)]) == 2
    assert "no submission for nobody" in capsys.readouterr().err
    assert cli_main(["batch", str(root / "subs"), "--lab", "42"]) == 2
    assert cli_main(["batch", str(tmp_path / "missing"), "--lab", "00"]) == 2


@pytest.mark.notebook
def test_without_bubblewrap_the_sandbox_falls_back_to_process_limits_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(grader.sandbox, "_probe", lambda: (None, "bubblewrap (bwrap) is not installed"))
    outside = tmp_path / "outside.txt"
    probe = (
        f"open({str(outside)!r}, 'w').write('not isolated')\n"
        "try:\n    open('big.bin', 'wb').write(b'x' * 3 * 2**20)\nexcept OSError as e:\n    print('blocked:', e)\n"
        "    raise\n"
    )
    nb = copy.deepcopy(SOLUTION)
    nb.cells.insert(2, nbformat.v4.new_code_cell(probe))
    save(nb, tmp_path / "dora.ipynb")
    log = io.StringIO()
    opts = BatchOptions("00", workers=1, limits=LIMITS, sandbox=Sandbox(file_size_mb=1))
    (rec,) = run_batch(tmp_path / "dora.ipynb", opts, tmp_path / "out" / "gb.csv", log=log)
    assert "process limits only" in log.getvalue() and "WARNING" in log.getvalue()
    assert outside.read_text() == "not isolated", "honest: without bubblewrap nothing stops this write"
    errors = rec.result["execution"]["errors"]
    assert [e["evalue"] for e in errors] == ["[Errno 27] File too large"], "but the file-size limit holds"
    assert rec.status == "graded" and rec.score == 6


def test_a_course_installed_under_tmp_stays_visible_inside_the_sandbox(tmp_path, monkeypatch):
    """The sandbox mounts an empty /tmp; a clone (and its venv) under /tmp must be mounted back, read-only."""
    import labkit.zoo  # (imported before sys.path is replaced below)

    package = Path(labkit.zoo.__file__).resolve().parent
    assert package in grader.sandbox.kernel_paths(), "an editable install puts no course folder on sys.path"

    course = tmp_path / "course"
    (course / ".venv" / "lib").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", ["", "relative", "/usr/lib", str(course / ".venv" / "lib"), str(course)])
    needed = grader.sandbox._needed_under_tmp()
    assert course.resolve() in needed and (course / ".venv" / "lib").resolve() not in needed
    assert all(Path("/tmp").resolve() in p.parents for p in needed)
    args = Sandbox()._bwrap_args([]) if bwrap_available() else []
    if args:
        tmpfs, rebind = args.index("/tmp"), args.index(str(course.resolve()))
        assert tmpfs < rebind and args[rebind - 1] == "--ro-bind", "mounted back after the empty /tmp, read-only"
