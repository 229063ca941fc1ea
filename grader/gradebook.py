"""The gradebook CSV (a row per student, a column per question) and results/<student>.json beside it.

Both are rewritten after every submission, atomically, so an interrupted batch keeps everything graded so far.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from grader.records import Record, shorten
from grader.registry import load_lab


def results_dir(gradebook: str | Path) -> Path:
    return Path(gradebook).parent / "results"


def _cell(value: object) -> str:
    """Spreadsheets run cells that start with = + - @ as formulas; student text must not."""
    text = f"{value:g}" if isinstance(value, float | int) else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def gradebook_columns(lab: str) -> list[str]:
    return ["student", "lab", *load_lab(lab).questions, "total", "max_score", "status", "reason"]


def gradebook_row(record: Record) -> dict[str, str]:
    """One CSV row: a score per question (blank when not graded), total, status and reason."""
    scores = {q["id"]: q["score"] for q in (record.result or {}).get("questions", []) if q["max_score"]}
    reason = record.reason
    if record.review:
        reason = shorten(f"REVIEW: {', '.join(record.review)}" + (f"; {reason}" if reason else ""))
    row = {"student": record.student, "lab": record.lab, "total": record.score}
    row |= {qid: scores.get(qid, "") for qid in load_lab(record.lab).questions}
    row |= {"max_score": record.max_score, "status": str(record.status), "reason": reason}
    return {k: _cell(v) for k, v in row.items()}


def read_gradebook(path: str | Path) -> dict[str, dict[str, str]]:
    if not Path(path).is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {row["student"]: row for row in csv.DictReader(f)}


def write_gradebook(path: str | Path, lab: str, rows: dict[str, dict[str, str]]) -> None:
    """Atomically, sorted by student, so a crash mid-write never leaves half a gradebook."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=gradebook_columns(lab), extrasaction="ignore")
        writer.writeheader()
        for student in sorted(rows):
            writer.writerow(rows[student])
    os.replace(tmp, path)


def save_record(record: Record, gradebook: str | Path) -> Path:
    """results/<student>.json next to the gradebook, replaced atomically like the gradebook itself."""
    folder = results_dir(gradebook)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record.student}.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record.to_dict(), indent=1) + "\n")
    os.replace(tmp, path)
    return path
