"""Grading reports: the terminal table and the JSON result.

The table reads the same without colour: each status is a word. Colour is only added for a terminal, and never
when NO_COLOR is set to anything (https://no-color.org), TERM is "dumb", or the output goes to a file or a pipe.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TextIO

from grader.feedback import label
from grader.grading import LabResult

_ANSI = {"passed": "32", "failed": "31", "error": "31", "not_implemented": "33", "timeout": "33", "skipped": "2"}
_STATUS_WIDTH = max(len(label(s)) for s in _ANSI)


def use_colour(stream: TextIO | None = None) -> bool:
    """Colour for a terminal only: not when NO_COLOR is non-empty, TERM is dumb, or `stream` is not a TTY."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def _paint(text: str, status: str, colour: bool) -> str:
    code = _ANSI.get(str(status))
    return f"\033[{code}m{text}\033[0m" if colour and code else text


def table(result: LabResult, show_feedback: bool = True, colour: bool | None = None) -> str:
    """Per-question table and a total, for a terminal. `colour`: None decides from stdout and NO_COLOR."""
    colour = use_colour() if colour is None else colour
    width = max([len(q.id) for q in result.questions] + [8])
    lines = [f"Lab {result.lab}  ({result.duration_s:.1f} s)",
             f"  {'status':<{_STATUS_WIDTH}}  {'question':<{width}}  {'score':>9}"]
    for q in result.questions:
        score = f"{q.score:g}/{q.max_score:g}"
        word = _paint(f"{label(q.status):<{_STATUS_WIDTH}}", q.status, colour)
        lines.append(f"  {word}  {q.id:<{width}}  {score:>9}")
        if show_feedback and q.status != "passed" and q.feedback:
            lines += [f"{'':>{_STATUS_WIDTH + 4}}{line}" for line in q.feedback.splitlines()[:8]]
    total = f"{result.score:g}/{result.max_score:g}"
    lines.append(f"  {'TOTAL':<{_STATUS_WIDTH}}  {'':<{width}}  {total:>9}")
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
