"""Generate learner notebooks (labs/) from instructor solutions (solutions/).

Learner notebooks are build artefacts: they are regenerated from the solutions and never edited by
hand, so the transformation must be pure and byte-stable (same solution -> same bytes), which lets
CI fail when a committed lab drifts from its solution (``release_all(..., check=True)``).
"""

from __future__ import annotations

import copy
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

BEGIN_SOLUTION = "### BEGIN SOLUTION"
END_SOLUTION = "### END SOLUTION"
BEGIN_HIDDEN = "### BEGIN HIDDEN TESTS"
END_HIDDEN = "### END HIDDEN TESTS"
CODE_STUB = ("# YOUR CODE HERE", 'raise NotImplementedError("Your code here: see the instructions above.")')
ANSWER_STUB = ("YOUR ANSWER HERE",)
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
LAB_NAME = re.compile(r"^\d\d_.+\.ipynb$")


class ReleaseError(ValueError):
    """A solution notebook cannot be released (unbalanced markers, no solution region, ...)."""


@dataclass
class ReleaseChange:
    """What ``release_all`` did (or, in check mode, would do) to one lab file."""

    lab_path: Path
    status: str  # "created" | "updated" | "unchanged" | "stale" | "orphan"


def find_regions(
    source: str, begin: str = BEGIN_SOLUTION, end: str = END_SOLUTION, *, cell: int | None = None
) -> list[tuple[int, int]]:
    """Return (begin_line, end_line) index pairs, both inclusive, of marker-delimited regions.

    Markers are matched on the stripped line so they may be indented. Nesting, an unclosed BEGIN or a
    stray END raise ReleaseError: silently guessing could leak a solution into a learner notebook.
    """
    where = f"cell {cell}, " if cell is not None else ""
    regions: list[tuple[int, int]] = []
    start: int | None = None
    for i, line in enumerate(source.splitlines()):
        marker = line.strip()
        if marker == begin:
            if start is not None:
                opened = f"(region opened at line {start + 1})"
                raise ReleaseError(f"{where}line {i + 1}: nested {begin!r} {opened}")
            start = i
        elif marker == end:
            if start is None:
                raise ReleaseError(f"{where}line {i + 1}: {end!r} without a matching {begin!r}")
            regions.append((start, i))
            start = None
    if start is not None:
        raise ReleaseError(f"{where}line {start + 1}: {begin!r} is never closed by {end!r}")
    return regions


def _replace_regions(
    lines: list[str], regions: list[tuple[int, int]], stub: tuple[str, ...] | None
) -> list[str]:
    """Replace each region with ``stub`` at the BEGIN marker's indentation (or drop it if stub is None)."""
    out: list[str] = []
    prev = 0
    for start, stop in regions:
        out.extend(lines[prev:start])
        if stub is not None:
            indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
            out.extend(indent + s for s in stub)
        prev = stop + 1
    out.extend(lines[prev:])
    return out


def _release_source(source: str, cell_type: str, index: int) -> str:
    """Strip hidden tests, then stub out solution regions; tidy whitespace only if something changed."""
    lines = source.splitlines()
    find_regions(source, cell=index)  # validate first so errors cite the solution's own line numbers
    hidden = find_regions(source, BEGIN_HIDDEN, END_HIDDEN, cell=index)
    lines = _replace_regions(lines, hidden, None)
    solution = find_regions("\n".join(lines), cell=index)
    lines = _replace_regions(lines, solution, CODE_STUB if cell_type == "code" else ANSWER_STUB)
    if not hidden and not solution:
        return source
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def _derived_id(index: int, source: str, used: set[str]) -> str:
    """Deterministic id for cells that have none (nbformat < 4.5); random ids would break byte stability."""
    salt = 0
    while True:
        cid = hashlib.sha1(f"{index}:{salt}:{source}".encode()).hexdigest()[:8]
        if cid not in used:
            return cid
        salt += 1


