"""Grades in the formats where classes live: Gradescope, GitHub Classroom, JUnit XML for CI.

Every exporter reads the per-student records that `grader batch` writes (results/<student>.json)
or a plain result from `grader grade --json`. Hidden checks never reveal expected values: their
messages are already redacted when the check runs, and on Gradescope their details stay hidden
until grades are published.
"""

from __future__ import annotations

import base64
import json
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

from grader.grading import Status
from grader.records import Record, classify
from grader.registry import Question, load_lab

PACKAGE_DIRS = ("grader", "labkit")
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE")


# --- reading results ---------------------------------------------------------------------------------------------


def as_record(data: dict, name: str = "submission") -> Record:
    """A batch record as is; a `grader grade --json` result wrapped as one."""
    if "student" in data and "status" in data:
        return Record.from_dict(data)
    if "questions" in data and "lab" in data:
        status, reason = classify(data)
        return Record(
            student=name,
            lab=data["lab"],
            notebook=None,
            status=status,
            reason=reason,
            score=data["score"],
            max_score=data["max_score"],
            wall_s=data.get("duration_s", 0),
            review=[],
            result=data,
        )
    raise ValueError("not a grader result (expected a results/<student>.json record or `grader grade --json` output)")


def load_records(paths: Iterable[str | Path]) -> list[Record]:
    """Records from files and folders of files, sorted by student."""
    files: list[Path] = []
    for path in map(Path, paths):
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    records = []
    for file in files:
        try:
            records.append(as_record(json.loads(file.read_text(encoding="utf-8")), file.stem))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{file}: {exc}") from None
    return sorted(records, key=lambda r: r.student)


def _questions(record: Record) -> Iterator[tuple[Question, dict | None]]:
    """Each question of the record's lab with its result, or None when the notebook was not graded."""
    results = {q["id"]: q for q in (record.result or {}).get("questions", [])}
    for q in load_lab(record.lab).questions.values():
        yield q, results.get(q.id)


def _not_graded(record: Record) -> str:
    return f"Not graded ({record.status}): {record.reason or 'no result'}"


def _failed_in_hidden_check(r: dict) -> bool:
    """From the flag the runner records, never from the feedback's wording; a result without it is refused."""
    if Status(r["status"]) in (Status.PASSED, Status.SKIPPED):
        return False
    if "hidden" not in r:
        raise ValueError(f"question {r['id']} has no 'hidden' flag (a result from an older grader): regrade it")
    return bool(r["hidden"])


# --- Gradescope --------------------------------------------------------------------------------------------------


def _gradescope_tests(q: Question, r: dict | None, record: Record) -> list[dict]:
    """A visible test per question, plus one for its hidden checks whose details wait for publication."""
    title = f"{q.id}: {q.title}"
    if r is None:
        return [
            {
                "name": title,
                "score": 0,
                "max_score": q.points,
                "status": "failed",
                "output": _not_graded(record),
                "visibility": "visible",
            }
        ]
    hidden_failed = _failed_in_hidden_check(r)
    passed = r["status"] == Status.PASSED
    skipped = r["status"] == Status.SKIPPED
    if skipped:
        output = r["feedback"]
    elif hidden_failed:
        output = "Passed the public checks; a hidden check did not pass (details when grades are published)."
    else:
        output = r["feedback"] if not passed else "All checks passed."
    tests = [
        {
            "name": title,
            "score": r["score"],
            "max_score": r["max_score"],
            "status": "passed" if passed or skipped else "failed",
            "output": output,
            "visibility": "visible",
        }
    ]
    if any(c.hidden for c in q.checks) and not skipped:
        if passed:
            hidden_output = "Hidden checks passed."
        elif hidden_failed:
            hidden_output = r["feedback"]
        else:
            hidden_output = "Not run: the public checks did not pass."
        tests.append(
            {
                "name": f"{q.id}: hidden checks",
                "score": 0,
                "max_score": 0,
                "status": "passed" if passed else "failed",
                "output": hidden_output,
                "visibility": "after_published",
            }
        )
    return tests


def gradescope_results(record: Record) -> dict:
    """Gradescope's results.json for one submission."""
    tests = [t for q, r in _questions(record) for t in _gradescope_tests(q, r, record)]
    if record.result is None:
        output = f"Your notebook could not be graded: {record.reason}"
    else:
        output = f"Lab {record.lab}: {record.score:g}/{record.max_score:g} points."
        if not record.status.normal or "timed out" in record.reason:
            output += f" Note: {record.reason}"
    return {
        "score": record.score,
        "execution_time": round(record.wall_s),
        "output": output,
        "tests": tests,
    }


