"""Grading reports: the terminal table and the JSON result."""

from __future__ import annotations

import json
from pathlib import Path

from grader.feedback import ICONS
from grader.grading import LabResult


def table(result: LabResult, show_feedback: bool = True) -> str:
    """Per-question table and a total, for a terminal."""
    width = max([len(q.id) for q in result.questions] + [8])
    lines = [f"Lab {result.lab}  ({result.duration_s:.1f} s)", f"  {'question':<{width}}  {'score':>9}  status"]
    for q in result.questions:
        score = f"{q.score:g}/{q.max_score:g}"
        lines.append(f"{ICONS.get(q.status, '?')} {q.id:<{width}}  {score:>9}  {q.status}")
        if show_feedback and q.status != "passed" and q.feedback:
            lines += [f"{'':>{width + 16}}{line}" for line in q.feedback.splitlines()[:8]]
    lines.append(f"  {'TOTAL':<{width}}  {result.score:g}/{result.max_score:g}")
    ex = result.execution
    if ex.get("kernel_died"):
        lines.append(f"  ! {ex['kernel_died']['message']}")
    for err in ex.get("errors", []):
        lines.append(f"  ! cell {err['cell']} raised {err['ename']}: {err['evalue'][:120]}")
    if ex.get("timed_out_cells"):
        lines.append(f"  ! cells that timed out: {ex['timed_out_cells']}")
    if ex.get("budget_exhausted"):
        lines.append("  ! the notebook's time budget ran out before its last cell")
    if ex.get("output_truncated"):
        lines.append("  ! output was truncated (output cap)")
    return "\n".join(lines)


def write_json(result: LabResult, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
