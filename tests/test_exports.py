"""Exports: Gradescope results.json and bundle, GitHub Classroom payload and workflow, JUnit XML."""

from __future__ import annotations

import base64
import copy
import json
import zipfile
from xml.etree import ElementTree as ET

import pytest
import yaml
from conftest import ROOT

from grader.cli import main as cli_main
from grader.exports import (
    as_record,
    best_record,
    build_gradescope_bundle,
    classroom_output,
    gradescope_results,
    junit_xml,
    load_records,
)
from grader.records import Record

HIDDEN_FEEDBACK = (
    "[hidden check] reproducible_noise(seed=123, n=20000) differs from the reference.\n"
    "  received: 19998 of 20000 values differ\n  expected: (hidden)"
)


def lab_result(**overrides) -> dict:
    """A `grader grade --json` result for lab 00: one pass, one hidden-check failure, one stub left."""
    questions = [
        {"id": "move_batch", "score": 2, "max_score": 2, "status": "passed", "feedback": "All checks passed.",
         "hidden": False},
        {"id": "reproducible_noise", "score": 0, "max_score": 2, "status": "failed", "feedback": HIDDEN_FEEDBACK,
         "hidden": True},
        {"id": "tensor_nbytes", "score": 0, "max_score": 2, "status": "not_implemented", "feedback": "Not yet.",
         "hidden": False},
    ]
    result = {"lab": "00", "score": 2, "max_score": 6, "duration_s": 9.5, "questions": questions, "execution": {}}
    return result | overrides


def unusable(student: str = "zed") -> Record:
    return as_record({"student": student, "lab": "00", "status": "unusable", "reason": "not a notebook (invalid JSON)",
                      "score": 0, "max_score": 6, "wall_s": 0.4, "review": [], "result": None})


@pytest.fixture
def record() -> Record:
    return as_record(lab_result(), "alice")


def test_a_plain_grade_result_becomes_a_record(record):
    assert record.student == "alice" and record.status == "partial" and record.score == 2
    assert "failed: reproducible_noise" in record.reason
    with pytest.raises(ValueError, match="not a grader result"):
        as_record({"hello": 1})


def test_gradescope_tests_per_question_and_hidden_checks_wait_for_publication(record):
    data = gradescope_results(record)
    assert data["score"] == 2 and data["execution_time"] == 10
    visible = [t for t in data["tests"] if t["visibility"] == "visible"]
    hidden = [t for t in data["tests"] if t["visibility"] == "after_published"]
    assert [t["name"].split(":")[0] for t in visible] == ["move_batch", "reproducible_noise", "tensor_nbytes"]
    assert len(hidden) == 3, "every lab-00 question has a hidden check"
    assert sum(t["score"] for t in data["tests"]) == data["score"]
    assert sum(t["max_score"] for t in data["tests"]) == 6
    noise = {t["name"]: t for t in data["tests"]}
    public, secret = noise["reproducible_noise: Reproducible randomness"], noise["reproducible_noise: hidden checks"]
    assert public["status"] == "failed" and "hidden check did not pass" in public["output"]
    assert "19998" not in public["output"], "hidden details stay hidden until published"
    assert secret["output"] == HIDDEN_FEEDBACK and "expected: (hidden)" in secret["output"]
    assert noise["tensor_nbytes: hidden checks"]["output"].startswith("Not run")


def _with_question(record: Record, qid: str, **changes) -> Record:
    """`record` with one question's result changed; hidden=None drops the flag, which older results lack."""
    result = copy.deepcopy(record.result)
    q = next(q for q in result["questions"] if q["id"] == qid)
    q.update(changes)
    if q["hidden"] is None:
        del q["hidden"]
    return as_record(result, record.student)


def test_gradescope_knows_a_hidden_failure_by_its_flag_not_its_wording(record):
    def tests(rec: Record) -> dict:
        return {t["name"]: t for t in gradescope_results(rec)["tests"]}

    unmarked = tests(_with_question(record, "reproducible_noise", feedback="19998 of 20000 differ", hidden=True))
    assert "hidden check did not pass" in unmarked["reproducible_noise: Reproducible randomness"]["output"]
    assert unmarked["reproducible_noise: hidden checks"]["output"] == "19998 of 20000 differ"
    public = tests(_with_question(record, "reproducible_noise", hidden=False))
    assert public["reproducible_noise: Reproducible randomness"]["output"] == HIDDEN_FEEDBACK, "a public failure"
    assert public["reproducible_noise: hidden checks"]["output"].startswith("Not run")
    older = _with_question(record, "reproducible_noise", hidden=None)  # written before results carried the flag
    with pytest.raises(ValueError, match="no 'hidden' flag"):
        gradescope_results(older)
    assert "19998" in junit_xml([older]), "other exports do not need the flag"


def test_gradescope_unusable_submission_explains_itself():
    data = gradescope_results(unusable())
    assert data["score"] == 0 and "could not be graded: not a notebook" in data["output"]
    assert {t["status"] for t in data["tests"]} == {"failed"}
    assert all("not a notebook" in t["output"] for t in data["tests"])