def release_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return the learner version of a solution notebook (the input is left untouched)."""
    if nb.get("nbformat") != 4:
        raise ReleaseError(f"expected an nbformat 4 notebook, got version {nb.get('nbformat')}")
    out = new_notebook()
    out.metadata = nbformat.from_dict({"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}})
    if "specialist_labs" in nb.get("metadata", {}):
        out.metadata["specialist_labs"] = copy.deepcopy(nb.metadata["specialist_labs"])
    given = [c["id"] for c in nb.cells if "id" in c]
    used: set[str] = set(given)
    if len(used) != len(given):
        raise ReleaseError("solution notebook has duplicate cell ids")
    factories = {"code": new_code_cell, "markdown": new_markdown_cell, "raw": new_raw_cell}
    for index, cell in enumerate(nb.cells):
        tags = list(cell.get("metadata", {}).get("tags", []))
        source = cell.source if isinstance(cell.source, str) else "".join(cell.source)
        if "hidden" in tags or "solution-only" in tags:
            continue
        had_content = bool(source.strip())
        released = _release_source(source, cell.cell_type, index)
        if had_content and not released.strip():
            continue  # the cell held nothing but hidden tests; an empty husk would only confuse learners
        new = factories[cell.cell_type](source=released)
        new.id = cell["id"] if "id" in cell else _derived_id(index, source, used)
        used.add(new.id)
        if tags:
            new.metadata["tags"] = tags
        if cell.cell_type == "markdown" and cell.get("attachments"):
            new.attachments = copy.deepcopy(cell.attachments)
        out.cells.append(new)
    return out


def notebook_to_text(nb: nbformat.NotebookNode) -> str:
    """Serialise deterministically (indent=1, sorted keys) with a trailing newline, as Jupyter saves."""
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def _has_solution(nb: nbformat.NotebookNode) -> bool:
    return any(
        find_regions(c.source if isinstance(c.source, str) else "".join(c.source), cell=i)
        for i, c in enumerate(nb.cells)
    )


def release_all(solutions_dir: Path, labs_dir: Path, check: bool = False) -> list[ReleaseChange]:
    """Regenerate every labs/NN_*.ipynb from solutions/NN_*.ipynb.

    Write mode touches only files whose text changed, so mtimes and diffs stay quiet. Check mode writes
    nothing and reports missing or differing labs as "stale" (for CI). Labs without a solution are
    reported "orphan" but never deleted: removing a learner file is a decision for a human.
    """
    solutions_dir, labs_dir = Path(solutions_dir), Path(labs_dir)
    changes: list[ReleaseChange] = []
    sources = sorted(p for p in solutions_dir.glob("[0-9][0-9]_*.ipynb") if LAB_NAME.match(p.name))
    for sol_path in sources:
        # NO_CONVERT: never let a conversion touch ids (nbformat.v4.upgrade gives pre-4.5 cells random ones).
        nb = nbformat.reads(sol_path.read_text(encoding="utf-8"), as_version=nbformat.NO_CONVERT)
        try:
            if not _has_solution(nb):
                raise ReleaseError(f"no {BEGIN_SOLUTION!r} region found")
            text = notebook_to_text(release_notebook(nb))
        except ReleaseError as exc:
            raise ReleaseError(f"{sol_path}: {exc}") from exc
        lab_path = labs_dir / sol_path.name
        old = lab_path.read_text(encoding="utf-8") if lab_path.exists() else None
        if old == text:
            status = "unchanged"
        elif check:
            status = "stale"
        else:
            labs_dir.mkdir(parents=True, exist_ok=True)
            lab_path.write_bytes(text.encode("utf-8"))
            status = "created" if old is None else "updated"
        changes.append(ReleaseChange(lab_path, status))
    solution_names = {p.name for p in sources}
    if labs_dir.is_dir():
        for lab_path in sorted(labs_dir.glob("[0-9][0-9]_*.ipynb")):
            if lab_path.name not in solution_names:
                changes.append(ReleaseChange(lab_path, "orphan"))
    return changes
