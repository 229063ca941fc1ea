"""A batch row, typed: one `Record` per submission, its `RowStatus`, and the rule (`classify`) that picks it.

A record is what results/<student>.json holds and what every exporter reads; `to_dict` keeps the JSON shape
that earlier batches wrote, so their files still load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from grader.grading import Status, TextEnum
from grader.runner import DeathKind

REASON_CHARS = 240


class RowStatus(TextEnum):
    """How a submission's grading ended, as the gradebook's status column says it."""

    GRADED = "graded"  # ran normally, full marks
    PARTIAL = "partial"  # ran normally, points lost
    TIMEOUT = "timeout"
    MEMORY = "memory"
    CRASHED = "crashed"
    UNUSABLE = "unusable"
    INTERRUPTED = "interrupted"

    @property
    def normal(self) -> bool:
        """Graded the ordinary way (all points or some lost), as opposed to stopped by a limit or a fault."""
        return self in (RowStatus.GRADED, RowStatus.PARTIAL)


# The kernel's typed cause of death decides the row: the message beside it is for people only.
DEATH_ROWS = {
    DeathKind.MEMORY: RowStatus.MEMORY,
    DeathKind.UNRESPONSIVE: RowStatus.TIMEOUT,
    DeathKind.CRASH: RowStatus.CRASHED,
}


def shorten(text: str, limit: int = REASON_CHARS) -> str:
    """One line of at most `limit` characters: a reason has to fit a spreadsheet cell and a progress line."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Record:
    """One submission's row: who, which lab, how it ended and why, the points, and the full result (if any)."""

    student: str
    lab: str
    notebook: str | None
    status: RowStatus
    reason: str
    score: float
    max_score: float
    wall_s: float = 0.0
    review: list[str] = field(default_factory=list)
    result: dict | None = None  # the LabResult as a dict; None when nothing was graded

    def __post_init__(self) -> None:
        self.status = RowStatus(self.status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "student": self.student,
            "lab": self.lab,
            "notebook": self.notebook,
            "status": str(self.status),
            "reason": self.reason,
            "score": self.score,
            "max_score": self.max_score,
            "wall_s": self.wall_s,
            "review": list(self.review),
            "result": self.result,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        """A record from results/<student>.json; ValueError when it is not one."""
        try:
            return cls(
                student=str(data["student"]),
                lab=str(data["lab"]),
                notebook=data.get("notebook"),
                status=data["status"],
                reason=str(data["reason"]),
                score=data["score"],
                max_score=data["max_score"],
                wall_s=data.get("wall_s", 0.0),
                review=list(data.get("review", [])),
                result=data["result"],
            )
        except KeyError as exc:
            raise ValueError(f"not a batch record: no {exc.args[0]!r}") from None


def classify(result: dict) -> tuple[RowStatus, str]:
    """(row status, short reason) for a LabResult dict: what decided this row, most important first."""
    ex, questions = result.get("execution", {}), result.get("questions", [])
    died = ex.get("kernel_died")
    if died:
        if not isinstance(died, dict) or "kind" not in died:
            raise ValueError("kernel_died is not a typed record (a result from an older grader?): regrade it")
        kind = DeathKind(died["kind"])
        return DEATH_ROWS[kind], shorten(died.get("message") or f"the kernel stopped ({kind})")
    if any(Status(q["status"]) is Status.TIMEOUT for q in questions):
        status = RowStatus.TIMEOUT
    else:
        status = RowStatus.GRADED if result["score"] >= result["max_score"] else RowStatus.PARTIAL
    lost: dict[str, list[str]] = {}
    for q in questions:
        if Status(q["status"]) not in (Status.PASSED, Status.SKIPPED):
            lost.setdefault(str(q["status"]), []).append(q["id"])
    notes = [f"{kind}: {', '.join(ids)}" for kind, ids in lost.items()]
    if ex.get("budget_exhausted"):
        notes.append("the notebook's time budget ran out")
    if ex.get("timed_out_cells"):
        notes.append(f"cell(s) {', '.join(map(str, ex['timed_out_cells']))} timed out")
    if ex.get("output_truncated"):
        notes.append("output truncated at the cap")
    if ex.get("errors"):
        errs = ", ".join(f"{e['cell']} ({e['ename']})" for e in ex["errors"][:3])
        notes.append(f"errors in cell(s) {errs}{', ...' if len(ex['errors']) > 3 else ''}")
    return status, shorten("; ".join(notes))