def test_best_record_prefers_the_graded_notebook(record):
    assert best_record([unusable(), record]).student == "alice"
    with pytest.raises(ValueError):
        best_record([])


def test_classroom_payload_decodes_to_per_question_points(record):
    key, _, value = classroom_output(record).partition("=")
    data = json.loads(base64.b64decode(value))
    assert key == "result" and data["version"] == 1 and data["max_score"] == 6 and data["status"] == "fail"
    assert [(t["status"], t["score"]) for t in data["tests"]] == [("pass", 2), ("fail", 0), ("fail", 0)]
    broken = json.loads(base64.b64decode(classroom_output(unusable()).partition("=")[2]))
    assert broken["status"] == "error" and {t["status"] for t in broken["tests"]} == {"error"}


def test_junit_has_a_suite_per_submission_and_failures_with_feedback(record):
    root = ET.fromstring(junit_xml([record, unusable()]))
    assert root.get("tests") == "6" and root.get("failures") == "2" and root.get("errors") == "3"
    alice, zed = root.findall("testsuite")
    assert alice.get("name") == "lab00.alice" and alice.get("failures") == "2"
    cases = {c.get("name"): c for c in alice.findall("testcase")}
    assert list(cases["move_batch"]) == []
    assert cases["reproducible_noise"].find("failure").text == HIDDEN_FEEDBACK
    assert cases["tensor_nbytes"].find("failure").get("message") == "not_implemented"
    assert all(c.find("error") is not None for c in zed.findall("testcase"))


def test_export_cli_reads_folders_and_rejects_junk(tmp_path, record, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "alice.json").write_text(json.dumps(record.to_dict()))
    (results / "zed.json").write_text(json.dumps(unusable().to_dict()))
    assert cli_main(["export", "junit", str(results), "-o", str(tmp_path / "junit.xml")]) == 0
    assert len(ET.parse(tmp_path / "junit.xml").getroot().findall("testsuite")) == 2
    assert cli_main(["export", "gradescope", str(results / "alice.json")]) == 0
    assert json.loads(capsys.readouterr().out)["score"] == 2
    (tmp_path / "junk.json").write_text("[1, 2]")
    assert cli_main(["export", "gradescope", str(tmp_path / "junk.json")]) == 2
    assert [r.student for r in load_records([results])] == ["alice", "zed"]


def test_gradescope_bundle_holds_the_scripts_and_the_package(tmp_path, monkeypatch):
    out = build_gradescope_bundle("00", tmp_path / "a.zip", course=ROOT)
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
        env = zf.read("autograder.env").decode()
        setup, run = zf.read("setup.sh").decode(), zf.read("run_autograder").decode()
    assert {"setup.sh", "run_autograder", "pyproject.toml", "grader/batch.py", "grader/labs/lab00.py"} <= names
    assert "labkit/device.py" in names
    assert not any("__pycache__" in n or n.startswith(("solutions/", "labs/", "tests/")) for n in names)
    assert modes["run_autograder"] & 0o111 and modes["setup.sh"] & 0o111
    assert "LAB=00" in env and "--sandbox" in env
    assert "download.pytorch.org/whl/cpu" in setup and "pip install /autograder/source" in setup
    assert "/autograder/submission" in run and "/autograder/results/results.json" in run
    import time

    class AnHourLater:  # the second build as if made an hour later: no member may carry the time it was written
        def __getattr__(self, name):
            return getattr(time, name)

        def time(self):
            return time.time() + 3600

    monkeypatch.setattr(zipfile, "time", AnHourLater())
    again = build_gradescope_bundle("00", tmp_path / "b.zip", course=ROOT)
    assert again.read_bytes() == out.read_bytes(), "same inputs, same bundle"


def test_gradescope_bundle_refuses_an_unknown_lab_or_folder(tmp_path):
    assert cli_main(["gradescope-bundle", "--lab", "42", "-o", str(tmp_path / "x.zip")]) == 2
    with pytest.raises(FileNotFoundError):
        build_gradescope_bundle("00", tmp_path / "x.zip", course=tmp_path)


def test_classroom_workflow_reports_what_the_grader_step_outputs():
    workflow = yaml.safe_load((ROOT / "templates" / "github-classroom" / "autograding.yml").read_text())
    steps = workflow["jobs"]["run-autograding-tests"]["steps"]
    grade = next(s for s in steps if s.get("id") == "grader")
    reporter = next(s for s in steps if "autograding-grading-reporter" in s.get("uses", ""))
    assert "grader export classroom" in grade["run"] and "$GITHUB_OUTPUT" in grade["run"]
    assert reporter["with"]["runners"] == "grader"
    assert reporter["env"]["GRADER_RESULTS"] == "${{ steps.grader.outputs.result }}"
    assert workflow["permissions"]["checks"] == "write"
