"""What a batch grades: one notebook per student, found in the layouts the usual tools produce, and the
review flags read from a notebook's code before anything runs."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# Code a lab never needs but tricks on the grader do. A match changes no score: it asks a human to look.
REVIEW_PATTERNS = {
    "changes grader internals": r"\bgrader(\.\w+)+\s*=[^=]|sys\.modules|['\"]grader[/\\'\"]|_sl_|grade_in_kernel",
    "installs import hooks": r"meta_path|path_hooks|sys\.path\.(insert|append)|spec_from_file_location",
    "hooks cell execution": r"events\.register|input_transformers|ast_transformers|settrace|setprofile|addaudithook",
    "leaves code running after its cell": r"threading\.Thread|_thread\.|atexit|os\.fork|signal\.signal",
    "reaches for the grader process or its files": r"sl-results|/proc/self|os\.getppid",
}


@dataclass
class Submission:
    student: str
    notebook: Path | None
    problem: str = ""  # why it cannot be graded before anything runs


def _notebooks(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*.ipynb") if not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _pick(student: str, notebooks: list[Path], lab: str) -> Submission:
    """One notebook per student: the only one, else the only one named like the lab (NN_*.ipynb)."""
    if len(notebooks) == 1:
        return Submission(student, notebooks[0])
    if not notebooks:
        return Submission(student, None, "no notebook (.ipynb) in the submission")
    named = [p for p in notebooks if p.name.startswith(f"{lab}_")]
    if len(named) == 1:
        return Submission(student, named[0])
    names = ", ".join(p.name for p in (named or notebooks))
    return Submission(student, None, f"several notebooks ({names}); keep one named {lab}_*.ipynb")


def discover(root: str | Path, lab: str, student: str | None = None) -> list[Submission]:
    """Submissions under `root`, sorted by student.

    A notebook directly in `root` is a student named after the file; a sub-folder is a student named
    after the folder, holding one notebook anywhere inside it. With `student`, all of `root` (a folder
    or a single notebook) is that one student's submission.
    """
    root, lab = Path(root), str(lab).zfill(2)
    if root.is_file():
        return [Submission(student or root.stem, root)]
    if student is not None:
        return [_pick(student, _notebooks(root), lab)]
    groups: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            groups.setdefault(entry.name, []).extend(_notebooks(entry))
        elif entry.suffix == ".ipynb":
            groups.setdefault(entry.stem, []).append(entry)
    return [_pick(name, paths, lab) for name, paths in sorted(groups.items())]


def review_flags(notebook: Path) -> list[str]:
    """Reasons a human should read this notebook's code; empty for ordinary lab work."""
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
        code = "\n".join(
            "".join(c.get("source", "")) if isinstance(c.get("source"), list) else str(c.get("source", ""))
            for c in cells
            if isinstance(c, dict) and c.get("cell_type") == "code"
        )
    except (OSError, ValueError, AttributeError):
        return []
    return [why for why, pattern in REVIEW_PATTERNS.items() if re.search(pattern, code)]