def best_record(records: list[Record]) -> Record:
    """One submission may upload several notebooks; Gradescope wants one result, so take the best."""
    if not records:
        raise ValueError("no results to export")
    return max(records, key=lambda r: (r.score, r.result is not None))


# --- GitHub Classroom --------------------------------------------------------------------------------------------


def classroom_results(record: Record) -> dict:
    """The payload GitHub Classroom's autograding reporter reads: one test per question, with points."""
    tests = []
    for q, r in _questions(record):
        if r is None:
            status, message, score = "error", _not_graded(record), 0
        else:
            ok = r["status"] in (Status.PASSED, Status.SKIPPED)
            status = "pass" if ok else "error" if r["status"] == Status.ERROR else "fail"
            message, score = r["feedback"], r["score"]
        tests.append(
            {
                "name": f"{q.id}: {q.title}",
                "status": status,
                "score": score,
                "message": message,
                "test_code": f"check({q.id!r})",
                "filename": "",
                "line_no": 0,
                "execution_time": "",
            }
        )
    status = "pass" if record.score >= record.max_score else "error" if record.result is None else "fail"
    return {"version": 1, "status": status, "max_score": record.max_score, "tests": tests}


def classroom_output(record: Record) -> str:
    """`result=<base64 JSON>`: append it to $GITHUB_OUTPUT, name the step in the reporter's `runners`."""
    payload = json.dumps(classroom_results(record)).encode()
    return f"result={base64.b64encode(payload).decode()}"


# --- JUnit XML ---------------------------------------------------------------------------------------------------


def junit_xml(records: list[Record]) -> str:
    """One <testsuite> per submission and a <testcase> per question; lost points carry their feedback."""
    suites = ET.Element("testsuites", name="specialist-labs")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for record in records:
        suite = ET.SubElement(suites, "testsuite", name=f"lab{record.lab}.{record.student}")
        props = ET.SubElement(suite, "properties")
        row = record.to_dict()
        for key in ("status", "score", "max_score", "reason"):
            ET.SubElement(props, "property", name=key, value=str(row[key]))
        counts = dict.fromkeys(totals, 0)
        for q, r in _questions(record):
            case = ET.SubElement(suite, "testcase", classname=suite.get("name"), name=q.id)
            counts["tests"] += 1
            if r is None:
                kind, message, text = "error", str(record.status), _not_graded(record)
            elif r["status"] == Status.PASSED:
                continue
            elif r["status"] == Status.SKIPPED:
                kind, message, text = "skipped", "skipped", r["feedback"]
            else:
                kind = "error" if r["status"] in (Status.ERROR, Status.TIMEOUT) else "failure"
                message, text = str(r["status"]), r["feedback"]
            counts["skipped" if kind == "skipped" else f"{kind}s"] += 1
            ET.SubElement(case, kind, message=message, type=message).text = text
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
        suite.set("time", f"{record.wall_s:.2f}")
    for key, value in totals.items():
        suites.set(key, str(value))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


# --- the Gradescope autograder bundle ----------------------------------------------------------------------------


def build_gradescope_bundle(lab: str, out: str | Path, course: str | Path = ".", sandbox: bool = True) -> Path:
    """autograder.zip: setup.sh, run_autograder, the lab choice, and this package's source to pip install."""
    lab, course, out = str(lab).zfill(2), Path(course), Path(out)
    load_lab(lab)  # fails early on an unknown lab
    templates = course / "templates" / "gradescope"
    missing = [
        p for p in (templates / "setup.sh", templates / "run_autograder", course / "pyproject.toml") if not p.is_file()
    ]
    if missing:
        raise FileNotFoundError(f"missing {', '.join(map(str, missing))}: run from the course folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("setup.sh", "run_autograder"):
            _add(zf, templates / name, name, executable=True)
        options = "--sandbox" if sandbox else ""
        _write(zf, "autograder.env", f"LAB={lab}\nBATCH_OPTIONS={options!r}\n".encode())
        for name in PACKAGE_FILES:
            if (course / name).is_file():
                _add(zf, course / name, name)
        for folder in PACKAGE_DIRS:
            for path in sorted((course / folder).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    _add(zf, path, path.relative_to(course).as_posix())
    return out


def _add(zf: zipfile.ZipFile, path: Path, name: str, executable: bool = False) -> None:
    _write(zf, name, path.read_bytes(), executable)


def _write(zf: zipfile.ZipFile, name: str, data: bytes, executable: bool = False) -> None:
    """One member with a fixed time and mode: same inputs, same zip (`writestr(name, ...)` would stamp it now)."""
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = (0o755 if executable else 0o644) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)
